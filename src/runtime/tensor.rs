//! A tensor: a pooled GPU buffer with a shape and a dtype. Clones share the buffer.

use std::sync::Arc;

use crate::runtime::buffer::Buffer;
use crate::runtime::pool::PooledBuffer;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    U32,
}

impl DType {
    pub fn size(self) -> usize {
        4
    }
}

#[derive(Clone)]
pub struct Tensor {
    buf: Arc<PooledBuffer>,
    shape: Vec<usize>,
    dtype: DType,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {:?})", self.shape, self.dtype)
    }
}

impl Tensor {
    pub(crate) fn new(buf: PooledBuffer, shape: Vec<usize>, dtype: DType) -> Self {
        Tensor {
            buf: Arc::new(buf),
            shape,
            dtype,
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn size_bytes(&self) -> u64 {
        (self.numel() * self.dtype.size()) as u64
    }

    pub fn buffer(&self) -> &Buffer {
        self.buf.buffer()
    }

    /// The same buffer seen with another shape of the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Tensor {
        assert_eq!(
            shape.iter().product::<usize>(),
            self.numel(),
            "reshape {:?} -> {shape:?}",
            self.shape
        );
        Tensor {
            buf: self.buf.clone(),
            shape: shape.to_vec(),
            dtype: self.dtype,
        }
    }

    /// Columns `start..start + width` of this tensor seen as a `[rows, last_dim]` matrix.
    pub fn cols(&self, start: usize, width: usize) -> MatView<'_> {
        let last = *self.shape.last().unwrap_or(&1);
        debug_assert!(start + width <= last);
        MatView {
            tensor: self,
            rows: self.numel() / last.max(1),
            cols: width,
            offset: start,
            stride: last,
        }
    }

    /// The whole tensor as a `[rows, last_dim]` matrix.
    pub fn mat(&self) -> MatView<'_> {
        let last = *self.shape.last().unwrap_or(&1);
        self.cols(0, last)
    }
}

/// A strided 2-D window into a tensor: element (r, c) lives at `offset + r * stride + c`.
/// Kernels read column slices (x | z halves, the dt/B/C parts of x_proj) in place through it.
#[derive(Clone, Copy, Debug)]
pub struct MatView<'a> {
    pub tensor: &'a Tensor,
    pub rows: usize,
    pub cols: usize,
    pub offset: usize,
    pub stride: usize,
}

impl MatView<'_> {
    pub fn buffer(&self) -> &Buffer {
        self.tensor.buffer()
    }
}

/// A `[rows, cols]` f32 matrix split by rows into tensors that each fit one storage binding.
/// Vocabulary tables need it: Mamba-130m's 50280 x 768 embedding is 154 MB, over the 128 MiB
/// that browser WebGPU and lavapipe bind. One shard where the table fits.
#[derive(Clone, Debug)]
pub struct RowShards {
    shards: Vec<Tensor>,
    rows_per_shard: usize,
    rows: usize,
    cols: usize,
}

impl RowShards {
    pub(crate) fn new(
        shards: Vec<Tensor>,
        rows_per_shard: usize,
        rows: usize,
        cols: usize,
    ) -> Self {
        RowShards {
            shards,
            rows_per_shard,
            rows,
            cols,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Each shard with the index of its first row.
    pub fn shards(&self) -> impl Iterator<Item = (usize, &Tensor)> {
        self.shards
            .iter()
            .enumerate()
            .map(|(i, t)| (i * self.rows_per_shard, t))
    }
}
