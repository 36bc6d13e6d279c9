// Depthwise KxK convolution (stride 1, zero "same" padding K/2, K odd) on token-major NHWC
// input, with an optional bias and a fused activation; the CUDA twin of dwconv2d.wgsl:
//   out[b, y, x, c] = act(bias[c] + sum_{ky,kx} w[c, ky, kx] * in[b, y + ky - K/2, x + kx - K/2, c])
// The input is a strided row view (offset + pixel * x_stride + c). Weights are tap-major,
// [K, K, channels]: the vec4 entry point computes four channels of a pixel per thread from
// float4 loads; the scalar one, for any channel count or alignment, one output each.
// With KEPT (after token pruning), each image holds `tokens` of its grid's cells: row i of
// image b sits in cell positions[b, i], and slots[b, cell] names the row in each cell (NONE for
// a pruned one, which reads as zero).

struct Params {
    unsigned batch;
    unsigned height;
    unsigned width;
    unsigned channels;
    unsigned x_offset;
    unsigned x_stride;
    unsigned kernel;
    unsigned activation;
    unsigned has_bias;
    // Rows per image: height * width, or the kept tokens with KEPT.
    unsigned tokens;
    unsigned kept;
    unsigned _pad0;
};

#define NONE 0xffffffffu

// #include activation

struct Cell {
    unsigned b, y, x;
};

// Output row `row`'s image and cell.
__device__ __forceinline__ Cell cell(const Params& p, const unsigned* positions, unsigned row) {
    unsigned b = row / p.tokens;
    unsigned q = row - b * p.tokens;
    if (p.kept != 0u) q = positions[row];
    return Cell{b, q / p.width, q % p.width};
}

// The input row in cell (y, x) of image b, or -1 when that cell is pruned or off the grid.
__device__ __forceinline__ int source(const Params& p, const unsigned* slots, unsigned b, int y, int x) {
    if (y < 0 || y >= (int)p.height || x < 0 || x >= (int)p.width) return -1;
    unsigned q = (unsigned)y * p.width + (unsigned)x;
    if (p.kept != 0u) {
        unsigned i = slots[b * p.height * p.width + q];
        return i == NONE ? -1 : (int)(b * p.tokens + i);
    }
    return (int)(b * p.tokens + q);
}

extern "C" __global__ void __launch_bounds__(256) dwconv2d(const Params p, const float* x, const float* weight,
                                    const float* bias, float* out, const unsigned* positions,
                                    const unsigned* slots) {
    unsigned i = (blockIdx.x + blockIdx.y * gridDim.x) * 256u + threadIdx.x;
    if (i >= p.batch * p.tokens * p.channels) return;
    unsigned pixel = i / p.channels;
    unsigned c = i - pixel * p.channels;
    float acc = 0.0f;
    if (p.has_bias != 0u) acc = bias[c];
    Cell at = cell(p, positions, pixel);
    int half = (int)(p.kernel / 2u);
    for (unsigned ky = 0u; ky < p.kernel; ky++) {
        for (unsigned kx = 0u; kx < p.kernel; kx++) {
            int src = source(p, slots, at.b, (int)(at.y + ky) - half, (int)(at.x + kx) - half);
            if (src >= 0) {
                float w = weight[(ky * p.kernel + kx) * p.channels + c];
                acc = fmaf(w, x[p.x_offset + (size_t)(unsigned)src * p.x_stride + c], acc);
            }
        }
    }
    out[i] = activate(acc, p.activation);
}

// Picked when channels, x_offset and x_stride are multiples of 4 (float4-aligned rows).
extern "C" __global__ void __launch_bounds__(256) dwconv2d_vec4(const Params p, const float4* x4, const float4* weight4,
                                         const float* bias, float4* out4, const unsigned* positions,
                                         const unsigned* slots) {
    unsigned i = (blockIdx.x + blockIdx.y * gridDim.x) * 256u + threadIdx.x;
    unsigned c4s = p.channels / 4u;
    if (i >= p.batch * p.tokens * c4s) return;
    unsigned pixel = i / c4s;
    unsigned c4 = i - pixel * c4s;
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (p.has_bias != 0u) {
        acc = make_float4(bias[4u * c4], bias[4u * c4 + 1u], bias[4u * c4 + 2u], bias[4u * c4 + 3u]);
    }
    Cell at = cell(p, positions, pixel);
    int half = (int)(p.kernel / 2u);
    for (unsigned ky = 0u; ky < p.kernel; ky++) {
        for (unsigned kx = 0u; kx < p.kernel; kx++) {
            int src = source(p, slots, at.b, (int)(at.y + ky) - half, (int)(at.x + kx) - half);
            if (src >= 0) {
                float4 w = weight4[(ky * p.kernel + kx) * c4s + c4];
                float4 v = x4[(p.x_offset + (size_t)(unsigned)src * p.x_stride) / 4u + c4];
                acc.x = fmaf(w.x, v.x, acc.x);
                acc.y = fmaf(w.y, v.y, acc.y);
                acc.z = fmaf(w.z, v.z, acc.z);
                acc.w = fmaf(w.w, v.w, acc.w);
            }
        }
    }
    out4[i] = make_float4(activate(acc.x, p.activation), activate(acc.y, p.activation),
                          activate(acc.z, p.activation), activate(acc.w, p.activation));
}
