// Mamba-1 selective scan; the CUDA twin of scan.wgsl's portable variant (one channel per
// thread, any layout), per (sequence, channel):
//   dt  = softplus(delta[t] + dt_bias)                (softplus when flagged)
//   h_n = exp(dt * A_n) * h_n + dt * B[t, n] * u[t]   (n < nstate <= 16)
//   y   = sum_n C[t, n] * h_n + D * u[t]
//   y  *= silu(z[t])                                  (when flagged)
// The 16 states live in four float4 registers, accessed by name (an indexed array would not
// stay in registers). A is held times log2(e), for exp2f. FLAGS is a compile-time constant, so
// the options cost no branches per step. The optional carried state makes the same kernel a
// decode step (len 1), REVERSE walks the tokens backwards without copying them, and ACCUMULATE
// adds into the output (Vim's backward branch summed onto the forward one).

struct Params {
    unsigned batch;
    unsigned len;
    unsigned channels;
    unsigned nstate;
    unsigned u_offset;
    unsigned u_stride;
    unsigned dt_offset;
    unsigned dt_stride;
    unsigned b_offset;
    unsigned c_offset;
    unsigned bc_stride;
    unsigned z_offset;
    unsigned z_stride;
    unsigned _pad0;
    unsigned _pad1;
    unsigned _pad2;
};

#define HAS_Z 1u
#define SOFTPLUS 2u
#define USE_STATE 4u
#define WRITE_STATE 8u
#define REVERSE 16u
#define ACCUMULATE 32u
// Also store the ungated output (token importance for pruning), clipped at 0, added.
#define UNGATED 64u
#define UNGATED_CLIP 128u
#define UNGATED_ADD 256u
// Decay the state over the pruned positions between kept tokens (positions binding).
#define GAP_DECAY 512u
// The grid has threads past the last channel: they compute but store nothing.
#define RAGGED 1024u
#define LOG2E 1.4426950408889634f

#define WG 64u

// #include ssm_inputs
// #include chunked_scan

// A of states n0..n0+3 of the channel row at `base`, times log2(e); zero past nstate.
__device__ __forceinline__ float4 a4(const float* ssm, unsigned nstate, size_t base,
                                     unsigned n0) {
    float4 a = row4(ssm, nstate, base, n0);
    return make_float4(a.x * LOG2E, a.y * LOG2E, a.z * LOG2E, a.w * LOG2E);
}

// The carried states n0..n0+3 (zero without USE_STATE or past nstate).
__device__ __forceinline__ float4 h4(const float* state, unsigned nstate, size_t base,
                                     unsigned n0) {
    if ((FLAGS & USE_STATE) == 0u) return make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    return row4(state, nstate, base, n0);
}

__device__ __forceinline__ void store_h4(float* state, unsigned nstate, size_t base, unsigned n0,
                                         float4 h) {
    if (n0 < nstate) state[base + n0] = h.x;
    if (n0 + 1u < nstate) state[base + n0 + 1u] = h.y;
    if (n0 + 2u < nstate) state[base + n0 + 2u] = h.z;
    if (n0 + 3u < nstate) state[base + n0 + 3u] = h.w;
}


// Output o's epilogue: the ungated copy (importance), the z gate, the accumulation, the store.
__device__ __forceinline__ void store_output(float y, float zt, size_t o, bool in_range,
                                             float* out, float* ungated) {
    if (in_range && (FLAGS & UNGATED) != 0u) {
        float g = y;
        if ((FLAGS & UNGATED_CLIP) != 0u) g = fmaxf(g, 0.0f);
        if ((FLAGS & UNGATED_ADD) != 0u) g += ungated[o];
        ungated[o] = g;
    }
    if ((FLAGS & HAS_Z) != 0u) y = y * zt / (1.0f + expf(-zt));
    if ((FLAGS & ACCUMULATE) != 0u) y += out[o];
    if (in_range) out[o] = y;
}

// Four states of one step, in order: h = exp2(dt a) h + du b, then y += h c.
__device__ __forceinline__ void update4(float4& h, float4 a, float dt, float du, float4 b, float4 c,
                                        float& y) {
    h.x = fmaf(exp2f(dt * a.x), h.x, du * b.x);
    y = fmaf(h.x, c.x, y);
    h.y = fmaf(exp2f(dt * a.y), h.y, du * b.y);
    y = fmaf(h.y, c.y, y);
    h.z = fmaf(exp2f(dt * a.z), h.z, du * b.z);
    y = fmaf(h.z, c.z, y);
    h.w = fmaf(exp2f(dt * a.w), h.w, du * b.w);
    y = fmaf(h.w, c.w, y);
}

// Per-thread values the steps share (registers once inlined).
struct Scan {
    float4 a0, a1, a2, a3;
    float4 h0, h1, h2, h3;
    float d_skip;
    float dt_bias;
    float idle_dt;
    unsigned prev_pos;
    unsigned seq;
    unsigned e;
    bool in_range;
};

// One token: step s of the walk.
__device__ __forceinline__ void step(const Params& p, Scan& sc, const float* u, const float* delta,
                                     const float* bc, const float* z, float* out, float* ungated,
                                     const unsigned* positions, unsigned s) {
    unsigned t = (FLAGS & REVERSE) != 0u ? p.len - 1u - s : s;
    size_t row = (size_t)sc.seq * p.len + t;
    float ut = u[p.u_offset + row * p.u_stride + sc.e];
    float dt = delta[p.dt_offset + row * p.dt_stride + sc.e] + sc.dt_bias;
    float zt = 0.0f;
    if ((FLAGS & HAS_Z) != 0u) zt = z[p.z_offset + row * p.z_stride + sc.e];
    if ((FLAGS & SOFTPLUS) != 0u) dt = softplus(dt);
    // The pruned positions since the previous kept token decay the state as zero-input
    // tokens: exp2(g a) exp2(dt a) = exp2((dt + g) a), folded into this token's exps.
    float decay_dt = dt;
    if ((FLAGS & GAP_DECAY) != 0u) {
        unsigned pos = positions[row];
        if (s > 0u) decay_dt += (float)(max(abs((int)pos - (int)sc.prev_pos), 1) - 1) * sc.idle_dt;
        sc.prev_pos = pos;
    }
    float du = dt * ut;
    size_t bb = p.b_offset + row * p.bc_stride;
    size_t cb = p.c_offset + row * p.bc_stride;
    // -0 makes the first fmaf exactly h0 * c0 (the WGSL's first term).
    float y = -0.0f;
    update4(sc.h0, sc.a0, decay_dt, du, row4(bc, p.nstate, bb, 0u), row4(bc, p.nstate, cb, 0u), y);
    update4(sc.h1, sc.a1, decay_dt, du, row4(bc, p.nstate, bb, 4u), row4(bc, p.nstate, cb, 4u), y);
    update4(sc.h2, sc.a2, decay_dt, du, row4(bc, p.nstate, bb, 8u), row4(bc, p.nstate, cb, 8u), y);
    update4(sc.h3, sc.a3, decay_dt, du, row4(bc, p.nstate, bb, 12u), row4(bc, p.nstate, cb, 12u), y);
    y = fmaf(sc.d_skip, ut, y);
    store_output(y, zt, row * p.channels + sc.e, sc.in_range, out, ungated);
}

// Grid: x = blocks of 64 channels, y = sequence. No thread returns early: past the last
// channel, threads clamp to it and store nothing.
extern "C" __global__ void __launch_bounds__(64) selective_scan(const Params p, const float* u,
        const float* delta, const float* bc, const float* ssm, const float* z, float* state,
        float* out, float* ungated, const unsigned* positions) {
    unsigned li = threadIdx.x;
    Scan sc;
    sc.seq = blockIdx.y;
    unsigned i_raw = blockIdx.x * WG + li;
    sc.in_range = (FLAGS & RAGGED) == 0u || i_raw < p.channels;
    sc.e = min(i_raw, p.channels - 1u);
    unsigned ns = p.nstate;
    size_t abase = (size_t)sc.e * ns;
    sc.a0 = a4(ssm, ns, abase, 0u);
    sc.a1 = a4(ssm, ns, abase, 4u);
    sc.a2 = a4(ssm, ns, abase, 8u);
    sc.a3 = a4(ssm, ns, abase, 12u);
    sc.d_skip = ssm[(size_t)p.channels * ns + sc.e];
    sc.dt_bias = ssm[(size_t)p.channels * ns + p.channels + sc.e];
    size_t sbase = ((size_t)sc.seq * p.channels + sc.e) * ns;
    sc.h0 = h4(state, ns, sbase, 0u);
    sc.h1 = h4(state, ns, sbase, 4u);
    sc.h2 = h4(state, ns, sbase, 8u);
    sc.h3 = h4(state, ns, sbase, 12u);
    // Delta of a pruned (zero-input) position, for GAP_DECAY.
    sc.idle_dt = sc.dt_bias;
    if ((FLAGS & SOFTPLUS) != 0u) sc.idle_dt = softplus(sc.dt_bias);
    sc.prev_pos = 0u;
    // Two tokens per iteration: half the loop overhead.
    unsigned s = 0u;
    for (; s + 1u < p.len; s += 2u) {
        step(p, sc, u, delta, bc, z, out, ungated, positions, s);
        step(p, sc, u, delta, bc, z, out, ungated, positions, s + 1u);
    }
    if (s < p.len) step(p, sc, u, delta, bc, z, out, ungated, positions, s);
    if (sc.in_range && (FLAGS & WRITE_STATE) != 0u) {
        store_h4(state, ns, sbase, 0u, sc.h0);
        store_h4(state, ns, sbase, 4u, sc.h1);
        store_h4(state, ns, sbase, 8u, sc.h2);
        store_h4(state, ns, sbase, 12u, sc.h3);
    }
}

// The same scan parallel over the tokens (include/chunked_scan.cuh): a block per (channel,
// sequence). The launcher uses it on the CUDA backend for prompts (many tokens, few channels
// per SM otherwise); `selective_scan` above, one thread per channel, serves decode steps.
extern "C" __global__ void __launch_bounds__(128) selective_scan_chunked(const Params p,
        const float* u, const float* delta, const float* bc, const float* ssm, const float* z,
        float* state, float* out, float* ungated, const unsigned* positions) {
    __shared__ ChunkShared sh;
    unsigned tid = threadIdx.x;
    unsigned e = blockIdx.x;
    unsigned seq = blockIdx.y;
    unsigned ns = p.nstate;
    float d_skip = ssm[(size_t)p.channels * ns + e];
    float dt_bias = ssm[(size_t)p.channels * ns + p.channels + e];
    // Delta of a pruned (zero-input) position, for GAP_DECAY.
    float idle_dt = (FLAGS & SOFTPLUS) != 0u ? softplus(dt_bias) : dt_bias;
    size_t sbase = ((size_t)seq * p.channels + e) * ns;
    if (tid < MAX_STATE) {
        sh.carry[tid] = (FLAGS & USE_STATE) != 0u && tid < ns ? state[sbase + tid] : 0.0f;
    }
    __syncthreads();
    for (unsigned c0 = 0u; c0 < p.len; c0 += CHUNK) {
        // This thread's steps: the decay's dt (dt plus the idle dt of the pruned positions
        // before the step, under GAP_DECAY), dt u, u, z, and the outputs' row.
        float decay_dt[ITEMS], du[ITEMS], ut[ITEMS], zt[ITEMS], y[ITEMS];
        size_t rows[ITEMS];
        bool valid[ITEMS];
#pragma unroll
        for (unsigned i = 0u; i < ITEMS; ++i) {
            unsigned s = c0 + tid * ITEMS + i;
            valid[i] = s < p.len;
            unsigned t = (FLAGS & REVERSE) != 0u ? p.len - 1u - s : s;
            size_t row = (size_t)seq * p.len + t;
            rows[i] = row;
            decay_dt[i] = 0.0f;
            du[i] = 0.0f;
            ut[i] = 0.0f;
            zt[i] = 0.0f;
            y[i] = 0.0f;
            if (!valid[i]) continue;
            ut[i] = u[p.u_offset + row * p.u_stride + e];
            float dt = delta[p.dt_offset + row * p.dt_stride + e] + dt_bias;
            if ((FLAGS & HAS_Z) != 0u) zt[i] = z[p.z_offset + row * p.z_stride + e];
            if ((FLAGS & SOFTPLUS) != 0u) dt = softplus(dt);
            du[i] = dt * ut[i];
            decay_dt[i] = dt;
            if ((FLAGS & GAP_DECAY) != 0u && s > 0u) {
                size_t prev = (FLAGS & REVERSE) != 0u ? row + 1u : row - 1u;
                int gap = max(abs((int)positions[row] - (int)positions[prev]), 1) - 1;
                decay_dt[i] += (float)gap * idle_dt;
            }
        }
        unsigned last_owner = chunk_last_owner(p.len, c0);
        for (unsigned n = 0u; n < ns; ++n) {
            float a_n = ssm[(size_t)e * ns + n] * LOG2E;
            float a[ITEMS], h[ITEMS];
#pragma unroll
            for (unsigned i = 0u; i < ITEMS; ++i) {
                a[i] = valid[i] ? exp2f(decay_dt[i] * a_n) : 1.0f;
                h[i] = valid[i] ? du[i] * bc[p.b_offset + rows[i] * p.bc_stride + n] : 0.0f;
            }
            scan_chunk_state(&sh, n, a, h, last_owner);
#pragma unroll
            for (unsigned i = 0u; i < ITEMS; ++i) {
                if (valid[i]) y[i] = fmaf(h[i], bc[p.c_offset + rows[i] * p.bc_stride + n], y[i]);
            }
        }
#pragma unroll
        for (unsigned i = 0u; i < ITEMS; ++i) {
            if (!valid[i]) continue;
            float yv = fmaf(d_skip, ut[i], y[i]);
            store_output(yv, zt[i], rows[i] * p.channels + e, true, out, ungated);
        }
        __syncthreads();
    }
    if ((FLAGS & WRITE_STATE) != 0u && tid < ns) state[sbase + tid] = sh.carry[tid];
}
