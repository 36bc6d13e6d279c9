// A token's importance from its row of x (`channels` values), as the `importance` kernel and
// the top-k's own scoring compute it; the CUDA twin of include/row_score.wgsl:
//   mode 0 (mean): mean over channels; 1 (l2): Euclidean norm; 2 (random): a hash of (seed,
//   row), uniform in [0, 1) (ablation baseline); 3 (clipped mean): mean of max(0, x).

// PCG-style integer hash.
__device__ __forceinline__ unsigned hash(unsigned v) {
    unsigned h = v * 747796405u + 2891336453u;
    h = ((h >> ((h >> 28u) + 4u)) ^ h) * 277803737u;
    return (h >> 22u) ^ h;
}

__device__ __forceinline__ float row_score(const float* x, unsigned row, unsigned channels,
                                           unsigned mode, unsigned seed) {
    if (mode == 2u) return (float)(hash(hash(seed) ^ row) >> 8u) / 16777216.0f;
    float acc = 0.0f;
    for (unsigned c = 0u; c < channels; c++) {
        float v = x[(size_t)row * channels + c];
        acc += mode == 3u ? fmaxf(v, 0.0f) : (mode == 1u ? v * v : v);
    }
    return mode == 1u ? sqrtf(acc) : acc / (float)channels;
}
