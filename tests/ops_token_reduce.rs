//! The token-reduction op (split, cosine matching, selection, prune/merge of two streams with
//! one set of indices, position map) on the GPU against its CPU reference.

mod common;

use common::{assert_close, ctx, randn, rng};
use ssmgpu::ops::token_reduce::{token_reduce, token_reduce_ref, ReduceArgs, Split};
use ssmgpu::Error;

#[allow(clippy::too_many_arguments)]
fn check(
    split: Split,
    batch: usize,
    len: usize,
    fdim: usize,
    dim: usize,
    remove: usize,
    q: (usize, usize),
    seed: u64,
) {
    check_with(split, batch, len, fdim, dim, remove, q, seed, false);
}

/// With `features_are_hidden`, the features are the hidden stream itself.
#[allow(clippy::too_many_arguments)]
fn check_with(
    split: Split,
    batch: usize,
    len: usize,
    fdim: usize,
    dim: usize,
    remove: usize,
    q: (usize, usize),
    seed: u64,
    features_are_hidden: bool,
) {
    let ctx = ctx();
    let mut r = rng(seed);
    let scores = randn(&mut r, batch * len, 1.0);
    let mut features = randn(&mut r, batch * len * fdim, 1.0);
    let hidden = randn(&mut r, batch * len * dim, 1.0);
    if features_are_hidden {
        features = hidden.clone();
    }
    let residual = randn(&mut r, batch * len * dim, 1.0);
    // Positions as a previous reduction would leave them: increasing, with gaps.
    let positions: Vec<u32> = (0..batch * len).map(|i| (3 * i + 1) as u32).collect();
    let args = ReduceArgs {
        split,
        remove,
        hidden_pruned: q.0,
        residual_pruned: q.1,
    };
    let up =
        |name: &str, cols: usize, x: &[f32]| ctx.upload_f32(name, &[batch * len, cols], x).unwrap();
    let s = ctx.upload_f32("scores", &[batch, len], &scores).unwrap();
    let (f, h, res) = (
        up("f", fdim, &features),
        up("h", dim, &hidden),
        up("r", dim, &residual),
    );
    let p = ctx.upload_u32("pos", &[batch, len], &positions).unwrap();
    let mut rec = ctx.recorder();
    let out = token_reduce(&mut rec, args, &s, &f, &h, &res, &p).unwrap();
    let got =
        pollster::block_on(rec.submit_and_read(&[&out.hidden, &out.residual, &out.positions]))
            .unwrap();
    let keep = len - remove;
    for b in 0..batch {
        let rows = |x: &[f32], w: usize| x[b * len * w..(b + 1) * len * w].to_vec();
        let (kept, want_h, want_r) = token_reduce_ref(
            args,
            &rows(&scores, 1),
            &rows(&features, fdim),
            &rows(&hidden, dim),
            &rows(&residual, dim),
        );
        let what = format!("{split:?} len {len} remove {remove} q {q:?} row {b}");
        let got_pos: Vec<u32> = got[2][b * keep..(b + 1) * keep]
            .iter()
            .map(|v| v.to_bits())
            .collect();
        let want_pos: Vec<u32> = kept.iter().map(|&k| positions[b * len + k]).collect();
        assert_eq!(got_pos, want_pos, "{what}: kept tokens");
        assert_eq!(
            *kept.last().unwrap(),
            len - 1,
            "{what}: the last token is kept"
        );
        let out_rows = |x: &[f32]| x[b * keep * dim..(b + 1) * keep * dim].to_vec();
        assert_close(
            &format!("{what}: hidden"),
            &out_rows(&got[0]),
            &want_h,
            1e-5,
            1e-5,
        );
        assert_close(
            &format!("{what}: residual"),
            &out_rows(&got[1]),
            &want_r,
            1e-5,
            1e-5,
        );
    }
}

#[test]
fn unified_matches_reference() {
    // Hidden stream: half of the removed tokens pruned, half merged; residual: all merged.
    check(Split::Importance, 2, 37, 24, 16, 9, (4, 0), 1);
    check(Split::Importance, 1, 64, 8, 12, 32, (16, 0), 2);
    check(Split::Importance, 3, 5, 4, 4, 2, (1, 0), 3);
    // Several workgroups per sequence.
    check(Split::Importance, 2, 150, 12, 8, 60, (30, 0), 9);
}

#[test]
fn baselines_match_reference() {
    check(Split::Prune, 2, 33, 8, 8, 10, (10, 10), 4);
    check(Split::Prune, 1, 9, 8, 8, 8, (8, 8), 5);
    check(Split::Alternate, 2, 31, 8, 8, 15, (0, 0), 6);
    check(Split::Alternate, 1, 40, 16, 8, 7, (0, 0), 7);
    check(Split::Alternate, 2, 131, 8, 8, 50, (0, 0), 10);
}

/// The authors' code (ToR_SSM): even positions, per-channel sorted similarity, shuffled
/// pairs, per-channel hybrid in the hidden stream. Features are the hidden stream, as the
/// model passes them.
#[test]
fn authors_code_matches_reference() {
    for (batch, len, dim, remove, seed) in
        [(1, 12, 8, 4, 11), (2, 37, 16, 15, 12), (1, 130, 8, 50, 13)]
    {
        check_with(
            Split::Code,
            batch,
            len,
            dim,
            dim,
            remove,
            (0, 0),
            seed,
            true,
        );
    }
}

#[test]
fn removing_nothing_keeps_every_token_unchanged() {
    check(Split::Importance, 2, 21, 8, 8, 0, (0, 0), 8);
}

#[test]
fn bad_arguments_are_typed_errors() {
    let ctx = ctx();
    let t = ctx.upload_f32("x", &[10, 4], &[0.0; 40]).unwrap();
    let s = ctx.upload_f32("s", &[1, 10], &[0.0; 10]).unwrap();
    let p = ctx.upload_u32("p", &[1, 10], &[0; 10]).unwrap();
    for (remove, hp, rp) in [(6, 0, 0), (4, 5, 0), (4, 1, 2)] {
        let args = ReduceArgs {
            split: Split::Importance,
            remove,
            hidden_pruned: hp,
            residual_pruned: rp,
        };
        let mut rec = ctx.recorder();
        let err = token_reduce(&mut rec, args, &s, &t, &t, &t, &p).err();
        assert!(
            matches!(err, Some(Error::InvalidInput(_))),
            "{remove} {hp} {rp}: {err:?}"
        );
    }
}
