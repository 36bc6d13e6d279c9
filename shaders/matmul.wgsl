// y[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]): PyTorch's linear layer, weight [out, in].
// x is a strided row view (offset + row * x_stride), so column slices of a wider activation
// (the dt part of x_proj's output) are read in place. The epilogue applies an activation and
// adds a residual [m, n], so conv+BN+ReLU stems and `x + f(x)` connections cost no extra pass.
//
// Each invocation computes a 4 x 4 output block from vec4 loads along k: 8 vec4 loads feed
// 64 multiply-adds. On a CPU driver (lavapipe) every invocation-varying load is a per-lane
// gather, so the flops per load ratio is what sets the speed.

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
    var bvec = vec4<f32>(0.0);
    if (p.has_bias != 0u) {
        for (var j = 0u; j < 4u; j++) {
            bvec[j] = bias[min(n0 + j, p.n - 1u)];
        }
    }
    for (var i = 0u; i < TM; i++) {
        let m = m0 + i;
        if (m >= p.m) {
            break;
        }
        let v = acc[i] + bvec;
        let base = p.y_offset + m * p.y_stride + n0;
        for (var j = 0u; j < 4u; j++) {
            if (n0 + j < p.n) {
                y[base + j] = finish(v[j], m, n0 + j);
            }
        }
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
// Subgroup variant: a workgroup shares TS rows and covers 256 columns, 4 per invocation. Per
// chunk of 32 k, lanes 0..7 of each subgroup load one vec4 of each row and broadcast it, so x
// costs TS loads per chunk for the whole subgroup and each loaded weight feeds TS rows.
const TS: u32 = 4u;

fn store_rows(m0: u32, n0: u32, acc: array<vec4<f32>, TS>) {
    var bvec = vec4<f32>(0.0);
    if (p.has_bias != 0u) {
        bvec = vec4<f32>(bias[min(n0, p.n - 1u)], bias[min(n0 + 1u, p.n - 1u)], bias[min(n0 + 2u, p.n - 1u)], bias[min(n0 + 3u, p.n - 1u)]);
    }
    for (var i = 0u; i < TS; i++) {
        if (m0 + i < p.m) {
            let v = acc[i] + bvec;
            let m = m0 + i;
            let base = p.y_offset + m * p.y_stride + n0;
            y[base] = finish(v.x, m, n0);
            if (n0 + 1u < p.n) { y[base + 1u] = finish(v.y, m, n0 + 1u); }
            if (n0 + 2u < p.n) { y[base + 2u] = finish(v.z, m, n0 + 2u); }
            if (n0 + 3u < p.n) { y[base + 3u] = finish(v.w, m, n0 + 3u); }
        }
    }
}

@compute @workgroup_size(64)
fn matmul_subgroup(@builtin(workgroup_id) wg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32, @builtin(local_invocation_index) li: u32) {
    let n0 = (wg.x * 64u + li) * 4u;
    let m0 = wg.y * TS;
    let valid = n0 < p.n;
    let k4 = p.k / 4u;
    let q = lane & 7u;
    let wr = min(vec4<u32>(n0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.n - 1u)) * k4;
    let xr0 = (p.x_offset + min(m0 + 0u, p.m - 1u) * p.x_stride) / 4u;
    let xr1 = (p.x_offset + min(m0 + 1u, p.m - 1u) * p.x_stride) / 4u;
    let xr2 = (p.x_offset + min(m0 + 2u, p.m - 1u) * p.x_stride) / 4u;
    let xr3 = (p.x_offset + min(m0 + 3u, p.m - 1u) * p.x_stride) / 4u;
    var acc = Rows(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var c0 = 0u; c0 < k4; c0 += 8u) {
        // This lane's share of the chunk: vec4 c0 + q (zero past k).
        let kq = c0 + q;
        let in_k = kq < k4;
        let kc = min(kq, k4 - 1u);
        let x0 = select(vec4<f32>(0.0), x4[xr0 + kc], in_k);
        let x1 = select(vec4<f32>(0.0), x4[xr1 + kc], in_k);
        let x2 = select(vec4<f32>(0.0), x4[xr2 + kc], in_k);
        let x3 = select(vec4<f32>(0.0), x4[xr3 + kc], in_k);
        // Unrolled by hand: a loop over the (constant) broadcast lane runs 35% slower on lavapipe.
        acc = mac(acc, weight_block(wr, min(c0, k4 - 1u)), Rows(subgroupBroadcast(x0, 0u), subgroupBroadcast(x1, 0u), subgroupBroadcast(x2, 0u), subgroupBroadcast(x3, 0u)));
        acc = mac(acc, weight_block(wr, min(c0 + 1u, k4 - 1u)), Rows(subgroupBroadcast(x0, 1u), subgroupBroadcast(x1, 1u), subgroupBroadcast(x2, 1u), subgroupBroadcast(x3, 1u)));
        acc = mac(acc, weight_block(wr, min(c0 + 2u, k4 - 1u)), Rows(subgroupBroadcast(x0, 2u), subgroupBroadcast(x1, 2u), subgroupBroadcast(x2, 2u), subgroupBroadcast(x3, 2u)));
        acc = mac(acc, weight_block(wr, min(c0 + 3u, k4 - 1u)), Rows(subgroupBroadcast(x0, 3u), subgroupBroadcast(x1, 3u), subgroupBroadcast(x2, 3u), subgroupBroadcast(x3, 3u)));
        acc = mac(acc, weight_block(wr, min(c0 + 4u, k4 - 1u)), Rows(subgroupBroadcast(x0, 4u), subgroupBroadcast(x1, 4u), subgroupBroadcast(x2, 4u), subgroupBroadcast(x3, 4u)));
        acc = mac(acc, weight_block(wr, min(c0 + 5u, k4 - 1u)), Rows(subgroupBroadcast(x0, 5u), subgroupBroadcast(x1, 5u), subgroupBroadcast(x2, 5u), subgroupBroadcast(x3, 5u)));
        acc = mac(acc, weight_block(wr, min(c0 + 6u, k4 - 1u)), Rows(subgroupBroadcast(x0, 6u), subgroupBroadcast(x1, 6u), subgroupBroadcast(x2, 6u), subgroupBroadcast(x3, 6u)));
        acc = mac(acc, weight_block(wr, min(c0 + 7u, k4 - 1u)), Rows(subgroupBroadcast(x0, 7u), subgroupBroadcast(x1, 7u), subgroupBroadcast(x2, 7u), subgroupBroadcast(x3, 7u)));
    }
    if (valid) {
        store_rows(m0, n0, array<vec4<f32>, TS>(acc.r0, acc.r1, acc.r2, acc.r3));
    }
}
// #endif
