//! Bad input gets a typed error naming what was wrong, never a panic: truncated or lying
//! safetensors, missing or mis-shaped tensors, configs that disagree with the weights,
//! unknown dtypes, out-of-vocabulary ids, empty input, tensors past the device's limits.

mod common;

use std::path::Path;

use common::{ctx, golden_dir, model_dir, tiny, tiny_tensors};
use safetensors::tensor::{Dtype, TensorView};
use ssmgpu::loader::{write_f32, SafetensorsFile};
use ssmgpu::models::lm::CausalLm;
use ssmgpu::models::mamba::MambaLm;
use ssmgpu::runtime::DType;
use ssmgpu::Error;

fn load_err(dir: &Path) -> Error {
    match MambaLm::load(ctx(), dir) {
        Ok(_) => panic!("{} loaded, expected an error", dir.display()),
        Err(e) => {
            eprintln!("{e}");
            e
        }
    }
}

#[test]
fn truncated_safetensors_is_a_typed_error() {
    let dir = model_dir(&tiny_tensors(), |_| {});
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    for keep in [0, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..keep]).unwrap();
        match load_err(dir.path()) {
            Error::Safetensors { path: p, .. } => assert_eq!(p, path),
            e => panic!("truncated to {keep}: {e:?}"),
        }
    }
}

#[test]
fn lying_header_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lie.safetensors");
    // Claims 4000 bytes of data, holds 8.
    let header = br#"{"w":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 8]);
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        SafetensorsFile::open(&path),
        Err(Error::Safetensors { .. })
    ));
    // A header length far past the end of the file.
    let mut bytes = u64::MAX.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        SafetensorsFile::open(&path),
        Err(Error::Safetensors { .. })
    ));
    // Shape and offsets that disagree.
    let header = br#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 8]);
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        SafetensorsFile::open(&path),
        Err(Error::Safetensors { .. })
    ));
}

#[test]
fn missing_tensor_is_named() {
    let mut t = tiny_tensors();
    t.retain(|(n, _, _)| n != "backbone.layers.1.mixer.D");
    let dir = model_dir(&t, |_| {});
    match load_err(dir.path()) {
        Error::MissingTensor { name, .. } => assert_eq!(name, "backbone.layers.1.mixer.D"),
        e => panic!("{e:?}"),
    }
}

#[test]
fn misshaped_tensor_is_named_with_both_shapes() {
    let mut t = tiny_tensors();
    for (n, shape, data) in t.iter_mut() {
        if n == "backbone.layers.0.mixer.x_proj.weight" {
            *shape = vec![35, 128];
            data.truncate(35 * 128);
        }
    }
    let dir = model_dir(&t, |_| {});
    match load_err(dir.path()) {
        Error::ShapeMismatch {
            name,
            expected,
            got,
            ..
        } => {
            assert_eq!(name, "backbone.layers.0.mixer.x_proj.weight");
            assert_eq!((expected, got), (vec![36, 128], vec![35, 128]));
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn config_that_disagrees_with_weights_is_an_error() {
    let dir = model_dir(&tiny_tensors(), |c| c["hidden_size"] = 32.into());
    assert!(matches!(load_err(dir.path()), Error::ShapeMismatch { .. }));
    let dir = model_dir(&tiny_tensors(), |c| c["num_hidden_layers"] = 3.into());
    match load_err(dir.path()) {
        Error::MissingTensor { name, .. } => {
            assert!(name.starts_with("backbone.layers.2."), "{name}")
        }
        e => panic!("{e:?}"),
    }
    let dir = model_dir(&tiny_tensors(), |c| c["state_size"] = 64.into());
    assert!(matches!(load_err(dir.path()), Error::Config { .. }));
    let dir = model_dir(&tiny_tensors(), |c| c["hidden_size"] = "big".into());
    assert!(matches!(load_err(dir.path()), Error::Config { .. }));
    let dir = model_dir(&tiny_tensors(), |c| {
        c.as_object_mut().unwrap().remove("vocab_size");
    });
    assert!(matches!(load_err(dir.path()), Error::Config { .. }));
}

#[test]
fn config_that_is_not_json_is_an_error() {
    let dir = model_dir(&tiny_tensors(), |_| {});
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    assert!(matches!(load_err(dir.path()), Error::Config { .. }));
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    assert!(matches!(load_err(dir.path()), Error::Io { .. }));
}

#[test]
fn unknown_dtype_is_named() {
    let dir = model_dir(&tiny_tensors(), |_| {});
    let path = dir.path().join("model.safetensors");
    let t = tiny_tensors();
    let mut views = Vec::new();
    let bytes: Vec<Vec<u8>> = t
        .iter()
        .map(|(_, _, d)| bytemuck::cast_slice(d).to_vec())
        .collect();
    for ((n, shape, _), b) in t.iter().zip(&bytes) {
        if n == "backbone.norm_f.weight" {
            views.push((
                n.clone(),
                TensorView::new(Dtype::U8, vec![shape[0] * 4], b).unwrap(),
            ));
        } else {
            views.push((
                n.clone(),
                TensorView::new(Dtype::F32, shape.clone(), b).unwrap(),
            ));
        }
    }
    safetensors::serialize_to_file(views, None, &path).unwrap();
    match load_err(dir.path()) {
        Error::UnsupportedDtype { name, dtype, .. } => {
            assert_eq!(name, "backbone.norm_f.weight");
            assert_eq!(dtype, "U8");
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn half_precision_weights_load() {
    // The same model stored as bf16 and f16 loads (computed in f32) and stays close to f32.
    let ctx = ctx();
    let f32_model = MambaLm::load(ctx, &tiny()).unwrap();
    let ids = [1i64, 2, 3, 4, 5];
    let (want, _) = pollster::block_on(f32_model.run(ctx, &ids, 1, false)).unwrap();
    for dtype in [Dtype::F16, Dtype::BF16] {
        let dir = model_dir(&tiny_tensors(), |_| {});
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tiny_tensors()
            .into_iter()
            .map(|(n, s, d)| {
                let b = d
                    .iter()
                    .flat_map(|v| match dtype {
                        Dtype::F16 => half::f16::from_f32(*v).to_le_bytes(),
                        _ => half::bf16::from_f32(*v).to_le_bytes(),
                    })
                    .collect();
                (n, s, b)
            })
            .collect();
        let views: Vec<_> = bytes
            .iter()
            .map(|(n, s, b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
        let model = MambaLm::load(ctx, dir.path()).unwrap();
        let (got, _) = pollster::block_on(model.run(ctx, &ids, 1, false)).unwrap();
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!("{dtype:?}: max logit difference to f32 weights {err:.3e}");
        assert!(err < 0.1, "{dtype:?}: {err}");
    }
}

#[test]
fn token_ids_outside_the_vocabulary_and_empty_input_are_errors() {
    let ctx = ctx();
    let model = MambaLm::load(ctx, &tiny()).unwrap();
    match pollster::block_on(model.run(ctx, &[1, 256, 3], 1, false)) {
        Err(Error::TokenOutOfRange {
            id,
            position,
            vocab,
        }) => assert_eq!((id, position, vocab), (256, 1, 256)),
        other => panic!("{:?}", other.err()),
    }
    assert!(matches!(
        pollster::block_on(model.run(ctx, &[-1], 1, false)),
        Err(Error::TokenOutOfRange { .. })
    ));
    assert!(matches!(
        pollster::block_on(model.run(ctx, &[], 1, false)),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        pollster::block_on(model.run(ctx, &[1, 2, 3], 2, false)),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        pollster::block_on(model.generate(ctx, &[], 3, None, None)),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        pollster::block_on(model.generate(ctx, &[999], 3, None, None)),
        Err(Error::TokenOutOfRange { .. })
    ));
}

/// A forward pass abandoned after some dispatches (an error midway drops its recorder
/// unsubmitted, with the dispatches' compute pass still open) leaves the context working.
#[test]
fn an_abandoned_recording_loses_nothing() {
    use ssmgpu::ops::matmul::{matmul, matmul_ref};
    let ctx = ctx();
    let x: Vec<f32> = (0..6 * 8).map(|i| i as f32 * 0.1).collect();
    let w: Vec<f32> = (0..5 * 8).map(|i| 1.0 - i as f32 * 0.05).collect();
    let xt = ctx.upload_f32("x", &[6, 8], &x).unwrap();
    let wt = ctx.upload_f32("w", &[5, 8], &w).unwrap();
    {
        let mut abandoned = ctx.recorder();
        let y = matmul(&mut abandoned, "y", xt.mat(), &wt, None).unwrap();
        matmul(&mut abandoned, "y2", xt.mat(), &wt, None).unwrap();
        drop(y);
    }
    let mut rec = ctx.recorder();
    let y = matmul(&mut rec, "y", xt.mat(), &wt, None).unwrap();
    let got = rec.submit_and_read_blocking(&[&y]).unwrap().remove(0);
    common::assert_close(
        "matmul",
        &got,
        &matmul_ref(&x, 6, 8, &w, 5, None),
        1e-5,
        1e-5,
    );
}

#[test]
fn tensors_past_the_device_limit_are_refused_by_name() {
    let ctx = ctx();
    let limit = ctx.limits().max_storage_buffer_binding_size;
    let too_many = (limit / 4 + 1) as usize;
    match ctx.alloc("huge_activation", &[too_many], DType::F32) {
        Err(Error::TooLarge {
            name, limit_name, ..
        }) => {
            assert_eq!(name, "huge_activation");
            assert_eq!(limit_name, "max_storage_buffer_binding_size");
        }
        other => panic!("{:?}", other.map(|t| t.shape().to_vec())),
    }
    // The context still works afterwards.
    assert!(ctx.alloc("fine", &[16], DType::F32).is_ok());
}

fn cli(args: &[&str]) -> (bool, String) {
    let (ok, _, stderr) = common::cli(args);
    (ok, stderr)
}

fn cli_run(model: &str, input: &str, out: &str) -> (bool, String) {
    cli(&["run", "--model", model, "--input", input, "--out", out])
}

#[test]
fn cli_reports_bad_input_with_a_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny();
    let model = model.to_str().unwrap();
    let out = dir.path().join("out.safetensors");
    let out = out.to_str().unwrap();

    // ids out of the vocabulary
    let input = dir.path().join("ids.safetensors");
    let ids: Vec<u8> = [5i64, 300].iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = TensorView::new(Dtype::I64, vec![1, 2], &ids).unwrap();
    safetensors::serialize_to_file([("input_ids", view)], None, &input).unwrap();
    let (ok, err) = cli_run(model, input.to_str().unwrap(), out);
    assert!(!ok && err.contains("300"), "{err}");

    // a missing input file, an input without input_ids, a truncated input
    let (ok, err) = cli_run(model, "/nonexistent.safetensors", out);
    assert!(!ok && err.contains("/nonexistent.safetensors"), "{err}");
    let other = dir.path().join("other.safetensors");
    write_f32(&other, &[("x".into(), vec![1], vec![0.0])]).unwrap();
    let (ok, err) = cli_run(model, other.to_str().unwrap(), out);
    assert!(!ok && err.contains("input_ids"), "{err}");
    std::fs::write(&other, b"\x10\x00\x00").unwrap();
    let (ok, err) = cli_run(model, other.to_str().unwrap(), out);
    assert!(!ok && err.contains("other.safetensors"), "{err}");

    // a model folder that is not a model
    let (ok, err) = cli(&[
        "generate",
        "--model",
        dir.path().to_str().unwrap(),
        "--ids",
        "1,2",
    ]);
    assert!(!ok && err.contains("config.json"), "{err}");
}

#[test]
fn cli_run_writes_logits_and_hidden_states() {
    let dir = tempfile::tempdir().unwrap();
    let input = golden_dir().join("mamba1_tiny/reference.safetensors");
    let out = dir.path().join("out.safetensors");
    let (ok, err) = cli(&[
        "run",
        "--model",
        tiny().to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--hidden-states",
    ]);
    assert!(ok, "{err}");
    let f = SafetensorsFile::open(&out).unwrap();
    assert_eq!(f.shape("logits").unwrap(), vec![2, 17, 256]);
    assert_eq!(f.shape("hidden_states.2").unwrap(), vec![2, 17, 64]);
    let reference = SafetensorsFile::open(&input).unwrap();
    let got = f.f32("logits", None).unwrap().1;
    let want = reference.f32("logits", None).unwrap().1;
    let err = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(err < 1e-4, "{err}");
}

#[test]
fn cli_generate_matches_transformers() {
    let model = tiny();
    let (ok, stdout, stderr) = common::cli(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--ids",
        "195,206,30,25,113,189,15,191",
        "--max-new-tokens",
        "12",
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        v["generated_ids"],
        serde_json::json!([191, 191, 191, 191, 191, 191, 191, 191, 191, 191, 191, 191])
    );
}

#[test]
fn model_from_bytes_names_the_bad_part() {
    use ssmgpu::models::{vision::Classifier, ModelDir};
    let model = ssmgpu::assets::path(ssmgpu::assets::VIM_MNIST);
    let config = std::fs::read_to_string(model.join("config.json")).unwrap();
    let weights = std::fs::read(model.join("model.safetensors")).unwrap();
    let label = Path::new("fetched");
    match ModelDir::from_bytes("fetched", "{not json", weights.clone()) {
        Err(Error::Config { path, .. }) => assert_eq!(path, label.join("config.json")),
        other => panic!("bad config: {:?}", other.err()),
    }
    match ModelDir::from_bytes("fetched", &config, weights[..weights.len() / 2].to_vec()) {
        Err(Error::Safetensors { path, .. }) => assert_eq!(path, label.join("model.safetensors")),
        other => panic!("truncated weights: {:?}", other.err()),
    }
    let dir = ModelDir::from_bytes("fetched", &config, weights).unwrap();
    let classifier = Classifier::from_model_dir(ctx(), &dir).unwrap();
    assert_eq!(classifier.labels.len(), 10);
}
