//! PlainMamba's ops on the GPU against their CPU references: the matmul epilogue, LayerNorm
//! (with mean pooling), depthwise conv2d and the 2-D zig-zag scan, on odd shapes, batch > 1
//! and strided views; the scan orders on grids of every parity.

mod common;

use common::{assert_close, contexts, ctx, randn, rng, ZigzagCase};
use ssmgpu::ops::activation::Activation;
use ssmgpu::ops::dwconv2d::{dwconv2d, dwconv2d_ref, pack_dwconv_weight};
use ssmgpu::ops::layernorm::{layernorm, layernorm_mean, layernorm_ref, mean_tokens_ref};
use ssmgpu::ops::matmul::{matmul_with, matmul_with_ref, Epilogue};
use ssmgpu::ops::zigzag_scan::{zigzag_scan_ref, ScanOrders, DOWN, LEFT, RIGHT, START, UP};
use ssmgpu::runtime::MatView;
use ssmgpu::Context;

#[test]
fn matmul_epilogue_matches_reference() {
    for ctx in contexts() {
        let mut r = rng(11);
        // (m, k, n, activation, residual, bias): vec4 and scalar paths, ragged edges.
        let cases = [
            (5, 147, 64, Activation::Relu, false, true),
            (37, 64, 100, Activation::Gelu, true, true),
            (16, 128, 64, Activation::None, true, true),
            // 8-value stores (n a multiple of 8): a ragged last tile of columns and rows
            (37, 64, 72, Activation::Gelu, true, true),
            (20, 32, 136, Activation::Silu, false, true),
            (24, 40, 16, Activation::Relu, true, false),
            (9, 7, 13, Activation::Silu, true, false),
        ];
        for (m, k, n, activation, with_residual, with_bias) in cases {
            let x = randn(&mut r, m * k, 1.0);
            let w = randn(&mut r, n * k, 1.0);
            let b = randn(&mut r, n, 1.0);
            let res = randn(&mut r, m * n, 1.0);
            let xt = ctx.upload_f32("x", &[m, k], &x).unwrap();
            let wt = ctx.upload_f32("w", &[n, k], &w).unwrap();
            let bt = ctx.upload_f32("b", &[n], &b).unwrap();
            let rt = ctx.upload_f32("residual", &[m, n], &res).unwrap();
            let epilogue = Epilogue {
                bias: with_bias.then_some(&bt),
                activation,
                residual: with_residual.then_some(&rt),
            };
            let mut rec = ctx.recorder();
            let y = matmul_with(&mut rec, "y", xt.mat(), &wt, epilogue).unwrap();
            let got = rec.submit_and_read_blocking(&[&y]).unwrap().remove(0);
            let want = matmul_with_ref(
                &x,
                m,
                k,
                &w,
                n,
                with_bias.then_some(&b[..]),
                activation,
                with_residual.then_some(&res[..]),
            );
            let what = format!(
                "matmul {m}x{k}x{n} {activation:?} (subgroups {})",
                ctx.uses_subgroups()
            );
            assert_close(&what, &got, &want, 1e-5, 1e-5);
        }
    }
}

#[test]
fn layernorm_and_pooling_match_reference() {
    let ctx = ctx();
    let mut r = rng(12);
    for (batch, len, dim) in [(1, 1, 1), (1, 16, 64), (2, 35, 64), (3, 7, 200)] {
        let rows = batch * len;
        // An offset mean, so a one-pass variance would lose digits.
        let x: Vec<f32> = randn(&mut r, rows * dim, 2.0)
            .iter()
            .map(|v| v + 3.0)
            .collect();
        let weight = randn(&mut r, dim, 1.0);
        let bias = randn(&mut r, dim, 1.0);
        let xt = ctx.upload_f32("x", &[rows, dim], &x).unwrap();
        let wt = ctx.upload_f32("w", &[dim], &weight).unwrap();
        let bt = ctx.upload_f32("b", &[dim], &bias).unwrap();
        let mut rec = ctx.recorder();
        let plain = layernorm(&mut rec, &xt, &wt, &bt, 1e-5).unwrap();
        let (normed, pooled) = layernorm_mean(&mut rec, &xt, batch, &wt, &bt, 1e-6).unwrap();
        let got = rec
            .submit_and_read_blocking(&[&plain, &normed, &pooled])
            .unwrap();
        let what = format!("layernorm b{batch} l{len} d{dim}");
        let want = layernorm_ref(&x, &weight, &bias, 1e-5);
        assert_close(&what, &got[0], &want, 1e-5, 1e-5);
        let want = layernorm_ref(&x, &weight, &bias, 1e-6);
        assert_close(&format!("{what} (pooling)"), &got[1], &want, 1e-5, 1e-5);
        let want = mean_tokens_ref(&want, batch, dim);
        assert_close(&format!("{what} mean"), &got[2], &want, 1e-5, 1e-5);
    }
}

#[test]
fn dwconv2d_matches_reference() {
    let ctx = ctx();
    let mut r = rng(13);
    // (batch, h, w, channels, k, bias, activation, extra columns around x): vec4 and scalar
    // paths.
    let cases = [
        (1, 4, 4, 128, 7, true, Activation::Silu, 128), // the mixer: x half of in_proj's output
        (2, 5, 7, 64, 3, true, Activation::Gelu, 0),    // layer 0's dw + BN + GELU
        (1, 1, 1, 3, 3, false, Activation::None, 0),
        (3, 6, 2, 5, 5, false, Activation::Relu, 3),
        (1, 3, 9, 12, 7, true, Activation::Silu, 6), // channels of 4 at an unaligned offset
    ];
    for (batch, h, w, channels, k, with_bias, activation, extra) in cases {
        let rows = batch * h * w;
        let stride = channels + extra;
        let x = randn(&mut r, rows * stride, 1.0);
        let weight = randn(&mut r, channels * k * k, 1.0);
        let bias = randn(&mut r, channels, 1.0);
        let xt = ctx.upload_f32("x", &[rows, stride], &x).unwrap();
        let packed = pack_dwconv_weight(&weight, channels);
        let wt = ctx.upload_f32("w", &[k, k, channels], &packed).unwrap();
        let bt = ctx.upload_f32("b", &[channels], &bias).unwrap();
        let offset = extra / 2;
        let view = MatView {
            tensor: &xt,
            rows,
            cols: channels,
            offset,
            stride,
        };
        let mut rec = ctx.recorder();
        let y = dwconv2d(
            &mut rec,
            view,
            (batch, h, w),
            None,
            &wt,
            with_bias.then_some(&bt),
            activation,
        )
        .unwrap();
        let got = rec.submit_and_read_blocking(&[&y]).unwrap().remove(0);
        let dense: Vec<f32> = (0..rows)
            .flat_map(|i| x[i * stride + offset..][..channels].to_vec())
            .collect();
        let want = dwconv2d_ref(
            &dense,
            (batch, h, w, channels),
            (&weight, k),
            with_bias.then_some(&bias[..]),
            activation,
        );
        let what = format!("dwconv2d b{batch} {h}x{w} c{channels} k{k} {activation:?}");
        assert_close(&what, &got, &want, 1e-5, 1e-5);
    }
}

#[test]
fn scan_orders_are_snakes_over_the_grid() {
    // 2x3: rows 0 1 2 / 3 4 5.
    let o = ScanOrders::new(2, 3);
    assert_eq!(o.orders[0], [0, 1, 2, 5, 4, 3]);
    assert_eq!(o.directions[0], [START, RIGHT, RIGHT, DOWN, LEFT, LEFT]);
    assert_eq!(o.orders[1], [3, 4, 5, 2, 1, 0]);
    assert_eq!(o.directions[1], [START, RIGHT, RIGHT, UP, LEFT, LEFT]);
    assert_eq!(o.orders[2], [0, 3, 4, 1, 2, 5]);
    assert_eq!(o.directions[2], [START, DOWN, RIGHT, UP, RIGHT, DOWN]);
    assert_eq!(o.orders[3], [5, 2, 1, 4, 3, 0]);
    assert_eq!(o.directions[3], [START, UP, LEFT, DOWN, LEFT, UP]);
    // Every order visits every token once, moving to a neighbour each step.
    for (h, w) in [(1, 1), (1, 5), (4, 1), (3, 3), (5, 7), (14, 14)] {
        let o = ScanOrders::new(h, w);
        for order in &o.orders {
            let mut seen = order.clone();
            seen.sort_unstable();
            assert_eq!(seen, (0..(h * w) as u32).collect::<Vec<_>>(), "{h}x{w}");
            for p in order.windows(2) {
                let (a, b) = (p[0] as i64, p[1] as i64);
                let (w, step) = (w as i64, (a - b).abs());
                assert!(
                    step == w || (step == 1 && a / w == b / w),
                    "{h}x{w}: {a} -> {b}"
                );
            }
        }
    }
}

#[test]
fn zigzag_scan_matches_reference() {
    for ctx in contexts() {
        zigzag_cases(ctx);
    }
}

fn zigzag_cases(ctx: &Context) {
    let mut r = rng(14);
    // batch, grid, channels, nstate
    let cases = [
        (1, (4, 4), 128, 16),
        (2, (5, 7), 64, 16),
        (1, (1, 1), 3, 16),
        (3, (2, 3), 70, 5),
    ];
    for (batch, (h, w), channels, nstate) in cases {
        let case = ZigzagCase::random(&mut r, batch, h * w, channels, nstate);
        let orders = ScanOrders::new(h, w);
        let (got, _) = case.gpu(ctx, &orders.table(), false, None);
        let want = zigzag_scan_ref(
            &case.scan_ref(),
            &case.direction_bs,
            &vec![orders; batch],
            false,
            true,
        )
        .out;
        let what = format!(
            "zigzag scan b{batch} {h}x{w} e{channels} n{nstate} (subgroups {})",
            ctx.uses_subgroups()
        );
        assert_close(&what, &got, &want, 1e-5, 1e-4);
    }
}
