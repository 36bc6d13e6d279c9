// Patch embeddings to the token sequence of a vision model; the CUDA twin of tokens.wgsl:
//   out[b, t] = (t == cls_pos ? cls : patches[b, t - (t > cls_pos)]) + pos_embed[t]
// (Vim inserts its class token in the middle; without one cls_pos is past the end and this is
// only the position add.)

struct Params {
    unsigned batch;
    unsigned len;
    unsigned dim;
    unsigned cls_pos;
    unsigned has_pos;
    unsigned _pad0;
    unsigned _pad1;
    unsigned _pad2;
};

extern "C" __global__ void __launch_bounds__(256) embed_tokens(const Params p, const float* patches, const float* cls,
                                        const float* pos_embed, float* out) {
    unsigned i = (blockIdx.x + blockIdx.y * gridDim.x) * 256u + threadIdx.x;
    if (i >= p.batch * p.len * p.dim) return;
    unsigned row = i / p.dim;
    unsigned d = i - row * p.dim;
    unsigned b = row / p.len;
    unsigned t = row - b * p.len;
    float v;
    if (t == p.cls_pos) {
        v = cls[d];
    } else {
        unsigned patches_per_image = p.cls_pos < p.len ? p.len - 1u : p.len;
        unsigned m = t > p.cls_pos ? t - 1u : t;
        v = patches[(b * patches_per_image + m) * p.dim + d];
    }
    if (p.has_pos != 0u) v += pos_embed[t * p.dim + d];
    out[i] = v;
}
