// LayerNorm over the last dimension, as torch.nn.LayerNorm (biased variance, two passes):
//   out = (x - mean(x)) * (var(x) + eps)^-1/2 * weight + bias
// `layernorm`: one invocation per row (a software driver pays dearly for the barriers of a
// workgroup reduction, and rows are many). `layernorm_mean`: one workgroup per image that normalises
// its `len` tokens in turn and also writes their mean (a classifier's pooled features); each
// invocation owns the same channels in every row, so it accumulates the mean in `pooled`
// without races.

struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    // Tokens per image (layernorm_mean).
    len: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> pooled: array<f32>;

const WG: u32 = 64u;
var<workgroup> partial: array<f32, WG>;

// The sum of every invocation's `v` (called by the whole workgroup).
fn workgroup_sum(v: f32, li: u32) -> f32 {
    workgroupBarrier();
    partial[li] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            partial[li] += partial[li + s];
        }
        workgroupBarrier();
    }
    return partial[0];
}

// Normalises row `row` into `out` with the whole workgroup (layernorm_mean).
fn normalize_row(row: u32, li: u32) {
    let base = row * p.dim;
    var s = 0.0;
    for (var d = li; d < p.dim; d += WG) {
        s += x[base + d];
    }
    let mean = workgroup_sum(s, li) / f32(p.dim);
    var sq = 0.0;
    for (var d = li; d < p.dim; d += WG) {
        let c = x[base + d] - mean;
        sq = fma(c, c, sq);
    }
    let rstd = inverseSqrt(workgroup_sum(sq, li) / f32(p.dim) + p.eps);
    for (var d = li; d < p.dim; d += WG) {
        out[base + d] = fma((x[base + d] - mean) * rstd, weight[d], bias[d]);
    }
}

@compute @workgroup_size(64)
fn layernorm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row = (wg.x + wg.y * nwg.x) * WG + li;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.dim;
    var s = 0.0;
    for (var d = 0u; d < p.dim; d++) {
        s += x[base + d];
    }
    let mean = s / f32(p.dim);
    var sq = 0.0;
    for (var d = 0u; d < p.dim; d++) {
        let c = x[base + d] - mean;
        sq = fma(c, c, sq);
    }
    let rstd = inverseSqrt(sq / f32(p.dim) + p.eps);
    for (var d = 0u; d < p.dim; d++) {
        out[base + d] = fma((x[base + d] - mean) * rstd, weight[d], bias[d]);
    }
}

@compute @workgroup_size(64)
fn layernorm_mean(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let b = wg.x;
    for (var d = li; d < p.dim; d += WG) {
        pooled[b * p.dim + d] = 0.0;
    }
    for (var t = 0u; t < p.len; t++) {
        let row = b * p.len + t;
        normalize_row(row, li);
        // Each invocation reads back only the elements it wrote itself.
        for (var d = li; d < p.dim; d += WG) {
            pooled[b * p.dim + d] += out[row * p.dim + d];
        }
    }
    for (var d = li; d < p.dim; d += WG) {
        pooled[b * p.dim + d] /= f32(p.len);
    }
}
