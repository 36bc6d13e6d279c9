//! PlainMamba after token pruning: the kept-token grid (cells and the four scans over them),
//! the 2-D conv over kept cells and the zig-zag scan over each image's kept tokens (with decay
//! and importance output) on the GPU against CPU references; and the pruned model end to end.

mod common;

use common::{assert_close, ctx, randn, rng, ZigzagCase};
use rand::seq::index::sample;
use rand::Rng;
use ssmgpu::models::vision::Classifier;
use ssmgpu::ops::activation::Activation;
use ssmgpu::ops::dwconv2d::{dwconv2d, dwconv2d_ref, pack_dwconv_weight, KeptCells};
use ssmgpu::ops::kept_grid::{kept_grid, kept_grid_ref, Walk, NONE};
use ssmgpu::ops::zigzag_scan::{zigzag_scan_ref, ScanOrders, DIRECTIONS};
use ssmgpu::prune::{Align, Importance, PruneSchedule, Pruning};
use ssmgpu::Tensor;

fn read_u32(t: &Tensor) -> Vec<u32> {
    ctx().read_blocking(&[t]).unwrap()[0]
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// `batch` rows of `keep` distinct cells of `len`, ascending or shuffled.
fn random_cells(r: &mut impl Rng, batch: usize, len: usize, keep: usize, sorted: bool) -> Vec<u32> {
    (0..batch)
        .flat_map(|_| {
            let mut cells: Vec<u32> = sample(r, len, keep).iter().map(|i| i as u32).collect();
            if sorted {
                cells.sort_unstable();
            }
            cells
        })
        .collect()
}

/// (batch, grid, keep)
const CASES: [(usize, (usize, usize), usize); 5] = [
    (1, (4, 4), 16),
    (2, (5, 7), 28),
    (3, (2, 3), 1),
    (2, (14, 14), 157),
    (1, (7, 4), 20),
];

#[test]
fn kept_grid_matches_reference() {
    let ctx = ctx();
    let mut r = rng(41);
    for (batch, (h, w), keep) in CASES {
        let orders = ScanOrders::new(h, w);
        let table = orders.table();
        let scans = ctx.upload_u32("scans", &[table.len()], &table).unwrap();
        for walk in [Walk::Grid, Walk::Sequence] {
            let cells = random_cells(&mut r, batch, h * w, keep, walk == Walk::Grid);
            let positions = ctx.upload_u32("positions", &[batch, keep], &cells).unwrap();
            let mut rec = ctx.recorder();
            let grid = kept_grid(&mut rec, &positions, (h, w), &scans, walk).unwrap();
            rec.submit_blocking().unwrap();
            let (slots, tables) = (read_u32(&grid.slots), read_u32(&grid.tables));
            for b in 0..batch {
                let (want_slots, want) = kept_grid_ref(&cells[b * keep..][..keep], &orders, walk);
                let what = format!("kept grid b{b} {h}x{w} keep {keep} {walk:?}");
                assert_eq!(&slots[b * h * w..][..h * w], want_slots, "{what} slots");
                assert_eq!(
                    &tables[b * 12 * keep..][..12 * keep],
                    want.table(),
                    "{what}"
                );
            }
        }
    }
}

#[test]
fn kept_grid_reference_keeps_the_unpruned_scans() {
    let orders = ScanOrders::new(5, 6);
    let all: Vec<u32> = (0..30).collect();
    let (slots, kept) = kept_grid_ref(&all, &orders, Walk::Grid);
    assert_eq!(slots, all);
    assert_eq!(kept, orders);
    // Dropping cells 1 and 2 of the first row: the row snake skips them with a gap of 2 and
    // keeps the unpruned move codes; the reversed snake ends on cell 0.
    let kept_cells: Vec<u32> = (0..30).filter(|c| ![1, 2].contains(c)).collect();
    let (slots, kept) = kept_grid_ref(&kept_cells, &orders, Walk::Grid);
    assert_eq!((slots[1], slots[2], slots[3]), (NONE, NONE, 1));
    assert_eq!(kept.orders[0][..3], [0, 1, 2]);
    assert_eq!(kept.gaps[0][..3], [0, 2, 0]);
    assert_eq!(kept.directions[0][1], orders.directions[0][3]);
    assert_eq!(*kept.orders[1].last().unwrap(), 0);
    assert_eq!(kept.gaps[1][27], 2);
}

#[test]
fn dwconv2d_over_kept_cells_reads_pruned_ones_as_zero() {
    let ctx = ctx();
    let mut r = rng(42);
    // channels 64 takes the vec4 path, 5 the scalar one.
    for ((batch, (h, w), keep), channels) in CASES.into_iter().zip([64, 5, 8, 12, 3]) {
        let k = 3 + 2 * (channels % 3);
        let len = h * w;
        let cells = random_cells(&mut r, batch, len, keep, false);
        let x = randn(&mut r, batch * keep * channels, 1.0);
        let weight = randn(&mut r, channels * k * k, 0.5);
        let bias = randn(&mut r, channels, 0.5);
        // Reference: the dense conv on the grid with pruned cells zero, read at the kept cells.
        let mut dense = vec![0.0; batch * len * channels];
        for (row, &cell) in cells.iter().enumerate() {
            let at = (row / keep * len + cell as usize) * channels;
            dense[at..at + channels].copy_from_slice(&x[row * channels..][..channels]);
        }
        let conv = dwconv2d_ref(
            &dense,
            (batch, h, w, channels),
            (&weight, k),
            Some(&bias),
            Activation::Silu,
        );
        let want: Vec<f32> = cells
            .iter()
            .enumerate()
            .flat_map(|(row, &cell)| {
                &conv[(row / keep * len + cell as usize) * channels..][..channels]
            })
            .copied()
            .collect();
        let slots: Vec<u32> = (0..batch)
            .flat_map(|b| {
                kept_grid_ref(
                    &cells[b * keep..][..keep],
                    &ScanOrders::new(h, w),
                    Walk::Grid,
                )
                .0
            })
            .collect();
        let xt = ctx.upload_f32("x", &[batch * keep, channels], &x).unwrap();
        let wt = ctx
            .upload_f32(
                "w",
                &[k, k, channels],
                &pack_dwconv_weight(&weight, channels),
            )
            .unwrap();
        let bt = ctx.upload_f32("b", &[channels], &bias).unwrap();
        let positions = ctx.upload_u32("positions", &[batch, keep], &cells).unwrap();
        let slots = ctx.upload_u32("slots", &[batch, len], &slots).unwrap();
        let mut rec = ctx.recorder();
        let kept = KeptCells {
            positions: &positions,
            slots: &slots,
        };
        let y = dwconv2d(
            &mut rec,
            xt.mat(),
            (batch, h, w),
            Some(kept),
            &wt,
            Some(&bt),
            Activation::Silu,
        )
        .unwrap();
        let got = rec.submit_and_read_blocking(&[&y]).unwrap().remove(0);
        let what = format!("kept dwconv2d b{batch} {h}x{w} keep {keep} c{channels} k{k}");
        assert_close(&what, &got, &want, 1e-5, 1e-5);
    }
}

#[test]
fn zigzag_scan_over_kept_tokens_matches_reference() {
    let ctx = ctx();
    let mut r = rng(43);
    let (channels, nstate) = (70, 16);
    for (batch, (h, w), keep) in CASES {
        for (walk, decay, clip) in [
            (Walk::Grid, true, true),
            (Walk::Grid, false, false),
            (Walk::Sequence, false, true),
        ] {
            let case = ZigzagCase::random(&mut r, batch, keep, channels, nstate);
            let grid = ScanOrders::new(h, w);
            let cells = random_cells(&mut r, batch, h * w, keep, walk == Walk::Grid);
            let per_image: Vec<ScanOrders> = (0..batch)
                .map(|i| kept_grid_ref(&cells[i * keep..][..keep], &grid, walk).1)
                .collect();
            let table: Vec<u32> = per_image.iter().flat_map(ScanOrders::table).collect();
            let (out, ungated) = case.gpu(ctx, &table, decay, Some(clip));
            let want = zigzag_scan_ref(
                &case.scan_ref(),
                &case.direction_bs,
                &per_image,
                decay,
                clip,
            );
            let what = format!("kept zigzag b{batch} {h}x{w} keep {keep} {walk:?} decay {decay}");
            assert_close(&what, &out, &want.out, 1e-5, 1e-4);
            assert_close(
                &format!("{what} ungated"),
                &ungated.unwrap(),
                &want.ungated,
                1e-5,
                1e-4,
            );
            if clip {
                assert!(want.ungated.iter().all(|&v| v >= 0.0));
            }
        }
    }
}

#[test]
fn decay_reference_differs_from_carry_only_across_gaps() {
    // The reference itself: with no gaps the decay changes nothing; with gaps it must.
    let mut r = rng(44);
    let case = ZigzagCase::random(&mut r, 1, 6, 3, 4);
    let inputs = case.scan_ref();
    let dir_b = vec![0.0; DIRECTIONS * case.nstate];
    let full = [ScanOrders::new(2, 3)];
    let carry = zigzag_scan_ref(&inputs, &dir_b, &full, false, true).out;
    let decay = zigzag_scan_ref(&inputs, &dir_b, &full, true, true).out;
    assert_close("no gaps", &decay, &carry, 1e-6, 1e-6);
    let mut gapped = full.clone();
    gapped[0].gaps[0][3] = 4;
    let decay = zigzag_scan_ref(&inputs, &dir_b, &gapped, true, true).out;
    assert!(decay.iter().zip(&carry).any(|(x, y)| (x - y).abs() > 1e-3));
}

/// The shipped PlainMamba on two MNIST samples, unpruned and pruned.
#[test]
fn pruned_plainmamba_runs_on_fewer_tokens() {
    let ctx = ctx();
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/models/plainmamba-mnist");
    let mut classifier = Classifier::load(ctx, &dir).unwrap();
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples/mnist");
    let images: Vec<Vec<f32>> = ["digit3_623.png", "digit7_1401.png"]
        .iter()
        .map(|f| {
            let image = ssmgpu::preprocess::load_image(samples.join(f)).unwrap();
            classifier.preprocess.apply(&image).unwrap()
        })
        .collect();
    let pixels = ssmgpu::preprocess::batch(&images).unwrap();
    let unpruned = pollster::block_on(classifier.logits(ctx, &pixels, 2)).unwrap();
    // Keep ratio 1: the unpruned logits, bit for bit.
    classifier.pruning = Some(Pruning {
        schedule: PruneSchedule::parse("1:1.0,3:1").unwrap(),
        ..Pruning::default()
    });
    let same = pollster::block_on(classifier.logits(ctx, &pixels, 2)).unwrap();
    assert_eq!(same, unpruned);
    let depth = match &classifier.model {
        ssmgpu::models::vision::VisionModel::PlainMamba(m) => m.config.num_layers,
        _ => unreachable!("plainmamba-mnist is a PlainMamba"),
    };
    for align in [Align::Score, Align::Carry, Align::Decay] {
        for importance in [Importance::Clipped, Importance::L2, Importance::Random] {
            let schedule =
                PruneSchedule::parse(&format!("{}:0.7,{}:0.7", depth / 3, 2 * depth / 3)).unwrap();
            let pruning = Pruning {
                schedule,
                importance,
                align,
                seed: 5,
            };
            let mut rec = ctx.recorder();
            let x = ctx.upload_f32("pixels", &[2, 1, 28, 28], &pixels).unwrap();
            let mut trace = Vec::new();
            let logits = classifier
                .model
                .forward(&mut rec, &x, Some(&pruning), Some(&mut trace))
                .unwrap();
            let named: Vec<&str> = trace.iter().map(|(n, _)| n.as_str()).collect();
            let positions: Vec<&Tensor> = trace
                .iter()
                .filter(|(n, _)| n.ends_with(".positions"))
                .map(|(_, t)| t)
                .collect();
            let mut wanted = vec![&logits];
            wanted.extend(positions.iter().copied());
            let values = rec.submit_and_read_blocking(&wanted).unwrap();
            let what = format!("{align:?} {importance:?}");
            assert!(
                values[0].iter().all(|v| v.is_finite()),
                "{what}: {:?}",
                values[0]
            );
            // Every layer after a step runs on the kept cells: distinct, on the grid, and in
            // raster order unless kept in score order.
            let last = positions.len() - 1;
            let kept: Vec<u32> = values[1 + last].iter().map(|v| v.to_bits()).collect();
            let n = positions[last].shape()[1];
            assert!(
                n < 196 && kept.len() == 2 * n,
                "{what}: {n} tokens, {named:?}"
            );
            for row in kept.chunks(n) {
                let mut sorted = row.to_vec();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(sorted.len(), n, "{what}: repeated cells {row:?}");
                assert!(sorted.iter().all(|&c| c < 196), "{what}: {row:?}");
                if align != Align::Score {
                    assert_eq!(sorted, row, "{what}: not in raster order");
                }
            }
            // Pruned and unpruned predictions agree on these clear digits for the SSM-aware
            // alignments.
            if align != Align::Score && importance == Importance::Clipped {
                let argmax = |l: &[f32]| (0..10).max_by(|&i, &j| l[i].total_cmp(&l[j])).unwrap();
                for b in 0..2 {
                    assert_eq!(
                        argmax(&values[0][b * 10..][..10]),
                        argmax(&unpruned[b * 10..][..10]),
                        "{what} image {b}"
                    );
                }
            }
        }
    }
}
