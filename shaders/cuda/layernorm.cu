// LayerNorm over the last dimension, as torch.nn.LayerNorm; the CUDA twin of layernorm.wgsl:
//   out = (x - mean(x)) * (var(x) + eps)^-1/2 * weight + bias
// `layernorm`: one thread per row (rows are many). `layernorm_mean`: one block per image that
// normalises its `len` tokens in turn and also writes their mean; each thread owns the same
// channels in every row, so it accumulates the mean in `pooled` without races.

struct Params {
    unsigned rows;
    unsigned dim;
    float eps;
    // Tokens per image (layernorm_mean).
    unsigned len;
};

#define WG 64u

// The sum of every thread's `v` (called by the whole block); `partial` is the block's WG floats.
__device__ __forceinline__ float block_sum(float* partial, float v, unsigned li) {
    __syncthreads();
    partial[li] = v;
    __syncthreads();
    for (unsigned s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) partial[li] += partial[li + s];
        __syncthreads();
    }
    return partial[0];
}

// Normalises row `row` into `out` with the whole block (layernorm_mean).
__device__ __forceinline__ void normalize_row(const Params& p, const float* x, const float* weight,
                                              const float* bias, float* out, float* partial,
                                              unsigned row, unsigned li) {
    size_t base = (size_t)row * p.dim;
    float s = 0.0f;
    for (unsigned d = li; d < p.dim; d += WG) s += x[base + d];
    float mean = block_sum(partial, s, li) / (float)p.dim;
    float sq = 0.0f;
    for (unsigned d = li; d < p.dim; d += WG) {
        float c = x[base + d] - mean;
        sq = fmaf(c, c, sq);
    }
    float rstd = rsqrtf(block_sum(partial, sq, li) / (float)p.dim + p.eps);
    for (unsigned d = li; d < p.dim; d += WG) {
        out[base + d] = fmaf((x[base + d] - mean) * rstd, weight[d], bias[d]);
    }
}

extern "C" __global__ void __launch_bounds__(64) layernorm(const Params p, const float* x, const float* weight,
                                     const float* bias, float* out) {
    unsigned row = (blockIdx.x + blockIdx.y * gridDim.x) * WG + threadIdx.x;
    if (row >= p.rows) return;
    size_t base = (size_t)row * p.dim;
    float s = 0.0f;
    for (unsigned d = 0u; d < p.dim; d++) s += x[base + d];
    float mean = s / (float)p.dim;
    float sq = 0.0f;
    for (unsigned d = 0u; d < p.dim; d++) {
        float c = x[base + d] - mean;
        sq = fmaf(c, c, sq);
    }
    float rstd = rsqrtf(sq / (float)p.dim + p.eps);
    for (unsigned d = 0u; d < p.dim; d++) {
        out[base + d] = fmaf((x[base + d] - mean) * rstd, weight[d], bias[d]);
    }
}

// Launched with one block per image, so every row and `pooled` entry it touches exists.
extern "C" __global__ void __launch_bounds__(64) layernorm_mean(const Params p, const float* x, const float* weight,
                                          const float* bias, float* out, float* pooled) {
    __shared__ float partial[WG];
    unsigned li = threadIdx.x;
    size_t pool = (size_t)blockIdx.x * p.dim;
    for (unsigned d = li; d < p.dim; d += WG) pooled[pool + d] = 0.0f;
    for (unsigned t = 0u; t < p.len; t++) {
        unsigned row = blockIdx.x * p.len + t;
        normalize_row(p, x, weight, bias, out, partial, row, li);
        // Each thread reads back only the elements it wrote itself.
        for (unsigned d = li; d < p.dim; d += WG) pooled[pool + d] += out[(size_t)row * p.dim + d];
    }
    for (unsigned d = li; d < p.dim; d += WG) pooled[pool + d] /= (float)p.len;
}
