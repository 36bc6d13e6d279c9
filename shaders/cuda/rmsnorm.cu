// Fused residual add + RMSNorm, one block per row (token); as rmsnorm.wgsl.

struct Params {
    unsigned rows;
    unsigned dim;
    float eps;
    unsigned has_hidden;
};

#define WG 64u

extern "C" __global__ void __launch_bounds__(64) add_rmsnorm(const Params p, const float* hidden, const float* weight,
                                       float* residual, float* out) {
    __shared__ float partial[WG];
    unsigned li = threadIdx.x;
    unsigned row = blockIdx.x + blockIdx.y * gridDim.x;
    if (row >= p.rows) return;
    size_t base = (size_t)row * p.dim;
    float sq = 0.0f;
    for (unsigned d = li; d < p.dim; d += WG) {
        float r = residual[base + d];
        if (p.has_hidden != 0u) {
            r += hidden[base + d];
            residual[base + d] = r;
        }
        sq = fmaf(r, r, sq);
    }
    partial[li] = sq;
    __syncthreads();
    for (unsigned s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) partial[li] += partial[li + s];
        __syncthreads();
    }
    float scale = rsqrtf(partial[0] / (float)p.dim + p.eps);
    for (unsigned d = li; d < p.dim; d += WG) out[base + d] = residual[base + d] * scale * weight[d];
}
