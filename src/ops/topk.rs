//! Top-k token selection for pruning: per image, the indices of the `keep` highest-scoring
//! tokens, with an optional class token that is always kept and re-inserted in the middle.

use std::cmp::Ordering;

use crate::error::{Error, Result};
use crate::ops::importance::Reduce;
use crate::ops::kernel;
use crate::runtime::{grid, DType, Recorder, Tensor};

/// The most tokens per image [`topk`] takes (its workgroup bitmask holds this many).
pub const TOPK_MAX_LEN: usize = 4096;

/// The order of the kept tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepOrder {
    /// Original (ascending index) order, as the ToP authors' code keeps them (the class token
    /// re-inserted in the middle of the kept list, wherever that falls).
    Ascending,
    /// Original order with as many kept tokens on each side of the class token (the best of
    /// each side), so the class token stays among its original neighbours: the order the
    /// position map of the `decay` alignment needs.
    Balanced,
    /// Best score first, as ViT pruning (EViT) leaves them: the naive baseline.
    Score,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    len: u32,
    keep: u32,
    cls: u32,
    order: u32,
    score_mode: u32,
    channels: u32,
    seed: u32,
}

/// `scores` `[B, N]` (f32) -> u32 `[B, keep]`: indices into each image's current sequence.
///
/// Tokens rank by score, higher first, ties to the lower index; NaN ranks below every number.
/// With `cls` (a position `< N`), the class token is taken out of the ranking, the best
/// `keep - 1` others are chosen, and the class token goes to output index `(keep - 1) / 2`
/// with the first `(keep - 1) / 2` chosen before it (ALGORITHMS.md 4.2, steps 2-4). Vim's class
/// token sits at `M / 2` of `M = N - 1` patches, so it lands where the next layer expects it.
/// The authors' code protects the class token of batch row 0 only; here every row's is.
/// [`KeepOrder::Balanced`] needs `(keep - 1) / 2` tokens before the class token and the rest
/// after it. `1 <= keep <= N <= TOPK_MAX_LEN`.
pub fn topk(
    rec: &mut Recorder,
    scores: &Tensor,
    keep: usize,
    cls: Option<usize>,
    order: KeepOrder,
) -> Result<Tensor> {
    record(rec, scores, None, keep, cls, order)
}

/// [`importance`](crate::ops::importance::importance) and [`topk`] in one dispatch: each
/// image's workgroup scores its tokens from their rows of `x` `[B·N, C]` as `reduce` says, then
/// keeps the best. Returns the scores `[B, N]` and the kept indices u32 `[B, keep]`.
pub fn score_topk(
    rec: &mut Recorder,
    x: &Tensor,
    batch: usize,
    reduce: Reduce,
    keep: usize,
    cls: Option<usize>,
    order: KeepOrder,
) -> Result<(Tensor, Tensor)> {
    let channels = *x.shape().last().unwrap_or(&1);
    let rows = x.numel() / channels.max(1);
    if batch == 0 || !rows.is_multiple_of(batch) {
        return Err(Error::InvalidInput(format!(
            "topk: {rows} token rows are not {batch} images"
        )));
    }
    let scores = rec.alloc("scores", &[batch, rows / batch])?;
    let kept = record(rec, &scores, Some((x, channels, reduce)), keep, cls, order)?;
    Ok((scores, kept))
}

/// Record the top-k over `scores`, first computed from `(x, channels, reduce)` when given.
fn record(
    rec: &mut Recorder,
    scores: &Tensor,
    rows: Option<(&Tensor, usize, Reduce)>,
    keep: usize,
    cls: Option<usize>,
    order: KeepOrder,
) -> Result<Tensor> {
    let &[batch, len] = scores.shape() else {
        return Err(Error::InvalidInput(format!(
            "topk: scores must be [batch, tokens], got {:?}",
            scores.shape()
        )));
    };
    if batch == 0 {
        return Err(Error::InvalidInput("topk: empty batch".into()));
    }
    check_topk_args(scores.dtype(), len, keep, cls)?;
    if let (KeepOrder::Balanced, Some(c)) = (order, cls) {
        let m = keep - 1;
        if m / 2 > c || m - m / 2 > len - 1 - c {
            return Err(Error::InvalidInput(format!(
                "topk: {} kept tokens on each side of the class token at {c} of {len} do not exist",
                m / 2
            )));
        }
    }
    let out = rec.context().alloc("kept", &[batch, keep], DType::U32)?;
    let params = Params {
        batch: batch as u32,
        len: len as u32,
        keep: keep as u32,
        cls: cls.map_or(u32::MAX, |c| c as u32),
        order: match order {
            KeepOrder::Ascending => 0,
            KeepOrder::Score => 1,
            KeepOrder::Balanced => 2,
        },
        score_mode: rows.map_or(0, |(_, _, reduce)| 1 + reduce.code().0),
        channels: rows.map_or(0, |(_, channels, _)| channels as u32),
        seed: rows.map_or(0, |(_, _, reduce)| reduce.code().1),
    };
    let dummy = rec.context().inner.dummy.clone();
    rec.dispatch(
        &kernel!("topk", "topk"),
        &params,
        &[
            scores.buffer(),
            out.buffer(),
            rows.map_or(&dummy, |(x, _, _)| x.buffer()),
        ],
        grid(batch as u32),
    );
    Ok(out)
}

fn check_topk_args(dtype: DType, len: usize, keep: usize, cls: Option<usize>) -> Result<()> {
    if dtype != DType::F32 {
        return Err(Error::InvalidInput("topk: scores must be f32".into()));
    }
    if len > TOPK_MAX_LEN {
        return Err(Error::InvalidInput(format!(
            "topk: {len} tokens per image, over the limit of {TOPK_MAX_LEN}"
        )));
    }
    if keep == 0 || keep > len {
        return Err(Error::InvalidInput(format!(
            "topk: cannot keep {keep} of {len} tokens"
        )));
    }
    if let Some(c) = cls.filter(|&c| c >= len) {
        return Err(Error::InvalidInput(format!(
            "topk: class token position {c} is outside {len} tokens"
        )));
    }
    Ok(())
}

/// CPU reference of [`topk`] on `scores` `[B, len]`, written from the definition (sort by
/// score), not from the kernel's algorithm.
pub fn topk_ref(
    scores: &[f32],
    len: usize,
    keep: usize,
    cls: Option<usize>,
    order: KeepOrder,
) -> Vec<u32> {
    // Descending score, NaN last, ties to the lower index (the sort is stable).
    let better = |a: &f32, b: &f32| match (a.is_nan(), b.is_nan()) {
        (false, false) => b.partial_cmp(a).unwrap_or(Ordering::Equal),
        (x, y) => x.cmp(&y),
    };
    scores
        .chunks(len)
        .flat_map(|row| {
            let m = keep - cls.is_some() as usize;
            let best = |tokens: Vec<usize>, n: usize| {
                let mut ranked = tokens;
                ranked.sort_by(|&i, &j| better(&row[i], &row[j]));
                ranked.truncate(n);
                ranked
            };
            let others = (0..len).filter(|&j| Some(j) != cls);
            let mut ranked = match (order, cls) {
                (KeepOrder::Balanced, Some(c)) => {
                    let mut before = best(others.clone().filter(|&j| j < c).collect(), m / 2);
                    before.extend(best(others.filter(|&j| j > c).collect(), m - m / 2));
                    before
                }
                _ => best(others.collect(), m),
            };
            if order != KeepOrder::Score {
                ranked.sort_unstable();
            }
            if let Some(c) = cls {
                ranked.insert(ranked.len() / 2, c);
            }
            ranked.into_iter().map(|j| j as u32)
        })
        .collect()
}
