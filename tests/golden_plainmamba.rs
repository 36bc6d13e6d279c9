//! PlainMamba against the authors' code (golden/vision/plainmamba_*): logits within 1e-4
//! absolute, intermediates within 1e-4 of each tensor's largest value, the scan orders exactly;
//! other grid sizes get the position embedding resized as PyTorch does; bad input is a typed
//! error.

mod common;

use std::path::PathBuf;

use common::{assert_close, ctx, f32s, golden, golden_dir};
use ssmgpu::loader::{write_f32, SafetensorsFile};
use ssmgpu::models::plainmamba::{resize_pos_embed, PlainMamba};
use ssmgpu::models::{ModelDir, Trace};
use ssmgpu::ops::zigzag_scan::ScanOrders;
use ssmgpu::{Error, Tensor};

const ATOL: f32 = 1e-4;
const RTOL: f32 = 1e-4;

fn case_dir(case: &str) -> PathBuf {
    golden_dir().join("vision").join(case)
}

fn load(case: &str) -> PlainMamba {
    let dir = ModelDir::open(&case_dir(case)).unwrap();
    PlainMamba::from_model_dir(ctx(), &dir).unwrap()
}

/// Logits and the traced intermediates; returns (logits, trace names and values).
fn run(model: &PlainMamba, shape: &[usize], pixels: &[f32]) -> (Vec<f32>, Vec<(String, Vec<f32>)>) {
    let ctx = ctx();
    let pixels = ctx.upload_f32("pixel_values", shape, pixels).unwrap();
    let mut trace = Trace::new();
    let mut rec = ctx.recorder();
    let logits = model
        .forward(&mut rec, &pixels, None, Some(&mut trace))
        .unwrap();
    let mut wanted: Vec<&Tensor> = vec![&logits];
    wanted.extend(trace.iter().map(|(_, t)| t));
    let mut data = rec.submit_and_read_blocking(&wanted).unwrap();
    let logits = data.remove(0);
    let names = trace.into_iter().map(|(name, _)| name);
    (logits, names.zip(data).collect())
}

/// Runs `input` of `case` and holds every output to `output`; returns the logits' max error.
fn check(case: &str, input: &str, output: &str) -> f32 {
    let model = load(case);
    let (shape, pixels) = f32s(&golden(&format!("vision/{case}/{input}")), "pixel_values");
    let (logits, trace) = run(&model, &shape, &pixels);
    let reference = golden(&format!("vision/{case}/{output}"));
    let err = assert_close(
        &format!("{case} {output} logits"),
        &logits,
        &f32s(&reference, "logits").1,
        ATOL,
        0.0,
    );
    let mut expected = vec!["patch_embed_out".to_string(), "embed_tokens".to_string()];
    for i in 0..model.config.num_layers {
        expected.push(format!("layers.{i}.mamba_out"));
        expected.push(format!("layers.{i}.out"));
    }
    expected.extend(["final_norm_out".to_string(), "head_input".to_string()]);
    let mut names: Vec<String> = trace.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    expected.sort();
    assert_eq!(names, expected, "traced intermediates");
    for (name, got) in &trace {
        let want = f32s(&reference, name).1;
        assert_close(&format!("{case} {output} {name}"), got, &want, 0.0, RTOL);
    }
    eprintln!("{case} {output}: logits max abs err {err:.2e}");
    err
}

#[test]
fn small_case_matches_the_authors_code() {
    check(
        "plainmamba_small_case",
        "input.safetensors",
        "output.safetensors",
    );
}

#[test]
fn small_case_batch2_matches_the_authors_code() {
    check(
        "plainmamba_small_case",
        "input_batch2.safetensors",
        "output_batch2.safetensors",
    );
}

#[test]
fn odd_nonsquare_grid_matches_the_authors_code() {
    check(
        "plainmamba_odd_nonsquare",
        "input.safetensors",
        "output.safetensors",
    );
}

#[test]
fn scan_orders_match_the_authors_code() {
    for (case, grid) in [
        ("plainmamba_small_case", (4, 4)),
        ("plainmamba_odd_nonsquare", (5, 7)),
    ] {
        let reference = golden(&format!("vision/{case}/output.safetensors"));
        let ints = |name: &str| -> Vec<Vec<u32>> {
            let (shape, v) = reference.ints(name).unwrap();
            v.chunks(shape[1])
                .map(|r| r.iter().map(|&i| i as u32).collect())
                .collect()
        };
        let ours = ScanOrders::new(grid.0, grid.1);
        assert_eq!(ours.orders.to_vec(), ints("scan_orders"), "{case} orders");
        assert_eq!(
            ours.directions.to_vec(),
            ints("scan_direction_ids"),
            "{case} directions"
        );
        for (order, inverse) in ours.orders.iter().zip(ints("scan_inverse_orders")) {
            for (s, &pos) in order.iter().enumerate() {
                assert_eq!(inverse[pos as usize] as usize, s, "{case} inverse order");
            }
        }
    }
}

/// Values from `torch.nn.functional.interpolate(mode="bicubic", align_corners=False)` on
/// `src[i, j, k] = sin(0.7 (i w + j)(k + 1) + k)`, channels last.
#[test]
fn pos_embed_resize_matches_pytorch_bicubic() {
    let src = |h: usize, w: usize, c: usize| -> Vec<f32> {
        (0..h * w * c)
            .map(|i| {
                let (pix, k) = ((i / c) as f32, (i % c) as f32);
                (0.7 * pix * (k + 1.0) + k).sin()
            })
            .collect()
    };
    let up = [
        -0.099164, 0.913787, 0.314041, 0.892428, 0.869734, 0.438178, 1.126981, -0.470603, 1.141807,
        -0.897127, 1.029687, -0.891555, 0.196755, 0.673444, 0.22282, 0.859403, 0.226053, 0.651982,
        0.179442, -0.186627, 0.072835, -0.791969, -0.007784, -0.992496, 0.394517, 0.252703,
        0.040927, 0.740879, -0.48313, 0.927221, -0.799113, 0.26228, -0.975839, -0.56851, -0.992077,
        -1.068237, -0.235261, -0.22929, -0.226815, 0.442775, -0.1789, 0.977713, -0.101448,
        0.647613, 0.022407, -0.207251, 0.104611, -0.88505, -0.7914, -0.5327, -0.406427, 0.224848,
        0.220861, 0.96011, 0.676899, 0.866133, 1.061003, 0.03979, 1.20978, -0.71939,
    ];
    let got = resize_pos_embed(&src(3, 4, 2), (3, 4), (5, 6), 2);
    assert_close("bicubic 3x4 -> 5x6", &got, &up, 2e-6, 0.0);
    let down = [0.2406, 0.014086, -0.225139, 0.04561, 0.267136, 0.247592];
    let got = resize_pos_embed(&src(4, 4, 1), (4, 4), (2, 3), 1);
    assert_close("bicubic 4x4 -> 2x3", &got, &down, 2e-6, 0.0);
    let same = src(3, 4, 2);
    assert_eq!(resize_pos_embed(&same, (3, 4), (3, 4), 2), same);
}

/// A grid other than the config's: the model runs with the resized position embedding.
#[test]
fn other_image_sizes_use_the_resized_pos_embed() {
    let case = "plainmamba_small_case";
    let model = load(case);
    let (h, w) = (96, 48);
    let pixels: Vec<f32> = (0..3 * h * w).map(|i| (i as f32 * 0.37).sin()).collect();
    let (logits, trace) = run(&model, &[1, 3, h, w], &pixels);
    assert!(logits.iter().all(|v| v.is_finite()) && logits.len() == model.num_classes());
    let get = |name: &str| &trace.iter().find(|(n, _)| n == name).unwrap().1;
    let added: Vec<f32> = get("embed_tokens")
        .iter()
        .zip(get("patch_embed_out"))
        .map(|(a, b)| a - b)
        .collect();
    let pos = f32s(
        &SafetensorsFile::open(case_dir(case).join("model.safetensors")).unwrap(),
        "backbone.pos_embed",
    )
    .1;
    let want = resize_pos_embed(&pos, (4, 4), (6, 3), 64);
    assert_close("resized pos_embed", &added, &want, 1e-6, 0.0);
}

#[test]
fn bad_pixels_are_typed_errors() {
    let ctx = ctx();
    let model = load("plainmamba_small_case");
    for (shape, why) in [
        (vec![1, 1, 64, 64], "1 channel(s), this PlainMamba takes 3"),
        (vec![1, 3, 60, 64], "multiples of the patch size 16"),
        (vec![1, 3, 64, 40], "multiples of the patch size 16"),
        (vec![3, 64, 64], "[batch, 3, H, W]"),
        (vec![0, 3, 64, 64], "an empty batch"),
    ] {
        let n: usize = shape.iter().product();
        let pixels = ctx
            .upload_f32("pixel_values", &shape, &vec![0.0; n])
            .unwrap();
        let mut rec = ctx.recorder();
        match model.forward(&mut rec, &pixels, None, None) {
            Err(Error::InvalidInput(message)) => {
                assert!(message.contains(why), "{shape:?}: {message}")
            }
            other => panic!("{shape:?}: expected InvalidInput, got {other:?}"),
        }
    }
}

#[test]
fn missing_or_misshaped_weights_are_typed_errors() {
    let src = case_dir("plainmamba_small_case");
    let weights = SafetensorsFile::open(src.join("model.safetensors")).unwrap();
    let config = std::fs::read_to_string(src.join("config.json")).unwrap();
    // (tensor to drop, tensor to reshape)
    for (drop, reshape) in [
        (Some("head.fc.bias"), None),
        (None, Some("backbone.layers.1.mamba.direction_Bs")),
    ] {
        let tensors: Vec<_> = weights
            .names()
            .into_iter()
            .filter(|n| !n.ends_with("num_batches_tracked") && Some(n.as_str()) != drop)
            .map(|n| {
                let (mut shape, data) = weights.f32(&n, None).unwrap();
                if Some(n.as_str()) == reshape {
                    shape = vec![data.len()];
                }
                (n, shape, data)
            })
            .collect();
        let tmp = tempfile::tempdir().unwrap();
        write_f32(&tmp.path().join("model.safetensors"), &tensors).unwrap();
        std::fs::write(tmp.path().join("config.json"), &config).unwrap();
        let dir = ModelDir::open(tmp.path()).unwrap();
        match (PlainMamba::from_model_dir(ctx(), &dir), drop) {
            (Err(Error::MissingTensor { name, .. }), Some(d)) => assert_eq!(name, d),
            (Err(Error::ShapeMismatch { name, got, .. }), None) => {
                assert_eq!(Some(name.as_str()), reshape);
                assert_eq!(got, [80]);
            }
            (Err(e), _) => panic!("unexpected error {e}"),
            (Ok(_), _) => panic!("loaded with {drop:?} / {reshape:?}"),
        }
    }
}
