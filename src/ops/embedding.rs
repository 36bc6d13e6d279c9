//! Embedding lookup: token ids `[rows]` (u32) into a table `[vocab, dim]`, which may be split
//! by rows across buffers ([`RowShards`]).

use crate::error::Result;
use crate::ops::kernel;
use crate::runtime::{grid, Recorder, RowShards, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    first_row: u32,
    shard_rows: u32,
}

/// Returns `[rows, dim]`. Ids must be below the table's row count (checked at the API boundary).
pub fn embedding(rec: &mut Recorder, ids: &Tensor, table: &RowShards) -> Result<Tensor> {
    let rows = ids.numel();
    let dim = table.cols();
    let out = rec.alloc("embeddings", &[rows, dim])?;
    let groups = grid((rows * dim).div_ceil(256) as u32);
    for (first_row, shard) in table.shards() {
        let params = Params {
            rows: rows as u32,
            dim: dim as u32,
            first_row: first_row as u32,
            shard_rows: shard.shape()[0] as u32,
        };
        rec.dispatch(
            &kernel!("embedding", "embedding"),
            &params,
            &[ids.buffer(), shard.buffer(), out.buffer()],
            groups,
        );
    }
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
