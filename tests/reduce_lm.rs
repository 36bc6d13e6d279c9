//! Token reduction in the Mamba and Mamba-2 language models: ratio 1.0 changes nothing, every
//! method shortens the sequence keeping the last token in order, and lm-eval's scores.

mod common;

use common::{cli, ctx, golden_dir};
use ssmgpu::models::lm::LanguageModel;
use ssmgpu::prune::reduce::{Method, Metric, Reduction};

const MODELS: [&str; 2] = ["mamba1_tiny", "mamba2_tiny"];

fn ids(len: usize) -> Vec<i64> {
    (0..len as i64).map(|i| (i * 37 + 11) % 251).collect()
}

#[test]
fn ratio_one_reproduces_the_unreduced_logits() {
    let ids = ids(29);
    for case in MODELS {
        let model = LanguageModel::load(ctx(), &golden_dir().join(case)).unwrap();
        let (full, _) = pollster::block_on(model.run(ctx(), &ids, 1, false)).unwrap();
        for metric in [Metric::SsmOutput, Metric::BlockOutput] {
            let r = Reduction::parse("0:1.0", Method::Unified, metric).unwrap();
            let (logits, pos) = pollster::block_on(model.run_reduced(ctx(), &ids, &r)).unwrap();
            assert_eq!(pos, (0..29).collect::<Vec<u32>>(), "{case}");
            assert_eq!(logits, full, "{case}: logits differ");
        }
    }
}

#[test]
fn every_method_shortens_the_sequence_in_order() {
    let ids = ids(37);
    for case in MODELS {
        let model = LanguageModel::load(ctx(), &golden_dir().join(case)).unwrap();
        let vocab = model.vocab_size();
        let (full, _) = pollster::block_on(model.run(ctx(), &ids, 1, false)).unwrap();
        for method in [
            Method::Unified,
            Method::PruneOnly,
            Method::MergeOnly,
            Method::UnifiedCode,
        ] {
            for metric in [Metric::SsmOutput, Metric::BlockOutput] {
                let r = Reduction::parse("0:0.7", method, metric).unwrap();
                let want = 37 - r.args(37).remove;
                assert_eq!(want, 26, "ceil(37 * 0.7) kept");
                let (logits, pos) = pollster::block_on(model.run_reduced(ctx(), &ids, &r)).unwrap();
                let what = format!("{case} {method:?} {metric:?}");
                assert_eq!(pos.len(), want, "{what}: kept tokens");
                assert_eq!(logits.len(), want * vocab, "{what}: logits rows");
                assert!(pos.windows(2).all(|w| w[0] < w[1]), "{what}: order {pos:?}");
                assert_eq!(*pos.last().unwrap(), 36, "{what}: last token kept");
                assert!(logits.iter().all(|v| v.is_finite()), "{what}");
                // Layer 0 runs on every token, so the first kept token's logits change only
                // through layer 1, and the output differs from the unreduced one somewhere.
                assert_ne!(
                    &logits[..],
                    &full[..want * vocab],
                    "{what}: nothing changed"
                );
            }
        }
        // The authors' code sorts each channel, so its most similar pairs are the first even
        // positions (into token 1): it removes exactly those.
        let r = Reduction::parse("0:0.7", Method::UnifiedCode, Metric::BlockOutput).unwrap();
        let (_, pos) = pollster::block_on(model.run_reduced(ctx(), &ids, &r)).unwrap();
        let removed: Vec<u32> = (0..37u32).filter(|p| !pos.contains(p)).collect();
        assert_eq!(
            removed,
            (0..11).map(|k| 2 * k).collect::<Vec<u32>>(),
            "{case}"
        );
        // Merge-only removes even positions only (ToMe's bipartite split).
        let r = Reduction::parse("0:0.7", Method::MergeOnly, Metric::SsmOutput).unwrap();
        let (_, pos) = pollster::block_on(model.run_reduced(ctx(), &ids, &r)).unwrap();
        assert!(
            (0..37u32).filter(|p| p % 2 == 1).all(|p| pos.contains(&p)),
            "{case}: {pos:?}"
        );
    }
}

/// Generation from a reduced prefill: ratio 1.0 gives transformers' greedy ids exactly; a real
/// reduction starts from the reduced run's last-token argmax and decodes on from its state.
#[test]
fn generation_continues_from_a_reduced_prefill() {
    use common::golden;
    for case in MODELS {
        let model = LanguageModel::load(ctx(), &golden_dir().join(case)).unwrap();
        let reference = golden(&format!("{case}/reference.safetensors"));
        let prompt = reference.ints("generate.prompt_ids").unwrap().1;
        let expected = reference.ints("generate.output_ids").unwrap().1;
        let new = expected.len() - prompt.len();
        let same = Reduction::parse("0:1.0", Method::Unified, Metric::SsmOutput).unwrap();
        let got = pollster::block_on(model.generate(ctx(), &prompt, new, None, Some(&same)));
        let got: Vec<i64> = got.unwrap().iter().map(|&t| t as i64).collect();
        assert_eq!(got, expected[prompt.len()..], "{case}: ratio 1.0");

        let r = Reduction::parse("0:0.6", Method::Unified, Metric::SsmOutput).unwrap();
        let (logits, _) = pollster::block_on(model.run_reduced(ctx(), &prompt, &r)).unwrap();
        let vocab = model.vocab_size();
        let last = &logits[logits.len() - vocab..];
        let first = (0..vocab).fold(0, |b, i| if last[i] > last[b] { i } else { b });
        let got = pollster::block_on(model.generate(ctx(), &prompt, new, None, Some(&r))).unwrap();
        assert_eq!(got.len(), new, "{case}");
        assert_eq!(
            got[0] as usize, first,
            "{case}: first token after the reduced prefill"
        );
    }
}

#[test]
fn reduction_layers_must_exist() {
    let model = LanguageModel::load(ctx(), &golden_dir().join("mamba2_tiny")).unwrap();
    let r = Reduction::parse("1:0.5", Method::Unified, Metric::SsmOutput).unwrap();
    let err = pollster::block_on(model.run_reduced(ctx(), &ids(8), &r)).err();
    assert!(
        matches!(err, Some(ssmgpu::Error::InvalidInput(_))),
        "{err:?}"
    );
}

#[test]
fn lm_eval_cli_scores_ratio_one_as_the_unreduced_model() {
    let dir = std::env::temp_dir().join(format!("ssmgpu-lm-eval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("text.txt");
    std::fs::write(
        &text,
        "The quick brown fox jumps over the lazy dog. ".repeat(4),
    )
    .unwrap();
    let model = golden_dir().join("mamba2_tiny");
    let run = |reduce: &str| {
        let args = [
            "lm-eval",
            "--model",
            model.to_str().unwrap(),
            "--text",
            text.to_str().unwrap(),
            "--reduce",
            reduce,
            "--window",
            "64",
            "--json",
        ];
        let (ok, out, err) = cli(&args);
        assert!(ok, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let same = run("0:1.0");
    assert_eq!(same["paper"]["perplexity"], same["unreduced_perplexity"]);
    assert_eq!(same["paper"]["agreement"], 1.0);
    assert_eq!(same["flops_reduction"], 0.0);
    let less = run("0:0.6");
    assert!(less["kept"].as_f64().unwrap() < 0.7, "{less}");
    assert!(less["flops_reduction"].as_f64().unwrap() > 0.15, "{less}");
    let (ok, _, err) = cli(&[
        "lm-eval",
        "--model",
        model.to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "--reduce",
        "0:0.6",
        "--method",
        "nope",
    ]);
    assert!(!ok && err.contains("reduction method"), "{err}");
}
