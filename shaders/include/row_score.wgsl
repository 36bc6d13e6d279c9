// A token's importance from its row of `x` (`channels` values), as the `importance` kernel and
// the top-k's own scoring compute it:
//   mode 0 (mean): mean over channels; 1 (l2): Euclidean norm; 2 (random): a hash of (seed,
//   row), uniform in [0, 1) (ablation baseline); 3 (clipped mean): mean of max(0, x).
// The including kernel declares `x: array<f32>`.

fn hash(v: u32) -> u32 {
    // PCG-style integer hash.
    var h = v * 747796405u + 2891336453u;
    h = ((h >> ((h >> 28u) + 4u)) ^ h) * 277803737u;
    return (h >> 22u) ^ h;
}

fn row_score(row: u32, channels: u32, mode: u32, seed: u32) -> f32 {
    if (mode == 2u) {
        return f32(hash(hash(seed) ^ row) >> 8u) / 16777216.0;
    }
    var acc = 0.0;
    for (var c = 0u; c < channels; c++) {
        let v = x[row * channels + c];
        acc += select(select(v, v * v, mode == 1u), max(v, 0.0), mode == 3u);
    }
    return select(acc / f32(channels), sqrt(acc), mode == 1u);
}
