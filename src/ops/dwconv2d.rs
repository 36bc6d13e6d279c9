//! Depthwise 2-D convolution (stride 1, "same" zero padding) on token-major `[B·H·W, C]`
//! activations, with an optional bias and a fused activation.

use crate::error::Result;
use crate::ops::activation::Activation;
use crate::ops::kernel;
use crate::runtime::{grid, MatView, Recorder, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    height: u32,
    width: u32,
    channels: u32,
    x_offset: u32,
    x_stride: u32,
    kernel: u32,
    activation: u32,
    has_bias: u32,
    tokens: u32,
    kept: u32,
    _pad: u32,
}

/// The cells of a pruned grid: where each image's kept tokens sit.
#[derive(Clone, Copy)]
pub struct KeptCells<'a> {
    /// u32 `[batch, tokens]`: the cell (raster index) of each kept token.
    pub positions: &'a Tensor,
    /// u32 `[batch, h * w]`: the token in each cell, or `kept_grid::NONE`.
    pub slots: &'a Tensor,
}

/// PyTorch's depthwise weight `[C, 1, k, k]` in the kernel's tap-major layout `[k, k, C]`.
pub fn pack_dwconv_weight(weight: &[f32], channels: usize) -> Vec<f32> {
    let taps = weight.len() / channels;
    (0..taps)
        .flat_map(|t| (0..channels).map(move |c| weight[c * taps + t]))
        .collect()
}

/// `x` is `[batch * h * w, C]` in raster order (any row stride) or, with `kept`, the
/// `[batch * tokens, C]` kept tokens of each `h x w` grid (pruned cells read as zero);
/// `weight` `[k, k, C]` from [`pack_dwconv_weight`] with `k` odd, `bias` `[C]`. Returns
/// `act(conv(x) + bias)` with the rows of `x`.
pub fn dwconv2d(
    rec: &mut Recorder,
    x: MatView,
    (batch, h, w): (usize, usize, usize),
    kept: Option<KeptCells>,
    weight: &Tensor,
    bias: Option<&Tensor>,
    activation: Activation,
) -> Result<Tensor> {
    let channels = x.cols;
    let k = weight.shape()[0];
    let tokens = x.rows / batch;
    debug_assert!(k % 2 == 1 && k * k * channels == weight.numel());
    debug_assert!(tokens == h * w || kept.is_some_and(|c| c.positions.numel() == x.rows));
    let out = rec.alloc("dwconv2d", &[x.rows, channels])?;
    let params = Params {
        batch: batch as u32,
        height: h as u32,
        width: w as u32,
        channels: channels as u32,
        x_offset: x.offset as u32,
        x_stride: x.stride as u32,
        kernel: k as u32,
        activation: activation.code(),
        has_bias: bias.is_some() as u32,
        tokens: tokens as u32,
        kept: kept.is_some() as u32,
        _pad: 0,
    };
    let dummy = rec.context().inner.dummy.clone();
    let vec4 =
        channels.is_multiple_of(4) && x.offset.is_multiple_of(4) && x.stride.is_multiple_of(4);
    let (kernel, lanes) = if vec4 {
        (kernel!("dwconv2d", "dwconv2d_vec4"), 4)
    } else {
        (kernel!("dwconv2d", "dwconv2d"), 1)
    };
    rec.dispatch(
        &kernel,
        &params,
        &[
            x.buffer(),
            weight.buffer(),
            bias.map_or(&dummy, Tensor::buffer),
            out.buffer(),
            kept.map_or(&dummy, |c| c.positions.buffer()),
            kept.map_or(&dummy, |c| c.slots.buffer()),
        ],
        grid((out.numel() / lanes).div_ceil(256) as u32),
    );
    Ok(out)
}

/// CPU reference on dense `[batch * h * w, C]`, `weight` PyTorch's `[C, 1, k, k]`.
pub fn dwconv2d_ref(
    x: &[f32],
    (batch, h, w, channels): (usize, usize, usize, usize),
    (weight, k): (&[f32], usize),
    bias: Option<&[f32]>,
    activation: Activation,
) -> Vec<f32> {
    let half = (k / 2) as isize;
    let mut out = Vec::with_capacity(x.len());
    for b in 0..batch {
        for y in 0..h as isize {
            for xx in 0..w as isize {
                for c in 0..channels {
                    let mut acc = bias.map_or(0.0, |b| b[c]);
                    for ky in 0..k as isize {
                        for kx in 0..k as isize {
                            let (sy, sx) = (y + ky - half, xx + kx - half);
                            if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                                continue;
                            }
                            let src = (b * h + sy as usize) * w + sx as usize;
                            acc += weight[(c * k + ky as usize) * k + kx as usize]
                                * x[src * channels + c];
                        }
                    }
                    out.push(activation.apply(acc));
                }
            }
        }
    }
    out
}
