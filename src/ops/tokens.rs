//! Patch embeddings to a vision model's token sequence: optional class token inserted at a
//! position, then the absolute position embedding added.

use crate::error::Result;
use crate::ops::kernel;
use crate::runtime::{grid, Recorder, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    len: u32,
    dim: u32,
    cls_pos: u32,
    has_pos: u32,
    _pad: [u32; 3],
}

/// `patches` `[batch * M, D]`; `cls` a `[D]` token and the position it takes; `pos_embed`
/// `[L, D]` with `L = M + 1` with a class token, else `M`. Returns `[batch * L, D]`.
pub fn embed_tokens(
    rec: &mut Recorder,
    patches: &Tensor,
    batch: usize,
    cls: Option<(&Tensor, usize)>,
    pos_embed: Option<&Tensor>,
) -> Result<Tensor> {
    let dim = *patches.shape().last().unwrap_or(&1);
    let len = patches.numel() / dim / batch + cls.is_some() as usize;
    let out = rec.alloc("tokens", &[batch * len, dim])?;
    let dummy = rec.context().inner.dummy.clone();
    let params = Params {
        batch: batch as u32,
        len: len as u32,
        dim: dim as u32,
        cls_pos: cls.map_or(u32::MAX, |(_, pos)| pos as u32),
        has_pos: pos_embed.is_some() as u32,
        _pad: [0; 3],
    };
    rec.dispatch(
        &kernel!("tokens", "embed_tokens"),
        &params,
        &[
            patches.buffer(),
            cls.map_or(&dummy, |(t, _)| t.buffer()),
            pos_embed.map_or(&dummy, Tensor::buffer),
            out.buffer(),
        ],
        grid(out.numel().div_ceil(256) as u32),
    );
    Ok(out)
}

/// CPU reference, same layout.
pub fn embed_tokens_ref(
    patches: &[f32],
    batch: usize,
    dim: usize,
    cls: Option<(&[f32], usize)>,
    pos_embed: Option<&[f32]>,
) -> Vec<f32> {
    let per_image = patches.len() / dim / batch;
    let mut out = Vec::new();
    for image in patches.chunks(per_image * dim) {
        let mut rows: Vec<&[f32]> = image.chunks(dim).collect();
        if let Some((token, pos)) = cls {
            rows.insert(pos, token);
        }
        for (t, row) in rows.iter().enumerate() {
            out.extend(
                row.iter()
                    .enumerate()
                    .map(|(d, v)| v + pos_embed.map_or(0.0, |p| p[t * dim + d])),
            );
        }
    }
    out
}
