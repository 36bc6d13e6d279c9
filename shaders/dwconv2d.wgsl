// Depthwise KxK convolution (stride 1, zero "same" padding K/2, K odd) on token-major NHWC
// input, with an optional bias and a fused activation:
//   out[b, y, x, c] = act(bias[c] + sum_{ky,kx} w[c, ky, kx] * in[b, y + ky - K/2, x + kx - K/2, c])
// The input is a strided row view (offset + pixel * x_stride + c), so the x half of an in_proj
// output is read in place. Weights are tap-major, [K, K, channels], so that consecutive
// channels' weights for a tap are adjacent: the vec4 entry point computes four channels of a
// pixel per invocation from vec4 loads (a quarter of the loads, which is what a CPU driver
// pays for); the scalar one, for any channel count or alignment, one output each.

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
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
// The vec4 entry point's view of the same buffers (channels, offset and stride multiples of 4).
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> weight4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> out4: array<vec4<f32>>;

// #include activation

// Where output pixel `pixel`'s window starts: (first row of its image, y - K/2, x - K/2).
fn window(pixel: u32) -> vec3<i32> {
    let xx = pixel % p.width;
    let yy = (pixel / p.width) % p.height;
    let half = i32(p.kernel / 2u);
    return vec3<i32>(i32(pixel - yy * p.width - xx), i32(yy) - half, i32(xx) - half);
}

@compute @workgroup_size(256)
fn dwconv2d(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = (wg.x + wg.y * nwg.x) * 256u + li;
    if (i >= p.batch * p.height * p.width * p.channels) {
        return;
    }
    let pixel = i / p.channels;
    let c = i - pixel * p.channels;
    var acc = 0.0;
    if (p.has_bias != 0u) {
        acc = bias[c];
    }
    let win = window(pixel);
    for (var ky = 0u; ky < p.kernel; ky++) {
        let sy = win.y + i32(ky);
        if (sy < 0 || sy >= i32(p.height)) {
            continue;
        }
        let row = u32(win.x + sy * i32(p.width));
        for (var kx = 0u; kx < p.kernel; kx++) {
            let sx = win.z + i32(kx);
            if (sx >= 0 && sx < i32(p.width)) {
                let w = weight[(ky * p.kernel + kx) * p.channels + c];
                acc = fma(w, x[p.x_offset + (row + u32(sx)) * p.x_stride + c], acc);
            }
        }
    }
    out[i] = activate(acc, p.activation);
}

@compute @workgroup_size(256)
fn dwconv2d_vec4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = (wg.x + wg.y * nwg.x) * 256u + li;
    let c4s = p.channels / 4u;
    if (i >= p.batch * p.height * p.width * c4s) {
        return;
    }
    let pixel = i / c4s;
    let c4 = i - pixel * c4s;
    var acc = vec4<f32>(0.0);
    if (p.has_bias != 0u) {
        acc = vec4<f32>(bias[4u * c4], bias[4u * c4 + 1u], bias[4u * c4 + 2u], bias[4u * c4 + 3u]);
    }
    let win = window(pixel);
    for (var ky = 0u; ky < p.kernel; ky++) {
        let sy = win.y + i32(ky);
        if (sy < 0 || sy >= i32(p.height)) {
            continue;
        }
        let row = u32(win.x + sy * i32(p.width));
        for (var kx = 0u; kx < p.kernel; kx++) {
            let sx = win.z + i32(kx);
            if (sx >= 0 && sx < i32(p.width)) {
                let w = weight4[(ky * p.kernel + kx) * c4s + c4];
                acc = fma(w, x4[(p.x_offset + (row + u32(sx)) * p.x_stride) / 4u + c4], acc);
            }
        }
    }
    out4[i] = vec4<f32>(activate(acc.x, p.activation), activate(acc.y, p.activation), activate(acc.z, p.activation), activate(acc.w, p.activation));
}
