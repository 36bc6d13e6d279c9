//! Token pruning inside Vim: a keep ratio of 1 is the unpruned model bit for bit; a pruned run
//! keeps the class token in the middle and the other kept tokens in original order (`carry`) or in
//! score order (`score`); `decay` changes the logits but not the kept set; and its compacted streams are the unpruned ones at the kept positions.

mod common;

use std::collections::HashMap;

use common::{ctx, f32s, golden, golden_dir};
use ssmgpu::models::vim::Vim;
use ssmgpu::models::ModelDir;
use ssmgpu::prune::{kept_tokens, Align, Importance, PruneSchedule, Pruning};
use ssmgpu::runtime::DType;

fn model() -> Vim {
    let dir = golden_dir().join("vision/vim_small_case");
    Vim::from_model_dir(ctx(), &ModelDir::open(&dir).unwrap()).unwrap()
}

/// Logits and every traced tensor (u32 position maps as integers) of one pruned run.
fn run(model: &Vim, pruning: Option<&Pruning>) -> (Vec<f32>, HashMap<String, Vec<f32>>) {
    let ctx = ctx();
    let input = golden("vision/vim_small_case/input_batch2.safetensors");
    let (shape, pixels) = f32s(&input, "pixel_values");
    let pixels = ctx.upload_f32("pixel_values", &shape, &pixels).unwrap();
    let mut rec = ctx.recorder();
    let mut trace = Vec::new();
    let logits = model
        .forward_pruned(&mut rec, &pixels, pruning, Some(&mut trace))
        .unwrap();
    let mut tensors = vec![&logits];
    tensors.extend(trace.iter().map(|(_, t)| t));
    let mut values = rec.submit_and_read_blocking(&tensors).unwrap();
    let logits = values.remove(0);
    let traced = trace
        .iter()
        .zip(values)
        .map(|((name, t), v)| {
            let v = match t.dtype() {
                DType::U32 => v.iter().map(|x| x.to_bits() as f32).collect(),
                DType::F32 => v,
            };
            (name.clone(), v)
        })
        .collect();
    (logits, traced)
}

fn pruning(spec: &str, importance: Importance, align: Align) -> Pruning {
    Pruning {
        schedule: PruneSchedule::parse(spec).unwrap(),
        importance,
        align,
        seed: 3,
    }
}

#[test]
fn keep_ratio_one_is_the_unpruned_model_bit_for_bit() {
    let model = model();
    let (unpruned, _) = run(&model, None);
    for importance in [Importance::Clipped, Importance::L2] {
        let (kept_all, _) = run(
            &model,
            Some(&pruning("1:1.0,3:1.0", importance, Align::Carry)),
        );
        assert_eq!(
            unpruned.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            kept_all.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
}

#[test]
fn pruned_streams_are_the_unpruned_ones_at_the_kept_positions() {
    let model = model();
    let (batch, len, dim) = (2, model.config.seq_len(), model.config.embed_dim);
    let (unpruned_logits, unpruned) = run(&model, None);
    let keep = kept_tokens(len, 0.5, true);
    assert_eq!(keep, 9); // ceil(16 * 0.5) = 8, even, so 9 with the class token
    let mut kept_sets = Vec::new();
    let mut logits_by_mode: HashMap<(Align, Importance), Vec<f32>> = HashMap::new();
    for align in [Align::Carry, Align::Decay, Align::Score] {
        for importance in [
            Importance::Clipped,
            Importance::Unclipped,
            Importance::L2,
            Importance::Random,
        ] {
            let p = pruning("2:0.5", importance, align);
            let (logits, pruned) = run(&model, Some(&p));
            assert!(logits.iter().all(|v| v.is_finite()));
            // Layers 0 and 1 ran on every token; layer 2 on the kept ones.
            assert_eq!(pruned["layers.1.positions"].len(), batch * len);
            let positions = &pruned["layers.2.positions"];
            assert_eq!(positions.len(), batch * keep);
            for b in 0..batch {
                let row: Vec<usize> = positions[b * keep..(b + 1) * keep]
                    .iter()
                    .map(|&p| p as usize)
                    .collect();
                // The class token (original position M/2) sits in the middle.
                assert_eq!(
                    row[(keep - 1) / 2],
                    model.config.cls_position(),
                    "{align:?} {row:?}"
                );
                if align == Align::Decay {
                    // Balanced: original order through the class token, half on each side.
                    assert!(row.windows(2).all(|w| w[0] < w[1]), "{row:?}");
                } else if align == Align::Carry {
                    // Original order, except the class token, re-inserted in the middle as the
                    // authors' code does.
                    let others: Vec<usize> = row
                        .iter()
                        .enumerate()
                        .filter(|&(i, _)| i != (keep - 1) / 2)
                        .map(|(_, &p)| p)
                        .collect();
                    assert!(others.windows(2).all(|w| w[0] < w[1]), "{row:?}");
                }
                let mut sorted = row.clone();
                sorted.sort();
                kept_sets.push(((importance, b), sorted));
                // Layer 2's residual input (residual + hidden of layer 1, a per-token sum) is the
                // unpruned one at the kept positions, in the kept order.
                let got = &pruned["layers.2.residual"][b * keep * dim..(b + 1) * keep * dim];
                let want: Vec<f32> = row
                    .iter()
                    .flat_map(|&p| {
                        unpruned["layers.2.residual"][(b * len + p) * dim..][..dim].to_vec()
                    })
                    .collect();
                common::assert_close(
                    &format!("{align:?} {importance:?} residual"),
                    got,
                    &want,
                    1e-6,
                    1e-6,
                );
            }
            if importance != Importance::Random {
                assert_ne!(
                    logits, unpruned_logits,
                    "{align:?} {importance:?} changed nothing"
                );
            }
            logits_by_mode.insert((align, importance), logits);
        }
    }
    // Carry and score keep the same tokens for the same importance (the first pruning step
    // sees the same scores); decay keeps the best of each side of the class token, the same
    // set wherever the best ones fall evenly.
    for importance in [Importance::Clipped, Importance::L2] {
        assert_ne!(
            logits_by_mode[&(Align::Carry, importance)],
            logits_by_mode[&(Align::Decay, importance)],
            "decay over pruned positions changed nothing"
        );
    }
    let n = kept_sets.len() / 3;
    assert_eq!(kept_sets[..n], kept_sets[2 * n..]);
    let cls = model.config.cls_position();
    for (carry, decay) in kept_sets[..n].iter().zip(&kept_sets[n..2 * n]) {
        let before = |set: &[usize]| set.iter().filter(|&&p| p < cls).count();
        if before(&carry.1) == (keep - 1) / 2 {
            assert_eq!(carry, decay);
        }
    }
}
