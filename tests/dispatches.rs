//! Dispatches per forward pass, pinned for every model, unpruned and pruned: each costs 25-45 µs
//! on lavapipe and several µs of CPU in wgpu on any GPU, so a fusion undone (Vim's two
//! directions' convs or x_projs, the scan's dt_proj, an epilogue) fails here. The counts are
//! derived by hand in the comments, from the models' equations and the fusions they rely on.
//! They are wgpu's schedule, so these tests run on wgpu whatever `SSMGPU_TEST_BACKEND` says.

mod common;

use std::sync::OnceLock;

use common::golden_dir;
use ssmgpu::models::lm::LanguageModel;
use ssmgpu::models::vision::Classifier;
use ssmgpu::prune::{PruneSchedule, Pruning};
use ssmgpu::{Backend, Context, ContextOptions};

fn ctx() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| {
        let options = ContextOptions {
            backend: Backend::Wgpu,
            ..Default::default()
        };
        Context::with_options_blocking(options).expect("these tests need a wgpu adapter")
    })
}

/// The scan computes dt_proj itself in its subgroup variant; elsewhere it is a matmul per
/// direction.
fn dt_proj_matmuls(directions: usize) -> usize {
    if ctx().uses_subgroups() {
        0
    } else {
        directions
    }
}

fn assets(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets/models")
        .join(name)
}

/// Dispatches of one forward pass of a shipped vision model at batch 2, pruned with `schedule`.
fn vision_dispatches(model: &str, schedule: Option<&str>) -> usize {
    let ctx = ctx();
    let classifier = Classifier::load(ctx, &assets(model)).unwrap();
    let (c, h, w) = classifier.model.input_shape();
    let pixels = ctx
        .upload_f32("pixels", &[2, c, h, w], &vec![0.5; 2 * c * h * w])
        .unwrap();
    let pruning = schedule.map(|s| Pruning {
        schedule: PruneSchedule::parse(s).unwrap(),
        ..Pruning::default()
    });
    let mut rec = ctx.recorder();
    let logits = classifier
        .model
        .forward(&mut rec, &pixels, pruning.as_ref(), None)
        .unwrap();
    let n = rec.dispatch_count();
    let got = rec.submit_and_read_blocking(&[&logits]).unwrap().remove(0);
    assert!(got.iter().all(|v| v.is_finite()), "{model}: logits {got:?}");
    n
}

#[test]
fn vim_dispatches_per_pass() {
    // im2col, patch matmul, class token + position embedding; per layer: add + RMSNorm,
    // in_proj, both directions' convs (one), both x_projs (one, grouped), the forward scan
    // (dt_proj fused), the backward scan (adding onto the forward one), out_proj; final
    // add + RMSNorm, head. 4 layers: 3 + 7 * 4 + 2 = 33.
    let per_layer = 7 + dt_proj_matmuls(2);
    assert_eq!(vision_dispatches("vim-mnist", None), 5 + per_layer * 4);
    // Each pruning step: the scores and top-k (one), one gather of both streams and the
    // positions.
    assert_eq!(
        vision_dispatches("vim-mnist", Some("1:0.6,2:0.6")),
        5 + per_layer * 4 + 2 * 2
    );
}

#[test]
fn plainmamba_dispatches_per_pass() {
    // Stem conv (im2col + matmul), one patch conv (im2col + matmul), projection (im2col +
    // matmul), position embedding; per layer: LayerNorm, in_proj, depthwise conv, x_proj,
    // dt_proj, the four-direction zigzag scan with its gate, out_proj with the residual; the
    // depthwise conv + BN after layer 0; final LayerNorm and mean pool (one), head.
    // 7 + 7 * 4 + 1 + 2 = 38.
    assert_eq!(vision_dispatches("plainmamba-mnist", None), 38);
    // Each pruning step: the scores and top-k (one), gather, the kept tokens' grid for the
    // scans.
    assert_eq!(
        vision_dispatches("plainmamba-mnist", Some("1:0.5,2:0.5")),
        38 + 2 * 3
    );
}

#[test]
fn mamba_prefill_dispatches() {
    let ctx = ctx();
    let lm = LanguageModel::load(ctx, &golden_dir().join("mamba1_tiny")).unwrap();
    let ids = ctx.upload_u32("ids", &[8], &[1; 8]).unwrap();
    let mut rec = ctx.recorder();
    let logits = lm.record_prefill(&mut rec, &ids, None).unwrap();
    let n = rec.dispatch_count();
    rec.submit_and_read_blocking(&[&logits]).unwrap();
    // Embedding; per layer: add + RMSNorm, in_proj, conv, x_proj, the scan (dt_proj fused:
    // the rank is 4), out_proj; final add + RMSNorm, head. 2 layers: 1 + 6 * 2 + 2 = 15.
    assert_eq!(lm.n_layer(), 2);
    let per_layer = 6 + dt_proj_matmuls(1);
    assert_eq!(n, 1 + per_layer * 2 + 2);
}
