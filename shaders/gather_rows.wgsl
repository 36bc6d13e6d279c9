// Row gather for token pruning: for each image b and kept slot t (row = b * keep + t),
//   out0[row, :] = x0[b * len + idx[row], :]     (and out1 from x1, with flag HAS_X1)
//   pos_out[row] = pos_in[b * len + idx[row]]    (with flag HAS_POS)
// so the hidden and residual streams and the position map are compacted in one dispatch.
// One invocation per output element (per vec4 in `gather_rows_vec4`); there are at least as
// many as rows, so the first `rows` invocations also carry the position map.

struct Params {
    batch: u32,
    len: u32,
    keep: u32,
    // Row width in elements of the entry point (dim, or dim / 4 for vec4).
    cols: u32,
    flags: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const HAS_X1: u32 = 1u;
const HAS_POS: u32 = 2u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> idx: array<u32>;
@group(0) @binding(2) var<storage, read> x0: array<f32>;
@group(0) @binding(3) var<storage, read> x1: array<f32>;
@group(0) @binding(4) var<storage, read> pos_in: array<u32>;
@group(0) @binding(5) var<storage, read_write> out0: array<f32>;
@group(0) @binding(6) var<storage, read_write> out1: array<f32>;
@group(0) @binding(7) var<storage, read_write> pos_out: array<u32>;
// The vec4 entry point's view of the same buffers (dim a multiple of 4).
@group(0) @binding(2) var<storage, read> x0_4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> x1_4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> out0_4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> out1_4: array<vec4<f32>>;

// The input element (vec4 in `gather_rows_vec4`) that output element `i` copies.
fn source(i: u32) -> u32 {
    let row = i / p.cols;
    let col = i - row * p.cols;
    return (row / p.keep * p.len + idx[row]) * p.cols + col;
}

fn gather_position(i: u32) {
    if (i < p.batch * p.keep && (p.flags & HAS_POS) != 0u) {
        pos_out[i] = pos_in[i / p.keep * p.len + idx[i]];
    }
}

@compute @workgroup_size(256)
fn gather_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = (wg.x + wg.y * nwg.x) * 256u + li;
    if (i >= p.batch * p.keep * p.cols) {
        return;
    }
    let src = source(i);
    out0[i] = x0[src];
    if ((p.flags & HAS_X1) != 0u) {
        out1[i] = x1[src];
    }
    gather_position(i);
}

@compute @workgroup_size(256)
fn gather_rows_vec4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = (wg.x + wg.y * nwg.x) * 256u + li;
    if (i >= p.batch * p.keep * p.cols) {
        return;
    }
    let src = source(i);
    out0_4[i] = x0_4[src];
    if ((p.flags & HAS_X1) != 0u) {
        out1_4[i] = x1_4[src];
    }
    gather_position(i);
}
