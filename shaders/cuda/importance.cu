// Token importance for pruning, one score per token row of x [B·N, C]; the CUDA twin of
// importance.wgsl:
//   mode 0 (mean): mean over channels of x
//   mode 1 (l2):   Euclidean norm of the row
//   mode 2 (random): a hash of (seed, token), uniform in [0, 1) (ablation baseline)
//   mode 3 (clipped mean): mean over channels of max(0, x)
// One thread reduces one row: rows are few and a tree reduction over channels needs barriers.

struct Params {
    unsigned rows;
    unsigned channels;
    unsigned mode;
    unsigned seed;
};

// PCG-style integer hash.
__device__ __forceinline__ unsigned hash(unsigned v) {
    unsigned h = v * 747796405u + 2891336453u;
    h = ((h >> ((h >> 28u) + 4u)) ^ h) * 277803737u;
    return (h >> 22u) ^ h;
}

extern "C" __global__ void __launch_bounds__(64) importance(const Params p, const float* x, float* scores) {
    unsigned row = (blockIdx.x + blockIdx.y * gridDim.x) * 64u + threadIdx.x;
    if (row >= p.rows) return;
    if (p.mode == 2u) {
        scores[row] = (float)(hash(hash(p.seed) ^ row) >> 8u) / 16777216.0f;
        return;
    }
    float acc = 0.0f;
    for (unsigned c = 0u; c < p.channels; c++) {
        float v = x[row * p.channels + c];
        acc += p.mode == 3u ? fmaxf(v, 0.0f) : (p.mode == 1u ? v * v : v);
    }
    scores[row] = p.mode == 1u ? sqrtf(acc) : acc / (float)p.channels;
}
