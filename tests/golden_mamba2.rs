//! The Mamba-2 LM against transformers' outputs (golden/mamba2_tiny: 37 tokens, chunk 16,
//! 2 groups): logits and hidden states within 1e-4 absolute, greedy generation exactly, from
//! the library and from the CLI (`run` and `generate` pick Mamba-2 from config.json).

mod common;

use common::{assert_close, check_lm_golden, cli, ctx, f32s, golden, golden_dir};
use safetensors::tensor::{Dtype, TensorView};
use ssmgpu::loader::SafetensorsFile;
use ssmgpu::models::lm::CausalLm;
use ssmgpu::models::lm::LanguageModel;
use ssmgpu::models::mamba2::Mamba2Lm;

const ATOL: f32 = 1e-4;
const CASE: &str = "mamba2_tiny";

fn expected_generation() -> (Vec<i64>, Vec<i64>) {
    let reference = golden(&format!("{CASE}/reference.safetensors"));
    (
        reference.ints("generate.prompt_ids").unwrap().1,
        reference.ints("generate.output_ids").unwrap().1,
    )
}

#[test]
fn mamba2_tiny_matches_transformers() {
    let ctx = ctx();
    let model = Mamba2Lm::load(ctx, &golden_dir().join(CASE)).unwrap();
    assert_eq!(
        (model.config.n_groups, model.config.chunk_size),
        (2, 16),
        "the case this test is about"
    );
    check_lm_golden(ctx, CASE, &model, model.config.n_layer, ATOL);
}

/// `LanguageModel::load` picks Mamba-2 from `model_type`, and the result is the same model.
#[test]
fn language_model_dispatches_on_model_type() {
    let ctx = ctx();
    let dir = golden_dir().join(CASE);
    let model = LanguageModel::load(ctx, &dir).unwrap();
    assert!(matches!(model, LanguageModel::Mamba2(_)));
    let mamba1 = LanguageModel::load(ctx, &golden_dir().join("mamba1_tiny")).unwrap();
    assert!(matches!(mamba1, LanguageModel::Mamba(_)));
    let (prompt, expected) = expected_generation();
    let got = pollster::block_on(model.generate(ctx, &prompt, 3, None, None)).unwrap();
    let got: Vec<i64> = got.iter().map(|&t| t as i64).collect();
    assert_eq!(got, expected[prompt.len()..prompt.len() + 3]);
}

#[test]
fn cli_run_and_generate_take_a_mamba2_folder() {
    let dir = golden_dir().join(CASE);
    let reference = golden(&format!("{CASE}/reference.safetensors"));
    let tmp = tempfile::tempdir().unwrap();
    // run: input_ids in, logits out.
    let (shape, ids) = reference.ints("input_ids").unwrap();
    let input = tmp.path().join("in.safetensors");
    let bytes: Vec<u8> = ids.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = TensorView::new(Dtype::I64, shape.clone(), &bytes).unwrap();
    safetensors::serialize_to_file([("input_ids", view)], None, &input).unwrap();
    let out = tmp.path().join("out.safetensors");
    let (ok, _, stderr) = cli(&[
        "run",
        "--model",
        dir.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let got = SafetensorsFile::open(&out).unwrap();
    let (got_shape, logits) = got.f32("logits", None).unwrap();
    assert_eq!(got_shape, vec![shape[0], shape[1], 256]);
    assert_close(
        "cli run logits",
        &logits,
        &f32s(&reference, "logits").1,
        ATOL,
        0.0,
    );

    // generate: the greedy ids.
    let (prompt, expected) = expected_generation();
    let prompt_arg: Vec<String> = prompt.iter().map(|v| v.to_string()).collect();
    let new = (expected.len() - prompt.len()).to_string();
    let (ok, stdout, stderr) = cli(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--ids",
        &prompt_arg.join(","),
        "--max-new-tokens",
        &new,
        "--ignore-eos",
    ]);
    assert!(ok, "{stderr}");
    let want: Vec<String> = expected.iter().map(|v| v.to_string()).collect();
    assert_eq!(stdout.trim(), want.join(","));
}

/// Bad Mamba-2 folders and inputs are typed errors naming what was wrong.
#[test]
fn bad_mamba2_input_is_a_typed_error() {
    use ssmgpu::Error;
    let ctx = ctx();
    let src = golden_dir().join(CASE);
    let weights = SafetensorsFile::open(src.join("model.safetensors")).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = weights
        .names()
        .into_iter()
        .map(|n| {
            let (shape, data) = weights.f32(&n, None).unwrap();
            (n, shape, data)
        })
        .collect();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let load = |edit: &dyn Fn(&mut serde_json::Value), keep: &dyn Fn(&str) -> bool| {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config.clone();
        edit(&mut c);
        std::fs::write(dir.path().join("config.json"), c.to_string()).unwrap();
        let kept: Vec<_> = tensors.iter().filter(|t| keep(&t.0)).cloned().collect();
        ssmgpu::loader::write_f32(&dir.path().join("model.safetensors"), &kept).unwrap();
        match LanguageModel::load(ctx, dir.path()) {
            Ok(_) => panic!("loaded, expected an error"),
            Err(e) => {
                eprintln!("{e}");
                e
            }
        }
    };
    let all = |_: &str| true;
    let config_error = |e: Error, what: &str| match e {
        Error::Config { message, .. } => assert!(message.contains(what), "{message}"),
        e => panic!("{e:?}"),
    };
    config_error(
        load(
            &|c| c["time_step_limit"] = serde_json::json!([0.0, "lots"]),
            &all,
        ),
        "time_step_limit",
    );
    config_error(
        load(
            &|c| c["time_step_limit"] = serde_json::json!([1.0, 0.5]),
            &all,
        ),
        "time_step_limit",
    );
    config_error(load(&|c| c["num_heads"] = 7.into(), &all), "heads");
    config_error(load(&|c| c["n_groups"] = 3.into(), &all), "groups");
    config_error(load(&|c| c["model_type"] = "llama".into(), &all), "llama");
    match load(&|_| {}, &|n| n != "backbone.layers.1.mixer.dt_bias") {
        Error::MissingTensor { name, .. } => assert_eq!(name, "backbone.layers.1.mixer.dt_bias"),
        e => panic!("{e:?}"),
    }
    // state_size 8 makes the in_proj and conv1d shapes wrong.
    match load(&|c| c["state_size"] = 8.into(), &all) {
        Error::ShapeMismatch { name, .. } => assert!(name.contains(".mixer."), "{name}"),
        e => panic!("{e:?}"),
    }
    let model = Mamba2Lm::load(ctx, &src).unwrap();
    match pollster::block_on(model.run(ctx, &[1, 2, 256], 1, false)) {
        Err(Error::TokenOutOfRange { id: 256, .. }) => {}
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(matches!(
        pollster::block_on(model.generate(ctx, &[], 2, None, None)),
        Err(Error::InvalidInput(_))
    ));
}

/// The same weights in the state-spaces layout (`backbone.embedding.weight`, `d_model`,
/// `ssm_cfg.layer = "Mamba2"`, ...) give the same logits.
#[test]
fn state_spaces_layout_loads_the_same_model() {
    let ctx = ctx();
    let src = golden_dir().join(CASE);
    let tmp = tempfile::tempdir().unwrap();
    let weights = SafetensorsFile::open(src.join("model.safetensors")).unwrap();
    let tensors: Vec<_> = weights
        .names()
        .into_iter()
        .map(|name| {
            let (shape, data) = weights.f32(&name, None).unwrap();
            (
                name.replace("backbone.embeddings.", "backbone.embedding."),
                shape,
                data,
            )
        })
        .collect();
    ssmgpu::loader::write_f32(&tmp.path().join("model.safetensors"), &tensors).unwrap();
    let config = serde_json::json!({
        "d_model": 64, "d_intermediate": 0, "n_layer": 2, "vocab_size": 256,
        "pad_vocab_size_multiple": 8, "rms_norm": true, "residual_in_fp32": true,
        "tie_embeddings": true,
        "ssm_cfg": {"layer": "Mamba2", "d_state": 16, "headdim": 16, "ngroups": 2,
                    "chunk_size": 16, "expand": 2}
    });
    std::fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();
    let model = LanguageModel::load(ctx, tmp.path()).unwrap();
    assert!(matches!(model, LanguageModel::Mamba2(_)));
    let reference = golden(&format!("{CASE}/reference.safetensors"));
    let (shape, ids) = reference.ints("input_ids").unwrap();
    let (logits, _) = pollster::block_on(model.run(ctx, &ids, shape[0], false)).unwrap();
    assert_close(
        "state-spaces layout logits",
        &logits,
        &f32s(&reference, "logits").1,
        ATOL,
        0.0,
    );
}
