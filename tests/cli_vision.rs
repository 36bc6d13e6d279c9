//! The `ssmgpu` binary on vision models: `run` on the golden cases, `classify` and `eval` on the
//! shipped MNIST models, and typed errors for bad images.

mod common;

use common::{cli, golden_dir};
use ssmgpu::loader::SafetensorsFile;

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

fn repo(relative: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// `metrics.json` written by tools/train_mnist.py: the PyTorch model's results.
fn torch_metrics(model: &str) -> serde_json::Value {
    let path = repo(&format!("assets/models/{model}/metrics.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[test]
fn classify_with_no_arguments_agrees_with_pytorch_on_the_shipped_samples() {
    let (ok, out, err) = cli(&["classify", "--json", "--top", "2"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let results = v["results"].as_array().unwrap();
    let samples = &torch_metrics("vim-mnist")["sample_predictions"];
    assert_eq!(results.len(), samples.as_object().unwrap().len());
    for r in results {
        let image = r["image"].as_str().unwrap();
        let name = std::path::Path::new(image)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        let torch = &samples[name];
        let top = &r["top"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert_eq!(
            top[0]["label"].as_str().unwrap(),
            torch["pred"].to_string(),
            "{name}"
        );
        let p = top[0]["probability"].as_f64().unwrap();
        assert!(p > 0.0 && p <= 1.0, "{name}: {p}");
    }
}

#[test]
fn eval_top1_matches_pytorch_on_the_shipped_test_split() {
    for model in ["vim-mnist", "plainmamba-mnist"] {
        let dir = repo(&format!("assets/models/{model}"));
        let (ok, out, err) = cli(&["eval", "--model", dir.to_str().unwrap(), "--json"]);
        assert!(ok, "{model}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let torch = torch_metrics(model);
        let images = v["images"].as_u64().unwrap();
        assert_eq!(images, torch["test_images"].as_u64().unwrap());
        let top1 = v["top1"].as_f64().unwrap();
        let torch_top1 = torch["test_top1_percent"].as_f64().unwrap();
        eprintln!("{model}: engine top-1 {top1:.2}%, PyTorch {torch_top1:.2}%");
        assert!(
            (top1 - torch_top1).abs() <= 0.1,
            "{model}: {top1} vs {torch_top1}"
        );
        assert!(top1 >= 98.5, "{model}: top-1 {top1}");
        for key in ["images_per_s", "gflops_per_image"] {
            assert!(v[key].as_f64().unwrap() > 0.0, "{model}: {key}");
        }
    }
}

#[test]
fn classify_names_unreadable_images() {
    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("corrupt.png");
    std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let empty = dir.path().join("empty.jpg");
    std::fs::write(&empty, b"").unwrap();
    for path in [corrupt, empty, dir.path().join("missing.webp")] {
        let (ok, _, err) = cli(&["classify", path.to_str().unwrap()]);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(!ok && err.contains(name), "{name}: {err}");
    }
}

#[test]
fn classify_dumps_the_kept_positions_of_each_layer() {
    let dir = tempfile::tempdir().unwrap();
    let masks = dir.path().join("masks.json");
    let model = golden_dir().join("vision/vim_small_case");
    let samples = repo("assets/samples/mnist");
    let mut images: Vec<_> = std::fs::read_dir(&samples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    images.sort();
    let images: Vec<&str> = images[..2].iter().map(|p| p.to_str().unwrap()).collect();
    let mut args = vec![
        "classify",
        "--model",
        model.to_str().unwrap(),
        "--prune",
        "2:0.5",
        "--align",
        "decay",
        "--dump-masks",
        masks.to_str().unwrap(),
    ];
    args.extend(&images);
    let (ok, _, err) = cli(&args);
    assert!(ok, "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&masks).unwrap()).unwrap();
    assert_eq!(v["align"], "Decay");
    let dumped = v["images"].as_array().unwrap();
    assert_eq!(dumped.len(), 2);
    for image in dumped {
        let layers = image["layers"].as_array().unwrap();
        let lens: Vec<usize> = layers
            .iter()
            .map(|l| l["positions"].as_array().unwrap().len())
            .collect();
        assert_eq!(lens, [17, 17, 9, 9]);
        // The class token (original position 8) stays in the middle.
        assert_eq!(layers[2]["positions"][4], 8);
        let steps = image["pruning_steps"].as_array().unwrap();
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0]["after_layer"], 2);
        assert_eq!(steps[0]["scores"].as_array().unwrap().len(), 17);
    }
    // Bad pruning options are named.
    let (ok, _, err) = cli(&[
        "classify",
        "--model",
        model.to_str().unwrap(),
        "--prune",
        "2:0.5",
        "--align",
        "sideways",
        images[0],
    ]);
    assert!(!ok && err.contains("sideways"), "{err}");
}

#[test]
fn bench_times_unpruned_and_pruned_in_one_run() {
    let model = repo("assets/models/plainmamba-mnist");
    let (ok, out, err) = cli(&[
        "bench",
        "--model",
        model.to_str().unwrap(),
        "--prune",
        "1:0.5,2:0.5",
        "--batch",
        "1,2",
        "--reps",
        "1",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for key in [
        "ms_unpruned",
        "ms_pruned",
        "speedup",
        "speedup_gpu",
        "record_ms",
        "flops_ratio",
    ] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {v}");
    }
    // PlainMamba-mnist: 38 dispatches unpruned, 3 more per pruning step.
    assert_eq!(v["dispatches_unpruned"], 38, "{v}");
    assert_eq!(v["dispatches_pruned"], 44, "{v}");
    assert!(
        v["profile_unpruned"]["gpu_ms"]
            .as_f64()
            .is_some_and(|x| x > 0.0),
        "{v}"
    );
    assert!(v["flops_ratio"].as_f64().unwrap() > 1.2, "{v}");
    let batches: Vec<u64> = v["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["batch"].as_u64().unwrap())
        .collect();
    assert_eq!(batches, [1, 2]);
    // lavapipe has timestamps: the machinery's kernels are in the profile.
    let profile = &v["profile"];
    let share = profile["pruning_share"].as_f64().unwrap();
    assert!(share > 0.0 && share < 1.0, "{profile}");
    let kernels: Vec<&str> = profile["kernels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k[0].as_str().unwrap())
        .collect();
    for k in ["topk", "gather_rows", "kept_grid", "zigzag_scan"] {
        assert!(kernels.contains(&k), "{k} not in {kernels:?}");
    }
}

/// An unknown random-model kind is refused by name, before a device is opened.
#[test]
fn bench_refuses_an_unknown_random_vision_kind() {
    let (ok, _, err) = cli(&["bench", "--random-vision", "vim-xl"]);
    assert!(!ok);
    assert!(
        err.contains("vim-xl") && err.contains("vim-ti, vim-s, plainmamba-l1"),
        "{err}"
    );
}

#[test]
fn prune_study_writes_a_table_and_a_plot() {
    let dir = tempfile::tempdir().unwrap();
    let (md, png) = (dir.path().join("study.md"), dir.path().join("study.png"));
    let model = repo("assets/models/plainmamba-mnist");
    let (ok, _, err) = cli(&[
        "prune-study",
        "--model",
        model.to_str().unwrap(),
        "--limit",
        "16",
        "--out",
        md.to_str().unwrap(),
        "--plot",
        png.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let doc = std::fs::read_to_string(&md).unwrap();
    assert!(
        doc.contains("## plainmamba-mnist") && doc.contains("(study.png)"),
        "{doc}"
    );
    // One row per schedule, from 0.9 down until 60% fewer FLOPs, 6 methods each.
    let rows: Vec<&str> = doc.lines().filter(|l| l.starts_with("| 1:0.")).collect();
    assert!(rows.len() >= 5, "{doc}");
    assert!(
        rows.iter().all(|r| r.matches(" | ").count() == 7),
        "{rows:?}"
    );
    let last: f64 = rows
        .last()
        .unwrap()
        .split(" | ")
        .nth(1)
        .unwrap()
        .trim_end_matches('%')
        .parse()
        .unwrap();
    assert!(last >= 60.0, "{doc}");
    let plot = image::open(&png).unwrap().to_rgb8();
    assert_eq!(plot.dimensions(), (560, 460));
    // Lines in colour on white, not a blank frame.
    let coloured = plot
        .pixels()
        .filter(|p| p.0.iter().max().unwrap() - p.0.iter().min().unwrap() > 60)
        .count();
    assert!(coloured > 500, "{coloured} coloured pixels");
}
