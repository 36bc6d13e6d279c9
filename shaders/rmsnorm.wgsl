// Fused residual add + RMSNorm, one invocation per row (token): a software driver pays dearly
// for the barriers of a workgroup reduction (one per row cost 25x this), and rows are many.
//   residual = residual + hidden      (f32 residual stream; skipped when has_hidden == 0)
//   out      = residual * (mean(residual^2) + eps)^-1/2 * weight
// `add_rmsnorm_vec4` (dim a multiple of 4) reads and writes vec4s, `add_rmsnorm_u64` (a
// multiple of 8, with 64-bit integers) eight floats at a time: a software driver pays per load
// instruction and component nearly whatever their width.

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
@group(0) @binding(1) var<storage, read> hidden4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> weight4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> residual4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> out4: array<vec4<f32>>;

const WG: u32 = 64u;

fn row_of(wg: vec3<u32>, nwg: vec3<u32>, li: u32) -> u32 {
    return (wg.x + wg.y * nwg.x) * WG + li;
}

@compute @workgroup_size(64)
fn add_rmsnorm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row = row_of(wg, nwg, li);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.dim;
    var sq = 0.0;
    for (var d = 0u; d < p.dim; d++) {
        var r = residual[base + d];
        if (p.has_hidden != 0u) {
            r += hidden[base + d];
            residual[base + d] = r;
        }
        sq = fma(r, r, sq);
    }
    let scale = inverseSqrt(sq / f32(p.dim) + p.eps);
    for (var d = 0u; d < p.dim; d++) {
        out[base + d] = residual[base + d] * scale * weight[d];
    }
}

@compute @workgroup_size(64)
fn add_rmsnorm_vec4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row = row_of(wg, nwg, li);
    if (row >= p.rows) {
        return;
    }
    let dim4 = p.dim / 4u;
    let base = row * dim4;
    var sq = vec4<f32>(0.0);
    for (var d = 0u; d < dim4; d++) {
        var r = residual4[base + d];
        if (p.has_hidden != 0u) {
            r += hidden4[base + d];
            residual4[base + d] = r;
        }
        sq = fma(r, r, sq);
    }
    let scale = inverseSqrt((sq.x + sq.y + sq.z + sq.w) / f32(p.dim) + p.eps);
    for (var d = 0u; d < dim4; d++) {
        out4[base + d] = residual4[base + d] * scale * weight4[d];
    }
}

// #if int64
// 1.3x faster than add_rmsnorm_vec4 at Vim-Ti's shape (197 x 192).
@group(0) @binding(1) var<storage, read> hidden8: array<vec4<u64>>;
@group(0) @binding(2) var<storage, read> weight8: array<vec4<u64>>;
@group(0) @binding(3) var<storage, read_write> residual8: array<vec4<u64>>;
@group(0) @binding(4) var<storage, read_write> out8: array<vec4<u64>>;

// #include packed8

@compute @workgroup_size(64)
fn add_rmsnorm_u64(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row = row_of(wg, nwg, li);
    if (row >= p.rows) {
        return;
    }
    let dim8 = p.dim / 8u;
    let base = row * dim8;
    var sq = vec4<f32>(0.0);
    for (var d = 0u; d < dim8; d++) {
        var r = unpack8(residual8[base + d]);
        if (p.has_hidden != 0u) {
            let h = unpack8(hidden8[base + d]);
            r = Eight(r.lo + h.lo, r.hi + h.hi);
            residual8[base + d] = pack8(r);
        }
        sq = fma(r.lo, r.lo, fma(r.hi, r.hi, sq));
    }
    let scale = inverseSqrt((sq.x + sq.y + sq.z + sq.w) / f32(p.dim) + p.eps);
    for (var d = 0u; d < dim8; d++) {
        let r = unpack8(residual8[base + d]);
        let w = unpack8(weight8[d]);
        out8[base + d] = pack8(Eight(r.lo * scale * w.lo, r.hi * scale * w.hi));
    }
}
// #endif
