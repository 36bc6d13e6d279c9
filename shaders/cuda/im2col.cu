// Unfold conv windows into rows, so a convolution becomes a matmul with PyTorch's weight
// [out, C, kh, kw] read as [out, C*kh*kw]; the CUDA twin of im2col.wgsl:
//   out[(b, oy, ox), (c, ky, kx)] = x[b, c, oy*sh - ph + ky, ox*sw - pw + kx]   (0 outside)
// The input is NCHW or, with channels_last, [b, y, x, c]. One thread per output element.

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

extern "C" __global__ void __launch_bounds__(256) im2col(const Params p, const float* x, float* out) {
    unsigned i = (blockIdx.x + blockIdx.y * gridDim.x) * 256u + threadIdx.x;
    unsigned window = p.kernel_h * p.kernel_w;
    unsigned cols = p.channels * window;
    if (i >= p.batch * p.out_h * p.out_w * cols) return;
    unsigned row = i / cols;
    unsigned col = i - row * cols;
    unsigned c = col / window;
    unsigned ky = (col - c * window) / p.kernel_w;
    unsigned kx = col - c * window - ky * p.kernel_w;
    unsigned b = row / (p.out_h * p.out_w);
    unsigned oy = (row / p.out_w) % p.out_h;
    unsigned ox = row % p.out_w;
    // Signed, so padding reads land below zero and are skipped.
    int y = (int)(oy * p.stride_h + ky) - (int)p.pad_h;
    int xx = (int)(ox * p.stride_w + kx) - (int)p.pad_w;
    float v = 0.0f;
    if (y >= 0 && y < (int)p.in_h && xx >= 0 && xx < (int)p.in_w) {
        size_t pixel = ((size_t)b * p.in_h + (unsigned)y) * p.in_w + (unsigned)xx;
        if (p.channels_last != 0u) {
            v = x[pixel * p.channels + c];
        } else {
            v = x[((size_t)b * p.channels + c) * p.in_h * p.in_w + (size_t)(unsigned)y * p.in_w + (unsigned)xx];
        }
    }
    out[i] = v;
}
