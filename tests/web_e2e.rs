//! The browser package end to end: the native engine classifies the shipped digits here, then
//! `web/tests/e2e.mjs` checks that the page in headless Chromium (WebGPU on SwiftShader) gets
//! the same logits within 1e-3, unpruned and pruned, and shows the pruned cells.
//!
//! Ignored by default: it needs `scripts/build-web.sh` (web/pkg), `npm ci` in web/ and the
//! system's Chromium, which `.ci/run` installs before running it with `--ignored`.

use std::path::Path;
use std::process::Command;

use ssmgpu::assets;
use ssmgpu::models::vision::Classifier;
use ssmgpu::preprocess::load_image;
use ssmgpu::prune::{PruneSchedule, Pruning};
use ssmgpu::Context;

/// The pruning step the test sets with the page's controls: after layer 2, keep half.
const PRUNE_LAYER: usize = 2;
const PRUNE_RATIO: f64 = 0.5;

#[test]
#[ignore = "needs web/pkg (scripts/build-web.sh), web/node_modules and /usr/bin/chromium; run by .ci/run"]
fn browser_matches_native() {
    let ctx = Context::new_blocking().unwrap();
    let mut classifier = Classifier::load(&ctx, &assets::path(assets::VIM_MNIST)).unwrap();
    let logits_of = |classifier: &Classifier, path: &Path| {
        let pixels = classifier
            .preprocess
            .apply(&load_image(path).unwrap())
            .unwrap();
        pollster::block_on(classifier.logits(&ctx, &pixels, 1)).unwrap()
    };
    let samples = assets::mnist_samples().unwrap();
    assert_eq!(samples.len(), 10);
    let mut expected = Vec::new();
    for path in &samples {
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        // `digitN_index.png`: N is the true label; the native engine must get it right too.
        let label = file["digit".len()..].split('_').next().unwrap().to_string();
        let logits = logits_of(&classifier, path);
        assert_eq!(classifier.top(&logits, 1)[0].0, label, "native on {file}");
        expected.push(serde_json::json!({ "file": file, "label": label, "logits": logits }));
    }
    // The page's default importance and alignment are the library's defaults.
    classifier.pruning = Some(Pruning {
        schedule: PruneSchedule::parse(&format!("{PRUNE_LAYER}:{PRUNE_RATIO}")).unwrap(),
        ..Default::default()
    });
    let pruned = &samples[3];
    let doc = serde_json::json!({
        "samples": expected,
        "pruned": {
            "file": pruned.file_name().unwrap().to_str().unwrap(),
            "layer": PRUNE_LAYER,
            "ratio": PRUNE_RATIO,
            "logits": logits_of(&classifier, pruned),
        },
    });
    let dir = tempfile::tempdir().unwrap();
    let expected_path = dir.path().join("expected.json");
    std::fs::write(&expected_path, doc.to_string()).unwrap();

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("node")
        .arg(root.join("web/tests/e2e.mjs"))
        .arg(&expected_path)
        .output()
        .expect("running node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "e2e.mjs failed:\n{stdout}\n{stderr}");
    // The measurements (first prediction, logit differences) for the log.
    println!("{stdout}");
}
