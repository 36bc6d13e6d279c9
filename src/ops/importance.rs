//! Token importance scores for pruning: a reduction over each token's channels.

use crate::error::Result;
use crate::ops::kernel;
use crate::runtime::{grid, Recorder, Tensor};

/// How a row of channels becomes a score.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    Mean,
    /// Mean of `max(0, x)`.
    ClippedMean,
    L2,
    /// Pseudo-random in [0, 1) from the seed and the row (the ablation baseline).
    Random {
        seed: u32,
    },
}

impl Reduce {
    /// The mode and seed of `shaders/include/row_score.wgsl`.
    pub(crate) fn code(self) -> (u32, u32) {
        match self {
            Reduce::Mean => (0, 0),
            Reduce::ClippedMean => (3, 0),
            Reduce::L2 => (1, 0),
            Reduce::Random { seed } => (2, seed),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    channels: u32,
    mode: u32,
    seed: u32,
}

/// `x` `[B·N, C]` -> scores `[B, N]`.
pub fn importance(rec: &mut Recorder, x: &Tensor, batch: usize, reduce: Reduce) -> Result<Tensor> {
    let channels = *x.shape().last().unwrap_or(&1);
    let rows = x.numel() / channels;
    let scores = rec.alloc("scores", &[batch, rows / batch])?;
    let (mode, seed) = reduce.code();
    let params = Params {
        rows: rows as u32,
        channels: channels as u32,
        mode,
        seed,
    };
    rec.dispatch(
        &kernel!("importance", "importance"),
        &params,
        &[x.buffer(), scores.buffer()],
        grid(rows.div_ceil(64) as u32),
    );
    Ok(scores)
}

/// The shader's integer hash (PCG output permutation).
fn hash(v: u32) -> u32 {
    let h = v.wrapping_mul(747796405).wrapping_add(2891336453);
    let h = ((h >> ((h >> 28) + 4)) ^ h).wrapping_mul(277803737);
    (h >> 22) ^ h
}

/// CPU reference.
pub fn importance_ref(x: &[f32], channels: usize, reduce: Reduce) -> Vec<f32> {
    x.chunks(channels)
        .enumerate()
        .map(|(row, values)| match reduce {
            Reduce::Mean => values.iter().sum::<f32>() / channels as f32,
            Reduce::ClippedMean => values.iter().map(|v| v.max(0.0)).sum::<f32>() / channels as f32,
            Reduce::L2 => values.iter().map(|v| v * v).sum::<f32>().sqrt(),
            Reduce::Random { seed } => (hash(hash(seed) ^ row as u32) >> 8) as f32 / 16777216.0,
        })
        .collect()
}
