// Mamba-2's gated RMSNorm (gate first), one block per (row, group); as gated_rmsnorm.wgsl:
//   g   = y * silu(z)
//   out = g * (mean_group(g^2) + eps)^-1/2 * weight

struct Params {
    unsigned rows;
    unsigned dim;
    unsigned groups;
    unsigned z_offset;
    unsigned z_stride;
    float eps;
    unsigned _pad0;
    unsigned _pad1;
};

// #include activation

#define WG 64u

extern "C" __global__ void __launch_bounds__(64) gated_rmsnorm(const Params p, const float* y, const float* z,
                                         const float* weight, float* out) {
    __shared__ float partial[WG];
    unsigned li = threadIdx.x;
    unsigned k = blockIdx.x + blockIdx.y * gridDim.x;
    // Whole blocks leave together, so the barriers below stay uniform.
    if (k >= p.rows * p.groups) return;
    unsigned row = k / p.groups;
    unsigned size = p.dim / p.groups;
    unsigned first = (k % p.groups) * size;
    size_t base = (size_t)row * p.dim + first;
    size_t zbase = p.z_offset + (size_t)row * p.z_stride + first;
    float sq = 0.0f;
    for (unsigned d = li; d < size; d += WG) {
        float g = y[base + d] * activate(z[zbase + d], ACT_SILU);
        out[base + d] = g;
        sq = fmaf(g, g, sq);
    }
    partial[li] = sq;
    __syncthreads();
    for (unsigned s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) partial[li] += partial[li + s];
        __syncthreads();
    }
    float scale = rsqrtf(partial[0] / (float)size + p.eps);
    // Each thread reads back only the elements it wrote itself.
    for (unsigned d = li; d < size; d += WG) out[base + d] = out[base + d] * scale * weight[first + d];
}
