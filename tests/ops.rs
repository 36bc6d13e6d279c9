//! Every op on the GPU against its CPU reference, on random shapes (odd sizes, length 1,
//! batch > 1, strided views).

mod common;

use common::{assert_close, contexts, ctx, flip_tokens, randn, rng};
use rand::Rng;
use ssmgpu::ops::argmax::{argmax, argmax_ref, NO_INDEX};
use ssmgpu::ops::conv1d::{conv1d_silu, conv1d_silu_both, conv1d_silu_ref, CONV_WIDTH};
use ssmgpu::ops::embedding::{embedding, embedding_ref};
use ssmgpu::ops::im2col::{conv2d_ref, im2col, ConvGeometry, Layout};
use ssmgpu::ops::matmul::{matmul, matmul_grouped, matmul_ref};
use ssmgpu::ops::rmsnorm::{add_rmsnorm, add_rmsnorm_ref};
use ssmgpu::ops::scan::{selective_scan, selective_scan_ref, ScanRef};
use ssmgpu::ops::tokens::{embed_tokens, embed_tokens_ref};
use ssmgpu::ops::Carry;
use ssmgpu::runtime::MatView;

#[test]
fn matmul_matches_reference() {
    for ctx in contexts() {
        matmul_cases(ctx);
    }
    if ctx().uses_int64() {
        matmul_cases(common::ctx_without_int64());
    }
}

/// Several matmuls in one dispatch (Vim's two x_projs): each block of rows against its own
/// weights, on every kernel (the 20-row and 4-row subgroup tiles, 8-value loads and stores,
/// the portable vec4 and scalar ones) and for views of x.
#[test]
fn grouped_matmul_matches_one_matmul_per_group() {
    let mut contexts = contexts();
    if ctx().uses_int64() {
        contexts.push(common::ctx_without_int64());
    }
    for ctx in contexts {
        let mut r = rng(2);
        // (groups, m per group, k, n, extra columns around x)
        for (groups, m, k, n, extra) in [
            (2, 197, 384, 44, 0),
            (2, 37, 64, 48, 8),
            (3, 5, 36, 20, 0),
            (2, 9, 7, 13, 3),
            (2, 20, 40, 64, 0),
        ] {
            let stride = k + extra;
            let x = randn(&mut r, groups * m * stride, 1.0);
            let w = randn(&mut r, groups * n * k, 1.0);
            let xt = ctx.upload_f32("x", &[groups * m, stride], &x).unwrap();
            let wt = ctx.upload_f32("w", &[groups, n, k], &w).unwrap();
            let offset = extra / 2 / 4 * 4;
            let view = MatView {
                tensor: &xt,
                rows: groups * m,
                cols: k,
                offset,
                stride,
            };
            let mut rec = ctx.recorder();
            let y = matmul_grouped(&mut rec, "y", view, &wt, groups).unwrap();
            // One dispatch on wgpu; cuBLAS runs a gemm per group.
            let launches = match ctx.backend() {
                ssmgpu::runtime::Backend::Wgpu => 1,
                _ => groups,
            };
            assert_eq!(rec.dispatch_count(), launches);
            let got = rec.submit_and_read_blocking(&[&y]).unwrap().remove(0);
            for g in 0..groups {
                let xg: Vec<f32> = (0..m)
                    .flat_map(|i| {
                        let row = offset + (g * m + i) * stride;
                        x[row..row + k].to_vec()
                    })
                    .collect();
                let want = matmul_ref(&xg, m, k, &w[g * n * k..][..n * k], n, None);
                assert_close(
                    &format!("grouped matmul {groups}x{m}x{k}x{n}, group {g}"),
                    &got[g * m * n..][..m * n],
                    &want,
                    1e-4,
                    1e-4,
                );
            }
        }
    }
}

fn matmul_cases(ctx: &ssmgpu::Context) {
    let mut r = rng(1);
    // (m, k, n, bias, extra columns around x): vec4 and scalar paths, ragged edges, views.
    let cases = [
        (1, 4, 4, false, 0),
        (1, 1, 1, true, 0),
        (3, 5, 7, true, 0),
        (4, 8, 33, false, 0),
        (37, 64, 100, true, 0),
        (197, 384, 96, false, 0),
        (5, 36, 300, true, 0),
        (70, 100, 260, false, 8),
        (65, 48, 70, false, 36),
        (9, 7, 13, true, 3),
        // the subgroup kernels' 20-row and 4-row tiles, with ragged edges
        (37, 64, 600, true, 0),
        (6, 32, 1030, false, 8),
        // Vim's dt_proj: k = 12 (one partial chunk), a column view of x_proj's output
        (197, 12, 384, false, 32),
        // 8-value units (64-bit loads): 17 units, so the last chunk is partial; a view whose
        // offset and stride are multiples of 8, and one whose stride is not
        (50, 136, 200, true, 16),
        (40, 64, 70, false, 4),
        // the tile from 8 rows, with a 5-unit chunk (k = 40)
        (12, 40, 70, true, 0),
    ];
    for (m, k, n, with_bias, extra) in cases {
        let stride = k + extra;
        let x = randn(&mut r, m * stride, 1.0);
        let w = randn(&mut r, n * k, 1.0);
        let b = randn(&mut r, n, 1.0);
        let xt = ctx.upload_f32("x", &[m, stride], &x).unwrap();
        let wt = ctx.upload_f32("w", &[n, k], &w).unwrap();
        let bt = ctx.upload_f32("b", &[n], &b).unwrap();
        let offset = extra / 2 / 4 * 4;
        let view = MatView {
            tensor: &xt,
            rows: m,
            cols: k,
            offset,
            stride,
        };
        let mut rec = ctx.recorder();
        let y = matmul(&mut rec, "y", view, &wt, with_bias.then_some(&bt)).unwrap();
        let got = rec.submit_and_read_blocking(&[&y]).unwrap().remove(0);
        let dense: Vec<f32> = (0..m)
            .flat_map(|i| x[i * stride + offset..][..k].to_vec())
            .collect();
        let want = matmul_ref(&dense, m, k, &w, n, with_bias.then_some(&b[..]));
        let what = format!(
            "matmul {m}x{k}x{n}+{extra} (subgroups {}, int64 {})",
            ctx.uses_subgroups(),
            ctx.uses_int64()
        );
        assert_close(&what, &got, &want, 1e-5, 1e-5);
    }
}

#[test]
fn embedding_matches_reference() {
    let mut r = rng(2);
    // Binding at most 10 KiB splits the two larger tables into 2 and 7 shards.
    let small_bindings = common::ctx_with_binding_limit(10 << 10);
    for ctx in [ctx(), &small_bindings] {
        for (vocab, dim, rows) in [(1, 1, 1), (50, 7, 13), (300, 10, 40), (256, 64, 34)] {
            let table = randn(&mut r, vocab * dim, 1.0);
            let ids: Vec<u32> = (0..rows).map(|_| r.random_range(0..vocab as u32)).collect();
            let tt = ctx.upload_row_shards("table", vocab, dim, &table).unwrap();
            let it = ctx.upload_u32("ids", &[rows], &ids).unwrap();
            let mut rec = ctx.recorder();
            let out = embedding(&mut rec, &it, &tt).unwrap();
            let got = rec.submit_and_read_blocking(&[&out]).unwrap().remove(0);
            let shards = tt.shards().count();
            let rows_per_binding =
                ctx.limits().max_storage_buffer_binding_size as usize / (dim * 4);
            assert_eq!(shards, vocab.div_ceil(rows_per_binding), "{vocab}x{dim}");
            assert_eq!(
                got,
                embedding_ref(&ids, &table, dim),
                "embedding {vocab}x{dim} in {shards} shards"
            );
        }
    }
}

#[test]
fn add_rmsnorm_matches_reference() {
    let ctx = ctx();
    let mut r = rng(3);
    // Dims that take each kernel: scalar, vec4 (12), eight floats per load (64, 200, 1000).
    for (rows, dim, with_hidden) in [
        (1, 1, false),
        (3, 7, true),
        (4, 12, true),
        (17, 64, true),
        (5, 200, false),
        (2, 1000, true),
    ] {
        let mut residual = randn(&mut r, rows * dim, 2.0);
        let hidden = randn(&mut r, rows * dim, 2.0);
        let weight = randn(&mut r, dim, 1.0);
        let rt = ctx.upload_f32("residual", &[rows, dim], &residual).unwrap();
        let ht = ctx.upload_f32("hidden", &[rows, dim], &hidden).unwrap();
        let wt = ctx.upload_f32("weight", &[dim], &weight).unwrap();
        let mut rec = ctx.recorder();
        let out = add_rmsnorm(&mut rec, &rt, with_hidden.then_some(&ht), &wt, 1e-5).unwrap();
        let got = rec.submit_and_read_blocking(&[&out, &rt]).unwrap();
        let want = add_rmsnorm_ref(
            &mut residual,
            with_hidden.then_some(&hidden[..]),
            &weight,
            1e-5,
        );
        assert_close(&format!("rmsnorm {rows}x{dim}"), &got[0], &want, 1e-5, 1e-5);
        assert_close(
            &format!("residual {rows}x{dim}"),
            &got[1],
            &residual,
            0.0,
            0.0,
        );
    }
}

#[test]
fn conv1d_matches_reference_and_carries_state() {
    let ctx = ctx();
    let mut r = rng(4);
    // The scalar, four-channel (vec4) and eight-channel (vec4<u64>) kernels.
    for (batch, len, channels) in [
        (1, 1, 1),
        (2, 5, 3),
        (1, 33, 64),
        (3, 17, 130),
        (2, 9, 12),
        (2, 7, 24),
    ] {
        let x = randn(&mut r, batch * len * channels, 1.0);
        let w = randn(&mut r, channels * CONV_WIDTH, 1.0);
        let b = randn(&mut r, channels, 1.0);
        let xt = ctx.upload_f32("x", &[batch * len, channels], &x).unwrap();
        let wt = ctx.upload_f32("w", &[channels, CONV_WIDTH], &w).unwrap();
        let bt = ctx.upload_f32("b", &[channels], &b).unwrap();
        let st = ctx
            .upload_f32(
                "state",
                &[batch, channels, CONV_WIDTH],
                &vec![0.0; batch * channels * CONV_WIDTH],
            )
            .unwrap();
        // The kernel and its reference over `x` of `rows` tokens per sequence, the state
        // carried as given (the reference: `carry` continues `state`, else starts from zero).
        let gpu = |rec: &mut ssmgpu::Recorder, x: &ssmgpu::Tensor, carry, reverse| {
            conv1d_silu(rec, x.mat(), batch, &wt, &bt, carry, reverse, None).unwrap()
        };
        let reference = |x: &[f32], rows, state: &mut [f32], carry, reverse| {
            conv1d_silu_ref(
                x, batch, rows, channels, &w, &b, state, carry, reverse, None,
            )
        };
        let mut rec = ctx.recorder();
        let plain = gpu(&mut rec, &xt, Carry::None, false);
        let captured = gpu(&mut rec, &xt, Carry::Capture(&st), false);
        let reversed = gpu(&mut rec, &xt, Carry::None, true);
        let got = rec
            .submit_and_read_blocking(&[&plain, &captured, &st, &reversed])
            .unwrap();
        let mut state = vec![0.0; batch * channels * CONV_WIDTH];
        let want = reference(&x, len, &mut state, false, false);
        // Reverse = the forward conv of each flipped sequence, flipped back.
        let flip = |v: &[f32]| flip_tokens(v, batch, len, channels);
        let mut scratch = vec![0.0; state.len()];
        let flipped = reference(&flip(&x), len, &mut scratch, false, false);
        assert_close("conv1d reverse", &got[3], &flip(&flipped), 1e-5, 1e-5);
        let mut scratch = vec![0.0; state.len()];
        let reverse_ref = reference(&x, len, &mut scratch, false, true);
        assert_close(
            "conv1d reverse ref",
            &reverse_ref,
            &flip(&flipped),
            0.0,
            0.0,
        );
        assert_close(
            &format!("conv1d {batch}x{len}x{channels}"),
            &got[0],
            &want,
            1e-5,
            1e-5,
        );
        assert_close("conv1d capture", &got[1], &want, 1e-5, 1e-5);
        assert_close("conv1d state", &got[2], &state, 0.0, 0.0);

        // Continue the captured state over one more token, as a decode step does.
        let x2 = randn(&mut r, batch * channels, 1.0);
        let x2t = ctx.upload_f32("x2", &[batch, channels], &x2).unwrap();
        let mut rec = ctx.recorder();
        let step = gpu(&mut rec, &x2t, Carry::Continue(&st), false);
        let got = rec.submit_and_read_blocking(&[&step, &st]).unwrap();
        let want = reference(&x2, 1, &mut state, true, false);
        assert_close("conv1d step", &got[0], &want, 1e-5, 1e-5);
        assert_close("conv1d step state", &got[1], &state, 0.0, 0.0);
    }
}

/// Both walks of a bidirectional mixer in one dispatch: the first half the forward conv with
/// the first weights, the second the reversed conv with the second, over dense tokens and over
/// kept positions, for every kernel width (1, 4 and 8 channels per invocation).
#[test]
fn conv1d_both_directions_in_one_dispatch_match_two_walks() {
    let ctx = ctx();
    let mut r = rng(15);
    let (batch, len) = (2, 9);
    let positions: Vec<u32> = [
        [1u32, 2, 4, 8, 9, 14, 15, 16, 22],
        [0, 3, 4, 5, 10, 11, 13, 17, 20],
    ]
    .concat();
    for channels in [5, 8, 12, 24] {
        let x = randn(&mut r, batch * len * channels, 1.0);
        let w = randn(&mut r, 2 * channels * CONV_WIDTH, 1.0);
        let b = randn(&mut r, 2 * channels, 1.0);
        let xt = ctx.upload_f32("x", &[batch * len, channels], &x).unwrap();
        let wt = ctx.upload_f32("w", &[2, channels, CONV_WIDTH], &w).unwrap();
        let bt = ctx.upload_f32("b", &[2, channels], &b).unwrap();
        let pt = ctx.upload_u32("pos", &[batch, len], &positions).unwrap();
        for gaps in [None, Some(&positions[..])] {
            let mut rec = ctx.recorder();
            let gpu_gaps = gaps.map(|_| &pt);
            let out = conv1d_silu_both(&mut rec, xt.mat(), batch, &wt, &bt, gpu_gaps).unwrap();
            assert_eq!(rec.dispatch_count(), 1);
            let got = rec.submit_and_read_blocking(&[&out]).unwrap().remove(0);
            let rows = batch * len * channels;
            for (dir, reverse) in [(0, false), (1, true)] {
                let mut scratch = vec![0.0; batch * channels * CONV_WIDTH];
                let want = conv1d_silu_ref(
                    &x,
                    batch,
                    len,
                    channels,
                    &w[dir * channels * CONV_WIDTH..][..channels * CONV_WIDTH],
                    &b[dir * channels..][..channels],
                    &mut scratch,
                    false,
                    reverse,
                    gaps,
                );
                assert_close(
                    &format!(
                        "conv1d both, {channels} channels, direction {dir}, gaps {}",
                        gaps.is_some()
                    ),
                    &got[dir * rows..][..rows],
                    &want,
                    1e-5,
                    1e-5,
                );
            }
        }
    }
}

/// The kept tokens of a pruned sequence at their original positions: both directions equal
/// the dense conv of the full sequence with the pruned tokens zeroed, at the kept rows.
#[test]
fn conv1d_over_kept_positions_reads_pruned_ones_as_zero() {
    let ctx = ctx();
    let mut r = rng(14);
    let (batch, full) = (2, 23);
    // 8 channels take the eight-channel kernel where the device has 64-bit integers, 12 the
    // four-channel one.
    for channels in [5, 8, 12] {
        // Per sequence: kept original positions with gaps of 1 to 5.
        let kept: Vec<Vec<u32>> = vec![
            vec![1, 2, 4, 8, 9, 14, 15, 16, 22],
            vec![0, 3, 4, 5, 10, 11, 13, 17, 20],
        ];
        let len = kept[0].len();
        let dense = randn(&mut r, batch * full * channels, 1.0);
        let w = randn(&mut r, channels * CONV_WIDTH, 1.0);
        let b = randn(&mut r, channels, 1.0);
        let mut zeroed = vec![0.0; dense.len()];
        let mut compact = Vec::new();
        for (s, pos) in kept.iter().enumerate() {
            for &p in pos {
                let row = (s * full + p as usize) * channels;
                zeroed[row..row + channels].copy_from_slice(&dense[row..row + channels]);
                compact.extend_from_slice(&dense[row..row + channels]);
            }
        }
        let positions: Vec<u32> = kept.concat();
        let xt = ctx
            .upload_f32("x", &[batch * len, channels], &compact)
            .unwrap();
        let wt = ctx.upload_f32("w", &[channels, CONV_WIDTH], &w).unwrap();
        let bt = ctx.upload_f32("b", &[channels], &b).unwrap();
        let pt = ctx.upload_u32("pos", &[batch, len], &positions).unwrap();
        for reverse in [false, true] {
            let mut rec = ctx.recorder();
            let out = conv1d_silu(
                &mut rec,
                xt.mat(),
                batch,
                &wt,
                &bt,
                Carry::None,
                reverse,
                Some(&pt),
            )
            .unwrap();
            let got = rec.submit_and_read_blocking(&[&out]).unwrap().remove(0);
            let conv_ref = |x: &[f32], len: usize, positions: Option<&[u32]>| {
                let mut scratch = vec![0.0; batch * channels * CONV_WIDTH];
                conv1d_silu_ref(
                    x,
                    batch,
                    len,
                    channels,
                    &w,
                    &b,
                    &mut scratch,
                    false,
                    reverse,
                    positions,
                )
            };
            let full_out = conv_ref(&zeroed, full, None);
            let want: Vec<f32> = kept
                .iter()
                .enumerate()
                .flat_map(|(s, pos)| {
                    pos.iter()
                        .flat_map(|&p| {
                            let row = (s * full + p as usize) * channels;
                            full_out[row..row + channels].to_vec()
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            assert_close(
                &format!("conv1d gaps reverse {reverse}"),
                &got,
                &want,
                1e-5,
                1e-5,
            );
            let reference = conv_ref(&compact, len, Some(&positions));
            assert_close(
                &format!("conv1d gaps reference {reverse}"),
                &reference,
                &want,
                1e-6,
                1e-6,
            );
        }
    }
}

#[test]
fn scan_matches_reference_in_every_mode() {
    for ctx in contexts() {
        scan_cases(ctx);
    }
}

fn scan_cases(ctx: &ssmgpu::Context) {
    let mut r = rng(5);
    let cases = [
        // batch, len, channels, nstate, z, bias, softplus, reverse, gap decay
        (1, 1, 1, 1, true, true, true, false, false),
        (2, 17, 5, 4, true, true, true, false, false),
        (3, 9, 70, 16, false, false, false, false, false),
        (1, 40, 33, 5, true, false, true, true, false),
        (2, 64, 64, 16, true, true, true, true, false),
        (2, 23, 40, 16, true, true, true, false, true),
        (1, 30, 70, 16, true, true, true, true, true),
        // Several of the CUDA scan's 1024-token chunks, the state carried across them.
        (1, 2100, 6, 16, true, true, true, true, true),
        (2, 1500, 3, 7, false, true, true, false, false),
    ];
    for (batch, len, channels, nstate, with_z, with_bias, softplus, reverse, gaps) in cases {
        let rows = batch * len;
        let u = randn(&mut r, rows * channels, 1.0);
        let delta = randn(&mut r, rows * channels, 1.0);
        let b = randn(&mut r, rows * nstate, 1.0);
        let c = randn(&mut r, rows * nstate, 1.0);
        let a = negative(randn(&mut r, channels * nstate, 1.0));
        let d = randn(&mut r, channels, 1.0);
        let bias = randn(&mut r, channels, 1.0);
        let z = randn(&mut r, rows * channels, 2.0);
        // Kept positions of a pruned sequence: increasing with gaps of 0..3 pruned tokens.
        let positions: Vec<u32> = (0..batch)
            .flat_map(|_| {
                let mut p = 0u32;
                (0..len)
                    .map(|_| {
                        p += 1 + r.random_range(0..4u32);
                        p
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let inputs = ScanRef {
            batch,
            len,
            channels,
            nstate,
            u: &u,
            delta: &delta,
            b: &b,
            c: &c,
            a: &a,
            d: Some(&d),
            dt_bias: with_bias.then_some(&bias[..]),
            z: with_z.then_some(&z[..]),
            softplus,
            reverse,
            gap_positions: gaps.then_some(&positions[..]),
        };
        let on_gpu = inputs.upload(ctx).unwrap();
        let st = ctx
            .upload_f32(
                "state",
                &[batch, channels, nstate],
                &vec![0.0; batch * channels * nstate],
            )
            .unwrap();
        // `accumulate` adds onto what the tensor holds.
        let base = randn(&mut r, rows * channels, 1.0);
        let acc = ctx.upload_f32("acc", &[rows, channels], &base).unwrap();
        let mut rec = ctx.recorder();
        let y = selective_scan(&mut rec, on_gpu.args(Carry::Capture(&st))).unwrap();
        let mut accumulate = on_gpu.args(Carry::None);
        accumulate.accumulate = Some(&acc);
        selective_scan(&mut rec, accumulate).unwrap();
        let got = rec.submit_and_read_blocking(&[&y, &st, &acc]).unwrap();
        let mut state = vec![0.0; batch * channels * nstate];
        let want = selective_scan_ref(&inputs, &mut state);
        let summed: Vec<f32> = base.iter().zip(&want).map(|(a, b)| a + b).collect();
        let what = format!(
            "scan b{batch} l{len} e{channels} n{nstate} rev{reverse} gaps{gaps} (subgroups {})",
            ctx.uses_subgroups()
        );
        assert_close(&what, &got[0], &want, 1e-5, 1e-4);
        assert_close(&format!("{what} state"), &got[1], &state, 1e-5, 1e-4);
        assert_close(&format!("{what} accumulate"), &got[2], &summed, 1e-5, 1e-4);
    }
}

#[test]
fn scan_with_projected_delta_matches_matmul_then_scan() {
    for ctx in contexts() {
        projected_delta_cases(ctx);
    }
}

/// Mamba's dt_proj handed to the scan (`Delta::Projected`), against the CPU matmul followed by
/// the CPU scan. x_proj's output row is `[dt (rank, padded to 4) | B | C]`, as in Vim-Ti
/// (rank 12). Where the kernel computes the projection itself (wgpu, subgroups, rank <= 16,
/// aligned rows) the scan is one dispatch; elsewhere a matmul runs first.
fn projected_delta_cases(ctx: &ssmgpu::Context) {
    use ssmgpu::ops::scan::{Delta, ScanArgs, MAX_FUSED_DT_RANK};
    let mut r = rng(9);
    // batch, len, channels, rank, nstate, reverse, gap decay
    let cases: [(usize, usize, usize, usize, usize, bool, bool); 7] = [
        (1, 1, 2, 1, 16, false, false),
        (2, 37, 64, 12, 16, false, false),
        (1, 50, 70, 5, 8, true, false),
        (1, 20, 70, 6, 7, true, false),
        (2, 23, 40, 16, 16, true, true),
        (1, 19, 6, 8, 3, false, true),
        (1, 12, 8, 17, 16, false, false),
    ];
    for (batch, len, channels, rank, nstate, reverse, gaps) in cases {
        let rows = batch * len;
        let dt_cols = rank.div_ceil(4) * 4;
        let width = dt_cols + 2 * nstate;
        let q = randn(&mut r, rows * rank, 0.5);
        let weight = randn(&mut r, channels * rank, 0.5);
        let b = randn(&mut r, rows * nstate, 1.0);
        let c = randn(&mut r, rows * nstate, 1.0);
        let x_proj_out: Vec<f32> = (0..rows)
            .flat_map(|t| {
                let mut row = q[t * rank..][..rank].to_vec();
                row.resize(dt_cols, 0.0);
                row.extend_from_slice(&b[t * nstate..][..nstate]);
                row.extend_from_slice(&c[t * nstate..][..nstate]);
                row
            })
            .collect();
        let u = randn(&mut r, rows * channels, 1.0);
        let z = randn(&mut r, rows * channels, 2.0);
        let a = negative(randn(&mut r, channels * nstate, 1.0));
        let d = randn(&mut r, channels, 1.0);
        let bias = randn(&mut r, channels, 1.0);
        let positions: Vec<u32> = (0..rows as u32).map(|t| 2 * t + t % 3).collect();
        let delta = matmul_ref(&q, rows, rank, &weight, channels, None);
        let inputs = ScanRef {
            batch,
            len,
            channels,
            nstate,
            u: &u,
            delta: &delta,
            b: &b,
            c: &c,
            a: &a,
            d: Some(&d),
            dt_bias: Some(&bias),
            z: Some(&z),
            softplus: true,
            reverse,
            gap_positions: gaps.then_some(&positions[..]),
        };
        let mut state = vec![0.0; batch * channels * nstate];
        let want = selective_scan_ref(&inputs, &mut state);

        let on_gpu = inputs.upload(ctx).unwrap();
        let x_proj_out = ctx
            .upload_f32("x_proj_out", &[rows, width], &x_proj_out)
            .unwrap();
        let weight = ctx
            .upload_f32("dt_proj", &[channels, rank], &weight)
            .unwrap();
        let mut rec = ctx.recorder();
        let args = ScanArgs {
            delta: Delta::Projected {
                q: x_proj_out.cols(0, rank),
                weight: &weight,
            },
            b: x_proj_out.cols(dt_cols, nstate),
            c: x_proj_out.cols(dt_cols + nstate, nstate),
            ..on_gpu.args(Carry::None)
        };
        let y = selective_scan(&mut rec, args).unwrap();
        // The subgroup variant reads B and C as vec4s and channel pairs as vec2s.
        let fused = ctx.uses_subgroups()
            && ctx.backend() == ssmgpu::runtime::Backend::Wgpu
            && rank <= MAX_FUSED_DT_RANK
            && nstate % 4 == 0
            && channels % 2 == 0;
        let what = format!(
            "projected delta b{batch} l{len} e{channels} rank{rank} n{nstate} rev{reverse} \
             gaps{gaps} (subgroups {})",
            ctx.uses_subgroups()
        );
        assert_eq!(
            rec.dispatch_count(),
            if fused { 1 } else { 2 },
            "{what}: dispatches"
        );
        let got = rec.submit_and_read_blocking(&[&y]).unwrap();
        assert_close(&what, &got[0], &want, 1e-5, 1e-4);
    }
}

/// A = -(v + 1.5): negative, as -exp(A_log) is.
fn negative(v: Vec<f32>) -> Vec<f32> {
    v.iter().map(|x| -(x + 1.5)).collect()
}

#[test]
fn scan_split_in_two_with_carried_state_equals_whole() {
    let ctx = ctx();
    let mut r = rng(6);
    let (len, channels, nstate, first) = (20, 24, 16, 13);
    let u = randn(&mut r, len * channels, 1.0);
    let delta = randn(&mut r, len * channels, 1.0);
    let b = randn(&mut r, len * nstate, 1.0);
    let c = randn(&mut r, len * nstate, 1.0);
    let a = negative(randn(&mut r, channels * nstate, 1.0));
    let st = ctx
        .upload_f32(
            "state",
            &[1, channels, nstate],
            &vec![0.0; channels * nstate],
        )
        .unwrap();
    let run = |t: std::ops::Range<usize>, carry: Carry| {
        let rows = |x: &[f32], width: usize| x[t.start * width..t.end * width].to_vec();
        let (u, delta, b, c) = (
            rows(&u, channels),
            rows(&delta, channels),
            rows(&b, nstate),
            rows(&c, nstate),
        );
        let inputs = ScanRef {
            batch: 1,
            len: t.len(),
            channels,
            nstate,
            u: &u,
            delta: &delta,
            b: &b,
            c: &c,
            a: &a,
            d: None,
            dt_bias: None,
            z: None,
            softplus: true,
            reverse: false,
            gap_positions: None,
        };
        let on_gpu = inputs.upload(ctx).unwrap();
        let mut rec = ctx.recorder();
        let y = selective_scan(&mut rec, on_gpu.args(carry)).unwrap();
        rec.submit_and_read_blocking(&[&y]).unwrap().remove(0)
    };
    let whole = run(0..len, Carry::None);
    let mut split = run(0..first, Carry::Capture(&st));
    split.extend(run(first..len, Carry::Continue(&st)));
    assert_close("scan split", &split, &whole, 1e-6, 1e-5);
}

#[test]
fn argmax_matches_reference_with_ties() {
    let ctx = ctx();
    let mut r = rng(7);
    let gpu_argmax = |x: &[f32], rows: usize, cols: usize| -> Vec<u32> {
        let xt = ctx.upload_f32("x", &[rows, cols], x).unwrap();
        let mut rec = ctx.recorder();
        let out = argmax(&mut rec, &xt).unwrap();
        rec.submit_and_read_blocking(&[&out]).unwrap()[0]
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    for (rows, cols) in [(1, 1), (3, 5), (2, 1000), (4, 50280)] {
        let mut x = randn(&mut r, rows * cols, 1.0);
        // A tie: the first maximum wins.
        if cols > 3 {
            x[cols - 1] = 5.0;
            x[2] = 5.0;
        }
        let got = gpu_argmax(&x, rows, cols);
        assert_eq!(got, argmax_ref(&x, cols), "argmax {rows}x{cols}");
    }
    // A row with NaN, +inf or -inf has no index (a decoder must stop, not feed it back).
    let cols = 300;
    let mut x = randn(&mut r, 4 * cols, 1.0);
    x[17] = f32::NAN;
    x[cols + 250] = f32::INFINITY;
    x[2 * cols + 3] = f32::NEG_INFINITY;
    x[3 * cols + 123] = 9.0;
    let got = gpu_argmax(&x, 4, cols);
    assert_eq!(got, [NO_INDEX, NO_INDEX, NO_INDEX, 123]);
    assert_eq!(argmax_ref(&x, cols), got);
}

#[test]
fn every_shader_variant_passes_naga_validation() {
    for (name, source) in ssmgpu::ops::SHADERS {
        for (subgroups, int64) in [(false, false), (true, false), (true, true)] {
            let kernel = ssmgpu::runtime::Kernel::file(name, source)
                .with_subgroups(subgroups)
                .with_int64(int64);
            let what = format!("{name}.wgsl (subgroups {subgroups}, int64 {int64})");
            let wgsl = kernel.wgsl();
            let module = naga::front::wgsl::parse_str(&wgsl)
                .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(&wgsl)));
            let mut caps = naga::valid::Capabilities::empty();
            caps.set(naga::valid::Capabilities::SUBGROUP, subgroups);
            caps.set(naga::valid::Capabilities::SHADER_INT64, int64);
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
                .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
                .subgroup_operations(naga::valid::SubgroupOperationSet::all())
                .validate(&module)
                .unwrap_or_else(|e| panic!("{what}: {e:?}"));
        }
    }
}

#[test]
fn im2col_then_matmul_matches_direct_convolution() {
    let ctx = ctx();
    let mut r = rng(8);
    let cases = [
        // layout, (batch, channels, h, w), kernel, stride, padding, out channels
        (Layout::Nchw, (2, 3, 32, 48), (16, 16), (16, 16), (0, 0), 8), // patch embedding
        (Layout::Nchw, (1, 3, 20, 14), (7, 7), (2, 2), (3, 3), 5),     // conv stem
        (Layout::Nhwc, (2, 6, 9, 7), (3, 3), (1, 1), (1, 1), 4),
        (Layout::Nhwc, (1, 4, 16, 24), (8, 8), (8, 8), (0, 0), 3),
        (Layout::Nchw, (1, 1, 28, 28), (2, 2), (2, 2), (0, 0), 16),
    ];
    for (layout, dims, kernel, stride, padding, out_channels) in cases {
        let (batch, channels, h, w) = dims;
        let geometry = ConvGeometry {
            kernel,
            stride,
            padding,
        };
        let x = randn(&mut r, batch * channels * h * w, 1.0);
        let weight = randn(&mut r, out_channels * channels * kernel.0 * kernel.1, 0.3);
        let bias = randn(&mut r, out_channels, 1.0);
        let xt = ctx.upload_f32("x", &[x.len()], &x).unwrap();
        let wt = ctx
            .upload_f32("w", &[out_channels, weight.len() / out_channels], &weight)
            .unwrap();
        let bt = ctx.upload_f32("b", &[out_channels], &bias).unwrap();
        let mut rec = ctx.recorder();
        let cols = im2col(&mut rec, &xt, layout, dims, geometry).unwrap();
        let y = matmul(&mut rec, "conv", cols.mat(), &wt, Some(&bt)).unwrap();
        let got = rec.submit_and_read_blocking(&[&y]).unwrap().remove(0);
        let want = conv2d_ref(&x, layout, dims, &weight, Some(&bias), geometry);
        assert_close(
            &format!("conv {layout:?} {dims:?} k{kernel:?}"),
            &got,
            &want,
            1e-4,
            1e-4,
        );
    }
}

#[test]
fn embed_tokens_inserts_class_token_and_adds_positions() {
    let ctx = ctx();
    let mut r = rng(9);
    for (batch, patches, dim, cls_pos) in [(1, 16, 8, Some(8)), (2, 5, 3, Some(2)), (2, 6, 4, None)]
    {
        let len = patches + cls_pos.is_some() as usize;
        let x = randn(&mut r, batch * patches * dim, 1.0);
        let cls = randn(&mut r, dim, 1.0);
        let pos = randn(&mut r, len * dim, 1.0);
        let xt = ctx.upload_f32("x", &[batch * patches, dim], &x).unwrap();
        let ct = ctx.upload_f32("cls", &[dim], &cls).unwrap();
        let pt = ctx.upload_f32("pos", &[len, dim], &pos).unwrap();
        let mut rec = ctx.recorder();
        let y = embed_tokens(&mut rec, &xt, batch, cls_pos.map(|p| (&ct, p)), Some(&pt)).unwrap();
        let got = rec.submit_and_read_blocking(&[&y]).unwrap().remove(0);
        let want = embed_tokens_ref(&x, batch, dim, cls_pos.map(|p| (&cls[..], p)), Some(&pos));
        assert_close("tokens", &got, &want, 0.0, 0.0);
        // The class token sits at its position in every image.
        if let Some(p) = cls_pos {
            for b in 0..batch {
                let row = &want[(b * len + p) * dim..][..dim];
                let expect: Vec<f32> = (0..dim).map(|d| cls[d] + pos[p * dim + d]).collect();
                assert_eq!(row, &expect[..]);
            }
        }
    }
}
