// Causal depthwise conv1d, width 4, + SiLU, for Mamba's x branch; the CUDA twin of conv1d.wgsl:
//   c[t, e] = bias[e] + sum_k w[e, k] * x[t - 3 + k, e];   out = c * sigmoid(c)
// One thread per (sequence, channel) walks the tokens with a 4-tap window in registers, so each
// input is read once. Positions before the start read the carried conv state (the last 4
// inputs, oldest first, as mamba_ssm's conv_state) when use_state != 0, else zero; with
// write_state != 0 the last 4 inputs are stored back: prefill and decode steps are the same
// kernel. With reverse != 0 the tokens are walked last to first: the causal conv of the flipped
// sequence, written at the original positions (Vim's backward branch). With has_positions != 0
// the tokens are the kept ones of a pruned sequence at the original positions `positions`: the
// window slides over the original positions, reading pruned ones as zero. With directions = 2
// the grid makes two walks, the second reversed, with the second conv's weights (stacked after
// the first's) into the second half of `out` (Vim's two directions in one launch).

struct Params {
    unsigned batch;
    unsigned len;
    unsigned channels;
    unsigned x_offset;
    unsigned x_stride;
    unsigned use_state;
    unsigned write_state;
    unsigned reverse;
    unsigned has_positions;
    unsigned directions;
    unsigned _pad1;
    unsigned _pad2;
};

// A thread's work, as conv1d.wgsl's Block: sequence, first channel, walk (its weights from row
// w, its outputs from element out), reversed or not; live is false past the last one.
struct Block {
    unsigned seq, e, dir, w;
    size_t out;
    bool reverse, live;
};

__device__ __forceinline__ Block block_of(const Params& p, unsigned width) {
    unsigned idx = (blockIdx.x + blockIdx.y * gridDim.x) * 64u + threadIdx.x;
    unsigned blocks = p.channels / width;
    unsigned walk = idx / blocks;
    unsigned dir = walk / p.batch;
    Block b;
    b.seq = walk - dir * p.batch;
    b.e = (idx - walk * blocks) * width;
    b.dir = dir;
    b.w = dir * p.channels;
    b.out = (size_t)dir * p.batch * p.len * p.channels;
    b.reverse = (p.reverse != 0u) != (dir == 1u);
    b.live = dir < p.directions;
    return b;
}

// The window moved on by one input: (w.y, w.z, w.w, v).
__device__ __forceinline__ float4 shift(float4 w, float v) {
    return make_float4(w.y, w.z, w.w, v);
}

extern "C" __global__ void __launch_bounds__(64) conv1d_silu(const Params p, const float* x,
        const float4* weight, const float* bias, float4* state, float* out,
        const unsigned* positions) {
    Block blk = block_of(p, 1u);
    if (!blk.live) return;
    unsigned b = blk.seq, e = blk.e;
    float4 w = weight[blk.w + e];
    float c0 = bias[blk.w + e];
    // window = (x[t-4], x[t-3], x[t-2], x[t-1])
    float4 window = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (p.use_state != 0u) window = state[b * p.channels + e];
    unsigned previous = 0u;
    for (unsigned s = 0u; s < p.len; s++) {
        unsigned t = blk.reverse ? p.len - 1u - s : s;
        size_t row = (size_t)b * p.len + t;
        float xt = x[p.x_offset + row * p.x_stride + e];
        if (p.has_positions != 0u) {
            // Zeros for the pruned positions since the previous kept token (at most 3 matter).
            unsigned here = positions[row];
            unsigned gap = s == 0u ? 1u : (blk.reverse ? previous - here : here - previous);
            for (unsigned k = 1u; k < min(gap, 4u); k++) window = shift(window, 0.0f);
            previous = here;
        }
        window = shift(window, xt);
        float c = c0 + (window.x * w.x + window.y * w.y + window.z * w.z + window.w * w.w);
        out[blk.out + row * p.channels + e] = c / (1.0f + expf(-c));
    }
    if (p.write_state != 0u) state[b * p.channels + e] = window;
}

// Four channels e..e+3 per thread, as conv1d.wgsl's conv1d_silu_vec4 (channels, offset and
// stride multiples of 4): tap k of the four channels is one float4.
extern "C" __global__ void __launch_bounds__(64) conv1d_silu_vec4(const Params p, const float4* x,
        const float4* weight, const float* bias, float4* state, float4* out,
        const unsigned* positions) {
    Block blk = block_of(p, 4u);
    if (!blk.live) return;
    unsigned b = blk.seq, e = blk.e;
    // win[c]: the window of channel e + c, (x[t-4], x[t-3], x[t-2], x[t-1]).
    float4 w[4], win[4];
    float c0[4];
    size_t s0 = (size_t)b * p.channels + e;
    for (unsigned c = 0u; c < 4u; c++) {
        w[c] = weight[blk.w + e + c];
        c0[c] = bias[blk.w + e + c];
        win[c] = p.use_state != 0u ? state[s0 + c] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    unsigned previous = 0u;
    for (unsigned s = 0u; s < p.len; s++) {
        unsigned t = blk.reverse ? p.len - 1u - s : s;
        size_t row = (size_t)b * p.len + t;
        float4 xt = x[(p.x_offset + row * p.x_stride + e) / 4u];
        if (p.has_positions != 0u) {
            unsigned here = positions[row];
            unsigned gap = s == 0u ? 1u : (blk.reverse ? previous - here : here - previous);
            for (unsigned k = 1u; k < min(gap, 4u); k++)
                for (unsigned c = 0u; c < 4u; c++) win[c] = shift(win[c], 0.0f);
            previous = here;
        }
        float xs[4] = {xt.x, xt.y, xt.z, xt.w};
        float o[4];
        for (unsigned c = 0u; c < 4u; c++) {
            win[c] = shift(win[c], xs[c]);
            float v = c0[c] + (w[c].x * win[c].x + w[c].y * win[c].y + w[c].z * win[c].z + w[c].w * win[c].w);
            o[c] = v / (1.0f + expf(-v));
        }
        out[(blk.out + row * p.channels + e) / 4u] = make_float4(o[0], o[1], o[2], o[3]);
    }
    if (p.write_state != 0u)
        for (unsigned c = 0u; c < 4u; c++) state[s0 + c] = win[c];
}
