//! im2col: conv windows unfolded into rows, so every dense convolution (patch embeddings, conv
//! stems) runs as [`crate::ops::matmul`] with PyTorch's `[out, C, kh, kw]` weight unchanged.

use crate::error::Result;
use crate::ops::kernel;
use crate::runtime::{grid, Recorder, Tensor};

/// A 2-D convolution's window geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
}

impl ConvGeometry {
    /// Non-overlapping `size x size` patches (ViT-style patch embedding).
    pub fn patches(size: usize, stride: usize) -> Self {
        ConvGeometry {
            kernel: (size, size),
            stride: (stride, stride),
            padding: (0, 0),
        }
    }

    /// Output height and width for an `h x w` input (PyTorch's floor rule).
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        let out = |n: usize, k: usize, s: usize, p: usize| (n + 2 * p).saturating_sub(k) / s + 1;
        (
            out(h, self.kernel.0, self.stride.0, self.padding.0),
            out(w, self.kernel.1, self.stride.1, self.padding.1),
        )
    }
}

/// Where the channels are in the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[batch, C, H, W]` (pixel tensors).
    Nchw,
    /// `[batch, H, W, C]` (a matmul's output rows).
    Nhwc,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    channels: u32,
    in_h: u32,
    in_w: u32,
    out_h: u32,
    out_w: u32,
    kernel_h: u32,
    kernel_w: u32,
    stride_h: u32,
    stride_w: u32,
    pad_h: u32,
    pad_w: u32,
    channels_last: u32,
    _pad: [u32; 3],
}

/// Returns `[batch * out_h * out_w, C * kh * kw]`, rows in raster order.
pub fn im2col(
    rec: &mut Recorder,
    x: &Tensor,
    layout: Layout,
    (batch, channels, h, w): (usize, usize, usize, usize),
    geometry: ConvGeometry,
) -> Result<Tensor> {
    let (out_h, out_w) = geometry.output_size(h, w);
    let cols = channels * geometry.kernel.0 * geometry.kernel.1;
    let out = rec.alloc("im2col", &[batch * out_h * out_w, cols])?;
    let params = Params {
        batch: batch as u32,
        channels: channels as u32,
        in_h: h as u32,
        in_w: w as u32,
        out_h: out_h as u32,
        out_w: out_w as u32,
        kernel_h: geometry.kernel.0 as u32,
        kernel_w: geometry.kernel.1 as u32,
        stride_h: geometry.stride.0 as u32,
        stride_w: geometry.stride.1 as u32,
        pad_h: geometry.padding.0 as u32,
        pad_w: geometry.padding.1 as u32,
        channels_last: (layout == Layout::Nhwc) as u32,
        _pad: [0; 3],
    };
    rec.dispatch(
        &kernel!("im2col", "im2col"),
        &params,
        &[x.buffer(), out.buffer()],
        grid((out.numel() / geometry.kernel.1).div_ceil(64) as u32),
    );
    Ok(out)
}

/// CPU reference: a direct convolution, `x` as described by `layout`, `weight`
/// `[out, C, kh, kw]`; returns `[batch * out_h * out_w, out]` (what im2col + matmul give).
pub fn conv2d_ref(
    x: &[f32],
    layout: Layout,
    (batch, channels, h, w): (usize, usize, usize, usize),
    weight: &[f32],
    bias: Option<&[f32]>,
    geometry: ConvGeometry,
) -> Vec<f32> {
    let (kh, kw) = geometry.kernel;
    let out_channels = weight.len() / (channels * kh * kw);
    let (out_h, out_w) = geometry.output_size(h, w);
    let at = |b: usize, c: usize, y: usize, xx: usize| match layout {
        Layout::Nchw => x[((b * channels + c) * h + y) * w + xx],
        Layout::Nhwc => x[((b * h + y) * w + xx) * channels + c],
    };
    let mut out = Vec::with_capacity(batch * out_h * out_w * out_channels);
    for b in 0..batch {
        for oy in 0..out_h {
            for ox in 0..out_w {
                for o in 0..out_channels {
                    let mut acc = bias.map_or(0.0, |bias| bias[o]);
                    for c in 0..channels {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let y = (oy * geometry.stride.0 + ky) as isize
                                    - geometry.padding.0 as isize;
                                let xx = (ox * geometry.stride.1 + kx) as isize
                                    - geometry.padding.1 as isize;
                                if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
                                    continue;
                                }
                                acc += weight[((o * channels + c) * kh + ky) * kw + kx]
                                    * at(b, c, y as usize, xx as usize);
                            }
                        }
                    }
                    out.push(acc);
                }
            }
        }
    }
    out
}
