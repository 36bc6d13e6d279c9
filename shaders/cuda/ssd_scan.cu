// Mamba-2's SSD scan (state space duality); the CUDA twin of ssd_scan.wgsl. Per sequence b and
// head h with head dim P, state N:
//   dt[t]   = clamp(softplus(dt_raw[t, h] + dt_bias[h]), dt_min, dt_max)
//   S[t]    = exp(dt[t] * A[h]) * S[t-1] + dt[t] * x[t, h, :] (outer) B[t, g, :]   (S: P x N)
//   y[t, h] = S[t] C[t, g, :] + D[h] * x[t, h, :]
// where the head's group is g = h / (H / G) (B and C are shared by the H / G heads of a group).
//
// Two forms of the same recurrence:
// - ssd_step: the recurrence token by token, one thread per (b, h, p) with its N state values
//   in the carried state buffer (decode: one token per call).
// - the chunked form for prefill (mamba_ssm's ssd_minimal_discrete), three launches:
//   1. ssd_chunk_state, per (b, h, chunk): the chunk's own end state from zero,
//      S_c = sum_j exp(cum[last] - cum[j]) dt[j] x[j] (outer) B[j], cum = the chunk's running sum
//      of dt * A, and the chunk's total log decay cum[last];
//   2. ssd_state_pass, per (b, h, state element): the states entering each chunk,
//      H_0 = initial (or 0), H_{c+1} = exp(cum_c[last]) H_c + S_c, written over S_c in place,
//      and the final state into the carry;
//   3. ssd_chunk_out, per (b, h, chunk, 8 query rows): the masked "attention" inside the chunk
//      plus the entering state,
//      y[i] = sum_{j<=i} exp(cum[i] - cum[j]) (C[i].B[j]) dt[j] x[j] + exp(cum[i]) H_c C[i] + D x[i].
// A length that is not a multiple of the chunk size leaves the last chunk short.

struct Params {
    unsigned batch;
    unsigned len;
    unsigned heads;
    unsigned headdim;
    unsigned nstate;
    unsigned groups;
    unsigned chunk;
    unsigned nchunks;
    unsigned x_offset;
    unsigned x_stride;
    unsigned dt_offset;
    unsigned dt_stride;
    unsigned b_offset;
    unsigned c_offset;
    unsigned bc_stride;
    unsigned flags;
    float dt_min;
    float dt_max;
    unsigned _pad0;
    unsigned _pad1;
};

#define USE_STATE 1u
#define WRITE_STATE 2u

#define WG 64u
// Longest chunk (the shared arrays are sized for it) and query rows per ssd_chunk_out block.
#define MAX_CHUNK 256u
#define ROWS 8u
// State columns per ssd_chunk_state block (four float4 accumulators).
#define NB 16u

__device__ __forceinline__ float4 fma4s(float a, float4 b, float4 c) {
    return make_float4(fmaf(a, b.x, c.x), fmaf(a, b.y, c.y), fmaf(a, b.z, c.z),
                       fmaf(a, b.w, c.w));
}

__device__ __forceinline__ float dot4(float4 a, float4 b) {
    return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
}

// Component k < 4 of v (WGSL's dynamic vector index).
__device__ __forceinline__ float comp(float4 v, unsigned k) {
    return k == 0u ? v.x : k == 1u ? v.y : k == 2u ? v.z : v.w;
}

// Elements n0..n0+3 of the row of `v` from `base`, zero past nstate.
__device__ __forceinline__ float4 row4(const float* v, unsigned nstate, size_t base, unsigned n0) {
    return make_float4(n0 < nstate ? v[base + n0] : 0.0f,
                       n0 + 1u < nstate ? v[base + n0 + 1u] : 0.0f,
                       n0 + 2u < nstate ? v[base + n0 + 2u] : 0.0f,
                       n0 + 3u < nstate ? v[base + n0 + 3u] : 0.0f);
}

// ssm (every entry but ssd_state_pass): [A (heads, negative) | D (heads) | dt_bias (heads)].
__device__ __forceinline__ float dt_at(const Params& p, const float* dt, const float* ssm,
                                       size_t row, unsigned h) {
    float v = dt[p.dt_offset + row * p.dt_stride + h] + ssm[2u * p.heads + h];
    v = v > 20.0f ? v : logf(1.0f + expf(v));
    return fminf(fmaxf(v, p.dt_min), p.dt_max);
}

__device__ __forceinline__ float x_at(const Params& p, const float* x, size_t row, unsigned h,
                                      unsigned pp) {
    return x[p.x_offset + row * p.x_stride + h * p.headdim + pp];
}

// B or C of row `row`, group g, elements n0..n0+3 (zero past nstate).
__device__ __forceinline__ float4 b4(const Params& p, const float* bm, size_t row, unsigned g,
                                     unsigned n0) {
    return row4(bm, p.nstate, p.b_offset + row * p.bc_stride + g * p.nstate, n0);
}

__device__ __forceinline__ float4 c4(const Params& p, const float* cm, size_t row, unsigned g,
                                     unsigned n0) {
    return row4(cm, p.nstate, p.c_offset + row * p.bc_stride + g * p.nstate, n0);
}

__device__ __forceinline__ unsigned group_of(const Params& p, unsigned h) {
    return h / (p.heads / p.groups);
}

// sh_dt[j] and sh_cum[j] = sum_{k<=j} dt[k] * A for the first `count` tokens of the chunk
// starting at `row0` (both the block's MAX_CHUNK shared floats). Called by the whole block.
__device__ __forceinline__ void chunk_decay(const Params& p, const float* dt, const float* ssm,
                                            float* sh_dt, float* sh_cum, size_t row0, unsigned h,
                                            unsigned count, unsigned li) {
    float a = ssm[h];
    for (unsigned j = li; j < count; j += WG) {
        float d = dt_at(p, dt, ssm, row0 + j, h);
        sh_dt[j] = d;
        sh_cum[j] = d * a;
    }
    __syncthreads();
    if (li == 0u) {
        float s = 0.0f;
        for (unsigned j = 0u; j < count; j++) {
            s += sh_cum[j];
            sh_cum[j] = s;
        }
    }
    __syncthreads();
}

// One thread per (b, h, p), token by token. state: [batch, heads, P, N], read when USE_STATE,
// always written; out: y [batch * len, heads * P].
extern "C" __global__ void __launch_bounds__(64) ssd_step(const Params p, const float* x,
        const float* dt, const float* bm, const float* cm, const float* ssm, float* state,
        float* out) {
    unsigned li = threadIdx.x;
    unsigned idx = (blockIdx.x + blockIdx.y * gridDim.x) * WG + li;
    if (idx >= p.batch * p.heads * p.headdim) return;
    unsigned b = idx / (p.heads * p.headdim);
    unsigned h = (idx / p.headdim) % p.heads;
    unsigned pp = idx % p.headdim;
    unsigned g = group_of(p, h);
    float a = ssm[h];
    float d_skip = ssm[p.heads + h];
    size_t sbase = (size_t)idx * p.nstate;
    unsigned inner = p.heads * p.headdim;
    for (unsigned s = 0u; s < p.len; s++) {
        size_t row = (size_t)b * p.len + s;
        float d = dt_at(p, dt, ssm, row, h);
        float decay = expf(d * a);
        float xv = x_at(p, x, row, h, pp);
        float dx = d * xv;
        bool keep = s > 0u || (p.flags & USE_STATE) != 0u;
        float y = 0.0f;
        for (unsigned n = 0u; n < p.nstate; n++) {
            float prev = keep ? state[sbase + n] : 0.0f;
            float bn = bm[p.b_offset + row * p.bc_stride + g * p.nstate + n];
            float cn = cm[p.c_offset + row * p.bc_stride + g * p.nstate + n];
            float v = fmaf(decay, prev, dx * bn);
            state[sbase + n] = v;
            y = fmaf(cn, v, y);
        }
        out[row * inner + h * p.headdim + pp] = fmaf(d_skip, xv, y);
    }
}

// Grid: x = blocks of NB state columns, y = chunk, z = b * heads + h. Threads walk P.
// totals_out: total log decay per chunk [batch, heads, nchunks]; states_out: the chunks' own end
// states [batch, heads, nchunks, P, N].
extern "C" __global__ void __launch_bounds__(64) ssd_chunk_state(const Params p, const float* x,
        const float* dt, const float* bm, float* totals_out, const float* ssm, float* states_out) {
    __shared__ float sh_dt[MAX_CHUNK];
    __shared__ float sh_cum[MAX_CHUNK];
    unsigned li = threadIdx.x;
    unsigned n0 = blockIdx.x * NB;
    unsigned c = blockIdx.y;
    unsigned h = blockIdx.z % p.heads;
    unsigned b = blockIdx.z / p.heads;
    unsigned t0 = c * p.chunk;
    unsigned q = min(p.chunk, p.len - t0);
    size_t row0 = (size_t)b * p.len + t0;
    unsigned g = group_of(p, h);
    chunk_decay(p, dt, ssm, sh_dt, sh_cum, row0, h, q, li);
    // Every chunk of the grid has q >= 1; the guard keeps sh_cum[q - 1] in bounds regardless.
    float last = q > 0u ? sh_cum[q - 1u] : 0.0f;
    // The weight of token j in the chunk's end state (each thread reads back its own).
    for (unsigned j = li; j < q; j += WG) sh_dt[j] = expf(last - sh_cum[j]) * sh_dt[j];
    __syncthreads();
    size_t bhc = ((size_t)b * p.heads + h) * p.nchunks + c;
    float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (unsigned pp = li; pp < p.headdim; pp += WG) {
        float4 s0 = zero;
        float4 s1 = zero;
        float4 s2 = zero;
        float4 s3 = zero;
        for (unsigned j = 0u; j < q; j++) {
            size_t row = row0 + j;
            float w = sh_dt[j] * x_at(p, x, row, h, pp);
            s0 = fma4s(w, b4(p, bm, row, g, n0), s0);
            s1 = fma4s(w, b4(p, bm, row, g, n0 + 4u), s1);
            s2 = fma4s(w, b4(p, bm, row, g, n0 + 8u), s2);
            s3 = fma4s(w, b4(p, bm, row, g, n0 + 12u), s3);
        }
        size_t base = (bhc * p.headdim + pp) * p.nstate + n0;
        for (unsigned k = 0u; k < NB && n0 + k < p.nstate; k++) {
            float4 acc = k < 4u ? s0 : k < 8u ? s1 : k < 12u ? s2 : s3;
            states_out[base + k] = comp(acc, k % 4u);
        }
    }
    if (blockIdx.x == 0u && li == 0u) totals_out[bhc] = last;
}

// Grid: x = blocks of 64 state elements (P x N), y = h, z = b.
extern "C" __global__ void __launch_bounds__(64) ssd_state_pass(const Params p, const float* totals,
        float* states, float* carry) {
    unsigned size = p.headdim * p.nstate;
    unsigned e = blockIdx.x * WG + threadIdx.x;
    if (e >= size) return;
    size_t bh = (size_t)blockIdx.z * p.heads + blockIdx.y;
    float s = 0.0f;
    if ((p.flags & USE_STATE) != 0u) s = carry[bh * size + e];
    for (unsigned c = 0u; c < p.nchunks; c++) {
        size_t i = (bh * p.nchunks + c) * size + e;
        float own = states[i];
        states[i] = s;
        s = fmaf(expf(totals[bh * p.nchunks + c]), s, own);
    }
    if ((p.flags & WRITE_STATE) != 0u) carry[bh * size + e] = s;
}

// Grid: x = chunk * ceil(chunk / ROWS) + row block, y = h, z = b. Threads walk P.
// chunk_in: the states entering each chunk, [batch, heads, nchunks, P, N]; out: y
// [batch * len, heads * P].
extern "C" __global__ void __launch_bounds__(64) ssd_chunk_out(const Params p, const float* x,
        const float* dt, const float* bm, const float* cm, const float* ssm, const float* chunk_in,
        float* out) {
    __shared__ float sh_dt[MAX_CHUNK];
    __shared__ float sh_cum[MAX_CHUNK];
    // Weights of the masked "attention", [j][query row].
    __shared__ float sh_scores[MAX_CHUNK * ROWS];
    unsigned li = threadIdx.x;
    unsigned blocks = (p.chunk + ROWS - 1u) / ROWS;
    unsigned c = blockIdx.x / blocks;
    unsigned i0 = (blockIdx.x % blocks) * ROWS;
    unsigned h = blockIdx.y;
    unsigned b = blockIdx.z;
    unsigned t0 = c * p.chunk;
    unsigned q = min(p.chunk, p.len - t0);
    // The short last chunk has fewer row blocks; those blocks leave together.
    if (i0 >= q) return;
    unsigned ni = min(ROWS, q - i0);
    unsigned jn = i0 + ni; // tokens this block's rows see
    size_t row0 = (size_t)b * p.len + t0;
    unsigned g = group_of(p, h);
    chunk_decay(p, dt, ssm, sh_dt, sh_cum, row0, h, jn, li);
    // Scores: (C[i] . B[j]) exp(cum[i] - cum[j]) dt[j] for j <= i, else 0.
    for (unsigned k = li; k < jn * ROWS; k += WG) {
        unsigned j = k / ROWS;
        unsigned r = k % ROWS;
        unsigned i = i0 + r;
        float s = 0.0f;
        if (r < ni && j <= i) {
            float dot_cb = 0.0f;
            for (unsigned n = 0u; n < p.nstate; n += 4u) {
                dot_cb += dot4(c4(p, cm, row0 + i, g, n), b4(p, bm, row0 + j, g, n));
            }
            s = dot_cb * expf(sh_cum[i] - sh_cum[j]) * sh_dt[j];
        }
        sh_scores[j * ROWS + r] = s;
    }
    __syncthreads();
    float d_skip = ssm[p.heads + h];
    unsigned inner = p.heads * p.headdim;
    unsigned size = p.headdim * p.nstate;
    size_t hin = (((size_t)b * p.heads + h) * p.nchunks + c) * size;
    float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (unsigned pp = li; pp < p.headdim; pp += WG) {
        // Inside the chunk: rows i0..i0+3 and i0+4..i0+7.
        float4 y0 = zero;
        float4 y1 = zero;
        for (unsigned j = 0u; j < jn; j++) {
            float xv = x_at(p, x, row0 + j, h, pp);
            unsigned k = j * ROWS;
            y0 = fma4s(xv, make_float4(sh_scores[k], sh_scores[k + 1u], sh_scores[k + 2u],
                                       sh_scores[k + 3u]), y0);
            y1 = fma4s(xv, make_float4(sh_scores[k + 4u], sh_scores[k + 5u], sh_scores[k + 6u],
                                       sh_scores[k + 7u]), y1);
        }
        // From the entering state: H_c[p, :] . C[i].
        float4 o0 = zero;
        float4 o1 = zero;
        unsigned last = ni - 1u;
        size_t sb = hin + (size_t)pp * p.nstate;
        for (unsigned n = 0u; n < p.nstate; n += 4u) {
            float4 hv = row4(chunk_in, p.nstate, sb, n);
            o0.x += dot4(hv, c4(p, cm, row0 + i0, g, n));
            o0.y += dot4(hv, c4(p, cm, row0 + i0 + min(1u, last), g, n));
            o0.z += dot4(hv, c4(p, cm, row0 + i0 + min(2u, last), g, n));
            o0.w += dot4(hv, c4(p, cm, row0 + i0 + min(3u, last), g, n));
            o1.x += dot4(hv, c4(p, cm, row0 + i0 + min(4u, last), g, n));
            o1.y += dot4(hv, c4(p, cm, row0 + i0 + min(5u, last), g, n));
            o1.z += dot4(hv, c4(p, cm, row0 + i0 + min(6u, last), g, n));
            o1.w += dot4(hv, c4(p, cm, row0 + i0 + min(7u, last), g, n));
        }
        for (unsigned r = 0u; r < ni; r++) {
            unsigned i = i0 + r;
            size_t row = row0 + i;
            float y = comp(r < 4u ? y0 : y1, r % 4u)
                      + expf(sh_cum[i]) * comp(r < 4u ? o0 : o1, r % 4u);
            out[row * inner + h * p.headdim + pp] = fmaf(d_skip, x_at(p, x, row, h, pp), y);
        }
    }
}
