//! The scan kernel against mamba_ssm's `selective_scan_ref` and `selective_state_update_ref`
//! outputs (golden/scan). Tolerance from golden/README: 1e-4 * max|want| + 1e-5.

mod common;

use common::{assert_close, assert_close_elementwise, bcl_to_blc, ctx, f32s, golden};
use ssmgpu::loader::SafetensorsFile;
use ssmgpu::ops::scan::{selective_scan, ScanRef};
use ssmgpu::ops::Carry;

const ATOL: f32 = 1e-5;
const RTOL: f32 = 1e-4;

/// Host inputs in the engine's token-major layout, kept alive for a `ScanRef` to borrow.
struct Inputs {
    dims: [usize; 4],
    u: Vec<f32>,
    delta: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    a: Vec<f32>,
    d: Option<Vec<f32>>,
    bias: Option<Vec<f32>>,
    z: Option<Vec<f32>>,
    softplus: bool,
}

impl Inputs {
    fn scan_ref(&self) -> ScanRef<'_> {
        let [batch, len, channels, nstate] = self.dims;
        ScanRef {
            batch,
            len,
            channels,
            nstate,
            u: &self.u,
            delta: &self.delta,
            b: &self.b,
            c: &self.c,
            a: &self.a,
            d: self.d.as_deref(),
            dt_bias: self.bias.as_deref(),
            z: self.z.as_deref(),
            softplus: self.softplus,
            reverse: false,
            gap_positions: None,
        }
    }
}

/// Run the kernel with the state carried in (`initial`) or captured from zero.
fn run(f: &Inputs, initial: Option<&[f32]>) -> (Vec<f32>, Vec<f32>) {
    let ctx = ctx();
    let [batch, _, channels, nstate] = f.dims;
    let zeros = vec![0.0; batch * channels * nstate];
    let st = ctx
        .upload_f32(
            "state",
            &[batch, channels, nstate],
            initial.unwrap_or(&zeros),
        )
        .unwrap();
    let on_gpu = f.scan_ref().upload(ctx).unwrap();
    let carry = if initial.is_some() {
        Carry::Continue(&st)
    } else {
        Carry::Capture(&st)
    };
    let mut rec = ctx.recorder();
    let y = selective_scan(&mut rec, on_gpu.args(carry)).unwrap();
    let mut got = rec.submit_and_read_blocking(&[&y, &st]).unwrap();
    let state = got.remove(1);
    (got.remove(0), state)
}

fn flag(f: &SafetensorsFile, key: &str) -> bool {
    f.metadata().get(key).map(String::as_str) == Some("true")
}

fn run_case(case: &str) {
    let f = golden(&format!("scan/{case}.safetensors"));
    let (ushape, u) = f32s(&f, "u");
    let (b, e, l) = (ushape[0], ushape[1], ushape[2]);
    let n = f32s(&f, "A").0[1];
    let opt = |name: &str| f.contains(name).then(|| f32s(&f, name).1);
    let inputs = Inputs {
        dims: [b, l, e, n],
        u: bcl_to_blc(&u, b, e, l),
        delta: bcl_to_blc(&f32s(&f, "delta").1, b, e, l),
        b: bcl_to_blc(&f32s(&f, "B").1, b, n, l),
        c: bcl_to_blc(&f32s(&f, "C").1, b, n, l),
        a: f32s(&f, "A").1,
        d: opt("D"),
        bias: opt("delta_bias"),
        z: opt("z").map(|z| bcl_to_blc(&z, b, e, l)),
        softplus: flag(&f, "delta_softplus"),
    };
    let (out, state) = run(&inputs, None);
    let want = bcl_to_blc(&f32s(&f, "out").1, b, e, l);
    let want_state = f32s(&f, "last_state").1;
    if want.iter().chain(&want_state).all(|v| v.is_finite()) {
        assert_close(&format!("scan/{case} out"), &out, &want, ATOL, RTOL);
        assert_close(
            &format!("scan/{case} last_state"),
            &state,
            &want_state,
            ATOL,
            RTOL,
        );
    } else {
        assert_close_elementwise(&format!("scan/{case} out"), &out, &want, 1e-3);
        assert_close_elementwise(
            &format!("scan/{case} last_state"),
            &state,
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
    let f = golden("scan/step.safetensors");
    let (sshape, state) = f32s(&f, "state");
    let (b, e, n) = (sshape[0], sshape[1], sshape[2]);
    let inputs = Inputs {
        dims: [b, 1, e, n],
        u: f32s(&f, "x").1,
        delta: f32s(&f, "dt").1,
        b: f32s(&f, "B").1,
        c: f32s(&f, "C").1,
        a: f32s(&f, "A").1,
        d: Some(f32s(&f, "D").1),
        bias: Some(f32s(&f, "dt_bias").1),
        z: Some(f32s(&f, "z").1),
        softplus: flag(&f, "dt_softplus"),
    };
    let (out, new_state) = run(&inputs, Some(&state));
    assert_close("scan/step out", &out, &f32s(&f, "out").1, ATOL, RTOL);
    assert_close(
        "scan/step new_state",
        &new_state,
        &f32s(&f, "new_state").1,
        ATOL,
        RTOL,
    );
}
