//! The scan kernel against mamba_ssm's `selective_scan_ref` and `selective_state_update_ref`
//! outputs (golden/scan). Tolerance from golden/README: 1e-4 * max|want| + 1e-5.

mod common;

use common::{assert_close, assert_close_elementwise, bcl_to_blc, ctx, f32s, golden};
use ssmgpu::ops::scan::{pack_ssm_params, selective_scan, ScanArgs};
use ssmgpu::ops::Carry;

const ATOL: f32 = 1e-5;
const RTOL: f32 = 1e-4;

fn run_case(case: &str) {
    let ctx = ctx();
    let f = golden(&format!("scan/{case}.safetensors"));
    let (ushape, u) = f32s(&f, "u");
    let (b, e, l) = (ushape[0], ushape[1], ushape[2]);
    let n = f32s(&f, "A").0[1];
    let softplus = f.metadata().get("delta_softplus").map(String::as_str) == Some("true");
    let opt = |name: &str| f.contains(name).then(|| f32s(&f, name).1);
    let (d, z, bias) = (opt("D"), opt("z"), opt("delta_bias"));
    let u = bcl_to_blc(&u, b, e, l);
    let delta = bcl_to_blc(&f32s(&f, "delta").1, b, e, l);
    // B and C [b, n, l] -> one [b * l, 2n] tensor, as the model's x_proj output holds them.
    let bm = bcl_to_blc(&f32s(&f, "B").1, b, n, l);
    let cm = bcl_to_blc(&f32s(&f, "C").1, b, n, l);
    let bc: Vec<f32> = bm
        .chunks(n)
        .zip(cm.chunks(n))
        .flat_map(|(x, y)| [x, y].concat())
        .collect();
    let a = f32s(&f, "A").1;
    let params = pack_ssm_params(&a, d.as_deref(), bias.as_deref(), e);

    let ut = ctx.upload_f32("u", &[b * l, e], &u).unwrap();
    let dt = ctx.upload_f32("delta", &[b * l, e], &delta).unwrap();
    let bct = ctx.upload_f32("bc", &[b * l, 2 * n], &bc).unwrap();
    let pt = ctx.upload_f32("ssm", &[params.len()], &params).unwrap();
    let zt = z.map(|z| {
        ctx.upload_f32("z", &[b * l, e], &bcl_to_blc(&z, b, e, l))
            .unwrap()
    });
    let st = ctx
        .upload_f32("state", &[b, e, n], &vec![0.0; b * e * n])
        .unwrap();
    let mut rec = ctx.recorder();
    let y = selective_scan(
        &mut rec,
        ScanArgs {
            u: ut.mat(),
            delta: dt.mat(),
            b: bct.cols(0, n),
            c: bct.cols(n, n),
            params: &pt,
            z: zt.as_ref().map(|z| z.mat()),
            batch: b,
            softplus,
            reverse: false,
            state: Carry::Capture(&st),
        },
    )
    .unwrap();
    let got = rec.submit_and_read_blocking(&[&y, &st]).unwrap();
    let want = bcl_to_blc(&f32s(&f, "out").1, b, e, l);
    let want_state = f32s(&f, "last_state").1;
    if want.iter().chain(&want_state).all(|v| v.is_finite()) {
        assert_close(&format!("scan/{case} out"), &got[0], &want, ATOL, RTOL);
        assert_close(
            &format!("scan/{case} last_state"),
            &got[1],
            &want_state,
            ATOL,
            RTOL,
        );
    } else {
        assert_close_elementwise(&format!("scan/{case} out"), &got[0], &want, 1e-3);
        assert_close_elementwise(
            &format!("scan/{case} last_state"),
            &got[1],
            &want_state,
            1e-3,
        );
    }
}

#[test]
fn scan_basic() {
    run_case("basic");
}

#[test]
fn scan_no_extras() {
    run_case("no_extras");
}

#[test]
fn scan_vim_ti_shape() {
    run_case("vim_ti");
}

#[test]
fn scan_long() {
    run_case("long");
}

/// One decode step (`selective_state_update_ref`) is the scan kernel over one token with the
/// state carried in and out.
#[test]
fn scan_decode_step() {
    let ctx = ctx();
    let f = golden("scan/step.safetensors");
    let (sshape, state) = f32s(&f, "state");
    let (b, e, n) = (sshape[0], sshape[1], sshape[2]);
    let bc: Vec<f32> = f32s(&f, "B")
        .1
        .chunks(n)
        .zip(f32s(&f, "C").1.chunks(n))
        .flat_map(|(x, y)| [x, y].concat())
        .collect();
    let params = pack_ssm_params(
        &f32s(&f, "A").1,
        Some(&f32s(&f, "D").1),
        Some(&f32s(&f, "dt_bias").1),
        e,
    );
    let xt = ctx.upload_f32("x", &[b, e], &f32s(&f, "x").1).unwrap();
    let dt = ctx.upload_f32("dt", &[b, e], &f32s(&f, "dt").1).unwrap();
    let zt = ctx.upload_f32("z", &[b, e], &f32s(&f, "z").1).unwrap();
    let bct = ctx.upload_f32("bc", &[b, 2 * n], &bc).unwrap();
    let pt = ctx.upload_f32("ssm", &[params.len()], &params).unwrap();
    let st = ctx.upload_f32("state", &[b, e, n], &state).unwrap();
    let mut rec = ctx.recorder();
    let y = selective_scan(
        &mut rec,
        ScanArgs {
            u: xt.mat(),
            delta: dt.mat(),
            b: bct.cols(0, n),
            c: bct.cols(n, n),
            params: &pt,
            z: Some(zt.mat()),
            batch: b,
            softplus: f.metadata().get("dt_softplus").map(String::as_str) == Some("true"),
            reverse: false,
            state: Carry::Continue(&st),
        },
    )
    .unwrap();
    let got = rec.submit_and_read_blocking(&[&y, &st]).unwrap();
    assert_close("scan/step out", &got[0], &f32s(&f, "out").1, ATOL, RTOL);
    assert_close(
        "scan/step new_state",
        &got[1],
        &f32s(&f, "new_state").1,
        ATOL,
        RTOL,
    );
}
