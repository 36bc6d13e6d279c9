// Unfold conv windows into rows so a convolution becomes a matmul with PyTorch's weight
// [out, C, kh, kw] read as [out, C*kh*kw]:
//   out[(b, oy, ox), (c, ky, kx)] = x[b, c, oy*sh - ph + ky, ox*sw - pw + kx]   (0 outside)
// The input is NCHW (pixels) or, with channels_last, [b, y, x, c] (a matmul's output), so conv
// stacks need no transposes between layers.

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

// One invocation per (output row, channel, kernel row), storing its kernel_w outputs: the index
// arithmetic is integer division, which a CPU driver runs lane by lane (per output element it
// took most of the time), so it is paid once per kernel row.
@compute @workgroup_size(64)
fn im2col(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = (wg.x + wg.y * nwg.x) * 64u + li;
    let per_row = p.channels * p.kernel_h;
    let pixels = p.out_h * p.out_w;
    if (i >= p.batch * pixels * per_row) {
        return;
    }
    let row = i / per_row;
    let c = (i - row * per_row) / p.kernel_h;
    let ky = i - row * per_row - c * p.kernel_h;
    let b = row / pixels;
    let oy = (row - b * pixels) / p.out_w;
    let ox = row - b * pixels - oy * p.out_w;
    // Signed, so padding reads land below zero and are skipped.
    let y = i32(oy * p.stride_h + ky) - i32(p.pad_h);
    let x0 = i32(ox * p.stride_w) - i32(p.pad_w);
    let y_inside = y >= 0 && y < i32(p.in_h);
    // Where x (column 0 of the window row) would be, and how far apart its columns are.
    var first: i32;
    var step: i32;
    if (p.channels_last != 0u) {
        first = ((i32(b * p.in_h) + y) * i32(p.in_w) + x0) * i32(p.channels) + i32(c);
        step = i32(p.channels);
    } else {
        first = (i32((b * p.channels + c) * p.in_h) + y) * i32(p.in_w) + x0;
        step = 1;
    }
    let out_base = i * p.kernel_w;
    for (var kx = 0u; kx < p.kernel_w; kx++) {
        let xx = x0 + i32(kx);
        var v = 0.0;
        if (y_inside && xx >= 0 && xx < i32(p.in_w)) {
            v = x[u32(first + i32(kx) * step)];
        }
        out[out_base + kx] = v;
    }
}
