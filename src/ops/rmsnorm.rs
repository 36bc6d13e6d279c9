//! Residual add fused with RMSNorm; the residual stream stays f32 and is updated in place.

use crate::error::Result;
use crate::ops::kernel;
use crate::runtime::{grid, Recorder, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    has_hidden: u32,
}

/// `residual += hidden` (when given), then returns `rmsnorm(residual) * weight`, all `[rows, dim]`.
pub fn add_rmsnorm(
    rec: &mut Recorder,
    residual: &Tensor,
    hidden: Option<&Tensor>,
    weight: &Tensor,
    eps: f32,
) -> Result<Tensor> {
    let dim = weight.numel();
    let rows = residual.numel() / dim;
    let out = rec.alloc("normed", &[rows, dim])?;
    let params = Params {
        rows: rows as u32,
        dim: dim as u32,
        eps,
        has_hidden: hidden.is_some() as u32,
    };
    let dummy = rec.context().inner.dummy.clone();
    let hidden_buf = hidden.map(Tensor::buffer).unwrap_or(&dummy);
    let kernel = if dim.is_multiple_of(8) && rec.context().uses_int64() {
        kernel!("rmsnorm", "add_rmsnorm_u64").with_int64(true)
    } else if dim.is_multiple_of(4) {
        kernel!("rmsnorm", "add_rmsnorm_vec4")
    } else {
        kernel!("rmsnorm", "add_rmsnorm")
    };
    rec.dispatch(
        &kernel,
        &params,
        &[hidden_buf, weight.buffer(), residual.buffer(), out.buffer()],
        grid(rows.div_ceil(64) as u32),
    );
    Ok(out)
}

/// CPU reference; updates `residual` in place like the kernel.
pub fn add_rmsnorm_ref(
    residual: &mut [f32],
    hidden: Option<&[f32]>,
    weight: &[f32],
    eps: f32,
) -> Vec<f32> {
    let dim = weight.len();
    if let Some(h) = hidden {
        residual.iter_mut().zip(h).for_each(|(r, h)| *r += h);
    }
    residual
        .chunks(dim)
        .flat_map(|row| {
            let ms = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
            let scale = 1.0 / (ms + eps).sqrt();
            row.iter().zip(weight).map(move |(v, w)| v * scale * w)
        })
        .collect()
}
