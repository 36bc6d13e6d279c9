// y[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]): PyTorch's linear layer, weight [out, in].
// x is a strided row view (offset + row * x_stride), so column slices of a wider activation
// (the dt part of x_proj's output) are read in place. The epilogue applies an activation and
// adds a residual [m, n], so conv+BN+ReLU stems and `x + f(x)` connections cost no extra pass.
//
// On a CPU driver (lavapipe, Mesa 22.3) every storage-buffer load is a loop over the SIMD
// lanes, even where the address is the same in all of them, while FMAs and subgroup shuffles
// are single vector instructions: the flops per load instruction set the speed. The portable
// kernels give each invocation a 4 x 8 block (12 vec4 loads per 128 multiply-adds); the
// subgroup kernels share the rows of x across a subgroup (see below).

struct Params {
    m: u32,
    n: u32,
    k: u32,
    x_offset: u32,
    x_stride: u32,
    y_offset: u32,
    y_stride: u32,
    has_bias: u32,
    activation: u32,
    has_residual: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> residual: array<f32>;
// The scalar entry point (k, strides or offset not multiples of 4) reads the same buffers.
@group(0) @binding(1) var<storage, read> x1: array<f32>;
@group(0) @binding(2) var<storage, read> w1: array<f32>;

// #include activation

// The epilogue for output (m, col): activation, then the residual.
fn finish(v: f32, m: u32, col: u32) -> f32 {
    var out = activate(v, p.activation);
    if (p.has_residual != 0u) {
        out += residual[m * p.n + col];
    }
    return out;
}

// Stores outputs (m, n0..n0 + 3) = v + bias through the epilogue; rows past m and columns past
// n are dropped.
fn store_row(m: u32, n0: u32, v: vec4<f32>) {
    if (m >= p.m || n0 >= p.n) {
        return;
    }
    var o = v;
    if (p.has_bias != 0u) {
        o += vec4<f32>(bias[n0], bias[min(n0 + 1u, p.n - 1u)], bias[min(n0 + 2u, p.n - 1u)], bias[min(n0 + 3u, p.n - 1u)]);
    }
    let base = p.y_offset + m * p.y_stride + n0;
    y[base] = finish(o.x, m, n0);
    if (n0 + 1u < p.n) { y[base + 1u] = finish(o.y, m, n0 + 1u); }
    if (n0 + 2u < p.n) { y[base + 2u] = finish(o.z, m, n0 + 2u); }
    if (n0 + 3u < p.n) { y[base + 3u] = finish(o.w, m, n0 + 3u); }
}

const WG: u32 = 8u;
const TM: u32 = 8u;

// Four rows (or four k-components) of a 4 x 4 block.
struct Rows {
    r0: vec4<f32>,
    r1: vec4<f32>,
    r2: vec4<f32>,
    r3: vec4<f32>,
}

// The invocation's four weight columns (rows of w) at vec4 kk, transposed: r0 holds k = 4kk for
// columns 0..3, and so on, so that each output row accumulates as one vec4 FMA chain.
fn weight_block(wr: vec4<u32>, kk: u32) -> Rows {
    let b0 = w4[wr.x + kk];
    let b1 = w4[wr.y + kk];
    let b2 = w4[wr.z + kk];
    let b3 = w4[wr.w + kk];
    return Rows(
        vec4<f32>(b0.x, b1.x, b2.x, b3.x),
        vec4<f32>(b0.y, b1.y, b2.y, b3.y),
        vec4<f32>(b0.z, b1.z, b2.z, b3.z),
        vec4<f32>(b0.w, b1.w, b2.w, b3.w),
    );
}

// acc.ri += a.ri (vec4 along k) times the weight block b.
fn mac(acc: Rows, b: Rows, a: Rows) -> Rows {
    return Rows(
        fma(vec4<f32>(a.r0.x), b.r0, fma(vec4<f32>(a.r0.y), b.r1, fma(vec4<f32>(a.r0.z), b.r2, fma(vec4<f32>(a.r0.w), b.r3, acc.r0)))),
        fma(vec4<f32>(a.r1.x), b.r0, fma(vec4<f32>(a.r1.y), b.r1, fma(vec4<f32>(a.r1.z), b.r2, fma(vec4<f32>(a.r1.w), b.r3, acc.r1)))),
        fma(vec4<f32>(a.r2.x), b.r0, fma(vec4<f32>(a.r2.y), b.r1, fma(vec4<f32>(a.r2.z), b.r2, fma(vec4<f32>(a.r2.w), b.r3, acc.r2)))),
        fma(vec4<f32>(a.r3.x), b.r0, fma(vec4<f32>(a.r3.y), b.r1, fma(vec4<f32>(a.r3.z), b.r2, fma(vec4<f32>(a.r3.w), b.r3, acc.r3)))),
    );
}

fn store_block(m0: u32, n0: u32, acc: array<vec4<f32>, TM>) {
    for (var i = 0u; i < TM; i++) {
        store_row(m0 + i, n0, acc[i]);
    }
}

@compute @workgroup_size(8, 8)
fn matmul_vec4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let n0 = (wg.x * WG + lid.x) * 4u;
    let m0 = (wg.y * WG + lid.y) * TM;
    if (n0 >= p.n || m0 >= p.m) {
        return;
    }
    let k4 = p.k / 4u;
    // Out-of-range rows and columns are clamped to the last valid one and never stored.
    let wr = min(vec4<u32>(n0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.n - 1u)) * k4;
    var xr: array<u32, TM>;
    for (var i = 0u; i < TM; i++) {
        xr[i] = (p.x_offset + min(m0 + i, p.m - 1u) * p.x_stride) / 4u;
    }
    let zero = Rows(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    var lo = zero;
    var hi = zero;
    for (var kk = 0u; kk < k4; kk++) {
        let b = weight_block(wr, kk);
        lo = mac(lo, b, Rows(x4[xr[0] + kk], x4[xr[1] + kk], x4[xr[2] + kk], x4[xr[3] + kk]));
        hi = mac(hi, b, Rows(x4[xr[4] + kk], x4[xr[5] + kk], x4[xr[6] + kk], x4[xr[7] + kk]));
    }
    store_block(m0, n0, array<vec4<f32>, TM>(lo.r0, lo.r1, lo.r2, lo.r3, hi.r0, hi.r1, hi.r2, hi.r3));
}

@compute @workgroup_size(8, 8)
fn matmul_scalar(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let n0 = (wg.x * WG + lid.x) * 4u;
    let m0 = (wg.y * WG + lid.y) * TM;
    if (n0 >= p.n || m0 >= p.m) {
        return;
    }
    var acc: array<vec4<f32>, TM>;
    for (var kk = 0u; kk < p.k; kk++) {
        var b = vec4<f32>(0.0);
        for (var j = 0u; j < 4u; j++) {
            b[j] = w1[min(n0 + j, p.n - 1u) * p.k + kk];
        }
        for (var i = 0u; i < TM; i++) {
            let a = x1[p.x_offset + min(m0 + i, p.m - 1u) * p.x_stride + kk];
            acc[i] = fma(vec4<f32>(a), b, acc[i]);
        }
    }
    store_block(m0, n0, acc);
}

// #if subgroups
// Subgroup variants: the lanes of a subgroup span columns (4 each) and share a block of rows.
// Per chunk of 8 vec4s along k, lane q loads vec4 q of each row and the others read it with a
// shuffle, so x costs one load per row per chunk for the whole subgroup; each lane loads only
// its weights, and each weight load feeds every row of the block. The shuffles name constant
// lanes, so the driver compiles them as a broadcast (measured as fast as subgroupBroadcast,
// which WGSL allows only with a literal lane).

// x[m, 4kq..4kq + 3], zero past k (a chunk's last lanes).
fn x_vec(m: u32, kq: u32) -> vec4<f32> {
    let k4 = p.k / 4u;
    let v = x4[(p.x_offset + min(m, p.m - 1u) * p.x_stride) / 4u + min(kq, k4 - 1u)];
    return select(vec4<f32>(0.0), v, kq < k4);
}

fn x_rows(m: u32, kq: u32) -> Rows {
    return Rows(x_vec(m, kq), x_vec(m + 1u, kq), x_vec(m + 2u, kq), x_vec(m + 3u, kq));
}

// What lane j holds of four rows.
fn lane_rows(x: Rows, j: u32) -> Rows {
    return Rows(subgroupShuffle(x.r0, j), subgroupShuffle(x.r1, j), subgroupShuffle(x.r2, j), subgroupShuffle(x.r3, j));
}

fn store_rows(m0: u32, n0: u32, acc: Rows) {
    store_row(m0, n0, acc.r0);
    store_row(m0 + 1u, n0, acc.r1);
    store_row(m0 + 2u, n0, acc.r2);
    store_row(m0 + 3u, n0, acc.r3);
}

// 32 rows: each weight load feeds 32 rows (4 weight loads and 4 x loads per 512 multiply-adds
// per lane; 8 rows measured 1.5x and 16 rows 1.15x slower at 197 x 384 x 1536, 40 rows no
// faster and 5x slower to compile). The unrolled struct keeps the accumulators in registers:
// an array indexed in a loop stays in memory and runs 4x slower.
struct Tile {
    g0: Rows,
    g1: Rows,
    g2: Rows,
    g3: Rows,
    g4: Rows,
    g5: Rows,
    g6: Rows,
    g7: Rows,
}

fn x_tile(m: u32, kq: u32) -> Tile {
    return Tile(x_rows(m, kq), x_rows(m + 4u, kq), x_rows(m + 8u, kq), x_rows(m + 12u, kq),
                x_rows(m + 16u, kq), x_rows(m + 20u, kq), x_rows(m + 24u, kq), x_rows(m + 28u, kq));
}

// acc += (lane j's vec4 of each row) times the weight block b.
fn mac_tile(acc: Tile, b: Rows, x: Tile, j: u32) -> Tile {
    return Tile(mac(acc.g0, b, lane_rows(x.g0, j)), mac(acc.g1, b, lane_rows(x.g1, j)),
                mac(acc.g2, b, lane_rows(x.g2, j)), mac(acc.g3, b, lane_rows(x.g3, j)),
                mac(acc.g4, b, lane_rows(x.g4, j)), mac(acc.g5, b, lane_rows(x.g5, j)),
                mac(acc.g6, b, lane_rows(x.g6, j)), mac(acc.g7, b, lane_rows(x.g7, j)));
}

// A workgroup is one subgroup of 8 lanes: 32 rows x 32 columns, so narrow outputs (n = 44)
// leave few lanes idle.
@compute @workgroup_size(8)
fn matmul_subgroup(@builtin(workgroup_id) wg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32, @builtin(local_invocation_index) li: u32) {
    let n0 = (wg.x * 8u + li) * 4u;
    let m0 = wg.y * 32u;
    let k4 = p.k / 4u;
    let q = lane & 7u;
    // Columns past n are clamped to the last one and never stored; chunk steps past k read
    // the last weights against zero x.
    let wr = min(vec4<u32>(n0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.n - 1u)) * k4;
    let z = Rows(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    var acc = Tile(z, z, z, z, z, z, z, z);
    for (var c0 = 0u; c0 < k4; c0 += 8u) {
        let x = x_tile(m0, c0 + q);
        // Unrolled by hand: a loop over the lane is not unrolled and runs 35% slower.
        acc = mac_tile(acc, weight_block(wr, c0), x, 0u);
        acc = mac_tile(acc, weight_block(wr, min(c0 + 1u, k4 - 1u)), x, 1u);
        acc = mac_tile(acc, weight_block(wr, min(c0 + 2u, k4 - 1u)), x, 2u);
        acc = mac_tile(acc, weight_block(wr, min(c0 + 3u, k4 - 1u)), x, 3u);
        acc = mac_tile(acc, weight_block(wr, min(c0 + 4u, k4 - 1u)), x, 4u);
        acc = mac_tile(acc, weight_block(wr, min(c0 + 5u, k4 - 1u)), x, 5u);
        acc = mac_tile(acc, weight_block(wr, min(c0 + 6u, k4 - 1u)), x, 6u);
        acc = mac_tile(acc, weight_block(wr, min(c0 + 7u, k4 - 1u)), x, 7u);
    }
    store_rows(m0, n0, acc.g0);
    store_rows(m0 + 4u, n0, acc.g1);
    store_rows(m0 + 8u, n0, acc.g2);
    store_rows(m0 + 12u, n0, acc.g3);
    store_rows(m0 + 16u, n0, acc.g4);
    store_rows(m0 + 20u, n0, acc.g5);
    store_rows(m0 + 24u, n0, acc.g6);
    store_rows(m0 + 28u, n0, acc.g7);
}

// Few rows (decode steps, a head over class tokens): 4 rows, 64 lanes x 4 columns per
// workgroup, so that a small m does not pay for 32 rows of multiply-adds.
@compute @workgroup_size(64)
fn matmul_subgroup_rows4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32, @builtin(local_invocation_index) li: u32) {
    let n0 = (wg.x * 64u + li) * 4u;
    let m0 = wg.y * 4u;
    let k4 = p.k / 4u;
    let q = lane & 7u;
    let wr = min(vec4<u32>(n0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.n - 1u)) * k4;
    var acc = Rows(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var c0 = 0u; c0 < k4; c0 += 8u) {
        let x = x_rows(m0, c0 + q);
        acc = mac(acc, weight_block(wr, c0), lane_rows(x, 0u));
        acc = mac(acc, weight_block(wr, min(c0 + 1u, k4 - 1u)), lane_rows(x, 1u));
        acc = mac(acc, weight_block(wr, min(c0 + 2u, k4 - 1u)), lane_rows(x, 2u));
        acc = mac(acc, weight_block(wr, min(c0 + 3u, k4 - 1u)), lane_rows(x, 3u));
        acc = mac(acc, weight_block(wr, min(c0 + 4u, k4 - 1u)), lane_rows(x, 4u));
        acc = mac(acc, weight_block(wr, min(c0 + 5u, k4 - 1u)), lane_rows(x, 5u));
        acc = mac(acc, weight_block(wr, min(c0 + 6u, k4 - 1u)), lane_rows(x, 6u));
        acc = mac(acc, weight_block(wr, min(c0 + 7u, k4 - 1u)), lane_rows(x, 7u));
    }
    store_rows(m0, n0, acc);
}
// #endif
