//! Vim against the authors' model code (golden/vision, hustvl/Vim with bimamba v2 and the
//! middle class token): logits within 1e-4 absolute (the issue asks for 1e-3), and every
//! per-layer intermediate within 1e-4 of the tensor's largest value (golden/vision/README).

mod common;

use common::{assert_close, bcl_to_blc, ctx, f32s, flip_tokens, golden, golden_dir};
use ssmgpu::models::vim::Vim;
use ssmgpu::models::ModelDir;

const LOGITS_ATOL: f32 = 1e-4;
const RTOL: f32 = 1e-4;

/// Compare a traced tensor (token-major) with a golden one, both as flat f32.
fn close_to_max(what: &str, got: &[f32], want: &[f32]) {
    let max = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert_close(what, got, want, RTOL * max, 0.0);
}

fn check_case(case: &str, suffix: &str) {
    let ctx = ctx();
    let dir = golden_dir().join("vision").join(case);
    let model_dir = ModelDir::open(&dir).unwrap();
    let model = Vim::from_model_dir(ctx, &model_dir).unwrap();
    let input = golden(&format!("vision/{case}/input{suffix}.safetensors"));
    let output = golden(&format!("vision/{case}/output{suffix}.safetensors"));
    let (shape, pixels) = f32s(&input, "pixel_values");
    let pixels = ctx.upload_f32("pixel_values", &shape, &pixels).unwrap();
    let mut rec = ctx.recorder();
    let mut trace = Vec::new();
    let logits = model.forward(&mut rec, &pixels, Some(&mut trace)).unwrap();
    let mut tensors: Vec<_> = trace.iter().map(|(_, t)| t).collect();
    tensors.push(&logits);
    let mut got = rec.submit_and_read_blocking(&tensors).unwrap();
    let logits_got = got.pop().unwrap();
    let (_, logits_want) = f32s(&output, "logits");
    let err = assert_close(
        &format!("{case}{suffix} logits"),
        &logits_got,
        &logits_want,
        LOGITS_ATOL,
        0.0,
    );
    println!("{case}{suffix}: logits max abs error {err:.2e}");

    let c = &model.config;
    let (batch, len, e) = (shape[0], c.seq_len(), c.ssm.d_inner);
    let traced: std::collections::HashMap<_, _> =
        trace.iter().map(|(n, _)| n.as_str()).zip(got).collect();
    let direct = ["patch_embed_out", "embed_tokens", "final_norm_out"];
    for name in direct {
        close_to_max(
            &format!("{case} {name}"),
            &traced[name],
            &f32s(&output, name).1,
        );
    }
    // The head reads the middle class token.
    let d = c.embed_dim;
    let cls_rows: Vec<f32> = (0..batch)
        .flat_map(|b| {
            let start = (b * len + c.cls_position()) * d;
            traced["final_norm_out"][start..start + d].to_vec()
        })
        .collect();
    close_to_max(
        &format!("{case} head_input"),
        &cls_rows,
        &f32s(&output, "head_input").1,
    );
    for i in 0..c.depth {
        for name in ["mixer_in", "residual", "hidden"] {
            let key = format!("layers.{i}.{name}");
            close_to_max(
                &format!("{case} {key}"),
                &traced[key.as_str()],
                &f32s(&output, &key).1,
            );
        }
        // The authors' tensors are channel-major [B, C, L], the backward ones in flipped order.
        let bcl =
            |key: &str, channels: usize| bcl_to_blc(&f32s(&output, key).1, batch, channels, len);
        let key = format!("layers.{i}.xz");
        close_to_max(
            &format!("{case} {key}"),
            &traced[key.as_str()],
            &bcl(&key, 2 * e),
        );
        // Both directions' convs in one tensor [2·B·L, E]: forward, then backward.
        let conv = &traced[format!("layers.{i}.conv_out").as_str()];
        let half = conv.len() / 2;
        for (dir, got) in [("fwd", &conv[..half]), ("bwd", &conv[half..])] {
            let key = format!("layers.{i}.{dir}.conv_out");
            let mut want = bcl(&key, e);
            if dir == "bwd" {
                want = flip_tokens(&want, batch, len, e);
            }
            close_to_max(&format!("{case} {key}"), got, &want);
        }
        let fwd_y = bcl(&format!("layers.{i}.fwd.y"), e);
        let bwd_y = flip_tokens(&bcl(&format!("layers.{i}.bwd.y"), e), batch, len, e);
        let sum: Vec<f32> = fwd_y.iter().zip(&bwd_y).map(|(a, b)| a + b).collect();
        let key = format!("layers.{i}.y_sum");
        close_to_max(&format!("{case} {key}"), &traced[key.as_str()], &sum);
    }
}

#[test]
fn vim_small_case_matches_authors_code() {
    check_case("vim_small_case", "");
}

#[test]
fn vim_small_case_batch2_matches_authors_code() {
    check_case("vim_small_case", "_batch2");
}

#[test]
fn vim_ti_two_layers_matches_authors_code() {
    check_case("vim_ti_2layer", "");
}

#[test]
fn vim_rejects_pixels_of_the_wrong_shape() {
    let ctx = ctx();
    let dir = golden_dir().join("vision/vim_small_case");
    let model = Vim::from_model_dir(ctx, &ModelDir::open(&dir).unwrap()).unwrap();
    for shape in [[1, 3, 32, 64], [1, 1, 64, 64], [0, 3, 64, 64]] {
        let n: usize = shape.iter().product();
        let pixels = ctx.upload_f32("pixel_values", &shape, &vec![0.0; n.max(1)][..n]);
        let Ok(pixels) = pixels else { continue };
        let mut rec = ctx.recorder();
        let err = model.forward(&mut rec, &pixels, None).err();
        let message = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("pixel_values"), "{shape:?}: {message}");
    }
}
