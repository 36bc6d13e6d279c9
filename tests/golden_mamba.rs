//! Whole Mamba-1 LMs against transformers' outputs (golden/mamba1_*): logits and hidden
//! states within 1e-4 absolute, greedy generations exactly.

mod common;

use std::path::Path;

use common::{check_lm_golden, ctx, golden_dir};
use ssmgpu::loader::{write_f32, SafetensorsFile};
use ssmgpu::models::mamba::MambaLm;
use ssmgpu::Context;

const ATOL: f32 = 1e-4;

fn check_model(ctx: &Context, case: &str, dir: &Path) {
    let model = MambaLm::load(ctx, dir).unwrap();
    check_lm_golden(ctx, case, &model, model.config.n_layer, ATOL);
}

#[test]
fn mamba1_tiny_matches_transformers() {
    check_model(ctx(), "mamba1_tiny", &golden_dir().join("mamba1_tiny"));
}

#[test]
fn mamba1_small_matches_transformers() {
    check_model(ctx(), "mamba1_small", &golden_dir().join("mamba1_small"));
}

/// Bound to 256 KiB per binding (as 128 MiB binds Mamba-130m's 154 MB vocabulary), the
/// 1000 x 128 embedding and tied head split into two shards and give the same outputs.
#[test]
fn mamba1_small_with_its_vocabulary_split_across_bindings() {
    let ctx = common::ctx_with_binding_limit(256 << 10);
    check_model(&ctx, "mamba1_small", &golden_dir().join("mamba1_small"));
}

/// The same weights in the state-spaces layout (`backbone.embedding.weight`, `d_model`, ...)
/// give the same outputs.
#[test]
fn state_spaces_layout_loads_the_same_model() {
    let src = golden_dir().join("mamba1_tiny");
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
    write_f32(&tmp.path().join("model.safetensors"), &tensors).unwrap();
    let config = serde_json::json!({
        "d_model": 64, "n_layer": 2, "vocab_size": 256, "pad_vocab_size_multiple": 8,
        "ssm_cfg": {}, "rms_norm": true, "residual_in_fp32": true, "fused_add_norm": true,
        "tie_embeddings": true
    });
    std::fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();
    check_model(ctx(), "mamba1_tiny", tmp.path());
}
