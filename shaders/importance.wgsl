// Token importance for pruning, one score per token row of x [B·N, C]:
//   mode 0 (mean): mean over channels of x (x = the scans' ungated outputs, clipped at zero and
//                  summed over directions when the metric is the paper's)
//   mode 1 (l2):   Euclidean norm of the row
//   mode 2 (random): a hash of (seed, token), uniform in [0, 1) (ablation baseline)
//   mode 3 (clipped mean): mean over channels of max(0, x) (the SSM LM reduction's Eq. 5)
// One invocation reduces one row: rows are few hundred to a few thousand and a software
// driver pays dearly for workgroup barriers, which a tree reduction over channels needs.

struct Params {
    rows: u32,
    channels: u32,
    mode: u32,
    seed: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> scores: array<f32>;

fn hash(v: u32) -> u32 {
    // PCG-style integer hash.
    var h = v * 747796405u + 2891336453u;
    h = ((h >> ((h >> 28u) + 4u)) ^ h) * 277803737u;
    return (h >> 22u) ^ h;
}

@compute @workgroup_size(64)
fn importance(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row = (wg.x + wg.y * nwg.x) * 64u + li;
    if (row >= p.rows) {
        return;
    }
    if (p.mode == 2u) {
        scores[row] = f32(hash(hash(p.seed) ^ row) >> 8u) / 16777216.0;
        return;
    }
    var acc = 0.0;
    for (var c = 0u; c < p.channels; c++) {
        let v = x[row * p.channels + c];
        acc += select(select(v, v * v, p.mode == 1u), max(v, 0.0), p.mode == 3u);
    }
    scores[row] = select(acc / f32(p.channels), sqrt(acc), p.mode == 1u);
}
