// Fused residual add + RMSNorm, one workgroup per row (token):
//   residual = residual + hidden      (f32 residual stream; skipped when has_hidden == 0)
//   out      = residual * (mean(residual^2) + eps)^-1/2 * weight

struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    has_hidden: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> hidden: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> residual: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const WG: u32 = 64u;
var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(64)
fn add_rmsnorm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row = wg.x + wg.y * nwg.x;
    // Whole workgroups leave together, so the barriers below stay uniform.
    if (row >= p.rows) {
        return;
    }
    let base = row * p.dim;
    var sq = 0.0;
    for (var d = li; d < p.dim; d += WG) {
        var r = residual[base + d];
        if (p.has_hidden != 0u) {
            r += hidden[base + d];
            residual[base + d] = r;
        }
        sq = fma(r, r, sq);
    }
    partial[li] = sq;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            partial[li] += partial[li + s];
        }
        workgroupBarrier();
    }
    let scale = inverseSqrt(partial[0] / f32(p.dim) + p.eps);
    for (var d = li; d < p.dim; d += WG) {
        out[base + d] = residual[base + d] * scale * weight[d];
    }
}
