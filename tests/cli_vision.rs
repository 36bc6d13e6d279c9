//! The `ssmgpu` binary on vision models: `run` on the golden cases, `classify` and `eval` on the
//! shipped MNIST models, and typed errors for bad images.

mod common;

use std::process::Command;

use common::golden_dir;
use ssmgpu::loader::SafetensorsFile;

/// Runs the binary; returns (success, stdout, stderr). A panic is always a failure.
fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ssmgpu"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    (out.status.success(), stdout, stderr)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn run_writes_golden_logits_and_intermediates_for_both_vision_models() {
    let dir = tempfile::tempdir().unwrap();
    for (case, layer_key, tokens) in [
        ("vim_small_case", "layers.3.hidden", 17),
        ("plainmamba_small_case", "layers.3.out", 16),
    ] {
        let case_dir = golden_dir().join("vision").join(case);
        let out = dir.path().join(format!("{case}.safetensors"));
        let (ok, _, err) = cli(&[
            "run",
            "--model",
            case_dir.to_str().unwrap(),
            "--input",
            case_dir.join("input_batch2.safetensors").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--hidden-states",
        ]);
        assert!(ok, "{case}: {err}");
        let got = SafetensorsFile::open(&out).unwrap();
        let want = SafetensorsFile::open(case_dir.join("output_batch2.safetensors")).unwrap();
        assert_eq!(got.shape("logits").unwrap(), vec![2, 10]);
        let err = max_abs_diff(
            &got.f32("logits", None).unwrap().1,
            &want.f32("logits", None).unwrap().1,
        );
        assert!(err < 1e-4, "{case}: logits error {err}");
        assert_eq!(got.shape(layer_key).unwrap(), vec![2, tokens, 64]);
        let err = max_abs_diff(
            &got.f32(layer_key, None).unwrap().1,
            &want.f32(layer_key, None).unwrap().1,
        );
        assert!(err < 1e-3, "{case} {layer_key}: error {err}");
    }
}

#[test]
fn run_names_pixels_of_the_wrong_shape() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("pixels.safetensors");
    ssmgpu::loader::write_f32(
        &input,
        &[(
            "pixel_values".into(),
            vec![1, 3, 48, 64],
            vec![0.0; 3 * 48 * 64],
        )],
    )
    .unwrap();
    let model = golden_dir().join("vision/vim_small_case");
    let out = dir.path().join("out.safetensors");
    let (ok, _, err) = cli(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("pixel_values") && err.contains("48"),
        "{err}"
    );
}
