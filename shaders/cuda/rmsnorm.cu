// Fused residual add + RMSNorm, one thread per row (token); as rmsnorm.wgsl.

struct Params {
    unsigned rows;
    unsigned dim;
    float eps;
    unsigned has_hidden;
};

#define WG 64u

__device__ __forceinline__ unsigned row_of() {
    return (blockIdx.x + blockIdx.y * gridDim.x) * WG + threadIdx.x;
}

extern "C" __global__ void __launch_bounds__(64) add_rmsnorm(const Params p, const float* hidden, const float* weight,
                                       float* residual, float* out) {
    unsigned row = row_of();
    if (row >= p.rows) return;
    size_t base = (size_t)row * p.dim;
    float sq = 0.0f;
    for (unsigned d = 0u; d < p.dim; d++) {
        float r = residual[base + d];
        if (p.has_hidden != 0u) {
            r += hidden[base + d];
            residual[base + d] = r;
        }
        sq = fmaf(r, r, sq);
    }
    float scale = rsqrtf(sq / (float)p.dim + p.eps);
    for (unsigned d = 0u; d < p.dim; d++) out[base + d] = residual[base + d] * scale * weight[d];
}

// dim a multiple of 4: float4 loads and stores, four partial sums as in the WGSL.
extern "C" __global__ void __launch_bounds__(64) add_rmsnorm_vec4(const Params p, const float4* hidden, const float4* weight,
                                       float4* residual, float4* out) {
    unsigned row = row_of();
    if (row >= p.rows) return;
    unsigned dim4 = p.dim / 4u;
    size_t base = (size_t)row * dim4;
    float4 sq = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (unsigned d = 0u; d < dim4; d++) {
        float4 r = residual[base + d];
        if (p.has_hidden != 0u) {
            float4 h = hidden[base + d];
            r = make_float4(r.x + h.x, r.y + h.y, r.z + h.z, r.w + h.w);
            residual[base + d] = r;
        }
        sq = make_float4(fmaf(r.x, r.x, sq.x), fmaf(r.y, r.y, sq.y), fmaf(r.z, r.z, sq.z), fmaf(r.w, r.w, sq.w));
    }
    float scale = rsqrtf((sq.x + sq.y + sq.z + sq.w) / (float)p.dim + p.eps);
    for (unsigned d = 0u; d < dim4; d++) {
        float4 r = residual[base + d];
        float4 w = weight[d];
        out[base + d] = make_float4(r.x * scale * w.x, r.y * scale * w.y, r.z * scale * w.z, r.w * scale * w.w);
    }
}
