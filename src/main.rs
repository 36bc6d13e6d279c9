//! `ssmgpu`: run, generate with and benchmark state space models on the GPU.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ssmgpu::loader::{write_f32, SafetensorsFile};
use ssmgpu::models::mamba::MambaLm;
use ssmgpu::{Context, Error, Result};

#[derive(Parser)]
#[command(
    name = "ssmgpu",
    version,
    about = "State space model inference on any GPU through WebGPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List adapters with their backend, features and limits, and the one the engine picks.
    Info {
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Run a model on `input_ids` and write its logits.
    Run {
        /// Model folder: config.json + model.safetensors.
        #[arg(long)]
        model: PathBuf,
        /// safetensors file with `input_ids` (i64 or i32, [batch, length]).
        #[arg(long)]
        input: PathBuf,
        /// Output safetensors file: `logits` f32 [batch, length, vocab].
        #[arg(long)]
        out: PathBuf,
        /// Also write `hidden_states.i` (i = 0..n_layer, as transformers returns them).
        #[arg(long)]
        hidden_states: bool,
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
        #[arg(long)]
        json: bool,
    },
    /// Time the kernels against their CPU references (the scan at batch 1, 1536 channels,
    /// 1024 tokens, state 16; the matmul (197 x 384) @ (384 x 1536)).
    Bench {
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match run(cli.command) {
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
        } => run_model(&model, &input, &out, hidden_states),
        Command::Generate {
            model,
            ids,
            max_new_tokens,
            ignore_eos,
            json,
        } => generate(&model, &ids, max_new_tokens, ignore_eos, json),
        Command::Bench { json } => bench(json),
    }
}

fn info(json: bool) -> Result<()> {
    let adapters = pollster::block_on(ssmgpu::runtime::list_adapters());
    let chosen = Context::new_blocking().ok();
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
        let selected = chosen_name
            .map(|n| format!("{n} ({:?})", chosen_backend.unwrap_or(wgpu::Backend::Noop)));
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
    Ok(())
}

fn run_model(model_dir: &Path, input: &Path, out: &Path, hidden_states: bool) -> Result<()> {
    let inputs = SafetensorsFile::open(input)?;
    let (shape, ids) = inputs.ints("input_ids")?;
    if shape.len() != 2 || shape.contains(&0) {
        return Err(Error::InvalidInput(format!(
            "{}: `input_ids` must be [batch, length] with both > 0, got {shape:?}",
            input.display()
        )));
    }
    let ctx = Context::new_blocking()?;
    let model = MambaLm::load(&ctx, model_dir)?;
    let (logits, states) = pollster::block_on(model.run(&ctx, &ids, shape[0], hidden_states))?;
    let (batch, len) = (shape[0], shape[1]);
    let mut tensors = vec![(
        "logits".to_string(),
        vec![batch, len, model.config.vocab_size],
        logits,
    )];
    for (i, h) in states.into_iter().enumerate() {
        tensors.push((
            format!("hidden_states.{i}"),
            vec![batch, len, model.config.d_model],
            h,
        ));
    }
    write_f32(out, &tensors)
}

fn generate(
    model_dir: &Path,
    ids: &[i64],
    max_new_tokens: usize,
    ignore_eos: bool,
    json: bool,
) -> Result<()> {
    let ctx = Context::new_blocking()?;
    let model = MambaLm::load(&ctx, model_dir)?;
    let eos = if ignore_eos {
        None
    } else {
        model.config.eos_token_id
    };
    let start = std::time::Instant::now();
    let new = pollster::block_on(model.generate(&ctx, ids, max_new_tokens, eos))?;
    let secs = start.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "prompt_ids": ids,
                "generated_ids": new,
                "tokens_per_s": new.len() as f64 / secs,
            })
        );
    } else {
        let text: Vec<String> = ids
            .iter()
            .map(|v| v.to_string())
            .chain(new.iter().map(|v| v.to_string()))
            .collect();
        println!("{}", text.join(","));
        eprintln!(
            "{} new tokens in {:.1} ms ({:.1} tokens/s)",
            new.len(),
            secs * 1e3,
            new.len() as f64 / secs
        );
    }
    Ok(())
}

fn bench(json: bool) -> Result<()> {
    let ctx = Context::new_blocking()?;
    let adapter = ctx
        .adapter_info()
        .map(|i| i.name.clone())
        .unwrap_or_default();
    let results = vec![
        ssmgpu::bench::bench_scan(&ctx, 1, 1536, 1024, 16)?,
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
