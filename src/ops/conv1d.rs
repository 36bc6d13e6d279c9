//! Causal depthwise conv1d (width 4) + SiLU, with mamba_ssm's rolling conv state for decoding.

use crate::error::Result;
use crate::ops::{kernel, silu, Carry};
use crate::runtime::{grid, MatView, Recorder, Tensor};

/// Only Mamba's width is supported; checked when a model's config is read.
pub const CONV_WIDTH: usize = 4;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    len: u32,
    channels: u32,
    x_offset: u32,
    x_stride: u32,
    use_state: u32,
    write_state: u32,
    reverse: u32,
    has_positions: u32,
    /// 2: both walks at once, the second reversed (Vim's two directions).
    directions: u32,
    _pad: [u32; 2],
}

/// `x` is `[batch * len, channels]` (any row stride), `weight` `[channels, 4]`, `bias`
/// `[channels]`, state `[batch, channels, 4]`. Returns `[batch * len, channels]`. `reverse`
/// convolves each sequence as if flipped, keeping the original token positions. With
/// `gap_positions` (u32 `[batch, len]`, increasing) the tokens are the kept ones of a pruned
/// sequence at those original positions, and the pruned ones read as zero.
#[allow(clippy::too_many_arguments)] // mirrors the kernel's inputs one for one
pub fn conv1d_silu(
    rec: &mut Recorder,
    x: MatView,
    batch: usize,
    weight: &Tensor,
    bias: &Tensor,
    state: Carry,
    reverse: bool,
    gap_positions: Option<&Tensor>,
) -> Result<Tensor> {
    let out = rec.alloc("conv_out", &[x.rows, x.cols])?;
    let walk = Walk {
        reverse,
        directions: 1,
    };
    record(
        rec,
        x,
        batch,
        (weight, bias),
        state,
        walk,
        gap_positions,
        &out,
    );
    Ok(out)
}

/// Both directions of a bidirectional mixer in one dispatch: `weight` `[2, channels, 4]` and
/// `bias` `[2, channels]` stack the forward and the backward conv; returns `[2, batch * len,
/// channels]`, the forward conv of `x` then the reversed one (as [`conv1d_silu`] with
/// `reverse`), with no carried state.
pub fn conv1d_silu_both(
    rec: &mut Recorder,
    x: MatView,
    batch: usize,
    weight: &Tensor,
    bias: &Tensor,
    gap_positions: Option<&Tensor>,
) -> Result<Tensor> {
    let out = rec.alloc("conv_out", &[2 * x.rows, x.cols])?;
    let walk = Walk {
        reverse: false,
        directions: 2,
    };
    record(
        rec,
        x,
        batch,
        (weight, bias),
        Carry::None,
        walk,
        gap_positions,
        &out,
    );
    Ok(out)
}

/// The walks a dispatch makes: `directions` of them, the first reversed when `reverse`, the
/// second always.
struct Walk {
    reverse: bool,
    directions: usize,
}

#[allow(clippy::too_many_arguments)] // mirrors the kernel's inputs one for one
fn record(
    rec: &mut Recorder,
    x: MatView,
    batch: usize,
    (weight, bias): (&Tensor, &Tensor),
    state: Carry,
    walk: Walk,
    gap_positions: Option<&Tensor>,
    out: &Tensor,
) {
    let channels = x.cols;
    let len = x.rows / batch;
    let (state_buf, use_state, write_state) = state.binding(rec);
    let params = Params {
        batch: batch as u32,
        len: len as u32,
        channels: channels as u32,
        x_offset: x.offset as u32,
        x_stride: x.stride as u32,
        use_state,
        write_state,
        reverse: walk.reverse as u32,
        has_positions: gap_positions.is_some() as u32,
        directions: walk.directions as u32,
        _pad: [0; 2],
    };
    let dummy = rec.context().inner.dummy.clone();
    // Eight or four channels per invocation where the rows line up.
    let aligned = |n: usize| {
        [channels, x.offset, x.stride]
            .iter()
            .all(|v| v.is_multiple_of(n))
    };
    // (kernel, channels per invocation, workgroup size)
    let (kernel, per_invocation, group) = if aligned(8) && rec.context().uses_int64() {
        (kernel!("conv1d", "conv1d_silu_u64").with_int64(true), 8, 8)
    } else if aligned(4) {
        (kernel!("conv1d", "conv1d_silu_vec4"), 4, 64)
    } else {
        (kernel!("conv1d", "conv1d_silu"), 1, 64)
    };
    let invocations = walk.directions * batch * channels / per_invocation;
    rec.dispatch(
        &kernel,
        &params,
        &[
            x.buffer(),
            weight.buffer(),
            bias.buffer(),
            &state_buf,
            out.buffer(),
            gap_positions.map_or(&dummy, Tensor::buffer),
        ],
        grid(invocations.div_ceil(group) as u32),
    );
}

#[allow(clippy::too_many_arguments)] // mirrors the kernel's inputs one for one
/// CPU reference on dense `[batch, len, channels]`; `state` (`[batch, channels, 4]`) is read
/// when `use_state` and always updated.
pub fn conv1d_silu_ref(
    x: &[f32],
    batch: usize,
    len: usize,
    channels: usize,
    weight: &[f32],
    bias: &[f32],
    state: &mut [f32],
    use_state: bool,
    reverse: bool,
    gap_positions: Option<&[u32]>,
) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for b in 0..batch {
        for e in 0..channels {
            let s = &mut state[(b * channels + e) * CONV_WIDTH..][..CONV_WIDTH];
            let mut window = if use_state {
                [s[0], s[1], s[2], s[3]]
            } else {
                [0.0; 4]
            };
            for s in 0..len {
                let t = if reverse { len - 1 - s } else { s };
                let i = (b * len + t) * channels + e;
                if let (Some(pos), true) = (gap_positions, s > 0) {
                    let prev = if reverse { t + 1 } else { t - 1 };
                    let gap = pos[b * len + t].abs_diff(pos[b * len + prev]) as usize;
                    for _ in 1..gap.min(CONV_WIDTH) {
                        window = [window[1], window[2], window[3], 0.0];
                    }
                }
                window = [window[1], window[2], window[3], x[i]];
                let c = bias[e]
                    + (0..CONV_WIDTH)
                        .map(|k| weight[e * CONV_WIDTH + k] * window[k])
                        .sum::<f32>();
                out[i] = silu(c);
            }
            s.copy_from_slice(&window);
        }
    }
    out
}
