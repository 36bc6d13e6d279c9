// Unfold conv windows into rows so a convolution becomes a matmul with PyTorch's weight
// [out, C, kh, kw] read as [out, C*kh*kw]:
//   out[(b, oy, ox), (c, ky, kx)] = x[b, c, oy*sh - ph + ky, ox*sw - pw + kx]   (0 outside)
// The input is NCHW (pixels) or, with channels_last, [b, y, x, c] (a matmul's output), so conv
// stacks need no transposes between layers. One invocation per output element.

struct Params {
    batch: u32,
    channels: u32,
    in_h: u32,
    in_w: u32,
    out_h: u32,
    out_w: u32,
    kernel_h: u32,
    kernel_w: u32,
    stride_h: u32,
    stride_w: u32,
    pad_h: u32,
    pad_w: u32,
    channels_last: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn im2col(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = (wg.x + wg.y * nwg.x) * 256u + li;
    let window = p.kernel_h * p.kernel_w;
    let cols = p.channels * window;
    if (i >= p.batch * p.out_h * p.out_w * cols) {
        return;
    }
    let row = i / cols;
    let col = i - row * cols;
    let c = col / window;
    let ky = (col - c * window) / p.kernel_w;
    let kx = col - c * window - ky * p.kernel_w;
    let b = row / (p.out_h * p.out_w);
    let oy = (row / p.out_w) % p.out_h;
    let ox = row % p.out_w;
    // Signed, so padding reads land below zero and are skipped.
    let y = i32(oy * p.stride_h + ky) - i32(p.pad_h);
    let xx = i32(ox * p.stride_w + kx) - i32(p.pad_w);
    var v = 0.0;
    if (y >= 0 && y < i32(p.in_h) && xx >= 0 && xx < i32(p.in_w)) {
        let pixel = (b * p.in_h + u32(y)) * p.in_w + u32(xx);
        if (p.channels_last != 0u) {
            v = x[pixel * p.channels + c];
        } else {
            v = x[(b * p.channels + c) * p.in_h * p.in_w + u32(y) * p.in_w + u32(xx)];
        }
    }
    out[i] = v;
}
