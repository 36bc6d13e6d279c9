// Token importance for pruning, one score per token row of x [B·N, C], by the modes of
// include/row_score.cuh; the CUDA twin of importance.wgsl.
// One thread reduces one row: rows are few and a tree reduction over channels needs barriers.

struct Params {
    unsigned rows;
    unsigned channels;
    unsigned mode;
    unsigned seed;
};

// #include row_score

extern "C" __global__ void __launch_bounds__(64) importance(const Params p, const float* x, float* scores) {
    unsigned row = (blockIdx.x + blockIdx.y * gridDim.x) * 64u + threadIdx.x;
    if (row >= p.rows) return;
    scores[row] = row_score(x, row, p.channels, p.mode, p.seed);
}
