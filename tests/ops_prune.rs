//! Token pruning ops on the GPU against their CPU references: top-k selection (ties, NaN,
//! class token, both orders), the row gather of one or two streams and the position map, the
//! importance reduction and the scan's ungated output.

mod common;

use common::{ctx, randn, rng};
use rand::Rng;
use ssmgpu::ops::gather_rows::{gather_rows, gather_rows_ref};
use ssmgpu::ops::importance::{importance, importance_ref, Reduce};
use ssmgpu::ops::topk::{score_topk, topk, topk_ref, KeepOrder, TOPK_MAX_LEN};
use ssmgpu::runtime::DType;
use ssmgpu::{Error, Tensor};

fn read_u32(t: &Tensor) -> Vec<u32> {
    ctx().read_blocking(&[t]).unwrap()[0]
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// Scores with many exact ties, NaN, signed zeros, infinities and subnormals; row 1 is all
/// equal and row 2 all NaN (when the batch has them).
fn scores(r: &mut impl Rng, batch: usize, len: usize) -> Vec<f32> {
    let special = [
        f32::NAN,
        -f32::NAN,
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e-40,
        -1e-40,
        0.5,
        -0.5,
        1.0,
    ];
    let mut s: Vec<f32> = (0..batch * len)
        .map(|_| match r.random_range(0..10) {
            0..4 => special[r.random_range(0..special.len())],
            4..6 => r.random_range(-2..3) as f32,
            _ => r.random::<f32>() * 4.0 - 2.0,
        })
        .collect();
    if batch > 2 {
        s[len..2 * len].fill(0.25);
        s[2 * len..3 * len].fill(f32::NAN);
    }
    s
}

#[test]
fn topk_matches_reference() {
    let ctx = ctx();
    let mut r = rng(31);
    let batch = 4;
    for len in [1, 2, 3, 17, 197, 1000] {
        let s = scores(&mut r, batch, len);
        let st = ctx.upload_f32("scores", &[batch, len], &s).unwrap();
        for keep in [1, len.div_ceil(2), (len * 4 / 5).max(1), len] {
            for cls in [None, Some(len / 2)] {
                for order in [KeepOrder::Ascending, KeepOrder::Score, KeepOrder::Balanced] {
                    let mut rec = ctx.recorder();
                    let m = keep - usize::from(cls.is_some());
                    let sides_too_short = cls.is_some_and(|c| m / 2 > c || m - m / 2 > len - 1 - c);
                    if order == KeepOrder::Balanced && sides_too_short {
                        assert!(topk(&mut rec, &st, keep, cls, order).is_err());
                        continue;
                    }
                    let out = topk(&mut rec, &st, keep, cls, order).unwrap();
                    rec.submit_blocking().unwrap();
                    let want = topk_ref(&s, len, keep, cls, order);
                    assert_eq!(
                        read_u32(&out),
                        want,
                        "topk N {len}, keep {keep}, cls {cls:?}, {order:?}"
                    );
                }
            }
        }
    }
}

/// Scores computed inside the top-k's own dispatch equal the importance reference, and the
/// tokens kept equal the top-k reference over them, for every score mode.
#[test]
fn score_topk_matches_importance_then_topk() {
    let ctx = ctx();
    let mut r = rng(32);
    let (batch, channels) = (3, 24);
    for len in [5, 197] {
        let x: Vec<f32> = (0..batch * len * channels)
            .map(|_| r.random::<f32>() * 4.0 - 2.0)
            .collect();
        let xt = ctx
            .upload_f32("rows", &[batch * len, channels], &x)
            .unwrap();
        for reduce in [
            Reduce::Mean,
            Reduce::ClippedMean,
            Reduce::L2,
            Reduce::Random { seed: 7 },
        ] {
            let keep = len * 4 / 5;
            for (cls, order) in [
                (Some(len / 2), KeepOrder::Balanced),
                (None, KeepOrder::Score),
            ] {
                let mut rec = ctx.recorder();
                let (scores, kept) =
                    score_topk(&mut rec, &xt, batch, reduce, keep, cls, order).unwrap();
                assert_eq!(rec.dispatch_count(), 1);
                let got = rec.submit_and_read_blocking(&[&scores]).unwrap().remove(0);
                let want = importance_ref(&x, channels, reduce);
                common::assert_close(&format!("scores {reduce:?}"), &got, &want, 1e-5, 1e-5);
                // The kept set from the scores the kernel computed: a near-tie rounded
                // differently must not fail the test.
                assert_eq!(
                    read_u32(&kept),
                    topk_ref(&got, len, keep, cls, order),
                    "{reduce:?}, N {len}, {order:?}"
                );
            }
        }
    }
}

#[test]
fn topk_large_sequence() {
    let ctx = ctx();
    let mut r = rng(32);
    let (batch, len) = (2, 4096);
    let s = scores(&mut r, batch, len);
    let st = ctx.upload_f32("scores", &[batch, len], &s).unwrap();
    for order in [KeepOrder::Ascending, KeepOrder::Score, KeepOrder::Balanced] {
        let mut rec = ctx.recorder();
        let out = topk(&mut rec, &st, 3277, Some(2047), order).unwrap();
        rec.submit_blocking().unwrap();
        assert_eq!(
            read_u32(&out),
            topk_ref(&s, len, 3277, Some(2047), order),
            "{order:?}"
        );
    }
}

#[test]
fn topk_reference_follows_the_authors_layout() {
    // Class token at 3 (its 9.0 does not count). The others rank 6 (1.0), 0 (0.9), then the
    // ties at 0.5 by index: 2, 4, 5, and NaN last: 1. Keeping 5 = the class token and 4 others.
    let s = [0.9, f32::NAN, 0.5, 9.0, 0.5, 0.5, 1.0];
    assert_eq!(
        topk_ref(&s, 7, 5, Some(3), KeepOrder::Ascending),
        [0, 2, 3, 4, 6]
    );
    assert_eq!(
        topk_ref(&s, 7, 5, Some(3), KeepOrder::Score),
        [6, 0, 3, 2, 4]
    );
    assert_eq!(topk_ref(&s, 7, 3, None, KeepOrder::Score), [3, 6, 0]);
    // Balanced: the best 2 of 0..3 (0, then 2 by index) and of 4..7 (6, then 4).
    assert_eq!(
        topk_ref(&s, 7, 5, Some(3), KeepOrder::Balanced),
        [0, 2, 3, 4, 6]
    );
    // When the best tokens crowd one side, the authors' layout puts the class token in the
    // middle out of its original order (before 2); balanced keeps it between its neighbours.
    let s = [0.9, 0.8, 0.7, 9.0, 0.1, 0.2, 0.3];
    assert_eq!(
        topk_ref(&s, 7, 5, Some(3), KeepOrder::Balanced),
        [0, 1, 3, 5, 6]
    );
    assert_eq!(
        topk_ref(&s, 7, 5, Some(3), KeepOrder::Ascending),
        [0, 1, 3, 2, 6]
    );
}

#[test]
fn gather_matches_reference() {
    let ctx = ctx();
    let mut r = rng(33);
    let batch = 3;
    for (len, keep, dim) in [
        (1, 1, 1),
        (5, 3, 3),
        (17, 9, 4),
        (197, 157, 64),
        (50, 60, 6),
    ] {
        let x = randn(&mut r, batch * len * dim, 1.0);
        let y = randn(&mut r, batch * len * dim, 1.0);
        let pos: Vec<u32> = (0..batch * len).map(|_| r.random_range(0..1000)).collect();
        // Any indices below `len`, repeats allowed.
        let idx: Vec<u32> = (0..batch * keep)
            .map(|_| r.random_range(0..len as u32))
            .collect();
        let xt = ctx.upload_f32("x", &[batch * len, dim], &x).unwrap();
        let yt = ctx.upload_f32("y", &[batch * len, dim], &y).unwrap();
        let pt = ctx.upload_u32("pos", &[batch, len], &pos).unwrap();
        let it = ctx.upload_u32("idx", &[batch, keep], &idx).unwrap();
        let want_x = gather_rows_ref(&idx, keep, &x, len, dim);
        let want_y = gather_rows_ref(&idx, keep, &y, len, dim);
        let want_pos = gather_rows_ref(&idx, keep, &pos, len, 1);
        let what = format!("gather N {len}, keep {keep}, D {dim}");
        for (second, positions) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut rec = ctx.recorder();
            let g = gather_rows(
                &mut rec,
                &it,
                &xt,
                second.then_some(&yt),
                positions.then_some(&pt),
            )
            .unwrap();
            rec.submit_blocking().unwrap();
            assert_eq!(g.x.shape(), [batch * keep, dim]);
            assert_eq!(read_u32(&g.x), bits(&want_x), "{what}: x");
            assert_eq!(g.y.is_some(), second);
            if let Some(gy) = &g.y {
                assert_eq!(read_u32(gy), bits(&want_y), "{what}: y");
            }
            assert_eq!(g.positions.is_some(), positions);
            if let Some(gp) = &g.positions {
                assert_eq!(gp.shape(), [batch, keep]);
                assert_eq!(gp.dtype(), DType::U32);
                assert_eq!(read_u32(gp), want_pos, "{what}: positions");
            }
        }
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn keeping_every_token_is_the_identity() {
    let ctx = ctx();
    let mut r = rng(34);
    let (batch, dim) = (2, 8);
    for len in [1, 2, 50, 197] {
        let s = scores(&mut r, batch, len);
        let x = randn(&mut r, batch * len * dim, 1.0);
        let y = randn(&mut r, batch * len * dim, 1.0);
        let pos: Vec<u32> = (0..batch * len).map(|i| (i % len) as u32).collect();
        let st = ctx.upload_f32("scores", &[batch, len], &s).unwrap();
        let xt = ctx.upload_f32("x", &[batch * len, dim], &x).unwrap();
        let yt = ctx.upload_f32("y", &[batch * len, dim], &y).unwrap();
        let pt = ctx.upload_u32("pos", &[batch, len], &pos).unwrap();
        // Vim's class token sits at M / 2 of M = N - 1 patches.
        for cls in [None, Some((len - 1) / 2)] {
            let mut rec = ctx.recorder();
            let kept = topk(&mut rec, &st, len, cls, KeepOrder::Ascending).unwrap();
            let g = gather_rows(&mut rec, &kept, &xt, Some(&yt), Some(&pt)).unwrap();
            rec.submit_blocking().unwrap();
            let what = format!("N {len}, cls {cls:?}");
            let identity: Vec<u32> = (0..batch).flat_map(|_| 0..len as u32).collect();
            assert_eq!(read_u32(&kept), identity, "{what}");
            assert_eq!(read_u32(&g.x), bits(&x), "{what}: x");
            assert_eq!(g.y.map(|t| read_u32(&t)), Some(bits(&y)), "{what}: y");
            assert_eq!(g.positions.map(|t| read_u32(&t)), Some(pos.clone()));
        }
    }
}

#[test]
fn bad_arguments_are_typed_errors() {
    let ctx = ctx();
    let st = ctx.upload_f32("scores", &[2, 5], &[0.0; 10]).unwrap();
    let flat = ctx.upload_f32("scores", &[10], &[0.0; 10]).unwrap();
    let ids = ctx.upload_u32("ids", &[2, 5], &[0; 10]).unwrap();
    let long = ctx.upload_f32("scores", &[1, TOPK_MAX_LEN + 1], &[0.0; TOPK_MAX_LEN + 1]);
    let mut rec = ctx.recorder();
    let topk_errors = [
        topk(&mut rec, &st, 0, None, KeepOrder::Ascending),
        topk(&mut rec, &st, 6, None, KeepOrder::Ascending),
        topk(&mut rec, &st, 3, Some(5), KeepOrder::Score),
        topk(&mut rec, &flat, 3, None, KeepOrder::Score),
        topk(&mut rec, &ids, 3, None, KeepOrder::Score),
        topk(&mut rec, &long.unwrap(), 3, None, KeepOrder::Score),
    ];
    for e in topk_errors {
        assert!(matches!(e, Err(Error::InvalidInput(_))), "{e:?}");
    }
    let x = ctx.upload_f32("x", &[10, 4], &[0.0; 40]).unwrap();
    let odd = ctx.upload_f32("x", &[9, 4], &[0.0; 36]).unwrap();
    let pos_bad = ctx.upload_u32("pos", &[2, 4], &[0; 8]).unwrap();
    let gather_errors = [
        gather_rows(&mut rec, &st, &x, None, None).map(|g| g.x),
        gather_rows(&mut rec, &ids, &odd, None, None).map(|g| g.x),
        gather_rows(&mut rec, &ids, &x, Some(&odd), None).map(|g| g.x),
        gather_rows(&mut rec, &ids, &x, None, Some(&pos_bad)).map(|g| g.x),
        gather_rows(&mut rec, &flat, &x, None, None).map(|g| g.x),
    ];
    for e in gather_errors {
        assert!(matches!(e, Err(Error::InvalidInput(_))), "{e:?}");
    }
    // Nothing was recorded, so the submission is clean.
    assert_eq!(rec.dispatch_count(), 0);
    rec.submit_blocking().unwrap();
}

#[test]
fn importance_matches_reference() {
    let ctx = ctx();
    let mut r = rng(31);
    for (batch, len, channels) in [(1, 1, 1), (2, 17, 128), (3, 197, 384), (1, 5, 70)] {
        let x = randn(&mut r, batch * len * channels, 1.0);
        let xt = ctx.upload_f32("x", &[batch * len, channels], &x).unwrap();
        for reduce in [
            Reduce::Mean,
            Reduce::ClippedMean,
            Reduce::L2,
            Reduce::Random { seed: 7 },
        ] {
            let mut rec = ctx.recorder();
            let s = importance(&mut rec, &xt, batch, reduce).unwrap();
            assert_eq!(s.shape(), [batch, len]);
            let got = rec.submit_and_read_blocking(&[&s]).unwrap().remove(0);
            let want = importance_ref(&x, channels, reduce);
            common::assert_close(
                &format!("{reduce:?} {batch}x{len}x{channels}"),
                &got,
                &want,
                1e-5,
                1e-5,
            );
            if let Reduce::Random { .. } = reduce {
                assert!(got.iter().all(|v| (0.0..1.0).contains(v)));
            }
        }
    }
}

/// The scan's ungated output (pruning importance) is the reference scan without the gate,
/// clipped at zero, and a second direction adds onto it.
#[test]
fn scan_ungated_output_matches_reference() {
    use ssmgpu::ops::scan::{selective_scan, selective_scan_ref, ScanRef, Ungated};
    use ssmgpu::ops::Carry;
    for ctx in common::contexts() {
        let mut r = rng(32);
        let (batch, len, channels, nstate) = (2, 19, 70, 16);
        let rows = batch * len;
        let u = randn(&mut r, rows * channels, 1.0);
        let delta = randn(&mut r, rows * channels, 1.0);
        let b = randn(&mut r, rows * nstate, 1.0);
        let c = randn(&mut r, rows * nstate, 1.0);
        let a: Vec<f32> = randn(&mut r, channels * nstate, 1.0)
            .iter()
            .map(|v| -(v.abs() + 0.5))
            .collect();
        let d = randn(&mut r, channels, 1.0);
        let z = randn(&mut r, rows * channels, 2.0);
        let inputs = |z: Option<&'static [f32]>, reverse| ScanRef {
            batch,
            len,
            channels,
            nstate,
            u: &u,
            delta: &delta,
            b: &b,
            c: &c,
            a: &a,
            d: Some(&d),
            dt_bias: None,
            z,
            softplus: true,
            reverse,
            gap_positions: None,
        };
        let z: &'static [f32] = Box::leak(z.into_boxed_slice());
        let fwd = inputs(Some(z), false).upload(ctx).unwrap();
        let bwd = inputs(Some(z), true).upload(ctx).unwrap();
        for clip in [false, true] {
            let out = ctx
                .upload_f32("ungated", &[rows, channels], &vec![0.0; rows * channels])
                .unwrap();
            let mut rec = ctx.recorder();
            let mut args = fwd.args(Carry::None);
            args.ungated = Some(Ungated {
                tensor: &out,
                clip,
                add: false,
            });
            selective_scan(&mut rec, args).unwrap();
            let mut args = bwd.args(Carry::None);
            args.ungated = Some(Ungated {
                tensor: &out,
                clip,
                add: true,
            });
            selective_scan(&mut rec, args).unwrap();
            let got = rec.submit_and_read_blocking(&[&out]).unwrap().remove(0);
            let zeros = || vec![0.0; batch * channels * nstate];
            let f = selective_scan_ref(&inputs(None, false), &mut zeros());
            let b = selective_scan_ref(&inputs(None, true), &mut zeros());
            let keep = |v: f32| if clip { v.max(0.0) } else { v };
            let want: Vec<f32> = f.iter().zip(&b).map(|(x, y)| keep(*x) + keep(*y)).collect();
            common::assert_close(&format!("ungated clip {clip}"), &got, &want, 1e-5, 1e-4);
        }
    }
}
