//! Mamba-2's gated RMSNorm: `y * silu(z)`, then RMSNorm over each group of channels
//! (transformers `MambaRMSNormGated`, mamba_ssm `RMSNormGated` with `norm_before_gate=False`).

use crate::error::{Error, Result};
use crate::ops::{kernel, silu};
use crate::runtime::{grid, MatView, Recorder, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    groups: u32,
    z_offset: u32,
    z_stride: u32,
    eps: f32,
    _pad: [u32; 2],
}

/// `y` `[rows, dim]`, the gate `z` `[rows, dim]` (any row stride), `weight` `[dim]`; the norm
/// runs over `groups` equal groups of channels. Returns `[rows, dim]`.
pub fn gated_rmsnorm(
    rec: &mut Recorder,
    y: &Tensor,
    z: MatView,
    weight: &Tensor,
    groups: usize,
    eps: f32,
) -> Result<Tensor> {
    let dim = weight.numel();
    if groups == 0 || !dim.is_multiple_of(groups) || z.cols != dim {
        return Err(Error::InvalidInput(format!(
            "gated_rmsnorm: {dim} channels (gate {}) do not split into {groups} groups",
            z.cols
        )));
    }
    let rows = y.numel() / dim;
    let out = rec.alloc("gated_norm", &[rows, dim])?;
    let params = Params {
        rows: rows as u32,
        dim: dim as u32,
        groups: groups as u32,
        z_offset: z.offset as u32,
        z_stride: z.stride as u32,
        eps,
        _pad: [0; 2],
    };
    rec.dispatch(
        &kernel!("gated_rmsnorm", "gated_rmsnorm"),
        &params,
        &[y.buffer(), z.buffer(), weight.buffer(), out.buffer()],
        grid((rows * groups) as u32),
    );
    Ok(out)
}

/// CPU reference on dense `[rows, dim]` `y` and `z`.
pub fn gated_rmsnorm_ref(
    y: &[f32],
    z: &[f32],
    weight: &[f32],
    groups: usize,
    eps: f32,
) -> Vec<f32> {
    let size = weight.len() / groups;
    let gated: Vec<f32> = y.iter().zip(z).map(|(y, z)| y * silu(*z)).collect();
    gated
        .chunks(size)
        .enumerate()
        .flat_map(|(k, g)| {
            let ms = g.iter().map(|v| v * v).sum::<f32>() / size as f32;
            let scale = 1.0 / (ms + eps).sqrt();
            let w = &weight[(k % groups) * size..][..size];
            g.iter()
                .zip(w)
                .map(move |(v, w)| v * scale * w)
                .collect::<Vec<_>>()
        })
        .collect()
}
