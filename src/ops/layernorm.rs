//! LayerNorm (with weight and bias), and its fusion with mean pooling over each image's tokens.

use crate::error::Result;
use crate::ops::kernel;
use crate::runtime::{grid, Recorder, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    len: u32,
}

/// `x` `[rows, dim]`, `weight` and `bias` `[dim]`; returns `[rows, dim]`.
pub fn layernorm(
    rec: &mut Recorder,
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
) -> Result<Tensor> {
    let dim = weight.numel();
    let rows = x.numel() / dim;
    let out = rec.alloc("layernorm", &[rows, dim])?;
    let params = Params {
        rows: rows as u32,
        dim: dim as u32,
        eps,
        len: 0,
    };
    rec.dispatch(
        &kernel!("layernorm", "layernorm"),
        &params,
        &[x.buffer(), weight.buffer(), bias.buffer(), out.buffer()],
        grid(rows.div_ceil(64) as u32),
    );
    Ok(out)
}

/// LayerNorm of `x` `[batch * len, dim]`, and each image's mean over its `len` normalised
/// tokens: returns (`[batch * len, dim]`, `[batch, dim]`).
pub fn layernorm_mean(
    rec: &mut Recorder,
    x: &Tensor,
    batch: usize,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    let dim = weight.numel();
    let rows = x.numel() / dim;
    let out = rec.alloc("layernorm", &[rows, dim])?;
    let pooled = rec.alloc("pooled", &[batch, dim])?;
    let params = Params {
        rows: rows as u32,
        dim: dim as u32,
        eps,
        len: (rows / batch) as u32,
    };
    rec.dispatch(
        &kernel!("layernorm", "layernorm_mean"),
        &params,
        &[
            x.buffer(),
            weight.buffer(),
            bias.buffer(),
            out.buffer(),
            pooled.buffer(),
        ],
        [batch as u32, 1, 1],
    );
    Ok((out, pooled))
}

/// CPU reference of [`layernorm`] on `[rows, dim]`.
pub fn layernorm_ref(x: &[f32], weight: &[f32], bias: &[f32], eps: f32) -> Vec<f32> {
    let dim = weight.len();
    x.chunks(dim)
        .flat_map(|row| {
            let mean = row.iter().sum::<f32>() / dim as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32;
            let rstd = 1.0 / (var + eps).sqrt();
            row.iter()
                .zip(weight.iter().zip(bias))
                .map(move |(v, (w, b))| (v - mean) * rstd * w + b)
        })
        .collect()
}

/// CPU reference of the pooling: the mean of each image's `len` rows of `x` `[batch * len, dim]`.
pub fn mean_tokens_ref(x: &[f32], batch: usize, dim: usize) -> Vec<f32> {
    let len = x.len() / dim / batch;
    let mut out = vec![0.0; batch * dim];
    for (i, row) in x.chunks(dim).enumerate() {
        let acc = &mut out[i / len * dim..][..dim];
        acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
    }
    out.iter_mut().for_each(|v| *v /= len as f32);
    out
}
