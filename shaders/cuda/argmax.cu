// out[r] = index of the largest x[r, :] (the first one on ties, as torch.argmax), one block per
// row; the CUDA twin of argmax.wgsl. Greedy decoding reads back these 4 bytes, not the logits.
// A row holding NaN or an infinity gives 0xffffffff (no index).

struct Params {
    unsigned rows;
    unsigned cols;
    unsigned _pad0;
    unsigned _pad1;
};

#define WG 256u

extern "C" __global__ void __launch_bounds__(256) argmax(const Params p, const float* x, unsigned* out) {
    __shared__ float best_val[WG];
    __shared__ unsigned best_idx[WG];
    __shared__ unsigned non_finite;
    unsigned li = threadIdx.x;
    unsigned row = blockIdx.x + blockIdx.y * gridDim.x;
    // Whole blocks leave together, so the barriers below stay uniform.
    if (row >= p.rows) return;
    unsigned base = row * p.cols;
    if (li == 0u) non_finite = 0u;
    __syncthreads();
    float v = -3.0e38f;
    unsigned i = 0xffffffffu;
    bool bad = false;
    for (unsigned c = li; c < p.cols; c += WG) {
        float xc = x[base + c];
        bad = bad || (__float_as_uint(xc) & 0x7f800000u) == 0x7f800000u;
        if (xc > v) {
            v = xc;
            i = c;
        }
    }
    if (bad) atomicOr(&non_finite, 1u);
    best_val[li] = v;
    best_idx[li] = i;
    __syncthreads();
    for (unsigned s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            float ov = best_val[li + s];
            unsigned oi = best_idx[li + s];
            if (ov > best_val[li] || (ov == best_val[li] && oi < best_idx[li])) {
                best_val[li] = ov;
                best_idx[li] = oi;
            }
        }
        __syncthreads();
    }
    if (li == 0u) out[row] = non_finite != 0u ? 0xffffffffu : best_idx[0];
}
