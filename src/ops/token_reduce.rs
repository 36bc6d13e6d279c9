//! Token reduction for causal SSM language models (ALGORITHMS.md 5.3): split the tokens into a
//! removable half and a kept half, match, select the tokens to remove, and prune or merge them
//! in the hidden-state and residual streams with one set of indices. See
//! `shaders/token_reduce.wgsl` for the dispatches.

use std::cmp::Ordering;

use crate::error::{Error, Result};
use crate::ops::gather_rows::gather_rows;
use crate::ops::kernel;
use crate::ops::matmul::matmul;
use crate::runtime::{grid, DType, Recorder, Tensor};

/// How the tokens split into removal candidates (A) and kept ones (B). The last token is
/// always in B, so next-token logits exist after every reduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The `len / 2` least important tokens are A (the paper's unified method).
    Importance,
    /// Even positions are A (ToMe / PuMer bipartite merging).
    Alternate,
    /// Every token is a candidate, the least important removed first; no matching (EViT).
    Prune,
    /// What the authors' code (ToR_SSM) computes (ALGORITHMS.md 5.4): even positions are A;
    /// similarity between per-channel sorted, normalised, clipped features; the hidden
    /// stream merged per channel. Only the last token, which the code may remove, is kept
    /// here. (The sorted rows make every match token 1 and the earliest even positions the
    /// most similar, so the code's shuffle of targets is a no-op and is not reproduced.)
    Code,
}

/// One reduction: `remove` tokens per sequence; of them, the `hidden_pruned` most similar (or,
/// with [`Split::Prune`], least important) are pruned in the hidden stream and the
/// `residual_pruned` first in the residual stream; the rest merge into their match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReduceArgs {
    pub split: Split,
    pub remove: usize,
    pub hidden_pruned: usize,
    pub residual_pruned: usize,
}

impl Split {
    /// The A tokens (removal candidates) of a sequence of `len`: the most it can lose.
    pub fn candidates(self, len: usize) -> usize {
        match self {
            Split::Importance => len / 2,
            Split::Alternate | Split::Code => len.div_ceil(2) - usize::from(len % 2 == 1),
            Split::Prune => len.saturating_sub(1),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    len: u32,
    remove: u32,
    dim: u32,
    split: u32,
    hidden_pruned: u32,
    residual_pruned: u32,
    keep: u32,
    n_a: u32,
    n_b: u32,
    _pad: [u32; 2],
}

/// The reduced streams `[B * keep, D]` and position map u32 `[B, keep]`.
pub struct Reduced {
    pub hidden: Tensor,
    pub residual: Tensor,
    pub positions: Tensor,
}

/// `scores` `[B, N]` (importance), `features` `[B * N, F]` (what similarity compares),
/// `hidden` and `residual` `[B * N, D]`, `positions` u32 `[B, N]`.
pub fn token_reduce(
    rec: &mut Recorder,
    args: ReduceArgs,
    scores: &Tensor,
    features: &Tensor,
    hidden: &Tensor,
    residual: &Tensor,
    positions: &Tensor,
) -> Result<Reduced> {
    let bad = |what: String| Err(Error::InvalidInput(format!("token_reduce: {what}")));
    let &[batch, len] = scores.shape() else {
        return bad(format!(
            "scores must be [batch, tokens], got {:?}",
            scores.shape()
        ));
    };
    let rows = batch * len;
    let dim = hidden.numel() / rows.max(1);
    let fdim = features.numel() / rows.max(1);
    if rows == 0 || dim == 0 || fdim == 0 {
        return bad("empty input".into());
    }
    if hidden.numel() != rows * dim
        || residual.numel() != rows * dim
        || features.numel() != rows * fdim
        || positions.numel() != rows
        || positions.dtype() != DType::U32
    {
        return bad(format!(
            "streams {:?} / {:?}, features {:?} and positions {:?} do not fit {batch} x {len} tokens",
            hidden.shape(),
            residual.shape(),
            features.shape(),
            positions.shape()
        ));
    }
    let max = args.split.candidates(len);
    if args.remove > max
        || args.hidden_pruned > args.remove
        || args.residual_pruned > args.hidden_pruned
    {
        return bad(format!(
            "cannot remove {} of {len} tokens (at most {max}) pruning {} hidden / {} residual",
            args.remove, args.hidden_pruned, args.residual_pruned
        ));
    }
    let keep = len - args.remove;
    let n_a = args.split.candidates(len);
    let params = Params {
        batch: batch as u32,
        len: len as u32,
        remove: args.remove as u32,
        dim: dim as u32,
        split: args.split as u32,
        hidden_pruned: args.hidden_pruned as u32,
        residual_pruned: args.residual_pruned as u32,
        keep: keep as u32,
        n_a: n_a as u32,
        n_b: (len - n_a) as u32,
        _pad: [0; 2],
    };
    let ctx = rec.context().clone();
    let info = ctx.alloc("reduce_info", &[rows, 4], DType::U32)?;
    let plan = ctx.alloc("reduce_plan", &[batch * keep, 4], DType::U32)?;
    let srcs = ctx.alloc("reduce_sources", &[rows], DType::U32)?;
    // One sequence per workgroup row (see the shader).
    let tokens = [len.div_ceil(64) as u32, batch as u32, 1];
    rec.dispatch(
        &kernel!("token_reduce", "utr_roles"),
        &params,
        &[scores.buffer(), info.buffer()],
        tokens,
    );
    // Nothing to match when nothing is removed (the split may then have no candidates).
    if args.split != Split::Prune && args.remove > 0 {
        // The similarity uses the feature width, not the stream width.
        let match_params = Params {
            dim: fdim as u32,
            ..params
        };
        let a_idx = ctx.alloc("reduce_a_tokens", &[batch, n_a], DType::U32)?;
        let b_idx = ctx.alloc("reduce_b_tokens", &[batch, len - n_a], DType::U32)?;
        let inv_norms = ctx.alloc("reduce_inverse_norms", &[rows], DType::F32)?;
        let slots = ctx.alloc("reduce_slots", &[rows], DType::U32)?;
        rec.dispatch(
            &kernel!("token_reduce", "utr_lists"),
            &match_params,
            &[
                features.buffer(),
                info.buffer(),
                b_idx.buffer(),
                inv_norms.buffer(),
                slots.buffer(),
                a_idx.buffer(),
            ],
            tokens,
        );
        let sims = if args.split == Split::Code {
            // Order statistics of each channel: rows 0..len/2 are B, the rest A.
            let mid = len / 2;
            let sorted_a = rec.alloc("reduce_sorted_a", &[batch * (len - mid), fdim])?;
            let sorted_b = rec.alloc("reduce_sorted_b", &[batch * mid, fdim])?;
            let groups = (len * fdim).div_ceil(64);
            if groups > u16::MAX as usize {
                return bad(format!(
                    "the authors' matching sorts {len} x {fdim} features per sequence; at most {} fit one dispatch",
                    u16::MAX as usize * 64
                ));
            }
            rec.dispatch(
                &kernel!("token_reduce", "utr_code_sort"),
                &match_params,
                &[
                    features.buffer(),
                    inv_norms.buffer(),
                    sorted_a.buffer(),
                    sorted_b.buffer(),
                ],
                [groups as u32, batch as u32, 1],
            );
            matmul(rec, "reduce_similarity", sorted_a.mat(), &sorted_b, None)? // [B(len-mid), B·mid]
        } else {
            // Every A row against every B row through the matmul kernel, the fastest dot
            // products the engine has; each sequence reads only its own block.
            let a_rows = gather_rows(rec, &a_idx, features, None, None)?.x; // [B·n_a, F]
            let b_rows = gather_rows(rec, &b_idx, features, None, None)?.x; // [B·n_b, F]
            matmul(rec, "reduce_similarity", a_rows.mat(), &b_rows, None)? // [B·n_a, B·n_b]
        };
        rec.dispatch(
            &kernel!("token_reduce", "utr_match"),
            &match_params,
            &[
                sims.buffer(),
                info.buffer(),
                b_idx.buffer(),
                inv_norms.buffer(),
                slots.buffer(),
            ],
            tokens,
        );
    }
    rec.dispatch(
        &kernel!("token_reduce", "utr_select"),
        &params,
        &[info.buffer()],
        tokens,
    );
    rec.dispatch(
        &kernel!("token_reduce", "utr_plan"),
        &params,
        &[info.buffer(), plan.buffer(), srcs.buffer()],
        tokens,
    );
    let out_hidden = rec.alloc("reduced_hidden", &[batch * keep, dim])?;
    let out_residual = rec.alloc("reduced_residual", &[batch * keep, dim])?;
    let out_positions = ctx.alloc("positions", &[batch, keep], DType::U32)?;
    rec.dispatch(
        &kernel!("token_reduce", "utr_merge"),
        &params,
        &[
            plan.buffer(),
            srcs.buffer(),
            hidden.buffer(),
            residual.buffer(),
            positions.buffer(),
            out_hidden.buffer(),
            out_residual.buffer(),
            out_positions.buffer(),
        ],
        grid((batch * keep * dim).div_ceil(64) as u32),
    );
    Ok(Reduced {
        hidden: out_hidden,
        residual: out_residual,
        positions: out_positions,
    })
}

/// CPU reference of [`token_reduce`] for one sequence, from the definition (sorts, explicit
/// groups). Returns the kept original indices and the reduced `hidden` and `residual` rows.
pub fn token_reduce_ref(
    args: ReduceArgs,
    scores: &[f32],
    features: &[f32],
    hidden: &[f32],
    residual: &[f32],
) -> (Vec<usize>, Vec<f32>, Vec<f32>) {
    if args.split == Split::Code {
        return authors_code_ref(args.remove, scores.len(), features, hidden, residual);
    }
    let len = scores.len();
    let (fdim, dim) = (features.len() / len, hidden.len() / len);
    let last = len - 1;
    let desc = |a: f32, b: f32| b.partial_cmp(&a).unwrap_or(Ordering::Equal);
    // A: the removal candidates.
    let a: Vec<usize> = match args.split {
        Split::Importance => {
            let mut order: Vec<usize> = (0..len).collect();
            let key = |i: usize| if i == last { f32::MAX } else { scores[i] };
            order.sort_by(|&i, &j| desc(key(i), key(j)));
            order[len - len / 2..].to_vec()
        }
        Split::Alternate => (0..last).step_by(2).collect(),
        Split::Prune => (0..last).collect(),
        Split::Code => unreachable!("handled above"),
    };
    let row = |x: &[f32], w: usize, i: usize| x[i * w..(i + 1) * w].to_vec();
    // As the kernel computes it: dot · (1/|u|) · (1/|v|), 0 for a zero row.
    let inverse_norm = |i: usize| {
        let sq: f32 = row(features, fdim, i).iter().map(|a| a * a).sum();
        if sq > 0.0 {
            1.0 / sq.sqrt()
        } else {
            0.0
        }
    };
    let cos = |i: usize, j: usize| {
        let (u, v) = (row(features, fdim, i), row(features, fdim, j));
        let dot: f32 = u.iter().zip(&v).map(|(a, b)| a * b).sum();
        dot * inverse_norm(i) * inverse_norm(j)
    };
    // (token, match, key) per candidate; sorted by key descending, ties to the lower index.
    let mut edges: Vec<(usize, Option<usize>, f32)> = a
        .iter()
        .map(|&i| match args.split {
            Split::Prune => (i, None, -scores[i]),
            _ => {
                let mut best = (None, f32::MIN);
                for j in (0..len).filter(|j| !a.contains(j)) {
                    let s = cos(i, j);
                    if s > best.1 {
                        best = (Some(j), s);
                    }
                }
                (i, best.0, best.1)
            }
        })
        .collect();
    edges.sort_by(|x, y| desc(x.2, y.2).then(x.0.cmp(&y.0)));
    edges.truncate(args.remove);
    let removed: Vec<usize> = edges.iter().map(|e| e.0).collect();
    let kept: Vec<usize> = (0..len).filter(|i| !removed.contains(i)).collect();
    let stream = |x: &[f32], pruned: usize| -> Vec<f32> {
        let mut out = Vec::with_capacity(kept.len() * dim);
        for &k in &kept {
            let mut group = vec![k];
            group.extend(
                edges[pruned..]
                    .iter()
                    .filter(|e| e.1 == Some(k))
                    .map(|e| e.0),
            );
            for c in 0..dim {
                let sum: f32 = group.iter().map(|&g| x[g * dim + c]).sum();
                out.push(sum / group.len() as f32);
            }
        }
        out
    };
    (
        kept.clone(),
        stream(hidden, args.hidden_pruned),
        stream(residual, args.residual_pruned),
    )
}

/// The authors' ToR_SSM reduction of one sequence, step by step as ALGORITHMS.md 5.4 lists it
/// (sorts and explicit pairs), keeping the last token. `features` `[len, F]` are the block
/// output (clipped here), `hidden` and `residual` `[len, D]`.
fn authors_code_ref(
    remove: usize,
    len: usize,
    features: &[f32],
    hidden: &[f32],
    residual: &[f32],
) -> (Vec<usize>, Vec<f32>, Vec<f32>) {
    let (fdim, dim) = (features.len() / len, hidden.len() / len);
    let desc = |a: &f32, b: &f32| b.partial_cmp(a).unwrap_or(Ordering::Equal);
    // 1. Clipped features, each token normalised (a zero row stays zero).
    let normed: Vec<Vec<f32>> = (0..len)
        .map(|i| {
            let row: Vec<f32> = features[i * fdim..(i + 1) * fdim]
                .iter()
                .map(|v| v.max(0.0))
                .collect();
            let sq: f32 = row.iter().map(|v| v * v).sum();
            let inv = if sq > 0.0 { 1.0 / sq.sqrt() } else { 0.0 };
            row.iter().map(|v| v * inv).collect()
        })
        .collect();
    // 2. Each channel sorted over the tokens, descending (stable): rows are order statistics.
    let mut sorted = vec![vec![0.0f32; fdim]; len];
    for c in 0..fdim {
        let mut column: Vec<f32> = normed.iter().map(|r| r[c]).collect();
        column.sort_by(desc);
        for (rank, v) in column.into_iter().enumerate() {
            sorted[rank][c] = v;
        }
    }
    // 3. a = sorted[mid..], b = sorted[..mid]; best b row per a row.
    let mid = len / 2;
    let dot = |u: &[f32], v: &[f32]| u.iter().zip(v).map(|(x, y)| x * y).sum::<f32>();
    let best: Vec<(usize, f32)> = (mid..len)
        .map(|ai| {
            (0..mid).fold((0, f32::MIN), |acc, bj| {
                let s = dot(&sorted[ai], &sorted[bj]);
                if s > acc.1 {
                    (bj, s)
                } else {
                    acc
                }
            })
        })
        .collect();
    // 4. A row i stands for token 2i, B row j for token 2j + 1 (positional). The r best a
    // rows by similarity (ties to the lower row), the last token excluded; their targets in
    // that order, the rows themselves in ascending order.
    let mut order: Vec<usize> = (0..best.len()).filter(|&i| 2 * i != len - 1).collect();
    order.sort_by(|&x, &y| desc(&best[x].1, &best[y].1).then(x.cmp(&y)));
    order.truncate(remove);
    let targets: Vec<usize> = order.iter().map(|&i| 2 * best[i].0 + 1).collect();
    let mut sources: Vec<usize> = order.iter().map(|&i| 2 * i).collect();
    sources.sort_unstable();
    let pairs: Vec<(usize, usize)> = sources.iter().copied().zip(targets).collect();
    let kept: Vec<usize> = (0..len).filter(|i| !sources.contains(i)).collect();
    let value = |x: &[f32], i: usize, c: usize| x[i * dim + c];
    // 5. Hidden: in channel c, the remove/2 removed tokens with the largest values merge
    // (ties to the lower token), the rest are pruned there; the size counts the pairs among
    // the first remove/2 by position.
    let half = remove / 2;
    let mut out_hidden = Vec::with_capacity(kept.len() * dim);
    let mut out_residual = Vec::with_capacity(kept.len() * dim);
    for &k in &kept {
        let into_k: Vec<(usize, usize)> = pairs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.1 == k)
            .map(|(q, p)| (q, p.0))
            .collect();
        let size = 1 + into_k.iter().filter(|(q, _)| *q < half).count();
        for c in 0..dim {
            let mut by_value: Vec<usize> = sources.clone();
            by_value
                .sort_by(|&x, &y| desc(&value(hidden, x, c), &value(hidden, y, c)).then(x.cmp(&y)));
            let merged_here = &by_value[..half];
            let sum: f32 = value(hidden, k, c)
                + into_k
                    .iter()
                    .filter(|(_, src)| merged_here.contains(src))
                    .map(|(_, src)| value(hidden, *src, c))
                    .sum::<f32>();
            out_hidden.push(sum / size as f32);
            // 6. Residual: size-weighted mean of the target and all its sources.
            let sum: f32 = value(residual, k, c)
                + into_k
                    .iter()
                    .map(|(_, src)| value(residual, *src, c))
                    .sum::<f32>();
            out_residual.push(sum / (1 + into_k.len()) as f32);
        }
    }
    (kept, out_hidden, out_residual)
}
