//! Op benchmarks: each GPU kernel against its CPU reference in the same run, with the
//! device ceilings it is measured against.

use std::time::{Duration, Instant};

use crate::error::Result;
use crate::loader::serialize_f32;
use crate::models::lm::LanguageModel;
use crate::models::ModelDir;
use crate::ops::matmul::{matmul, matmul_ref};
use crate::ops::scan::{selective_scan, selective_scan_ref, ScanRef};
use crate::ops::Carry;
use crate::prune::reduce::Reduction;
use crate::runtime::{Context, Recorder, Tensor};

#[derive(Clone, Debug, serde::Serialize)]
pub struct OpBench {
    pub name: String,
    pub shape: String,
    pub gpu_ms: f64,
    pub cpu_ref_ms: f64,
    /// cpu_ref_ms / gpu_ms
    pub speedup_vs_cpu_ref: f64,
    /// Work done: flops for a matmul, exps for a scan.
    pub work: f64,
    pub work_unit: &'static str,
    pub gpu_rate: f64,
}

/// Deterministic pseudo-random values in [-1, 1) (no RNG dependency in the library).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

/// Median ms of one op: `per_submit` copies recorded into one submission so that the
/// per-submission cost is amortised, `reps` submissions after a warm-up.
fn time_gpu(
    ctx: &Context,
    reps: usize,
    per_submit: usize,
    mut record: impl FnMut(&mut Recorder) -> Result<Tensor>,
) -> Result<f64> {
    let mut times = Vec::with_capacity(reps);
    // wgpu runs the recorded commands at submit; CUDA launches them as they are recorded.
    let launches_at_record = ctx.backend() != crate::runtime::Backend::Wgpu;
    for i in 0..=reps {
        let record_start = Instant::now();
        let mut rec = ctx.recorder();
        let mut last = None;
        for _ in 0..per_submit {
            last = Some(record(&mut rec)?);
        }
        let start = if launches_at_record {
            record_start
        } else {
            Instant::now()
        };
        // `submit` waits for the GPU to finish on native targets.
        pollster::block_on(rec.submit())?;
        drop(last);
        if i > 0 {
            times.push(start.elapsed() / per_submit as u32);
        }
    }
    Ok(median(times))
}

fn time_cpu(mut f: impl FnMut()) -> f64 {
    f();
    let times = (0..3)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    median(times)
}

/// The scan at (batch, channels, len, state) with D, z, dt bias and softplus.
pub fn bench_scan(
    ctx: &Context,
    batch: usize,
    channels: usize,
    len: usize,
    nstate: usize,
) -> Result<OpBench> {
    let rows = batch * len;
    let u = values(rows * channels, 1);
    let delta: Vec<f32> = values(rows * channels, 2)
        .iter()
        .map(|v| v * 0.5 - 1.0)
        .collect();
    let b = values(rows * nstate, 3);
    let c = values(rows * nstate, 8);
    let a: Vec<f32> = values(channels * nstate, 4)
        .iter()
        .map(|v| -(v.abs() + 0.5))
        .collect();
    let d = values(channels, 5);
    let bias = values(channels, 6);
    let z = values(rows * channels, 7);
    let inputs = ScanRef {
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
        dt_bias: Some(&bias),
        z: Some(&z),
        softplus: true,
        reverse: false,
        gap_positions: None,
    };
    let on_gpu = inputs.upload(ctx)?;
    let gpu_ms = time_gpu(ctx, 5, 4, |rec| {
        selective_scan(rec, on_gpu.args(Carry::None))
    })?;
    let cpu_ref_ms = time_cpu(|| {
        let mut state = vec![0.0; batch * channels * nstate];
        std::hint::black_box(selective_scan_ref(&inputs, &mut state));
    });
    let exps = (batch * channels * len * nstate) as f64;
    Ok(OpBench {
        name: "selective_scan".into(),
        shape: format!("batch {batch}, channels {channels}, len {len}, state {nstate}"),
        gpu_ms,
        cpu_ref_ms,
        speedup_vs_cpu_ref: cpu_ref_ms / gpu_ms,
        work: exps,
        work_unit: "exp",
        gpu_rate: exps / (gpu_ms * 1e-3),
    })
}

/// `[m, k] · [n, k]ᵀ`.
pub fn bench_matmul(ctx: &Context, m: usize, k: usize, n: usize) -> Result<OpBench> {
    let x = values(m * k, 11);
    let w = values(n * k, 12);
    let xt = ctx.upload_f32("x", &[m, k], &x)?;
    let wt = ctx.upload_f32("w", &[n, k], &w)?;
    let gpu_ms = time_gpu(ctx, 5, 8, |rec| matmul(rec, "y", xt.mat(), &wt, None))?;
    let cpu_ref_ms = time_cpu(|| {
        std::hint::black_box(matmul_ref(&x, m, k, &w, n, None));
    });
    let flops = 2.0 * (m * n * k) as f64;
    Ok(OpBench {
        name: "matmul".into(),
        shape: format!("({m} x {k}) @ ({k} x {n})"),
        gpu_ms,
        cpu_ref_ms,
        speedup_vs_cpu_ref: cpu_ref_ms / gpu_ms,
        work: flops,
        work_unit: "flop",
        gpu_rate: flops / (gpu_ms * 1e-3),
    })
}

/// Median and spread of one figure over a benchmark's repetitions.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Spread {
        v.sort_by(f64::total_cmp);
        Spread {
            median: v[v.len() / 2],
            min: v[0],
            max: v[v.len() - 1],
        }
    }

    /// Per-repetition ratios `a / b`, summarised.
    fn ratios(a: &[f64], b: &[f64]) -> Spread {
        Spread::of(a.iter().zip(b).map(|(a, b)| a / b).collect())
    }
}

/// A vision model's forward pass at one batch size, over a benchmark's repetitions.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PassBench {
    pub batch: usize,
    /// What a user waits for: from the start of recording to the logits on the host.
    pub wall_ms: Spread,
    /// GPU time of the recorded work (timestamps), where the device has them.
    pub gpu_ms: Option<Spread>,
    /// Recording the pass on the host (wgpu: before submission; CUDA launches as it records).
    pub record_ms: Spread,
    pub dispatches: usize,
    pub gflops_per_image: f64,
    pub images_per_s: f64,
}

/// Unpruned and pruned passes at one batch size, timed rep by rep in turn.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PairBench {
    pub unpruned: PassBench,
    pub pruned: Option<PassBench>,
    /// Per-repetition wall-time ratios unpruned / pruned.
    pub speedup: Option<Spread>,
    /// The same for GPU time.
    pub speedup_gpu: Option<Spread>,
}

/// Fixed pseudo-random pixels `[batch, C, H, W]` at the model's input size.
fn random_pixels(
    ctx: &Context,
    model: &crate::models::vision::VisionModel,
    batch: usize,
) -> Result<Tensor> {
    let (c, h, w) = model.input_shape();
    ctx.upload_f32(
        "pixel_values",
        &[batch, c, h, w],
        &values(batch * c * h * w, 11),
    )
}

/// One timed pass: (wall ms, record ms, GPU ms or None, dispatches).
fn time_pass(
    ctx: &Context,
    gpu_timer: bool,
    record: impl FnOnce(&mut Recorder) -> Result<Tensor>,
) -> Result<(f64, f64, Option<f64>, usize)> {
    let start = Instant::now();
    let mut rec = ctx.recorder();
    if gpu_timer {
        rec.time_gpu()?;
    }
    let out = record(&mut rec)?;
    let dispatches = rec.dispatch_count();
    let record_ms = start.elapsed().as_secs_f64() * 1e3;
    let gpu_ms = if gpu_timer {
        Some(pollster::block_on(rec.submit_timed(&[&out]))?.1)
    } else {
        pollster::block_on(rec.submit_and_read(&[&out]))?;
        None
    };
    Ok((
        start.elapsed().as_secs_f64() * 1e3,
        record_ms,
        gpu_ms,
        dispatches,
    ))
}

/// A vision model's forward pass at `batch` on fixed pseudo-random pixels, unpruned and (when
/// `pruning` is given) pruned, interleaved rep by rep (the order alternating) after one
/// warm-up of each, so that a slow stretch of the machine falls on both sides.
pub fn bench_vision_pair(
    ctx: &Context,
    model: &crate::models::vision::VisionModel,
    pruning: Option<&crate::prune::Pruning>,
    batch: usize,
    reps: usize,
) -> Result<PairBench> {
    let pixels = random_pixels(ctx, model, batch)?;
    let gpu_timer = ctx.can_profile();
    let sides: Vec<Option<&crate::prune::Pruning>> =
        std::iter::once(None).chain(pruning.map(Some)).collect();
    // Per side: wall, record and GPU times, dispatches.
    let mut runs = vec![(Vec::new(), Vec::new(), Vec::new(), 0); sides.len()];
    for rep in 0..=reps {
        for i in 0..sides.len() {
            let side = if rep % 2 == 0 { i } else { sides.len() - 1 - i };
            let (wall, record, gpu, dispatches) = time_pass(ctx, gpu_timer, |rec| {
                model.forward(rec, &pixels, sides[side], None)
            })?;
            if rep > 0 {
                let r = &mut runs[side];
                r.0.push(wall);
                r.1.push(record);
                r.2.extend(gpu);
                r.3 = dispatches;
            }
        }
    }
    let pass = |side: usize| {
        let (wall, record, gpu, dispatches) = &runs[side];
        let wall_ms = Spread::of(wall.clone());
        PassBench {
            batch,
            wall_ms,
            gpu_ms: (!gpu.is_empty()).then(|| Spread::of(gpu.clone())),
            record_ms: Spread::of(record.clone()),
            dispatches: *dispatches,
            gflops_per_image: model.flops(sides[side].map(|p| &p.schedule)) / 1e9,
            images_per_s: batch as f64 * 1e3 / wall_ms.median,
        }
    };
    let pruned = (sides.len() > 1).then(|| pass(1));
    Ok(PairBench {
        unpruned: pass(0),
        speedup: pruned
            .as_ref()
            .map(|_| Spread::ratios(&runs[0].0, &runs[1].0)),
        speedup_gpu: pruned
            .as_ref()
            .filter(|_| gpu_timer)
            .map(|_| Spread::ratios(&runs[0].2, &runs[1].2)),
        pruned,
    })
}

/// The kernels of the pruning machinery: scores with top-k, the gather of the token streams
/// and (PlainMamba) the kept-token grid.
pub const PRUNING_KERNELS: &[&str] = &["topk", "gather_rows", "kept_grid"];

/// The kernels of the LM token reduction: scores and the split/match/merge passes.
pub const REDUCTION_KERNELS: &[&str] = &["importance", "token_reduce"];

/// Where a forward pass spends its GPU time, from per-dispatch timestamps.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KernelProfile {
    /// Sum of all dispatches' GPU time.
    pub gpu_ms: f64,
    /// Per kernel file: (name, ms, dispatches), slowest first.
    pub kernels: Vec<(String, f64, usize)>,
    /// The pruning or reduction kernels' share of `gpu_ms`.
    pub pruning_ms: f64,
    pub pruning_share: f64,
}

/// Profile a vision model's forward pass (the run with the median total of `reps`, after a
/// warm-up) on the same pixels as [`bench_vision_pair`].
pub fn profile_vision(
    ctx: &Context,
    model: &crate::models::vision::VisionModel,
    pruning: Option<&crate::prune::Pruning>,
    batch: usize,
    reps: usize,
) -> Result<KernelProfile> {
    let pixels = random_pixels(ctx, model, batch)?;
    profile(ctx, reps, PRUNING_KERNELS, |rec| {
        model.forward(rec, &pixels, pruning, None)
    })
}

/// Where the pass `record` records spends its GPU time: the run with the median total of
/// `reps` (after a warm-up), per kernel file; `machinery` names the kernels whose share is
/// reported.
pub fn profile(
    ctx: &Context,
    reps: usize,
    machinery: &[&str],
    mut record: impl FnMut(&mut Recorder) -> Result<Tensor>,
) -> Result<KernelProfile> {
    let mut runs = Vec::with_capacity(reps);
    for i in 0..=reps.max(1) {
        let mut rec = ctx.recorder();
        rec.profile()?;
        let out = record(&mut rec)?;
        let times = pollster::block_on(rec.submit_profiled())?;
        drop(out);
        if i > 0 {
            runs.push(times);
        }
    }
    let total = |run: &[(&str, f64)]| run.iter().map(|(_, ms)| ms).sum::<f64>();
    runs.sort_by(|a, b| total(a).total_cmp(&total(b)));
    let run = &runs[runs.len() / 2];
    let mut kernels: Vec<(String, f64, usize)> = Vec::new();
    for &(name, ms) in run {
        match kernels.iter_mut().find(|k| k.0 == name) {
            Some(k) => (k.1, k.2) = (k.1 + ms, k.2 + 1),
            None => kernels.push((name.to_string(), ms, 1)),
        }
    }
    kernels.sort_by(|a, b| b.1.total_cmp(&a.1));
    let gpu_ms = total(run);
    let pruning_ms: f64 = kernels
        .iter()
        .filter(|k| machinery.contains(&k.0.as_str()))
        .map(|k| k.1)
        .sum();
    Ok(KernelProfile {
        gpu_ms,
        kernels,
        pruning_ms,
        pruning_share: pruning_ms / gpu_ms,
    })
}

/// A transformers Mamba-1 model folder of mamba-130m's shape (d_model 768, 24 layers, state
/// 16, vocabulary 50280, tied head) with fixed pseudo-random weights at initialisation-like
/// scales, built in memory: the speed and memory of a model of that size, without one to
/// download.
pub fn random_mamba_130m() -> Result<ModelDir> {
    let (d, layers, vocab, n, r) = (768usize, 24usize, 50280usize, 16usize, 48usize);
    let e = 2 * d;
    let config = serde_json::json!({
        "model_type": "mamba", "hidden_size": d, "num_hidden_layers": layers,
        "vocab_size": vocab, "intermediate_size": e, "state_size": n, "time_step_rank": r,
        "conv_kernel": 4, "expand": 2, "use_bias": false, "use_conv_bias": true,
        "layer_norm_epsilon": 1e-5, "tie_word_embeddings": true,
    });
    let mut weights = RandomWeights::default();
    weights.linear("backbone.embeddings.weight", &[vocab, d]);
    for i in 0..layers {
        let m = format!("backbone.layers.{i}.mixer.");
        weights.fill(&format!("backbone.layers.{i}.norm.weight"), &[d], 1.0);
        weights.linear(&format!("{m}in_proj.weight"), &[2 * e, d]);
        weights.linear(&format!("{m}conv1d.weight"), &[e, 1, 4]);
        weights.linear(&format!("{m}conv1d.bias"), &[e]);
        weights.ssm(&m, "", e, n, r);
        weights.linear(&format!("{m}out_proj.weight"), &[d, e]);
    }
    weights.fill("backbone.norm_f.weight", &[d], 1.0);
    ModelDir::from_bytes(
        "random-mamba-130m",
        &config.to_string(),
        serialize_f32(&weights.tensors)?,
    )
}

/// Vision models of the published shapes that `bench --random-vision` builds in memory.
pub const RANDOM_VISION: &[&str] = &["vim-ti", "vim-s", "plainmamba-l1"];

/// A model folder of `kind`'s published shape (one of [`RANDOM_VISION`]: Vim-Ti and Vim-S at
/// 224 px, 24 layers; PlainMamba-L1, 24 layers of 192) with fixed pseudo-random weights at
/// initialisation-like scales, built in memory: the large models' speed without PyTorch or a
/// checkpoint.
pub fn random_vision(kind: &str) -> Result<ModelDir> {
    let imagenet = serde_json::json!({
        "resize_shorter": 256, "crop": [224, 224], "interpolation": "bicubic",
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
    });
    let mut weights = RandomWeights::default();
    let config = match kind {
        "vim-ti" | "vim-s" => {
            let d = if kind == "vim-ti" { 192 } else { 384 };
            let (e, n, r, depth, grid, classes) = (2 * d, 16, d / 16, 24, 14, 1000);
            weights.linear("patch_embed.proj.weight", &[d, 3, 16, 16]);
            weights.linear("patch_embed.proj.bias", &[d]);
            weights.linear("cls_token", &[1, 1, d]);
            weights.linear("pos_embed", &[1, grid * grid + 1, d]);
            for i in 0..depth {
                let m = format!("layers.{i}.mixer.");
                weights.fill(&format!("layers.{i}.norm.weight"), &[d], 1.0);
                weights.linear(&format!("{m}in_proj.weight"), &[2 * e, d]);
                for suffix in ["", "_b"] {
                    weights.ssm(&m, suffix, e, n, r);
                    weights.linear(&format!("{m}conv1d{suffix}.weight"), &[e, 1, 4]);
                    weights.linear(&format!("{m}conv1d{suffix}.bias"), &[e]);
                }
                weights.linear(&format!("{m}out_proj.weight"), &[d, e]);
            }
            weights.fill("norm_f.weight", &[d], 1.0);
            weights.linear("head.weight", &[classes, d]);
            weights.linear("head.bias", &[classes]);
            serde_json::json!({
                "model_type": "vim", "img_size": 224, "patch_size": 16, "stride": 16,
                "embed_dim": d, "depth": depth, "channels": 3, "num_classes": classes,
                "d_state": n, "d_conv": 4, "expand": 2, "dt_rank": "auto", "rms_norm": true,
                "residual_in_fp32": true, "fused_add_norm": true, "if_abs_pos_embed": true,
                "if_rope": false, "if_rope_residual": false, "bimamba_type": "v2",
                "if_cls_token": true, "if_divide_out": true, "use_middle_cls_token": true,
                "norm_epsilon": 1e-5, "conv_bias": true, "bias": false, "preprocess": imagenet,
            })
        }
        "plainmamba-l1" => {
            use crate::models::plainmamba::STEM_CHANNELS as S;
            use crate::ops::zigzag_scan::DIRECTIONS;
            let (d, depth, n, k, classes, grid) = (192, 24, 16, 7, 1000, 14);
            let (e, r) = (2 * d, d / 16);
            let pe = "backbone.patch_embed.";
            weights.linear(&format!("{pe}stem.0.weight"), &[S, 3, 7, 7]);
            weights.batch_norm(&format!("{pe}stem.1."), S);
            weights.linear(&format!("{pe}convs.0.weight"), &[S, S, 3, 3]);
            weights.batch_norm(&format!("{pe}convs.1."), S);
            weights.linear(&format!("{pe}projection.weight"), &[d, S, 8, 8]);
            weights.linear(&format!("{pe}projection.bias"), &[d]);
            weights.linear("backbone.pos_embed", &[1, grid * grid, d]);
            for i in 0..depth {
                let p = format!("backbone.layers.{i}.");
                let m = format!("{p}mamba.");
                weights.fill(&format!("{p}norm.weight"), &[d], 1.0);
                weights.fill(&format!("{p}norm.bias"), &[d], 0.0);
                weights.ssm(&m, "", e, n, r);
                weights.linear(&format!("{m}direction_Bs"), &[DIRECTIONS, n]);
                weights.linear(&format!("{m}conv2d.weight"), &[e, 1, k, k]);
                weights.linear(&format!("{m}conv2d.bias"), &[e]);
                weights.linear(&format!("{m}in_proj.weight"), &[2 * e, d]);
                weights.linear(&format!("{m}in_proj.bias"), &[2 * e]);
                weights.linear(&format!("{m}out_proj.weight"), &[d, e]);
                weights.linear(&format!("{m}out_proj.bias"), &[d]);
            }
            weights.linear("backbone.layers.0.dw.0.weight", &[d, 1, 3, 3]);
            weights.batch_norm("backbone.layers.0.dw.1.", d);
            weights.fill("backbone.ln1.weight", &[d], 1.0);
            weights.fill("backbone.ln1.bias", &[d], 0.0);
            weights.linear("head.fc.weight", &[classes, d]);
            weights.linear("head.fc.bias", &[classes]);
            serde_json::json!({
                "model_type": "plainmamba", "img_size": 224, "in_channels": 3, "patch_size": 16,
                "embed_dims": d, "num_layers": depth, "num_convs_patch_embed": 1,
                "layers_with_dwconv": [0], "d_state": n, "expand": 2, "conv_size": k,
                "conv_bias": true, "bias": true, "num_classes": classes, "preprocess": imagenet,
            })
        }
        other => {
            return Err(crate::Error::InvalidInput(format!(
                "--random-vision `{other}`: one of {}",
                RANDOM_VISION.join(", ")
            )))
        }
    };
    ModelDir::from_bytes(
        &format!("random-{kind}"),
        &config.to_string(),
        serialize_f32(&weights.tensors)?,
    )
}

/// The tensors of a random model folder, drawn in order from one seed sequence.
#[derive(Default)]
struct RandomWeights {
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl RandomWeights {
    /// Uniform in ±1/sqrt(fan_in), as PyTorch's default Linear and Conv initialisation.
    fn linear(&mut self, name: &str, shape: &[usize]) {
        let fan_in = shape[1..].iter().product::<usize>().max(1) as f32;
        let seed = 1000 + self.tensors.len() as u64;
        let v = values(shape.iter().product(), seed)
            .iter()
            .map(|x| x / fan_in.sqrt())
            .collect();
        self.tensors.push((name.into(), shape.to_vec(), v));
    }

    fn fill(&mut self, name: &str, shape: &[usize], value: f32) {
        let v = vec![value; shape.iter().product()];
        self.tensors.push((name.into(), shape.to_vec(), v));
    }

    /// An identity eval-mode BatchNorm of `channels`.
    fn batch_norm(&mut self, prefix: &str, channels: usize) {
        for (name, value) in [
            ("weight", 1.0),
            ("bias", 0.0),
            ("running_mean", 0.0),
            ("running_var", 1.0),
        ] {
            self.fill(&format!("{prefix}{name}"), &[channels], value);
        }
    }

    /// One SSM branch's A_log, D and dt projection as mamba_ssm initialises them: A = -(1..=N)
    /// per channel, D = 1, a 0.01 step through softplus⁻¹.
    fn ssm(&mut self, mixer: &str, suffix: &str, e: usize, n: usize, r: usize) {
        let a_log = (0..e)
            .flat_map(|_| (1..=n).map(|k| (k as f32).ln()))
            .collect();
        self.tensors
            .push((format!("{mixer}A{suffix}_log"), vec![e, n], a_log));
        self.fill(&format!("{mixer}D{suffix}"), &[e], 1.0);
        self.fill(&format!("{mixer}dt_proj{suffix}.bias"), &[e], -4.6);
        self.linear(&format!("{mixer}dt_proj{suffix}.weight"), &[e, r]);
        self.linear(&format!("{mixer}x_proj{suffix}.weight"), &[r + 2 * n, e]);
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct PrefillBench {
    pub tokens: usize,
    /// The reduction's `1 - mean kept fraction over layers` (0 unreduced).
    pub flops_reduction: f64,
    /// The tokens the last layer runs on.
    pub final_tokens: usize,
    /// Median of `reps` prefills (one submission each, the last token's logits read back).
    pub ms: f64,
    pub tokens_per_s: f64,
    /// Most bytes of GPU buffers live at once during a prefill, weights included.
    pub peak_gpu_bytes: u64,
    /// Of which the weights and inputs live before it starts.
    pub resident_bytes: u64,
}

/// `tokens` fixed pseudo-random token ids of `lm`'s vocabulary, u32 `[tokens]`.
fn prompt_ids(ctx: &Context, lm: &LanguageModel, tokens: usize) -> Result<Tensor> {
    let vocab = lm.vocab_size() as f32;
    let ids: Vec<u32> = values(tokens, 21)
        .iter()
        .map(|v| ((v * 0.5 + 0.5) * vocab) as u32 % vocab as u32)
        .collect();
    ctx.upload_u32("input_ids", &[tokens], &ids)
}

/// Profile the prefill [`bench_prefill`] times, with the reduction kernels' share.
pub fn profile_prefill(
    ctx: &Context,
    lm: &LanguageModel,
    tokens: usize,
    reduction: Option<&Reduction>,
    reps: usize,
) -> Result<KernelProfile> {
    let ids = prompt_ids(ctx, lm, tokens)?;
    profile(ctx, reps, REDUCTION_KERNELS, |rec| {
        lm.record_prefill(rec, &ids, reduction)
    })
}

/// The prefill of `tokens` fixed pseudo-random token ids through `lm`, reduced when asked.
pub fn bench_prefill(
    ctx: &Context,
    lm: &LanguageModel,
    tokens: usize,
    reduction: Option<&Reduction>,
    reps: usize,
) -> Result<PrefillBench> {
    let ids = prompt_ids(ctx, lm, tokens)?;
    let read_last = |rec: Recorder, logits: Tensor| -> Result<()> {
        pollster::block_on(rec.submit_and_read(&[&logits]))?;
        Ok(())
    };
    // Peak memory of one prefill (buffers freed mid-pass go back to the pool for reuse).
    let resident_bytes = ctx.memory_stats().live_bytes;
    ctx.reset_peak_memory();
    let mut rec = ctx.recorder();
    let logits = lm.record_prefill(&mut rec, &ids, reduction)?;
    read_last(rec, logits)?;
    let peak_gpu_bytes = ctx.memory_stats().peak_live_bytes;
    let ms = time_gpu(ctx, reps, 1, |rec| lm.record_prefill(rec, &ids, reduction))?;
    let (flops_reduction, final_tokens) = match reduction {
        Some(r) => (
            r.flops_reduction(tokens, lm.n_layer()),
            *r.token_counts(tokens, lm.n_layer())
                .last()
                .unwrap_or(&tokens),
        ),
        None => (0.0, tokens),
    };
    Ok(PrefillBench {
        tokens,
        flops_reduction,
        final_tokens,
        ms,
        tokens_per_s: tokens as f64 * 1e3 / ms,
        peak_gpu_bytes,
        resident_bytes,
    })
}
