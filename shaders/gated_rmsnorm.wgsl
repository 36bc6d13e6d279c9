// Mamba-2's gated RMSNorm (norm_before_gate = False: gate first), one workgroup per
// (row, group) of `group` channels:
//   g   = y * silu(z)
//   out = g * (mean_group(g^2) + eps)^-1/2 * weight

struct Params {
    rows: u32,
    dim: u32,
    groups: u32,
    z_offset: u32,
    z_stride: u32,
    eps: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read> z: array<f32>;
@group(0) @binding(3) var<storage, read> weight: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

// #include activation

const WG: u32 = 64u;
var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(64)
fn gated_rmsnorm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let k = wg.x + wg.y * nwg.x;
    // Whole workgroups leave together, so the barriers below stay uniform.
    if (k >= p.rows * p.groups) {
        return;
    }
    let row = k / p.groups;
    let size = p.dim / p.groups;
    let first = (k % p.groups) * size;
    let base = row * p.dim + first;
    let zbase = p.z_offset + row * p.z_stride + first;
    var sq = 0.0;
    for (var d = li; d < size; d += WG) {
        let g = y[base + d] * activate(z[zbase + d], ACT_SILU);
        out[base + d] = g;
        sq = fma(g, g, sq);
    }
    partial[li] = sq;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            partial[li] += partial[li + s];
        }
        workgroupBarrier();
    }
    let scale = inverseSqrt(partial[0] / f32(size) + p.eps);
    // Each invocation reads back only the elements it wrote itself.
    for (var d = li; d < size; d += WG) {
        out[base + d] = out[base + d] * scale * weight[first + d];
    }
}
