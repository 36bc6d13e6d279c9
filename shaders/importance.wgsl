// Token importance for pruning, one score per token row of x [B·N, C]:
//   mode 0 (mean): mean over channels of x (x = the scans' ungated outputs, clipped at zero and
//                  summed over directions when the metric is the paper's)
//   mode 1 (l2):   Euclidean norm of the row
//   mode 2 (random): a hash of (seed, token), uniform in [0, 1) (ablation baseline)
// A workgroup reduces one row: 64 invocations stride over the channels, then a tree in
// workgroup memory.

struct Params {
    rows: u32,
    channels: u32,
    mode: u32,
    seed: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> scores: array<f32>;

var<workgroup> partial: array<f32, 64>;

fn hash(v: u32) -> u32 {
    // PCG-style integer hash.
    var h = v * 747796405u + 2891336453u;
    h = ((h >> ((h >> 28u) + 4u)) ^ h) * 277803737u;
    return (h >> 22u) ^ h;
}

@compute @workgroup_size(64)
fn importance(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row = wg.x + wg.y * nwg.x;
    // No early return: every invocation reaches the barriers.
    let valid = row < p.rows;
    let r = min(row, p.rows - 1u);
    var acc = 0.0;
    if (p.mode != 2u) {
        for (var c = li; c < p.channels; c += 64u) {
            let v = x[r * p.channels + c];
            acc += select(v, v * v, p.mode == 1u);
        }
    }
    partial[li] = acc;
    workgroupBarrier();
    for (var width = 32u; width > 0u; width >>= 1u) {
        if (li < width) {
            partial[li] += partial[li + width];
        }
        workgroupBarrier();
    }
    if (valid && li == 0u) {
        var s = partial[0] / f32(p.channels);
        if (p.mode == 1u) {
            s = sqrt(partial[0]);
        } else if (p.mode == 2u) {
            s = f32(hash(hash(p.seed) ^ row) >> 8u) / 16777216.0;
        }
        scores[row] = s;
    }
}
