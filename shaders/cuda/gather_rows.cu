// Row gather for token pruning; the CUDA twin of gather_rows.wgsl. For each image b and kept
// slot t (row = b * keep + t):
//   out0[row, :] = x0[b * len + idx[row], :]     (and out1 from x1, with flag HAS_X1)
//   pos_out[row] = pos_in[b * len + idx[row]]    (with flag HAS_POS)
// One thread per output element (per float4 in `gather_rows_vec4`); there are at least as many
// as rows, so the first `rows` threads also carry the position map.

struct Params {
    unsigned batch;
    unsigned len;
    unsigned keep;
    // Row width in elements of the entry point (dim, or dim / 4 for float4).
    unsigned cols;
    unsigned flags;
    unsigned _pad0;
    unsigned _pad1;
    unsigned _pad2;
};

#define HAS_X1 1u
#define HAS_POS 2u

// The input element (float4 in `gather_rows_vec4`) that output element `i` copies. Indices below
// len are the caller's contract, unchecked; a source past the end of x (where WGSL would clamp)
// reads 0 instead, one of the results WGSL allows there.
__device__ __forceinline__ unsigned source(const Params& p, const unsigned* idx, unsigned i) {
    unsigned row = i / p.cols;
    unsigned col = i - row * p.cols;
    return (row / p.keep * p.len + idx[row]) * p.cols + col;
}

__device__ __forceinline__ void gather_position(const Params& p, const unsigned* idx,
                                                const unsigned* pos_in, unsigned* pos_out,
                                                unsigned i) {
    if (i < p.batch * p.keep && (p.flags & HAS_POS) != 0u) {
        unsigned src = i / p.keep * p.len + idx[i];
        pos_out[i] = src < p.batch * p.len ? pos_in[src] : 0u;
    }
}

extern "C" __global__ void __launch_bounds__(256) gather_rows(const Params p, const unsigned* idx, const float* x0,
                                       const float* x1, const unsigned* pos_in, float* out0,
                                       float* out1, unsigned* pos_out) {
    unsigned i = (blockIdx.x + blockIdx.y * gridDim.x) * 256u + threadIdx.x;
    if (i >= p.batch * p.keep * p.cols) return;
    unsigned src = source(p, idx, i);
    bool in = src < p.batch * p.len * p.cols;
    out0[i] = in ? x0[src] : 0.0f;
    if ((p.flags & HAS_X1) != 0u) out1[i] = in ? x1[src] : 0.0f;
    gather_position(p, idx, pos_in, pos_out, i);
}

extern "C" __global__ void __launch_bounds__(256) gather_rows_vec4(const Params p, const unsigned* idx, const float4* x0,
                                            const float4* x1, const unsigned* pos_in, float4* out0,
                                            float4* out1, unsigned* pos_out) {
    unsigned i = (blockIdx.x + blockIdx.y * gridDim.x) * 256u + threadIdx.x;
    if (i >= p.batch * p.keep * p.cols) return;
    unsigned src = source(p, idx, i);
    bool in = src < p.batch * p.len * p.cols;
    float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    out0[i] = in ? x0[src] : zero;
    if ((p.flags & HAS_X1) != 0u) out1[i] = in ? x1[src] : zero;
    gather_position(p, idx, pos_in, pos_out, i);
}
