//! Mamba-2's ops on the GPU against their CPU references: the SSD scan in both forms (chunked
//! with lengths that are not a multiple of the chunk, several groups, carried states; the
//! recurrent step) and the per-group gated RMSNorm.

mod common;

use common::{assert_close, ctx, randn, rng};
use rand::Rng;
use ssmgpu::ops::gated_rmsnorm::{gated_rmsnorm, gated_rmsnorm_ref};
use ssmgpu::ops::ssd_scan::{ssd_chunked, ssd_recurrent, ssd_scan_ref, SsdArgs, SsdRef};
use ssmgpu::ops::Carry;
use ssmgpu::runtime::{MatView, Recorder};
use ssmgpu::Tensor;

#[derive(Clone, Copy, Debug)]
struct Case {
    batch: usize,
    len: usize,
    heads: usize,
    headdim: usize,
    groups: usize,
    nstate: usize,
    chunk: usize,
    dt_limit: (f32, f32),
}

const INF: (f32, f32) = (0.0, f32::INFINITY);

fn case(
    batch: usize,
    len: usize,
    heads: usize,
    headdim: usize,
    groups: usize,
    nstate: usize,
    chunk: usize,
) -> Case {
    Case {
        batch,
        len,
        heads,
        headdim,
        groups,
        nstate,
        chunk,
        dt_limit: INF,
    }
}

/// Random inputs for a case: (x, dt, B, C, A, D, dt_bias).
struct Inputs(Vec<Vec<f32>>);

impl Inputs {
    fn new(c: &Case, seed: u64) -> Self {
        let mut r = rng(seed);
        let rows = c.batch * c.len;
        let gn = c.groups * c.nstate;
        let a: Vec<f32> = (0..c.heads)
            .map(|_| -(r.random::<f32>() * 3.0 - 1.0).exp())
            .collect();
        let dt: Vec<f32> = (0..rows * c.heads)
            .map(|_| r.random::<f32>() * 4.0 - 3.0)
            .collect();
        Inputs(vec![
            randn(&mut r, rows * c.heads * c.headdim, 1.0),
            dt,
            randn(&mut r, rows * gn, 1.0),
            randn(&mut r, rows * gn, 1.0),
            a,
            randn(&mut r, c.heads, 1.0),
            randn(&mut r, c.heads, 1.0),
        ])
    }

    fn reference<'a>(&'a self, c: &Case) -> SsdRef<'a> {
        let v = &self.0;
        SsdRef {
            batch: c.batch,
            len: c.len,
            heads: c.heads,
            headdim: c.headdim,
            groups: c.groups,
            nstate: c.nstate,
            x: &v[0],
            dt: &v[1],
            b: &v[2],
            c: &v[3],
            a: &v[4],
            d: &v[5],
            dt_bias: &v[6],
            dt_limit: c.dt_limit,
        }
    }
}

type Form = fn(&mut Recorder, SsdArgs) -> ssmgpu::Result<Tensor>;

/// Runs one form on the GPU from `initial` (None: zero state, not carried) and checks the
/// output and, when carried, the final state against the reference.
fn check(form: (&str, Form), c: &Case, seed: u64, initial: Option<&[f32]>, capture: bool) {
    let ctx = ctx();
    let inputs = Inputs::new(c, seed);
    let r = inputs.reference(c);
    let state_len = c.batch * c.heads * c.headdim * c.nstate;
    let mut want_state = initial.map_or(vec![0.0; state_len], <[f32]>::to_vec);
    let want = ssd_scan_ref(&r, &mut want_state);
    let tensors = r.upload(ctx).unwrap();
    let state_shape = [c.batch, c.heads, c.headdim, c.nstate];
    let state = ctx
        .upload_f32(
            "state",
            &state_shape,
            initial.unwrap_or(&vec![0.0; state_len]),
        )
        .unwrap();
    let carry = match (initial, capture) {
        (Some(_), _) => Carry::Continue(&state),
        (None, true) => Carry::Capture(&state),
        (None, false) => Carry::None,
    };
    let mut rec = ctx.recorder();
    let y = (form.1)(&mut rec, tensors.args(c.chunk, carry)).unwrap();
    let got = rec.submit_and_read_blocking(&[&y, &state]).unwrap();
    let what = format!(
        "{} {c:?} initial state {} capture {capture}",
        form.0,
        initial.is_some()
    );
    assert_close(&format!("{what}: y"), &got[0], &want, 1e-5, 2e-5);
    if initial.is_some() || capture {
        assert_close(&format!("{what}: state"), &got[1], &want_state, 1e-5, 2e-5);
    }
}

fn cases() -> Vec<Case> {
    vec![
        // The golden model's shape: 37 tokens, chunk 16, 2 groups of 4 heads.
        case(2, 37, 8, 16, 2, 16, 16),
        // One token; a chunk longer than the sequence.
        case(1, 1, 2, 4, 1, 4, 16),
        case(1, 5, 2, 8, 2, 8, 64),
        // State not a multiple of 4, three groups, chunk 1 and 3.
        case(2, 11, 6, 5, 3, 6, 3),
        case(1, 9, 3, 4, 1, 17, 1),
        // headdim past the workgroup size, a short last chunk of a 256-token chunking, and a
        // configured chunk past MAX_CHUNK (runs as 256).
        case(1, 300, 2, 70, 1, 16, 256),
        case(1, 260, 2, 8, 2, 32, 1000),
        // dt clamped to a range.
        Case {
            dt_limit: (0.05, 0.4),
            ..case(2, 40, 4, 8, 2, 16, 16)
        },
    ]
}

#[test]
fn ssd_chunked_matches_reference() {
    let form: (&str, Form) = ("ssd_chunked", ssd_chunked);
    for (i, c) in cases().iter().enumerate() {
        check(form, c, i as u64, None, false);
        check(form, c, i as u64, None, true);
        let mut r = rng(100 + i as u64);
        let initial = randn(&mut r, c.batch * c.heads * c.headdim * c.nstate, 1.0);
        check(form, c, i as u64, Some(&initial), true);
    }
}

#[test]
fn ssd_recurrent_matches_reference() {
    let form: (&str, Form) = ("ssd_recurrent", ssd_recurrent);
    for (i, c) in cases().iter().enumerate().filter(|(_, c)| c.len < 100) {
        check(form, c, i as u64, None, false);
        check(form, c, i as u64, None, true);
        let mut r = rng(200 + i as u64);
        let initial = randn(&mut r, c.batch * c.heads * c.headdim * c.nstate, 1.0);
        check(form, c, i as u64, Some(&initial), true);
    }
}

/// A prefill in the chunked form, then decode steps in the recurrent form, carrying the state:
/// the same outputs as one pass over the whole sequence.
#[test]
fn ssd_chunked_prefill_then_recurrent_steps_equal_one_pass() {
    let ctx = ctx();
    let c = case(1, 21, 4, 8, 2, 16, 8);
    let inputs = Inputs::new(&c, 7);
    let r = inputs.reference(&c);
    let mut zero = vec![0.0; c.heads * c.headdim * c.nstate];
    let want = ssd_scan_ref(&r, &mut zero);
    let state = ctx
        .upload_f32("state", &[1, c.heads, c.headdim, c.nstate], &zero)
        .unwrap();
    let (e, gn) = (c.heads * c.headdim, c.groups * c.nstate);
    let prefill = 17;
    let mut got = Vec::new();
    let mut start = 0;
    for len in std::iter::once(prefill).chain(std::iter::repeat_n(1, c.len - prefill)) {
        let part = |v: &[f32], w: usize| v[start * w..(start + len) * w].to_vec();
        let v = &inputs.0;
        let (x, dt, b, cc) = (
            part(&v[0], e),
            part(&v[1], c.heads),
            part(&v[2], gn),
            part(&v[3], gn),
        );
        let sub = SsdRef {
            len,
            x: &x,
            dt: &dt,
            b: &b,
            c: &cc,
            ..inputs.reference(&c)
        };
        let t = sub.upload(ctx).unwrap();
        let mut rec = ctx.recorder();
        let y = if start == 0 {
            ssd_chunked(&mut rec, t.args(c.chunk, Carry::Capture(&state))).unwrap()
        } else {
            ssd_recurrent(&mut rec, t.args(c.chunk, Carry::Continue(&state))).unwrap()
        };
        got.extend(rec.submit_and_read_blocking(&[&y]).unwrap().remove(0));
        start += len;
    }
    assert_close("prefill + steps", &got, &want, 1e-5, 2e-5);
}

#[test]
fn gated_rmsnorm_matches_reference() {
    let ctx = ctx();
    let mut r = rng(9);
    // (rows, dim, groups, extra gate columns around z)
    for (rows, dim, groups, extra) in [
        (1, 4, 1, 0),
        (37, 128, 2, 200),
        (5, 96, 3, 8),
        (3, 300, 1, 0),
        (7, 64, 8, 5),
    ] {
        let y = randn(&mut r, rows * dim, 2.0);
        let stride = dim + extra;
        let zs = randn(&mut r, rows * stride, 3.0);
        let w = randn(&mut r, dim, 1.0);
        let offset = extra / 2;
        let z: Vec<f32> = (0..rows)
            .flat_map(|i| zs[i * stride + offset..][..dim].to_vec())
            .collect();
        let yt = ctx.upload_f32("y", &[rows, dim], &y).unwrap();
        let zt = ctx.upload_f32("z", &[rows, stride], &zs).unwrap();
        let wt = ctx.upload_f32("w", &[dim], &w).unwrap();
        let view = MatView {
            tensor: &zt,
            rows,
            cols: dim,
            offset,
            stride,
        };
        let mut rec = ctx.recorder();
        let out = gated_rmsnorm(&mut rec, &yt, view, &wt, groups, 1e-5).unwrap();
        let got = rec.submit_and_read_blocking(&[&out]).unwrap().remove(0);
        let want = gated_rmsnorm_ref(&y, &z, &w, groups, 1e-5);
        let what = format!("gated_rmsnorm {rows}x{dim} groups {groups}");
        assert_close(&what, &got, &want, 1e-5, 1e-5);
    }
}

#[test]
fn bad_group_counts_are_typed_errors() {
    let ctx = ctx();
    let y = ctx.upload_f32("y", &[2, 6], &[0.0; 12]).unwrap();
    let w = ctx.upload_f32("w", &[6], &[1.0; 6]).unwrap();
    let mut rec = ctx.recorder();
    let e = gated_rmsnorm(&mut rec, &y, y.mat(), &w, 4, 1e-5).unwrap_err();
    assert!(matches!(e, ssmgpu::Error::InvalidInput(_)), "{e}");
    let c = case(1, 3, 3, 2, 2, 4, 4);
    let inputs = Inputs::new(&case(1, 3, 3, 2, 1, 4, 4), 1);
    let t = inputs
        .reference(&case(1, 3, 3, 2, 1, 4, 4))
        .upload(ctx)
        .unwrap();
    let mut args = t.args(4, Carry::None);
    args.groups = c.groups; // 3 heads in 2 groups
    let e = ssd_chunked(&mut rec, args).unwrap_err();
    assert!(matches!(e, ssmgpu::Error::InvalidInput(_)), "{e}");
}
