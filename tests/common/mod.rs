//! Shared test helpers: one GPU context per test binary, golden-data lookup, comparisons.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use rand::{Rng, SeedableRng};
use ssmgpu::loader::SafetensorsFile;
use ssmgpu::Context;

/// The backend the tests run on: wgpu, or `SSMGPU_TEST_BACKEND` (`cuda`, `cuda-host`; a build
/// with `--features cuda`), so one suite checks every backend.
pub fn options() -> ssmgpu::ContextOptions {
    let backend = match std::env::var("SSMGPU_TEST_BACKEND") {
        Ok(name) if !name.is_empty() => name
            .parse()
            .unwrap_or_else(|e| panic!("SSMGPU_TEST_BACKEND: {e}")),
        _ => ssmgpu::Backend::Wgpu,
    };
    ssmgpu::ContextOptions {
        backend,
        ..Default::default()
    }
}

fn context(options: ssmgpu::ContextOptions) -> Context {
    Context::with_options_blocking(options).unwrap_or_else(|e| {
        panic!("GPU tests need an adapter (on Debian: apt-get install mesa-vulkan-drivers libvulkan1): {e}")
    })
}

/// The GPU context; a machine without an adapter fails here, loudly (never a silent skip).
pub fn ctx() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| context(options()))
}

/// A second context that runs the portable kernels (no subgroups), so both variants are tested.
/// A context that binds at most `bytes` per storage buffer, so vocabulary tables split into
/// several [`ssmgpu::runtime::RowShards`].
pub fn ctx_with_binding_limit(bytes: u64) -> Context {
    context(ssmgpu::ContextOptions {
        max_binding_bytes: Some(bytes),
        ..options()
    })
}

pub fn ctx_portable() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| {
        context(ssmgpu::ContextOptions {
            disable_subgroups: true,
            ..options()
        })
    })
}

/// Subgroup kernels without their 64-bit integer variants, so both load paths are tested.
pub fn ctx_without_int64() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| {
        context(ssmgpu::ContextOptions {
            disable_int64: true,
            ..options()
        })
    })
}

/// The default context and, when it uses subgroup kernels, the portable one too.
pub fn contexts() -> Vec<&'static Context> {
    let mut v = vec![ctx()];
    if ctx().uses_subgroups() {
        v.push(ctx_portable());
    }
    v
}

/// `../shared/golden` when this checkout sits beside it, else the copy in `tests/data/golden`.
pub fn golden_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared/golden");
    if shared.join("README.md").exists() {
        shared
    } else {
        root.join("tests/data/golden")
    }
}

pub fn golden(rel: &str) -> SafetensorsFile {
    SafetensorsFile::open(golden_dir().join(rel))
        .unwrap_or_else(|e| panic!("golden file {rel}: {e}"))
}

pub fn f32s(file: &SafetensorsFile, name: &str) -> (Vec<usize>, Vec<f32>) {
    file.f32(name, None).unwrap_or_else(|e| panic!("{e}"))
}

/// Max |got - want| <= atol + rtol * max|want|; prints the figure either way.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let mut worst = (0.0f32, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        assert!(!g.is_nan(), "{what}: NaN at {i}");
        if d > worst.0 {
            worst = (d, i);
        }
    }
    let tol = atol + rtol * scale;
    eprintln!(
        "{what}: max abs err {:.3e} (at {}), tolerance {tol:.3e}",
        worst.0, worst.1
    );
    assert!(
        worst.0 <= tol,
        "{what}: max abs err {} at {} (got {}, want {}) > {tol}",
        worst.0,
        worst.1,
        got[worst.1],
        want[worst.1]
    );
    worst.0
}

pub fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

pub fn randn(rng: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale)
        .collect()
}

/// `[b, c, l]` (mamba_ssm's layout) to `[b, l, c]` (the engine's token-major layout).
pub fn bcl_to_blc(x: &[f32], b: usize, c: usize, l: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for bi in 0..b {
        for ci in 0..c {
            for li in 0..l {
                out[(bi * l + li) * c + ci] = x[(bi * c + ci) * l + li];
            }
        }
    }
    out
}

/// For references that overflow (golden `no_extras` runs the scan without softplus, so dt < 0
/// grows the state past f32): the same NaN / ±inf pattern, and finite values within
/// `rtol * |want|` element by element.
pub fn assert_close_elementwise(what: &str, got: &[f32], want: &[f32], rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = 0.0f32;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if w.is_nan() {
            assert!(g.is_nan(), "{what}[{i}]: got {g}, want NaN");
        } else if w.is_infinite() {
            assert_eq!(g, w, "{what}[{i}]");
        } else {
            let rel = (g - w).abs() / w.abs().max(1e-30);
            worst = worst.max(rel.min((g - w).abs()));
            assert!(
                (g - w).abs() <= 1e-5 + rtol * w.abs(),
                "{what}[{i}]: got {g}, want {w}"
            );
        }
    }
    eprintln!("{what}: finite values within relative {worst:.3e}, non-finite pattern equal");
}

/// Runs the `ssmgpu` binary on wgpu; returns (success, stdout, stderr). A panic is always a
/// failure. The CLI tests check the commands, on one backend: the suite's library tests check
/// each backend's kernels (the CLI's whole-split runs would take hours on `cuda-host`).
pub fn cli(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ssmgpu"))
        .args(["--backend", "wgpu"])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    (out.status.success(), stdout, stderr)
}

/// Each `[len, channels]` sequence of a `[batch, len, channels]` tensor in reverse token order.
pub fn flip_tokens(x: &[f32], batch: usize, len: usize, channels: usize) -> Vec<f32> {
    (0..batch)
        .flat_map(|b| (0..len).rev().map(move |t| (b * len + t) * channels))
        .flat_map(|start| x[start..start + channels].iter().copied())
        .collect()
}

/// Random inputs of PlainMamba's 2-D scan over `batch` images of `len` tokens, run on the GPU
/// and on the CPU reference.
pub struct ZigzagCase {
    pub batch: usize,
    pub len: usize,
    pub channels: usize,
    pub nstate: usize,
    data: [Vec<f32>; 8],
    pub direction_bs: Vec<f32>,
}

impl ZigzagCase {
    pub fn random(
        r: &mut impl Rng,
        batch: usize,
        len: usize,
        channels: usize,
        nstate: usize,
    ) -> Self {
        let rows = batch * len;
        let mut v = |n, scale| randn(r, n, scale);
        let (u, delta, b, c) = (
            v(rows * channels, 1.0),
            v(rows * channels, 1.0),
            v(rows * nstate, 1.0),
            v(rows * nstate, 1.0),
        );
        // A < 0, as -exp(A_log) is.
        let a = v(channels * nstate, 1.0)
            .iter()
            .map(|x| -(x.abs() + 0.1))
            .collect();
        let (d, bias, z) = (v(channels, 1.0), v(channels, 1.0), v(rows * channels, 2.0));
        ZigzagCase {
            batch,
            len,
            channels,
            nstate,
            data: [u, delta, b, c, a, d, bias, z],
            direction_bs: v(ssmgpu::ops::zigzag_scan::DIRECTIONS * nstate, 0.5),
        }
    }

    pub fn scan_ref(&self) -> ssmgpu::ops::scan::ScanRef<'_> {
        let [u, delta, b, c, a, d, bias, z] = &self.data;
        ssmgpu::ops::scan::ScanRef {
            batch: self.batch,
            len: self.len,
            channels: self.channels,
            nstate: self.nstate,
            u,
            delta,
            b,
            c,
            a,
            d: Some(d),
            dt_bias: Some(bias),
            z: Some(z),
            softplus: true,
            reverse: false,
            gap_positions: None,
        }
    }

    /// The GPU scan with `table` (one [`ScanOrders::table`] for every image, or each image's
    /// in turn); returns the output and, with `clip`, the ungated sum.
    ///
    /// [`ScanOrders::table`]: ssmgpu::ops::zigzag_scan::ScanOrders::table
    pub fn gpu(
        &self,
        ctx: &Context,
        table: &[u32],
        decay: bool,
        clip: Option<bool>,
    ) -> (Vec<f32>, Option<Vec<f32>>) {
        use ssmgpu::ops::zigzag_scan::{pack_direction_bs, zigzag_scan, ZigzagArgs, DIRECTIONS};
        let inputs = self.scan_ref();
        let on_gpu = inputs.upload(ctx).unwrap();
        let args = on_gpu.args(ssmgpu::ops::Carry::None);
        let dir_b = ctx
            .upload_f32(
                "direction_bs",
                &[DIRECTIONS, 16],
                &pack_direction_bs(&self.direction_bs, self.nstate),
            )
            .unwrap();
        let table = ctx.upload_u32("orders", &[table.len()], table).unwrap();
        let rows = self.batch * self.len;
        let ungated = ctx
            .alloc(
                "ungated",
                &[rows, self.channels],
                ssmgpu::runtime::DType::F32,
            )
            .unwrap();
        let mut rec = ctx.recorder();
        let y = zigzag_scan(
            &mut rec,
            ZigzagArgs {
                u: args.u,
                delta: match args.delta {
                    ssmgpu::ops::scan::Delta::Values(delta) => delta,
                    ssmgpu::ops::scan::Delta::Projected { .. } => unreachable!("uploaded values"),
                },
                b: args.b,
                c: args.c,
                params: args.params,
                direction_bs: &dir_b,
                orders: &table,
                z: args.z.unwrap(),
                batch: self.batch,
                decay,
                ungated: clip.map(|clip| ssmgpu::ops::scan::Ungated {
                    tensor: &ungated,
                    clip,
                    add: false,
                }),
            },
        )
        .unwrap();
        let mut got = rec.submit_and_read_blocking(&[&y, &ungated]).unwrap();
        let ungated = got.pop();
        (got.remove(0), ungated.filter(|_| clip.is_some()))
    }
}

/// A whole LM against transformers' outputs in `golden/{case}/reference.safetensors`: logits
/// and every hidden state within `atol` absolute, and the greedy generation exactly.
pub fn check_lm_golden<M: ssmgpu::models::lm::CausalLm>(
    ctx: &Context,
    case: &str,
    model: &M,
    n_layer: usize,
    atol: f32,
) {
    let reference = golden(&format!("{case}/reference.safetensors"));
    let (shape, ids) = reference.ints("input_ids").unwrap();
    let (logits, hidden) = pollster::block_on(model.run(ctx, &ids, shape[0], true)).unwrap();
    let want = f32s(&reference, "logits").1;
    let err = assert_close(&format!("{case} logits"), &logits, &want, atol, 0.0);
    eprintln!("{case}: logits max abs err {err:.2e}");
    assert_eq!(hidden.len(), n_layer + 1);
    for (i, h) in hidden.iter().enumerate() {
        let want = f32s(&reference, &format!("hidden_states.{i}")).1;
        assert_close(&format!("{case} hidden_states.{i}"), h, &want, atol, 0.0);
    }
    let prompt = reference.ints("generate.prompt_ids").unwrap().1;
    let expected = reference.ints("generate.output_ids").unwrap().1;
    let new = expected.len() - prompt.len();
    let got = pollster::block_on(model.generate(ctx, &prompt, new, None, None)).unwrap();
    let got: Vec<i64> = prompt
        .iter()
        .copied()
        .chain(got.iter().map(|&t| t as i64))
        .collect();
    assert_eq!(got, expected, "{case}: greedy generation");
}

/// The tiny Mamba-1 golden model, edited by the bad-input tests.
pub fn tiny() -> PathBuf {
    golden_dir().join("mamba1_tiny")
}

pub type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

pub fn tiny_tensors() -> Tensors {
    let f = ssmgpu::loader::SafetensorsFile::open(tiny().join("model.safetensors")).unwrap();
    f.names()
        .into_iter()
        .map(|n| {
            let (shape, data) = f.f32(&n, None).unwrap();
            (n, shape, data)
        })
        .collect()
}

/// A model folder with the tiny model's config (edited) and the given weights.
pub fn model_dir(
    tensors: &Tensors,
    edit_config: impl FnOnce(&mut serde_json::Value),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(tiny().join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit_config(&mut config);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    ssmgpu::loader::write_f32(&dir.path().join("model.safetensors"), tensors).unwrap();
    dir
}
