// The matmul's epilogue, after cuBLAS wrote x * w^T into y; the CUDA twin of matmul.wgsl's
// store_row/finish: per output, in this order, + bias, the activation, + residual [m, n].

struct Params {
    unsigned m;
    unsigned n;
    unsigned y_offset;
    unsigned y_stride;
    unsigned has_bias;
    unsigned activation;
    unsigned has_residual;
    unsigned _pad;
};

// #include activation

extern "C" __global__ void __launch_bounds__(256) matmul_epilogue(const Params p, const float* bias, float* y,
                                           const float* residual) {
    unsigned i = (blockIdx.x + blockIdx.y * gridDim.x) * 256u + threadIdx.x;
    if (i >= p.m * p.n) return;
    unsigned row = i / p.n;
    unsigned col = i - row * p.n;
    size_t at = (size_t)row * p.y_stride + p.y_offset + col;
    float v = y[at];
    if (p.has_bias != 0u) v += bias[col];
    float out = activate(v, p.activation);
    if (p.has_residual != 0u) out += residual[i];
    y[at] = out;
}
