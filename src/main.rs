//! `ssmgpu`: run, generate with and benchmark state space models on the GPU.

use ssmgpu::prune::reduce::{Metric, Reduction};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ssmgpu::eval::{accuracy, LabelledImages};
use ssmgpu::loader::{write_f32, SafetensorsFile};
use ssmgpu::models::lm::LanguageModel;
use ssmgpu::models::vision::Classifier;
use ssmgpu::prune::{parse_name, Align, Importance, PruneSchedule, Pruning};
use ssmgpu::runtime::DType;
use ssmgpu::{assets, preprocess};
use ssmgpu::{study, Context, Error, Result};

#[derive(Parser)]
#[command(
    name = "ssmgpu",
    version,
    about = "State space model inference on any GPU through WebGPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Backend: wgpu (WebGPU: Vulkan, Metal, DX12, GL), cuda (NVIDIA, needs a build with
    /// `--features cuda`), cuda-host (the CUDA kernels on the CPU, for checking) or auto
    /// (cuda where built in and present, else wgpu).
    #[arg(long, global = true, default_value = "auto")]
    backend: String,
    /// CUDA: let cuBLAS run f32 matmuls in TF32 on tensor cores.
    #[arg(long, global = true)]
    tf32: bool,
}

/// Largest text `lm-eval` and `lm-study` read (bytes are token ids; 1 GiB is far past any
/// study's length).
const MAX_TEXT_BYTES: u64 = 1 << 30;

/// The context options from the command line, set once in `main`.
static CONTEXT_OPTIONS: std::sync::OnceLock<ssmgpu::ContextOptions> = std::sync::OnceLock::new();

/// The device the command line asked for.
fn gpu_context() -> Result<Context> {
    Context::with_options_blocking(CONTEXT_OPTIONS.get().cloned().unwrap_or_default())
}

/// Token reduction options of the language-model commands.
#[derive(clap::Args, Clone, Debug)]
struct ReductionArgs {
    /// After these 0-indexed layers, keep this fraction: `12,17,22:0.905`, or a preset
    /// (`mamba2-2.7b`, `mamba-2.8b`, `mamba2-1.3b`, `mamba-1.4b`) with optional `:RATIO`.
    #[arg(long)]
    reduce: Option<String>,
    /// Instead of the ratio: the FLOPs reduction (%) to aim for at the sequence length.
    #[arg(long)]
    flops: Option<f64>,
    /// unified (default, the paper's text), prune-only (EViT), merge-only (PuMer) or
    /// unified-code (what the authors' code computes).
    #[arg(long, default_value = "unified")]
    method: String,
    /// Importance from the SSM output before the gate (ssm, the paper) or the block output
    /// (block, the authors' code).
    #[arg(long, default_value = "ssm")]
    metric: String,
}

impl ReductionArgs {
    /// The reduction asked for, its ratio set by `--flops` for `len` tokens through `depth`
    /// layers when given.
    fn reduction(&self, len: usize, depth: usize) -> Result<Option<Reduction>> {
        let Some(spec) = &self.reduce else {
            return match self.flops {
                Some(_) => Err(Error::InvalidInput("--flops needs --reduce LAYERS".into())),
                None => Ok(None),
            };
        };
        let r = Reduction::parse(spec, self.method.parse()?, self.metric.parse()?)?;
        ssmgpu::models::lm::check_reduction_depth(&r, depth)?;
        let Some(pct) = self.flops else {
            return Ok(Some(r));
        };
        check_flops_pct(pct, false)?;
        r.for_flops(len, depth, pct / 100.0).map(Some)
    }
}

/// A `--flops` percentage: a number in (0, 100), or [0, 100) where 0 means unreduced.
fn check_flops_pct(pct: f64, zero_ok: bool) -> Result<()> {
    if (pct > 0.0 || (zero_ok && pct == 0.0)) && pct < 100.0 {
        return Ok(());
    }
    let low = if zero_ok { "[0" } else { "(0" };
    Err(Error::InvalidInput(format!(
        "--flops {pct}: a FLOPs reduction in percent must be in {low}, 100)"
    )))
}

/// The language-model prefill benchmark's options.
#[derive(clap::Args, Clone, Debug)]
struct PrefillArgs {
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 2048)]
    tokens: usize,
    /// Reduce after these 0-indexed layers (the paper's "from layer 10, every 5" of 48
    /// layers, scaled to 24).
    #[arg(long, default_value = "5,8,11,14,17,20")]
    reduce: String,
    /// FLOPs reductions (%) to time, each with the ratio that gives it; 0 is unreduced.
    #[arg(long, value_delimiter = ',', default_value = "0,10,20,30")]
    flops: Vec<f64>,
    /// unified (default), prune-only or merge-only.
    #[arg(long, default_value = "unified")]
    method: String,
}

/// Token pruning options shared by the vision commands.
#[derive(clap::Args, Clone, Debug, Default)]
struct PruneArgs {
    /// Prune after these layers: `LAYER:KEEP_RATIO,...` (e.g. `5:0.8,10:0.8,15:0.8`) or a
    /// preset (`vim-t`, `vim-s`). Vim only.
    #[arg(long)]
    prune: Option<String>,
    /// Token importance: clipped (default), unclipped, l2, random.
    #[arg(long, default_value = "clipped")]
    importance: String,
    /// Kept tokens: decay (original order, state decayed over pruned positions; default),
    /// carry (original order) or score (importance order).
    #[arg(long, default_value = "decay")]
    align: String,
    /// Seed of the random importance.
    #[arg(long, default_value_t = 0)]
    seed: u32,
}

impl PruneArgs {
    /// The pruning asked for; `--importance` and `--align` are checked even without `--prune`.
    fn pruning(&self) -> Result<Option<Pruning>> {
        let importance = parse_name("importance", Importance::NAMES, &self.importance)?;
        let align = parse_name("alignment", Align::NAMES, &self.align)?;
        let Some(spec) = &self.prune else {
            return Ok(None);
        };
        Ok(Some(Pruning {
            schedule: PruneSchedule::parse(spec)?,
            importance,
            align,
            seed: self.seed,
        }))
    }
}

#[derive(Subcommand)]
enum Command {
    /// List adapters with their backend, features and limits, and the one the engine picks.
    Info {
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Run a model on `input_ids` (language models) or `pixel_values` (vision models) and write
    /// its logits.
    Run {
        /// Model folder: config.json + model.safetensors.
        #[arg(long)]
        model: PathBuf,
        /// safetensors file with `input_ids` (i64 or i32, [batch, length]) or `pixel_values`
        /// (f32 [batch, channels, H, W]).
        #[arg(long)]
        input: PathBuf,
        /// Output safetensors file: `logits` f32, [batch, length, vocab] or [batch, classes].
        #[arg(long)]
        out: PathBuf,
        /// Also write per-layer outputs: `hidden_states.i` for language models (as
        /// transformers returns them); for vision models the intermediates named as in the
        /// authors' code (`layers.i.hidden`, ...), token-major [batch, tokens, channels].
        #[arg(long)]
        hidden_states: bool,
        #[command(flatten)]
        prune: PruneArgs,
    },
    /// Classify images (PNG, JPEG, WebP, BMP). With no images, the shipped MNIST samples.
    Classify {
        images: Vec<PathBuf>,
        /// Model folder (default: the shipped vim-mnist).
        #[arg(long)]
        model: Option<PathBuf>,
        /// How many classes to show per image.
        #[arg(long, default_value_t = 3)]
        top: usize,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        prune: PruneArgs,
        /// With --prune: write the original positions of the tokens each layer ran on, and the
        /// scores behind each pruning step, per image, to this JSON file.
        #[arg(long)]
        dump_masks: Option<PathBuf>,
    },
    /// Top-1 accuracy, speed and analytic GFLOPs on a test set (`test.safetensors` in the data
    /// folder: `images` u8 [N, H, W] grayscale, `labels` [N]).
    Eval {
        /// Model folder (default: the shipped vim-mnist).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Data folder (default: the shipped MNIST test split).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Images per forward pass.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Evaluate only the first N images.
        #[arg(long)]
        limit: Option<usize>,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        prune: PruneArgs,
    },
    /// Greedy decoding: one prefill, then one recurrent step per token.
    Generate {
        #[arg(long)]
        model: PathBuf,
        /// Prompt token ids, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        ids: Vec<i64>,
        #[arg(long, default_value_t = 20)]
        max_new_tokens: usize,
        /// Do not stop at the config's eos_token_id.
        #[arg(long)]
        ignore_eos: bool,
        /// Reduce the prompt's tokens in the prefill (see `lm-eval`).
        #[command(flatten)]
        reduction: ReductionArgs,
        #[arg(long)]
        json: bool,
    },
    /// Time the kernels against their CPU references (the scan at batch 1, 1536 channels,
    /// 1024 tokens, state 16; the matmul (197 x 384) @ (384 x 1536)); with `--model`, a vision
    /// model's forward pass instead.
    Bench {
        /// A vision model folder to time (random pixels at its input size), unpruned and, with
        /// `--prune`, pruned in the same run; or a language model folder, whose prefill is
        /// timed unreduced and at each `--flops` reduction.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Time the prefill of a random model of mamba-130m's size (d_model 768, 24 layers,
        /// vocabulary 50280) built in memory.
        #[arg(long, conflicts_with = "model")]
        random_lm: bool,
        /// Time a vision model of a published shape with random weights built in memory:
        /// vim-ti, vim-s (224 px, 24 layers) or plainmamba-l1.
        #[arg(long, conflicts_with_all = ["model", "random_lm"])]
        random_vision: Option<String>,
        #[command(flatten)]
        prefill: PrefillArgs,
        /// Batch sizes to time the model at, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "1,16")]
        batch: Vec<usize>,
        /// Timed forward passes (after one warm-up); the median is reported.
        #[arg(long, default_value_t = 10)]
        reps: usize,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        prune: PruneArgs,
    },
    /// Perplexity of a text (bytes as token ids) and next-token top-1 agreement with the
    /// unreduced model under a token reduction (unified, prune-only or merge-only).
    LmEval {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        text: PathBuf,
        #[command(flatten)]
        reduction: ReductionArgs,
        /// Bytes per forward pass.
        #[arg(long, default_value_t = 512)]
        window: usize,
        #[arg(long)]
        json: bool,
    },
    /// Token-reduction study of language models: perplexity and agreement against FLOPs
    /// reduction for the unified method and both baselines, as Markdown and a PNG plot.
    LmStudy {
        #[arg(long = "model", required = true)]
        models: Vec<PathBuf>,
        #[arg(long)]
        text: PathBuf,
        /// Reduce after these 0-indexed layers.
        #[arg(long, value_delimiter = ',', default_value = "2,4,6")]
        reduce: Vec<usize>,
        /// FLOPs reductions (%) to reach, each with the ratio that gives it.
        #[arg(long, value_delimiter = ',', default_value = "10,20,30")]
        flops: Vec<f64>,
        #[arg(long, default_value_t = 512)]
        window: usize,
        #[arg(long, default_value = "docs/token-reduction-results.md")]
        out: PathBuf,
        #[arg(long, default_value = "docs/token-reduction.png")]
        plot: PathBuf,
    },
    /// Zero-shot pruning study: top-1 against FLOPs reduction for every alignment and
    /// importance, written as a Markdown report with a PNG plot.
    PruneStudy {
        /// Model folders (default: the shipped vim-mnist and plainmamba-mnist).
        #[arg(long = "model")]
        models: Vec<PathBuf>,
        /// Data folder (default: the shipped MNIST test split).
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Evaluate only the first N images.
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value = "docs/pruning.md")]
        out: PathBuf,
        #[arg(long, default_value = "docs/pruning.png")]
        plot: PathBuf,
    },
}

fn lm_eval(
    model: &Path,
    text: &Path,
    args: &ReductionArgs,
    window: usize,
    json: bool,
) -> Result<()> {
    let ctx = gpu_context()?;
    let lm = LanguageModel::load(&ctx, model)?;
    let reduction = args
        .reduction(window, lm.n_layer())?
        .ok_or_else(|| Error::InvalidInput("lm-eval needs --reduce LAYERS[:RATIO]".into()))?;
    let bytes = ssmgpu::loader::read_regular_file(text, MAX_TEXT_BYTES)?;
    let r = pollster::block_on(ssmgpu::lm_eval::evaluate(
        &ctx, &lm, &bytes, window, &reduction,
    ))?;
    if json {
        let mut v = serde_json::to_value(&r).map_err(|e| Error::InvalidInput(e.to_string()))?;
        v["ratio"] = reduction.ratio().into();
        println!("{v}");
    } else {
        println!(
            "{} windows of {window} bytes, ratio {:.4}, FLOPs reduction {:.1}%, kept {:.1}% of tokens",
            r.windows, reduction.ratio(), 100.0 * r.flops_reduction, 100.0 * r.kept
        );
        println!("unreduced perplexity {:.4}", r.unreduced_perplexity);
        for (name, s) in [
            ("paper rule", &r.paper),
            ("end-aligned (authors' harness)", &r.end_aligned),
            ("positions", &r.positions),
        ] {
            println!(
                "{name}: perplexity {:.4}, top-1 agreement {:.2}% ({} outputs)",
                s.perplexity,
                100.0 * s.agreement,
                s.scored
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let options = cli.backend.parse().map(|backend| ssmgpu::ContextOptions {
        backend,
        allow_tf32: cli.tf32,
        ..Default::default()
    });
    let result = options.and_then(|o| {
        let _ = CONTEXT_OPTIONS.set(o);
        run(cli.command)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Info { json } => info(json),
        Command::Run {
            model,
            input,
            out,
            hidden_states,
            prune,
        } => run_model(&model, &input, &out, hidden_states, &prune),
        Command::Generate {
            model,
            ids,
            max_new_tokens,
            ignore_eos,
            reduction,
            json,
        } => generate(&model, &ids, max_new_tokens, ignore_eos, &reduction, json),
        Command::Classify {
            images,
            model,
            top,
            json,
            prune,
            dump_masks,
        } => classify(
            &images,
            model.as_deref(),
            top,
            json,
            &prune,
            dump_masks.as_deref(),
        ),
        Command::Eval {
            model,
            data,
            batch,
            limit,
            json,
            prune,
        } => eval(
            model.as_deref(),
            data.as_deref(),
            batch,
            limit,
            json,
            &prune,
        ),
        Command::Bench {
            model,
            random_lm,
            prefill,
            reps,
            json,
            ..
        } if random_lm || model.as_deref().is_some_and(is_language_model) => {
            bench_prefill(model.as_deref(), &prefill, reps, json)
        }
        Command::Bench {
            model: Some(model),
            batch,
            reps,
            json,
            prune,
            ..
        } => bench_model(VisionSource::Dir(&model), &batch, reps, json, &prune),
        Command::Bench {
            random_vision: Some(kind),
            batch,
            reps,
            json,
            prune,
            ..
        } => {
            let dir = ssmgpu::bench::random_vision(&kind)?;
            bench_model(
                VisionSource::Random(Box::new(dir), &kind),
                &batch,
                reps,
                json,
                &prune,
            )
        }
        Command::Bench { json, .. } => bench(json),
        Command::LmEval {
            model,
            text,
            reduction,
            window,
            json,
        } => lm_eval(&model, &text, &reduction, window, json),
        Command::LmStudy {
            models,
            text,
            reduce,
            flops,
            window,
            out,
            plot,
        } => lm_study(&models, &text, (&reduce, &flops), window, (&out, &plot)),
        Command::PruneStudy {
            models,
            data,
            batch,
            limit,
            out,
            plot,
        } => prune_study(&models, data.as_deref(), batch, limit, (&out, &plot)),
    }
}

fn classify(
    images: &[PathBuf],
    model: Option<&Path>,
    top: usize,
    json: bool,
    prune: &PruneArgs,
    dump_masks: Option<&Path>,
) -> Result<()> {
    let model_dir = model.map_or_else(|| assets::path(assets::VIM_MNIST), Path::to_path_buf);
    let images = if images.is_empty() {
        assets::mnist_samples()?
    } else {
        images.to_vec()
    };
    let pruning = prune.pruning()?;
    let ctx = gpu_context()?;
    let mut classifier = Classifier::load(&ctx, &model_dir)?;
    classifier.pruning = pruning;
    let mut pixels = Vec::with_capacity(images.len());
    for path in &images {
        let image = preprocess::load_image(path)?;
        pixels.push(classifier.preprocess.apply(&image)?);
    }
    let pixels = preprocess::batch(&pixels)?;
    let start = std::time::Instant::now();
    let logits = pollster::block_on(classifier.logits(&ctx, &pixels, images.len()))?;
    let secs = start.elapsed().as_secs_f64();
    if let Some(path) = dump_masks {
        write_masks(&ctx, &classifier, &pixels, &images, path)?;
    }
    let classes = classifier.labels.len();
    let mut results = Vec::new();
    for (path, row) in images.iter().zip(logits.chunks(classes)) {
        results.push((path, classifier.top(row, top.max(1))));
    }
    if json {
        let list: Vec<_> = results
            .iter()
            .map(|(path, best)| {
                serde_json::json!({
                    "image": path.display().to_string(),
                    "top": best.iter().map(|(label, p)| serde_json::json!({"label": label, "probability": p})).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "model": model_dir.display().to_string(), "results": list, "seconds": secs })
        );
        return Ok(());
    }
    for (path, best) in &results {
        let shown: Vec<String> = best
            .iter()
            .map(|(label, p)| format!("{label} ({:.1}%)", p * 100.0))
            .collect();
        println!("{}: {}", path.display(), shown.join(", "));
    }
    eprintln!(
        "{} images in {:.1} ms on {}",
        images.len(),
        secs * 1e3,
        ctx.device_name()
    );
    Ok(())
}

/// `classify --dump-masks`: one traced forward pass; per image, the original positions of the
/// tokens every layer ran on and the scores of each pruning step.
fn write_masks(
    ctx: &Context,
    classifier: &Classifier,
    pixels: &[f32],
    images: &[PathBuf],
    path: &Path,
) -> Result<()> {
    let Some(pruning) = &classifier.pruning else {
        return Err(Error::InvalidInput("--dump-masks needs --prune".into()));
    };
    let batch = images.len();
    let [c, h, w] = classifier.preprocess.output_shape();
    let pixels = ctx.upload_f32("pixel_values", &[batch, c, h, w], pixels)?;
    let mut rec = ctx.recorder();
    let (_, maps) = classifier
        .model
        .forward_with_token_maps(&mut rec, &pixels, Some(pruning))?;
    let steps: Vec<(usize, &ssmgpu::Tensor)> = maps
        .scores
        .iter()
        .enumerate()
        .filter_map(|(layer, s)| s.as_ref().map(|s| (layer, s)))
        .collect();
    let mut tensors: Vec<&ssmgpu::Tensor> = maps.positions.iter().collect();
    tensors.extend(steps.iter().map(|(_, t)| *t));
    let values = rec.submit_and_read_blocking(&tensors)?;
    let (positions, scores) = values.split_at(maps.positions.len());
    // Image `b`'s row of a `[B, N]` tensor read back.
    let row = |t: &ssmgpu::Tensor, v: &[f32], b: usize| {
        let len = t.shape()[1];
        v[b * len..(b + 1) * len].to_vec()
    };
    let per_image: Vec<serde_json::Value> = images
        .iter()
        .enumerate()
        .map(|(b, image)| {
            let layers: Vec<_> = maps
                .positions
                .iter()
                .zip(positions)
                .enumerate()
                .map(|(layer, (t, v))| {
                    let positions: Vec<u32> = row(t, v, b).iter().map(|x| x.to_bits()).collect();
                    serde_json::json!({ "layer": layer + 1, "positions": positions })
                })
                .collect();
            let steps: Vec<_> = steps
                .iter()
                .zip(scores)
                .map(|((layer, t), v)| {
                    serde_json::json!({ "after_layer": layer + 1, "scores": row(t, v, b) })
                })
                .collect();
            serde_json::json!({
                "image": image.display().to_string(),
                "layers": layers,
                "pruning_steps": steps,
            })
        })
        .collect();
    let doc = serde_json::json!({
        "schedule": pruning.schedule.to_string(),
        "importance": format!("{:?}", pruning.importance),
        "align": format!("{:?}", pruning.align),
        "images": per_image,
    });
    std::fs::write(path, doc.to_string()).map_err(|e| Error::io(path, e))
}

fn eval(
    model: Option<&Path>,
    data: Option<&Path>,
    batch: usize,
    limit: Option<usize>,
    json: bool,
    prune: &PruneArgs,
) -> Result<()> {
    let pruning = prune.pruning()?;
    let model_dir = model.map_or_else(|| assets::path(assets::VIM_MNIST), Path::to_path_buf);
    let set = LabelledImages::load(&test_split(data))?;
    let ctx = gpu_context()?;
    let mut classifier = Classifier::load(&ctx, &model_dir)?;
    classifier.pruning = pruning;
    let a = accuracy(&ctx, &classifier, &set, batch, limit)?;
    let schedule = classifier.pruning.as_ref().map(|p| &p.schedule);
    let gflops = classifier.model.flops(schedule) / 1e9;
    let flops_reduction = 1.0 - gflops * 1e9 / classifier.model.flops(None);
    let images_per_s = a.images as f64 / a.forward_secs;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "model": model_dir.display().to_string(),
                "data": set.path.display().to_string(),
                "images": a.images,
                "top1": a.top1,
                "images_per_s": images_per_s,
                "gflops_per_image": gflops,
                "flops_reduction": flops_reduction,
                "prune": prune.prune,
                "importance": prune.importance,
                "align": prune.align,
                "batch": batch,
                "seconds_total": a.total_secs,
                "adapter": ctx.device_name(),
            })
        );
    } else {
        println!(
            "{}: top-1 {:.2}% ({}/{})",
            model_dir.display(),
            a.top1,
            a.correct,
            a.images
        );
        println!(
            "{images_per_s:.1} images/s (forward passes at batch {batch}, upload and readback included), {gflops:.4} GFLOPs per image ({:.1}% fewer than unpruned)",
            flops_reduction * 100.0
        );
    }
    Ok(())
}

/// `test.safetensors` in the data folder (default: the shipped MNIST test split).
fn test_split(data: Option<&Path>) -> PathBuf {
    data.map_or_else(|| assets::path(assets::MNIST_TEST), Path::to_path_buf)
        .join("test.safetensors")
}

/// `lm-study`: every model's sweep, then the Markdown report and the plot.
fn lm_study(
    models: &[PathBuf],
    text: &Path,
    schedule: (&[usize], &[f64]),
    window: usize,
    (out, plot): (&Path, &Path),
) -> Result<()> {
    let ctx = gpu_context()?;
    let bytes = ssmgpu::loader::read_regular_file(text, MAX_TEXT_BYTES)?;
    let studies = models
        .iter()
        .map(|m| {
            ssmgpu::lm_study::study_model(&ctx, m, &bytes, window, schedule, |l| eprintln!("{l}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let command: Vec<String> = std::env::args().skip(1).collect();
    let command = format!("ssmgpu {}", command.join(" "));
    let doc = ssmgpu::lm_study::markdown(&studies, &command, &plot_link(out, plot));
    write_report((out, &doc), plot, |p| ssmgpu::lm_study::plot(&studies, p))
}

/// The plot's path as the report links it: relative to the report's folder.
fn plot_link(out: &Path, plot: &Path) -> String {
    plot.strip_prefix(out.parent().unwrap_or(Path::new("")))
        .unwrap_or(plot)
        .display()
        .to_string()
}

/// Write a study's Markdown report and draw its plot, making their folders.
fn write_report(
    (out, doc): (&Path, &str),
    plot: &Path,
    draw: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    for path in [out, plot] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
    }
    std::fs::write(out, doc).map_err(|e| Error::io(out, e))?;
    draw(plot)?;
    println!("wrote {} and {}", out.display(), plot.display());
    Ok(())
}

/// `prune-study`: every model's sweep, then the Markdown report and the plot.
fn prune_study(
    models: &[PathBuf],
    data: Option<&Path>,
    batch: usize,
    limit: Option<usize>,
    (out, plot): (&Path, &Path),
) -> Result<()> {
    let set = LabelledImages::load(&test_split(data))?;
    let ctx = gpu_context()?;
    let models: Vec<PathBuf> = match models {
        [] => [assets::VIM_MNIST, assets::PLAINMAMBA_MNIST]
            .map(assets::path)
            .to_vec(),
        given => given.to_vec(),
    };
    let studies = models
        .iter()
        .map(|m| study::study_model(&ctx, m, &set, (batch, limit), |line| eprintln!("{line}")))
        .collect::<Result<Vec<_>>>()?;
    let mut command = String::from("ssmgpu prune-study");
    if let Some(l) = limit {
        command += &format!(" --limit {l}");
    }
    let doc = study::markdown(&studies, &set.path, &command, &plot_link(out, plot));
    write_report((out, &doc), plot, |p| study::plot(&studies, p))
}

fn info(json: bool) -> Result<()> {
    let adapters = pollster::block_on(ssmgpu::runtime::list_adapters());
    let chosen = gpu_context().ok();
    let chosen_name = chosen
        .as_ref()
        .and_then(|c| c.adapter_info())
        .map(|i| i.name.clone());
    let chosen_backend = chosen
        .as_ref()
        .and_then(|c| c.adapter_info())
        .map(|i| i.backend);
    if json {
        let list: Vec<_> = adapters
            .iter()
            .map(|(info, features, limits)| {
                serde_json::json!({
                    "name": info.name,
                    "backend": format!("{:?}", info.backend),
                    "device_type": format!("{:?}", info.device_type),
                    "driver": info.driver,
                    "driver_info": info.driver_info,
                    "features": format!("{features:?}"),
                    "max_storage_buffer_binding_size": limits.max_storage_buffer_binding_size,
                    "max_buffer_size": limits.max_buffer_size,
                    "max_compute_workgroup_size_x": limits.max_compute_workgroup_size_x,
                    "max_compute_invocations_per_workgroup": limits.max_compute_invocations_per_workgroup,
                    "max_storage_buffers_per_shader_stage": limits.max_storage_buffers_per_shader_stage,
                })
            })
            .collect();
        let selected = chosen.as_ref().map(Context::device_name);
        println!(
            "{}",
            serde_json::json!({ "adapters": list, "selected": selected })
        );
        return Ok(());
    }
    if adapters.is_empty() {
        println!("no adapters found (on Debian, lavapipe: apt-get install mesa-vulkan-drivers libvulkan1)");
    }
    for (info, features, limits) in &adapters {
        let selected =
            Some(&info.name) == chosen_name.as_ref() && Some(info.backend) == chosen_backend;
        let mark = if selected { " (selected)" } else { "" };
        println!("{}{mark}", info.name);
        println!(
            "  backend: {:?}, type: {:?}, driver: {} {}",
            info.backend, info.device_type, info.driver, info.driver_info
        );
        println!("  features: {features:?}");
        println!(
            "  limits: max_storage_buffer_binding_size {} B, max_buffer_size {} B, max_storage_buffers_per_shader_stage {}, max_compute_invocations_per_workgroup {}",
            limits.max_storage_buffer_binding_size,
            limits.max_buffer_size,
            limits.max_storage_buffers_per_shader_stage,
            limits.max_compute_invocations_per_workgroup
        );
    }
    match &chosen {
        Some(ctx) if ctx.backend() != ssmgpu::Backend::Wgpu => {
            println!("selected: {}", ctx.device_name())
        }
        Some(_) => {}
        None => println!("no device could be created on the chosen backend"),
    }
    Ok(())
}

fn run_model(
    model_dir: &Path,
    input: &Path,
    out: &Path,
    hidden_states: bool,
    prune: &PruneArgs,
) -> Result<()> {
    let created = check_output(out, input)?;
    let result = run_model_to(model_dir, input, out, hidden_states, prune);
    if result.is_err() && created {
        // Best effort: the empty file made by the check, not a user's file.
        let _ = std::fs::remove_file(out);
    }
    result
}

/// `--out`, before any work: not the input file, and writable (opened, created when missing).
/// Returns whether it was created here.
fn check_output(out: &Path, input: &Path) -> Result<bool> {
    let existed = out.exists();
    if existed
        && std::fs::canonicalize(out).ok() == std::fs::canonicalize(input).ok()
        && input.exists()
    {
        return Err(Error::InvalidInput(format!(
            "--out {} is the --input file; writing would destroy it",
            out.display()
        )));
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(out)
        .map_err(|e| Error::io(out, e))?;
    Ok(!existed)
}

fn run_model_to(
    model_dir: &Path,
    input: &Path,
    out: &Path,
    hidden_states: bool,
    prune: &PruneArgs,
) -> Result<()> {
    let inputs = SafetensorsFile::open(input)?;
    if inputs.contains("pixel_values") {
        return run_vision(model_dir, &inputs, out, hidden_states, prune);
    }
    if prune.prune.is_some() {
        return Err(Error::InvalidInput(
            "--prune applies to vision models (pixel_values inputs)".into(),
        ));
    }
    let (shape, ids) = inputs.ints("input_ids")?;
    if shape.len() != 2 || shape.contains(&0) {
        return Err(Error::InvalidInput(format!(
            "{}: `input_ids` must be [batch, length] with both > 0, got {shape:?}",
            input.display()
        )));
    }
    let ctx = gpu_context()?;
    let model = LanguageModel::load(&ctx, model_dir)?;
    let (logits, states) = pollster::block_on(model.run(&ctx, &ids, shape[0], hidden_states))?;
    let (batch, len) = (shape[0], shape[1]);
    let mut tensors = vec![(
        "logits".to_string(),
        vec![batch, len, model.vocab_size()],
        logits,
    )];
    for (i, h) in states.into_iter().enumerate() {
        tensors.push((
            format!("hidden_states.{i}"),
            vec![batch, len, model.d_model()],
            h,
        ));
    }
    write_f32(out, &tensors)
}

fn run_vision(
    model_dir: &Path,
    inputs: &SafetensorsFile,
    out: &Path,
    hidden_states: bool,
    prune: &PruneArgs,
) -> Result<()> {
    let pruning = prune.pruning()?;
    let (shape, pixels) = inputs.f32_finite("pixel_values", None)?;
    let ctx = gpu_context()?;
    let classifier = Classifier::load(&ctx, model_dir)?;
    let Some((&batch, image)) = shape.split_first().filter(|(&b, _)| b > 0) else {
        return Err(Error::InvalidInput(format!(
            "{}: `pixel_values` must be [batch, channels, H, W] with batch > 0, got {shape:?}",
            inputs.path().display()
        )));
    };
    let per_image: usize = image.iter().product();
    // Names, dtypes and row widths of the outputs, the same for every chunk.
    let mut outputs: Vec<(String, DType, usize)> = Vec::new();
    let values = pollster::block_on(ssmgpu::models::vision::in_chunks(
        batch,
        async |first, count| {
            let chunk = &pixels[first * per_image..(first + count) * per_image];
            let mut chunk_shape = shape.clone();
            chunk_shape[0] = count;
            let pixels = ctx.upload_f32("pixel_values", &chunk_shape, chunk)?;
            let mut rec = ctx.recorder();
            let mut trace = Vec::new();
            let logits = classifier.model.forward(
                &mut rec,
                &pixels,
                pruning.as_ref(),
                hidden_states.then_some(&mut trace),
            )?;
            trace.insert(0, ("logits".to_string(), logits));
            let wanted: Vec<&ssmgpu::Tensor> = trace.iter().map(|(_, t)| t).collect();
            outputs = trace
                .iter()
                .map(|(n, t)| (n.clone(), t.dtype(), t.shape().last().copied().unwrap_or(1)))
                .collect();
            rec.submit_and_read(&wanted).await
        },
    ))?;
    let tensors = outputs
        .into_iter()
        .zip(values)
        .map(|((name, dtype, cols), v)| {
            // Position maps are u32 on the GPU; written as f32 like the rest (exact below 2^24).
            let v = match dtype {
                DType::U32 => v.iter().map(|x| x.to_bits() as f32).collect(),
                DType::F32 => {
                    ssmgpu::error::check_finite(|| format!("output `{name}`"), &v)?;
                    v
                }
            };
            Ok((name, vec![batch, v.len() / cols / batch, cols], v))
        })
        .map(|r| {
            r.map(|(name, shape, v)| match name.as_str() {
                "logits" => (name, vec![batch, shape[2]], v),
                _ => (name, shape, v),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    write_f32(out, &tensors)
}

fn generate(
    model_dir: &Path,
    ids: &[i64],
    max_new_tokens: usize,
    ignore_eos: bool,
    reduction: &ReductionArgs,
    json: bool,
) -> Result<()> {
    // JSON prints the ids at the end, so holds them; text streams them.
    if json {
        ssmgpu::models::lm::check_held_tokens(max_new_tokens)
            .map_err(|e| Error::InvalidInput(format!("--max-new-tokens with --json: {e}")))?;
    }
    let ctx = gpu_context()?;
    let model = LanguageModel::load(&ctx, model_dir)?;
    let reduction = reduction.reduction(ids.len(), model.n_layer())?;
    let eos = if ignore_eos {
        None
    } else {
        model.eos_token_id()
    };
    let start = std::time::Instant::now();
    if json {
        let new =
            pollster::block_on(model.generate(&ctx, ids, max_new_tokens, eos, reduction.as_ref()))?;
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{}",
            serde_json::json!({
                "prompt_ids": ids,
                "generated_ids": new,
                "tokens_per_s": new.len() as f64 / secs,
            })
        );
        return Ok(());
    }
    // The prompt, then each new id as soon as the GPU has chosen it.
    let prompt: Vec<String> = ids.iter().map(i64::to_string).collect();
    let mut out = std::io::stdout().lock();
    let mut count = 0usize;
    let mut put = |text: String| -> Result<()> {
        use std::io::Write;
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| Error::io("stdout", e))
    };
    put(prompt.join(","))?;
    let result = pollster::block_on(model.generate_each(
        &ctx,
        ids,
        max_new_tokens,
        eos,
        reduction.as_ref(),
        |id| {
            count += 1;
            put(format!(",{id}"))
        },
    ));
    put("\n".into())?;
    result?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{count} new tokens in {:.1} ms ({:.1} tokens/s)",
        secs * 1e3,
        count as f64 / secs
    );
    Ok(())
}

/// Where `bench` gets a vision model: a folder, or a random one of a published shape (built
/// before a device is opened, so an unknown kind is refused first).
enum VisionSource<'a> {
    Dir(&'a Path),
    Random(Box<ssmgpu::models::ModelDir>, &'a str),
}

fn bench_model(
    source: VisionSource,
    batches: &[usize],
    reps: usize,
    json: bool,
    prune: &PruneArgs,
) -> Result<()> {
    if batches.is_empty() || batches.contains(&0) || reps == 0 {
        return Err(Error::InvalidInput(
            "--batch and --reps must be positive".into(),
        ));
    }
    let pruning = prune.pruning()?;
    let ctx = gpu_context()?;
    let (classifier, name) = match source {
        VisionSource::Dir(dir) => (Classifier::load(&ctx, dir)?, dir.display().to_string()),
        VisionSource::Random(dir, kind) => (
            Classifier::from_model_dir(&ctx, &dir)?,
            format!("random {kind}"),
        ),
    };
    let model = &classifier.model;
    let flops_ratio = model.flops(None) / model.flops(pruning.as_ref().map(|p| &p.schedule));
    let rows = batches
        .iter()
        .map(|&batch| ssmgpu::bench::bench_vision_pair(&ctx, model, pruning.as_ref(), batch, reps))
        .collect::<Result<Vec<_>>>()?;
    // Where the unpruned and pruned passes spend their GPU time, at the first batch size,
    // when the device has timestamps.
    let profile_of =
        |p: Option<&Pruning>| ssmgpu::bench::profile_vision(&ctx, model, p, batches[0], reps);
    let profiles = match &pruning {
        Some(p) if ctx.can_profile() => Some((profile_of(None)?, profile_of(Some(p))?)),
        _ => None,
    };
    let per_image = |r: &ssmgpu::bench::PassBench| r.wall_ms.median / r.batch as f64;
    let adapter = ctx.device_name();
    if json {
        let batches: Vec<serde_json::Value> = rows
            .iter()
            .map(|row| {
                let u = &row.unpruned;
                let mut v = serde_json::json!({
                    "batch": u.batch,
                    "ms_unpruned": per_image(u),
                    "record_ms": u.record_ms.median,
                    "dispatches_unpruned": u.dispatches,
                    "unpruned": u,
                });
                if let Some(p) = &row.pruned {
                    v["ms_pruned"] = serde_json::json!(per_image(p));
                    v["speedup"] = serde_json::json!(row.speedup.map(|s| s.median));
                    v["speedup_gpu"] = serde_json::json!(row.speedup_gpu.map(|s| s.median));
                    v["dispatches_pruned"] = serde_json::json!(p.dispatches);
                    v["pruned"] = serde_json::json!(p);
                }
                v
            })
            .collect();
        let mut v = serde_json::json!({
            "model": name,
            "adapter": adapter,
            "prune": pruning.as_ref().map(|p| p.schedule.to_string()),
            "flops_ratio": flops_ratio,
            "profile_unpruned": profiles.as_ref().map(|p| &p.0),
            "profile": profiles.as_ref().map(|p| &p.1),
        });
        // The first batch size's figures at the top level.
        for key in [
            "batch",
            "ms_unpruned",
            "ms_pruned",
            "speedup",
            "speedup_gpu",
            "record_ms",
            "dispatches_unpruned",
            "dispatches_pruned",
        ] {
            if let Some(x) = batches[0].get(key) {
                v[key] = x.clone();
            }
        }
        v["batches"] = serde_json::json!(batches);
        println!("{v}");
        return Ok(());
    }
    println!("{name} on {adapter}, {reps} reps, unpruned and pruned in turn");
    let spread =
        |s: &ssmgpu::bench::Spread| format!("{:.2} ms [{:.2}-{:.2}]", s.median, s.min, s.max);
    let pass = |what: &str, r: &ssmgpu::bench::PassBench| {
        let gpu = r
            .gpu_ms
            .as_ref()
            .map_or(String::new(), |g| format!(", GPU {}", spread(g)));
        println!(
            "  {what:<8} wall {}{gpu}, recording {:.2} ms, {} dispatches, {:.2} ms/image",
            spread(&r.wall_ms),
            r.record_ms.median,
            r.dispatches,
            per_image(r)
        );
    };
    for row in &rows {
        println!("batch {}:", row.unpruned.batch);
        pass("unpruned", &row.unpruned);
        if let (Some(p), Some(s)) = (&row.pruned, &row.speedup) {
            pass("pruned", p);
            let gpu = row.speedup_gpu.map_or(String::new(), |g| {
                format!(", GPU {:.2}x [{:.2}-{:.2}]", g.median, g.min, g.max)
            });
            println!(
                "  speedup wall {:.2}x [{:.2}-{:.2}]{gpu} for a FLOPs ratio of {flops_ratio:.2}x",
                s.median, s.min, s.max
            );
        }
    }
    if let Some((unpruned, pruned)) = &profiles {
        print!("at batch {}: ", batches[0]);
        print_machinery(pruned, "pruning", ssmgpu::bench::PRUNING_KERNELS);
        // Each kernel's GPU time beside the unpruned pass's: what does not shrink with the
        // tokens shows here.
        println!("  kernel           unpruned ms (dispatches)   pruned ms (dispatches)   ratio");
        let of = |p: &ssmgpu::bench::KernelProfile, name: &str| {
            p.kernels
                .iter()
                .find(|k| k.0 == name)
                .map_or((0.0, 0), |k| (k.1, k.2))
        };
        let mut names: Vec<&str> = pruned.kernels.iter().map(|k| k.0.as_str()).collect();
        for k in &unpruned.kernels {
            if !names.contains(&k.0.as_str()) {
                names.push(&k.0);
            }
        }
        for name in names.iter().chain(&["(all)"]) {
            let ((u, un), (p, pn)) = match *name {
                "(all)" => ((unpruned.gpu_ms, 0), (pruned.gpu_ms, 0)),
                n => (of(unpruned, n), of(pruned, n)),
            };
            println!(
                "  {name:<16} {u:>9.3} ({un:>3})            {p:>9.3} ({pn:>3})          {:>5.2}x",
                u / p
            );
        }
    }
    Ok(())
}

/// The slowest kernels of a profile and the share of the pruning or reduction machinery.
fn print_profile(p: &ssmgpu::bench::KernelProfile, what: &str, machinery: &[&str]) {
    print_machinery(p, what, machinery);
    for (name, ms, n) in p.kernels.iter().take(6) {
        println!("  {name:<16} {ms:>10.2} ms in {n} dispatches");
    }
}

/// The share of the pruning or reduction machinery in a profile.
fn print_machinery(p: &ssmgpu::bench::KernelProfile, what: &str, machinery: &[&str]) {
    println!(
        "{what} machinery ({}): {:.3} ms of {:.2} ms GPU time ({:.1}%)",
        machinery.join(", "),
        p.pruning_ms,
        p.gpu_ms,
        p.pruning_share * 100.0
    );
}

/// A folder whose config.json names a language model (anything but the vision models; a
/// folder that does not load falls to the vision path, which reports why).
fn is_language_model(dir: &Path) -> bool {
    ssmgpu::models::ModelDir::open(dir).is_ok_and(|d| {
        let model_type = d.config.get("model_type").and_then(|v| v.as_str());
        !matches!(model_type, Some("vim" | "plainmamba"))
    })
}

/// Prefill time and peak GPU memory of one prompt, unreduced and at each FLOPs reduction.
fn bench_prefill(
    model_dir: Option<&Path>,
    args: &PrefillArgs,
    reps: usize,
    json: bool,
) -> Result<()> {
    if reps == 0 || args.tokens < 2 {
        return Err(Error::InvalidInput(
            "--reps must be positive and --tokens at least 2".into(),
        ));
    }
    let ctx = gpu_context()?;
    let (label, lm) = match model_dir {
        Some(dir) => (dir.display().to_string(), LanguageModel::load(&ctx, dir)?),
        None => {
            let dir = ssmgpu::bench::random_mamba_130m()?;
            let lm = LanguageModel::from_model_dir(&ctx, &dir)?;
            ("random mamba-130m-sized model".to_string(), lm)
        }
    };
    let schedule = Reduction::parse(&args.reduce, args.method.parse()?, Metric::SsmOutput)?;
    ssmgpu::models::lm::check_reduction_depth(&schedule, lm.n_layer())?;
    for &pct in &args.flops {
        check_flops_pct(pct, true)?;
    }
    let mut rows = Vec::new();
    for &pct in &args.flops {
        let reduction = (pct > 0.0)
            .then(|| schedule.for_flops(args.tokens, lm.n_layer(), pct / 100.0))
            .transpose()?;
        let r = ssmgpu::bench::bench_prefill(&ctx, &lm, args.tokens, reduction.as_ref(), reps)?;
        rows.push((pct, reduction, r));
    }
    // Where the most reduced prefill spends its GPU time, when the device has timestamps.
    let timestamps = ctx.can_profile();
    let profile = match rows.last() {
        Some((_, Some(r), _)) if timestamps => Some(ssmgpu::bench::profile_prefill(
            &ctx,
            &lm,
            args.tokens,
            Some(r),
            1,
        )?),
        _ => None,
    };
    let rows: Vec<_> = rows
        .into_iter()
        .map(|(pct, r, b)| (pct, r.map(|r| r.ratio()), b))
        .collect();
    let base = rows
        .iter()
        .find(|r| r.0 == 0.0)
        .map(|r| (r.2.ms, r.2.peak_gpu_bytes));
    let adapter = Some(ctx.device_name());
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    if json {
        let runs: Vec<serde_json::Value> = rows
            .iter()
            .map(|(pct, ratio, r)| {
                let mut v = serde_json::json!({ "target_flops_reduction_pct": pct, "ratio": ratio, "result": r });
                if let Some((ms, peak)) = base {
                    v["speedup"] = (ms / r.ms).into();
                    v["peak_memory_ratio"] = (r.peak_gpu_bytes as f64 / peak as f64).into();
                }
                v
            })
            .collect();
        let v = serde_json::json!({
            "model": label, "adapter": adapter, "tokens": args.tokens,
            "reduce": args.reduce, "method": args.method, "runs": runs, "profile": profile,
        });
        println!("{v}");
        return Ok(());
    }
    println!(
        "{label}: prefill of {} tokens on {}, reduced after layers {} ({})",
        args.tokens,
        adapter.as_deref().unwrap_or("?"),
        args.reduce,
        args.method
    );
    for (pct, ratio, r) in &rows {
        let vs = base.map_or(String::new(), |(ms, peak)| {
            format!(
                "   speedup {:.2}x, peak memory {:.2}x",
                ms / r.ms,
                r.peak_gpu_bytes as f64 / peak as f64
            )
        });
        println!(
            "FLOPs -{:>4.1}% (target {pct}%, ratio {}): {:>9.1} ms, {:>7.0} tokens/s, last layer on {} tokens, peak GPU memory {:.1} MiB ({:.1} MiB weights and inputs){vs}",
            100.0 * r.flops_reduction,
            ratio.map_or("-".into(), |x| format!("{x:.4}")),
            r.ms,
            r.tokens_per_s,
            r.final_tokens,
            mib(r.peak_gpu_bytes),
            mib(r.resident_bytes),
        );
    }
    if let Some(p) = &profile {
        print_profile(p, "reduction", ssmgpu::bench::REDUCTION_KERNELS);
    }
    Ok(())
}

fn bench(json: bool) -> Result<()> {
    let ctx = gpu_context()?;
    let adapter = ctx.device_name();
    let results = vec![
        ssmgpu::bench::bench_scan(&ctx, 1, 1536, 1024, 16)?,
        // Vim-Ti's: d_inner 384 over 197 tokens (one direction).
        ssmgpu::bench::bench_scan(&ctx, 1, 384, 197, 16)?,
        ssmgpu::bench::bench_matmul(&ctx, 197, 384, 1536)?,
    ];
    if json {
        println!(
            "{}",
            serde_json::json!({ "adapter": adapter, "ops": results })
        );
        return Ok(());
    }
    println!("adapter: {adapter}");
    for r in &results {
        let (rate, unit) = (
            r.gpu_rate / 1e9,
            if r.work_unit == "flop" {
                "GFLOP/s"
            } else {
                "G exp/s"
            },
        );
        println!(
            "{:<15} {:<45} gpu {:>9.3} ms   cpu reference {:>9.3} ms   ratio {:>7.1}x   {:.2} {unit}",
            r.name, r.shape, r.gpu_ms, r.cpu_ref_ms, r.speedup_vs_cpu_ref, rate
        );
    }
    Ok(())
}
