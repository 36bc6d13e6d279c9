//! Embedding lookup: token ids `[rows]` (u32) into a table `[vocab, dim]`.

use crate::error::Result;
use crate::ops::kernel;
use crate::runtime::{grid, Recorder, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    _pad: [u32; 2],
}

/// Returns `[rows, dim]`. Ids must be below the table's row count (checked at the API boundary).
pub fn embedding(rec: &mut Recorder, ids: &Tensor, table: &Tensor) -> Result<Tensor> {
    let rows = ids.numel();
    let dim = table.shape()[1];
    let out = rec.alloc("embeddings", &[rows, dim])?;
    let params = Params {
        rows: rows as u32,
        dim: dim as u32,
        _pad: [0; 2],
    };
    let groups = grid((rows * dim).div_ceil(256) as u32);
    rec.dispatch(
        &kernel!("embedding", "embedding"),
        &params,
        &[ids.buffer(), table.buffer(), out.buffer()],
        groups,
    );
    Ok(out)
}

pub fn embedding_ref(ids: &[u32], table: &[f32], dim: usize) -> Vec<f32> {
    ids.iter()
        .flat_map(|&id| {
            table[id as usize * dim..(id as usize + 1) * dim]
                .iter()
                .copied()
        })
        .collect()
}
