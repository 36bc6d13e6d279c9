// Unfold conv windows into rows, so a convolution becomes a matmul with PyTorch's weight
// [out, C, kh, kw] read as [out, C*kh*kw]; the CUDA twin of im2col.wgsl:
//   out[(b, oy, ox), (c, ky, kx)] = x[b, c, oy*sh - ph + ky, ox*sw - pw + kx]   (0 outside)
// The input is NCHW or, with channels_last, [b, y, x, c]. One thread per (output row, channel,
// kernel row), storing its kernel_w outputs, as the WGSL.

struct Params {
    unsigned batch;
    unsigned channels;
    unsigned in_h;
    unsigned in_w;
    unsigned out_h;
    unsigned out_w;
    unsigned kernel_h;
    unsigned kernel_w;
    unsigned stride_h;
    unsigned stride_w;
    unsigned pad_h;
    unsigned pad_w;
    unsigned channels_last;
    unsigned _pad0;
    unsigned _pad1;
    unsigned _pad2;
};

extern "C" __global__ void __launch_bounds__(64) im2col(const Params p, const float* x, float* out) {
    unsigned i = (blockIdx.x + blockIdx.y * gridDim.x) * 64u + threadIdx.x;
    unsigned per_row = p.channels * p.kernel_h;
    unsigned pixels = p.out_h * p.out_w;
    if (i >= p.batch * pixels * per_row) return;
    unsigned row = i / per_row;
    unsigned c = (i - row * per_row) / p.kernel_h;
    unsigned ky = i - row * per_row - c * p.kernel_h;
    unsigned b = row / pixels;
    unsigned oy = (row - b * pixels) / p.out_w;
    unsigned ox = row - b * pixels - oy * p.out_w;
    // Signed, so padding reads land below zero and are skipped.
    int y = (int)(oy * p.stride_h + ky) - (int)p.pad_h;
    int x0 = (int)(ox * p.stride_w) - (int)p.pad_w;
    bool y_inside = y >= 0 && y < (int)p.in_h;
    // Where x (column 0 of the window row) would be, and how far apart its columns are.
    long long first, step;
    if (p.channels_last != 0u) {
        first = (((long long)b * p.in_h + y) * p.in_w + x0) * p.channels + c;
        step = p.channels;
    } else {
        first = (((long long)b * p.channels + c) * p.in_h + y) * p.in_w + x0;
        step = 1;
    }
    size_t out_base = (size_t)i * p.kernel_w;
    for (unsigned kx = 0u; kx < p.kernel_w; kx++) {
        int xx = x0 + (int)kx;
        float v = 0.0f;
        if (y_inside && xx >= 0 && xx < (int)p.in_w) v = x[first + (long long)kx * step];
        out[out_base + kx] = v;
    }
}
