// y[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]): PyTorch's linear layer, weight [out, in].
// x is a strided row view (offset + row * x_stride), so column slices of a wider activation
// (the dt part of x_proj's output) are read in place.
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
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
// The scalar entry point (k, strides or offset not multiples of 4) reads the same buffers.
@group(0) @binding(1) var<storage, read> x1: array<f32>;
@group(0) @binding(2) var<storage, read> w1: array<f32>;

const WG: u32 = 8u;

fn store_block(m0: u32, n0: u32, acc: array<vec4<f32>, 4>) {
    var bvec = vec4<f32>(0.0);
    if (p.has_bias != 0u) {
        for (var j = 0u; j < 4u; j++) {
            bvec[j] = bias[min(n0 + j, p.n - 1u)];
        }
    }
    for (var i = 0u; i < 4u; i++) {
        let m = m0 + i;
        if (m >= p.m) {
            break;
        }
        let v = acc[i] + bvec;
        let base = p.y_offset + m * p.y_stride + n0;
        for (var j = 0u; j < 4u; j++) {
            if (n0 + j < p.n) {
                y[base + j] = v[j];
            }
        }
    }
}

@compute @workgroup_size(8, 8)
fn matmul_vec4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let n0 = (wg.x * WG + lid.x) * 4u;
    let m0 = (wg.y * WG + lid.y) * 4u;
    if (n0 >= p.n || m0 >= p.m) {
        return;
    }
    let k4 = p.k / 4u;
    // Out-of-range rows and columns are clamped to the last valid one and never stored.
    let xr0 = (p.x_offset + min(m0, p.m - 1u) * p.x_stride) / 4u;
    let xr1 = (p.x_offset + min(m0 + 1u, p.m - 1u) * p.x_stride) / 4u;
    let xr2 = (p.x_offset + min(m0 + 2u, p.m - 1u) * p.x_stride) / 4u;
    let xr3 = (p.x_offset + min(m0 + 3u, p.m - 1u) * p.x_stride) / 4u;
    let wr0 = min(n0, p.n - 1u) * k4;
    let wr1 = min(n0 + 1u, p.n - 1u) * k4;
    let wr2 = min(n0 + 2u, p.n - 1u) * k4;
    let wr3 = min(n0 + 3u, p.n - 1u) * k4;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kk = 0u; kk < k4; kk++) {
        let b0 = w4[wr0 + kk];
        let b1 = w4[wr1 + kk];
        let b2 = w4[wr2 + kk];
        let b3 = w4[wr3 + kk];
        // Transposed so that each row's four outputs accumulate as one vec4 FMA chain.
        let bx = vec4<f32>(b0.x, b1.x, b2.x, b3.x);
        let by = vec4<f32>(b0.y, b1.y, b2.y, b3.y);
        let bz = vec4<f32>(b0.z, b1.z, b2.z, b3.z);
        let bw = vec4<f32>(b0.w, b1.w, b2.w, b3.w);
        let a0 = x4[xr0 + kk];
        acc0 = fma(vec4<f32>(a0.x), bx, fma(vec4<f32>(a0.y), by, fma(vec4<f32>(a0.z), bz, fma(vec4<f32>(a0.w), bw, acc0))));
        let a1 = x4[xr1 + kk];
        acc1 = fma(vec4<f32>(a1.x), bx, fma(vec4<f32>(a1.y), by, fma(vec4<f32>(a1.z), bz, fma(vec4<f32>(a1.w), bw, acc1))));
        let a2 = x4[xr2 + kk];
        acc2 = fma(vec4<f32>(a2.x), bx, fma(vec4<f32>(a2.y), by, fma(vec4<f32>(a2.z), bz, fma(vec4<f32>(a2.w), bw, acc2))));
        let a3 = x4[xr3 + kk];
        acc3 = fma(vec4<f32>(a3.x), bx, fma(vec4<f32>(a3.y), by, fma(vec4<f32>(a3.z), bz, fma(vec4<f32>(a3.w), bw, acc3))));
    }
    store_block(m0, n0, array<vec4<f32>, 4>(acc0, acc1, acc2, acc3));
}

@compute @workgroup_size(8, 8)
fn matmul_scalar(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let n0 = (wg.x * WG + lid.x) * 4u;
    let m0 = (wg.y * WG + lid.y) * 4u;
    if (n0 >= p.n || m0 >= p.m) {
        return;
    }
    var acc = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var kk = 0u; kk < p.k; kk++) {
        var b = vec4<f32>(0.0);
        for (var j = 0u; j < 4u; j++) {
            b[j] = w1[min(n0 + j, p.n - 1u) * p.k + kk];
        }
        for (var i = 0u; i < 4u; i++) {
            let a = x1[p.x_offset + min(m0 + i, p.m - 1u) * p.x_stride + kk];
            acc[i] = fma(vec4<f32>(a), b, acc[i]);
        }
    }
    store_block(m0, n0, acc);
}
