//! Row gather for token pruning: the kept tokens of one or two token streams (hidden and
//! residual) and of the position map, compacted in one dispatch.

use crate::error::{Error, Result};
use crate::ops::kernel;
use crate::runtime::{grid, DType, Recorder, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    len: u32,
    keep: u32,
    cols: u32,
    flags: u32,
    _pad: [u32; 3],
}

const HAS_X1: u32 = 1;
const HAS_POS: u32 = 2;

/// What [`gather_rows`] wrote: `[B * keep, D]` streams and the u32 `[B, keep]` position map.
#[derive(Debug)]
pub struct Gathered {
    pub x: Tensor,
    pub y: Option<Tensor>,
    pub positions: Option<Tensor>,
}

/// `indices` u32 `[B, keep]` (per image, into its `N` current tokens, e.g. from
/// [`topk`](crate::ops::topk::topk)); `x` and `y` `[B * N, D]`; `positions` u32 `[B, N]`, the
/// original grid index of each current token. Row `b * keep + t` of each output is row
/// `b * N + indices[b, t]` of its input. Indices must be below `N` (not checked on the GPU).
pub fn gather_rows(
    rec: &mut Recorder,
    indices: &Tensor,
    x: &Tensor,
    y: Option<&Tensor>,
    positions: Option<&Tensor>,
) -> Result<Gathered> {
    let bad = |what: String| Err(Error::InvalidInput(format!("gather_rows: {what}")));
    let &[batch, keep] = indices.shape() else {
        return bad(format!(
            "indices must be [batch, keep], got {:?}",
            indices.shape()
        ));
    };
    let dim = *x.shape().last().unwrap_or(&1);
    let rows = x.numel() / dim.max(1);
    if keep == 0 {
        return bad("keeps no tokens".into());
    }
    if batch == 0 || dim == 0 || !rows.is_multiple_of(batch) || rows * dim != x.numel() {
        return bad(format!(
            "x {:?} is not [batch * tokens, dim] for batch {batch}",
            x.shape()
        ));
    }
    let len = rows / batch;
    if indices.dtype() != DType::U32 || x.dtype() != DType::F32 {
        return bad("indices must be u32 and x f32".into());
    }
    if let Some(y) = y.filter(|y| y.numel() != x.numel() || y.dtype() != DType::F32) {
        return bad(format!(
            "y {:?} does not match x {:?}",
            y.shape(),
            x.shape()
        ));
    }
    if let Some(p) = positions.filter(|p| p.numel() != rows || p.dtype() != DType::U32) {
        return bad(format!(
            "positions must be u32 [{batch}, {len}], got {:?} {:?}",
            p.dtype(),
            p.shape()
        ));
    }
    let ctx = rec.context().clone();
    let out_x = rec.alloc("gathered", &[batch * keep, dim])?;
    let out_y = y
        .map(|_| rec.alloc("gathered", &[batch * keep, dim]))
        .transpose()?;
    let out_pos = positions
        .map(|_| ctx.alloc("positions", &[batch, keep], DType::U32))
        .transpose()?;
    let vec4 = dim.is_multiple_of(4);
    let (kernel, lanes) = if vec4 {
        (kernel!("gather_rows", "gather_rows_vec4"), 4)
    } else {
        (kernel!("gather_rows", "gather_rows"), 1)
    };
    let params = Params {
        batch: batch as u32,
        len: len as u32,
        keep: keep as u32,
        cols: (dim / lanes) as u32,
        flags: if y.is_some() { HAS_X1 } else { 0 } | if positions.is_some() { HAS_POS } else { 0 },
        _pad: [0; 3],
    };
    // Absent inputs and outputs bind the context's spare buffers (never accessed: the flags
    // are off). Two absent outputs may share the read-write one: both are unused.
    let (dummy, dummy_rw) = (&ctx.inner.dummy, &ctx.inner.dummy_rw);
    rec.dispatch(
        &kernel,
        &params,
        &[
            indices.buffer(),
            x.buffer(),
            y.map_or(dummy, Tensor::buffer),
            positions.map_or(dummy, Tensor::buffer),
            out_x.buffer(),
            out_y.as_ref().map_or(dummy_rw, Tensor::buffer),
            out_pos.as_ref().map_or(dummy_rw, Tensor::buffer),
        ],
        grid((batch * keep * dim / lanes).div_ceil(256) as u32),
    );
    Ok(Gathered {
        x: out_x,
        y: out_y,
        positions: out_pos,
    })
}

/// CPU reference of [`gather_rows`] on one tensor `x` `[B * len, dim]` (f32 rows, or the u32
/// position map with `dim` 1).
pub fn gather_rows_ref<T: Copy>(
    indices: &[u32],
    keep: usize,
    x: &[T],
    len: usize,
    dim: usize,
) -> Vec<T> {
    indices
        .iter()
        .enumerate()
        .flat_map(|(row, &i)| {
            let src = row / keep * len + i as usize;
            x[src * dim..(src + 1) * dim].iter().copied()
        })
        .collect()
}
