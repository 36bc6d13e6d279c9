// Depthwise KxK convolution (stride 1, zero "same" padding K/2, K odd) on token-major NHWC
// input, with an optional bias and a fused activation:
//   out[b, y, x, c] = act(bias[c] + sum_{ky,kx} w[c, ky, kx] * in[b, y + ky - K/2, x + kx - K/2, c])
// The input is a strided row view (offset + pixel * x_stride + c), so the x half of an in_proj
// output is read in place. Weights are tap-major, [K, K, channels], so that consecutive
// channels' weights for a tap are adjacent: the vec4 entry point computes four channels of a
// pixel per invocation from vec4 loads (a quarter of the loads, which is what a CPU driver
// pays for); the scalar one, for any channel count or alignment, one output each.
// With KEPT (after token pruning), each image holds `tokens` of its grid's cells: row i of
// image b sits in cell positions[b, i], and slots[b, cell] names the row in each cell (NONE for
// a pruned one, which reads as zero).

struct Params {
    batch: u32,
    height: u32,
    width: u32,
    channels: u32,
    x_offset: u32,
    x_stride: u32,
    kernel: u32,
    activation: u32,
    has_bias: u32,
    // Rows per image: height * width, or the kept tokens with KEPT.
    tokens: u32,
    kept: u32,
    _pad0: u32,
}

const NONE: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> positions: array<u32>;
@group(0) @binding(6) var<storage, read> slots: array<u32>;
// The vec4 entry point's view of the same buffers (channels, offset and stride multiples of 4).
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> weight4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> out4: array<vec4<f32>>;

// #include activation

// Output row `row`'s image and cell: (b, y, x).
fn cell(row: u32) -> vec3<u32> {
    let b = row / p.tokens;
    var q = row - b * p.tokens;
    if (p.kept != 0u) {
        q = positions[row];
    }
    return vec3<u32>(b, q / p.width, q % p.width);
}

// The input row in cell (y, x) of image b, or -1 when that cell is pruned or off the grid.
fn source(b: u32, y: i32, x: i32) -> i32 {
    if (y < 0 || y >= i32(p.height) || x < 0 || x >= i32(p.width)) {
        return -1;
    }
    let q = u32(y) * p.width + u32(x);
    if (p.kept != 0u) {
        let i = slots[b * p.height * p.width + q];
        return select(i32(b * p.tokens + i), -1, i == NONE);
    }
    return i32(b * p.tokens + q);
}

@compute @workgroup_size(256)
fn dwconv2d(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = (wg.x + wg.y * nwg.x) * 256u + li;
    if (i >= p.batch * p.tokens * p.channels) {
        return;
    }
    let pixel = i / p.channels;
    let c = i - pixel * p.channels;
    var acc = 0.0;
    if (p.has_bias != 0u) {
        acc = bias[c];
    }
    let at = cell(pixel);
    let half = i32(p.kernel / 2u);
    for (var ky = 0u; ky < p.kernel; ky++) {
        for (var kx = 0u; kx < p.kernel; kx++) {
            let src = source(at.x, i32(at.y + ky) - half, i32(at.z + kx) - half);
            if (src >= 0) {
                let w = weight[(ky * p.kernel + kx) * p.channels + c];
                acc = fma(w, x[p.x_offset + u32(src) * p.x_stride + c], acc);
            }
        }
    }
    out[i] = activate(acc, p.activation);
}

@compute @workgroup_size(256)
fn dwconv2d_vec4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = (wg.x + wg.y * nwg.x) * 256u + li;
    let c4s = p.channels / 4u;
    if (i >= p.batch * p.tokens * c4s) {
        return;
    }
    let pixel = i / c4s;
    let c4 = i - pixel * c4s;
    var acc = vec4<f32>(0.0);
    if (p.has_bias != 0u) {
        acc = vec4<f32>(bias[4u * c4], bias[4u * c4 + 1u], bias[4u * c4 + 2u], bias[4u * c4 + 3u]);
    }
    let at = cell(pixel);
    let half = i32(p.kernel / 2u);
    for (var ky = 0u; ky < p.kernel; ky++) {
        for (var kx = 0u; kx < p.kernel; kx++) {
            let src = source(at.x, i32(at.y + ky) - half, i32(at.z + kx) - half);
            if (src >= 0) {
                let w = weight4[(ky * p.kernel + kx) * c4s + c4];
                acc = fma(w, x4[(p.x_offset + u32(src) * p.x_stride) / 4u + c4], acc);
            }
        }
    }
    out4[i] = vec4<f32>(activate(acc.x, p.activation), activate(acc.y, p.activation), activate(acc.z, p.activation), activate(acc.w, p.activation));
}
