// Token importance for pruning, one score per token row of x [B·N, C], by the modes of
// include/row_score.wgsl (mean of the scans' ungated outputs, clipped and summed over the
// directions for the paper's metric; l2; random; the SSM LM reduction's clipped mean, Eq. 5).
// The vision models' pruning scores inside `topk` instead; this serves the LM reduction.
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

// #include row_score

@compute @workgroup_size(64)
fn importance(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row = (wg.x + wg.y * nwg.x) * 64u + li;
    if (row >= p.rows) {
        return;
    }
    scores[row] = row_score(row, p.channels, p.mode, p.seed);
}
