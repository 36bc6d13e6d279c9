// PlainMamba's 2-D selective scan; the CUDA twin of zigzag_scan.wgsl's portable variant. Four
// snake-order scans of each image, summed at the original positions and gated. For direction k
// with order o = orders[k] and moves d = directions[k] (both over scan steps s):
//   dt  = softplus(delta[s] + dt_bias)
//   h_n = exp(dt * A_n) * h_n + dt * (B[s, n] + dir_B[d[s], n]) * u[o[s]]
//   y_k[o[s]] = sum_n C[s, n] * h_n + D * u[o[s]]
//   out = (y_0 + y_1 + y_2 + y_3) * silu(z)
// Only u follows the scan order (the authors' code permutes only u): delta, B and C are read at
// raster position s, so step s of every direction shares dt, exp(dt * A), B and C. One thread
// per (image, channel) runs the four directions in lockstep and adds each direction's y into
// the output (zeroed first), which a last pass gates. Each direction's 16 states live in four
// float4 registers. After pruning each image has its own tables, and with DECAY the state
// first decays over the g = gaps[k][s] pruned tokens skipped before step s, as zero-input tokens
// would: h *= exp(g * softplus(2 dt_bias) * A). With UNGATED, sum_k y_k (each clipped at zero
// with UNGATED_CLIP) is also stored, for pruning's importance scores.

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
    // 0: one table for every image; else each image's table size (12 len).
    unsigned table_stride;
    unsigned flags;
    unsigned _pad0;
};

#define DECAY 1u
#define UNGATED 2u
#define UNGATED_CLIP 4u
#define UNGATED_ADD 8u

// #include ssm_inputs
// #include chunked_scan

__device__ __forceinline__ float4 add4(float4 a, float4 b) {
    return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}

__device__ __forceinline__ float4 mul4(float4 a, float4 b) {
    return make_float4(a.x * b.x, a.y * b.y, a.z * b.z, a.w * b.w);
}

__device__ __forceinline__ float4 scale4(float s, float4 v) {
    return make_float4(s * v.x, s * v.y, s * v.z, s * v.w);
}

__device__ __forceinline__ float4 fma4(float4 a, float4 b, float4 c) {
    return make_float4(fmaf(a.x, b.x, c.x), fmaf(a.y, b.y, c.y), fmaf(a.z, b.z, c.z),
                       fmaf(a.w, b.w, c.w));
}

__device__ __forceinline__ float4 exp4(float4 v) {
    return make_float4(expf(v.x), expf(v.y), expf(v.z), expf(v.w));
}

__device__ __forceinline__ float dot4(float4 a, float4 b) {
    return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
}

// One direction's 16 states.
struct State {
    float4 h0, h1, h2, h3;
};

// What the four directions share at one step: dt, exp(dt * A), B (zero past nstate) and C.
struct Shared {
    float dt;
    float4 da0, da1, da2, da3;
    float4 b0, b1, b2, b3;
    float4 c0, c1, c2, c3;
};

// Step s of direction k for channel e of the image whose first row is `base` and table starts
// at `tb`: decay over skipped tokens, update the direction's state and add its y into the
// output at the token it visits.
__device__ __forceinline__ void advance(const Params& p, const float* u, const unsigned* tables,
                                        const float4* dir_b, float* out, float* ungated,
                                        State& st, const Shared& sh, const State& idle, unsigned k,
                                        unsigned s, unsigned base, size_t tb, unsigned e,
                                        float d_skip, bool valid) {
    unsigned pos = base + tables[tb + (size_t)k * p.len + s];
    unsigned dir = tables[tb + (size_t)(4u + k) * p.len + s] * 4u;
    if ((p.flags & DECAY) != 0u) {
        float gap = (float)tables[tb + (size_t)(8u + k) * p.len + s];
        if (gap > 0.0f) {
            st.h0 = mul4(st.h0, exp4(scale4(gap, idle.h0)));
            st.h1 = mul4(st.h1, exp4(scale4(gap, idle.h1)));
            st.h2 = mul4(st.h2, exp4(scale4(gap, idle.h2)));
            st.h3 = mul4(st.h3, exp4(scale4(gap, idle.h3)));
        }
    }
    float ut = u[p.u_offset + (size_t)pos * p.u_stride + e];
    float du = sh.dt * ut;
    // dir_b is zero past nstate, like sh.b*.
    st.h0 = fma4(sh.da0, st.h0, scale4(du, add4(sh.b0, dir_b[dir])));
    st.h1 = fma4(sh.da1, st.h1, scale4(du, add4(sh.b1, dir_b[dir + 1u])));
    st.h2 = fma4(sh.da2, st.h2, scale4(du, add4(sh.b2, dir_b[dir + 2u])));
    st.h3 = fma4(sh.da3, st.h3, scale4(du, add4(sh.b3, dir_b[dir + 3u])));
    float hc = dot4(st.h0, sh.c0) + dot4(st.h1, sh.c1) + dot4(st.h2, sh.c2) + dot4(st.h3, sh.c3);
    float y = fmaf(d_skip, ut, hc);
    if (valid) {
        size_t o = (size_t)pos * p.channels + e;
        out[o] += y;
        if ((p.flags & UNGATED) != 0u) {
            ungated[o] += (p.flags & UNGATED_CLIP) != 0u ? fmaxf(y, 0.0f) : y;
        }
    }
}

// Grid: x = channel blocks of 64, y = image. No thread returns early (ragged channels are not
// stored).
extern "C" __global__ void __launch_bounds__(64) zigzag_scan(const Params p, const float* u,
        const float* delta, const float* bc, const float* ssm, const float* z,
        const unsigned* tables, const float4* dir_b, float* out, float* ungated) {
    unsigned li = threadIdx.x;
    unsigned base = blockIdx.y * p.len;
    size_t tb = (size_t)blockIdx.y * p.table_stride;
    unsigned e_raw = blockIdx.x * 64u + li;
    bool valid = e_raw < p.channels;
    unsigned e = min(e_raw, p.channels - 1u);
    unsigned ns = p.nstate;
    size_t abase = (size_t)e * ns;
    float4 a0 = row4(ssm, ns, abase, 0u);
    float4 a1 = row4(ssm, ns, abase, 4u);
    float4 a2 = row4(ssm, ns, abase, 8u);
    float4 a3 = row4(ssm, ns, abase, 12u);
    float d_skip = ssm[(size_t)p.channels * ns + e];
    float dt_bias = ssm[(size_t)p.channels * ns + p.channels + e];
    // A pruned token's delta: softplus(2 dt_bias).
    float idle_dt = softplus(2.0f * dt_bias);
    State idle = {scale4(idle_dt, a0), scale4(idle_dt, a1), scale4(idle_dt, a2),
                  scale4(idle_dt, a3)};
    if (valid) {
        bool zero_ungated = (p.flags & (UNGATED | UNGATED_ADD)) == UNGATED;
        for (unsigned s = 0u; s < p.len; s++) {
            size_t o = (size_t)(base + s) * p.channels + e;
            out[o] = 0.0f;
            if (zero_ungated) ungated[o] = 0.0f;
        }
    }
    float4 zero4 = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    State zero = {zero4, zero4, zero4, zero4};
    State st0 = zero;
    State st1 = zero;
    State st2 = zero;
    State st3 = zero;
    for (unsigned s = 0u; s < p.len; s++) {
        // delta, B and C at raster position s, for every direction.
        size_t row = base + s;
        float dt = softplus(delta[p.dt_offset + row * p.dt_stride + e] + dt_bias);
        size_t bb = p.b_offset + row * p.bc_stride;
        size_t cb = p.c_offset + row * p.bc_stride;
        Shared sh;
        sh.dt = dt;
        sh.da0 = exp4(scale4(dt, a0));
        sh.da1 = exp4(scale4(dt, a1));
        sh.da2 = exp4(scale4(dt, a2));
        sh.da3 = exp4(scale4(dt, a3));
        // row4 is zero past nstate, which keeps the padded states at zero.
        sh.b0 = row4(bc, ns, bb, 0u);
        sh.b1 = row4(bc, ns, bb, 4u);
        sh.b2 = row4(bc, ns, bb, 8u);
        sh.b3 = row4(bc, ns, bb, 12u);
        sh.c0 = row4(bc, ns, cb, 0u);
        sh.c1 = row4(bc, ns, cb, 4u);
        sh.c2 = row4(bc, ns, cb, 8u);
        sh.c3 = row4(bc, ns, cb, 12u);
        advance(p, u, tables, dir_b, out, ungated, st0, sh, idle, 0u, s, base, tb, e, d_skip,
                valid);
        advance(p, u, tables, dir_b, out, ungated, st1, sh, idle, 1u, s, base, tb, e, d_skip,
                valid);
        advance(p, u, tables, dir_b, out, ungated, st2, sh, idle, 2u, s, base, tb, e, d_skip,
                valid);
        advance(p, u, tables, dir_b, out, ungated, st3, sh, idle, 3u, s, base, tb, e, d_skip,
                valid);
    }
    if (valid) {
        for (unsigned s = 0u; s < p.len; s++) {
            size_t row = base + s;
            float zt = z[p.z_offset + row * p.z_stride + e];
            size_t o = row * p.channels + e;
            out[o] = out[o] * zt / (1.0f + expf(-zt));
        }
    }
}

// The same scan parallel over the steps (include/chunked_scan.cuh): a block per (channel,
// image) scans the four directions one after another, so each direction's outputs are added
// with no other direction writing (a direction visits each kept token once). For prompts on
// the CUDA backend; `zigzag_scan` above runs the directions in lockstep, a thread per channel.
extern "C" __global__ void __launch_bounds__(128) zigzag_scan_chunked(const Params p,
        const float* u, const float* delta, const float* bc, const float* ssm, const float* z,
        const unsigned* tables, const float4* dir_b, float* out, float* ungated) {
    __shared__ ChunkShared sh;
    unsigned tid = threadIdx.x;
    unsigned e = blockIdx.x;
    unsigned base = blockIdx.y * p.len;
    size_t tb = (size_t)blockIdx.y * p.table_stride;
    unsigned ns = p.nstate;
    const float* dir_bs = (const float*)dir_b;
    float d_skip = ssm[(size_t)p.channels * ns + e];
    float dt_bias = ssm[(size_t)p.channels * ns + p.channels + e];
    // A pruned token's delta: softplus(2 dt_bias).
    float idle_dt = softplus(2.0f * dt_bias);
    bool zero_ungated = (p.flags & (UNGATED | UNGATED_ADD)) == UNGATED;
    for (unsigned s = tid; s < p.len; s += CHUNK_THREADS) {
        size_t o = (size_t)(base + s) * p.channels + e;
        out[o] = 0.0f;
        if (zero_ungated) ungated[o] = 0.0f;
    }
    for (unsigned k = 0u; k < 4u; ++k) {
        if (tid < MAX_STATE) sh.carry[tid] = 0.0f;
        __syncthreads();
        for (unsigned c0 = 0u; c0 < p.len; c0 += CHUNK) {
            // This thread's steps: the decay's dt (dt plus the idle dt of the pruned tokens
            // skipped before the step, under DECAY), dt u, u, the move and the token visited.
            float decay_dt[ITEMS], du[ITEMS], ut[ITEMS], y[ITEMS];
            size_t rows[ITEMS], visits[ITEMS];
            unsigned moves[ITEMS];
            bool valid[ITEMS];
#pragma unroll
            for (unsigned i = 0u; i < ITEMS; ++i) {
                unsigned s = c0 + tid * ITEMS + i;
                valid[i] = s < p.len;
                size_t row = base + (valid[i] ? s : 0u);
                rows[i] = row;
                decay_dt[i] = 0.0f;
                du[i] = 0.0f;
                ut[i] = 0.0f;
                y[i] = 0.0f;
                visits[i] = row;
                moves[i] = 0u;
                if (!valid[i]) continue;
                // delta, B and C at raster position s, for every direction.
                float dt = softplus(delta[p.dt_offset + row * p.dt_stride + e] + dt_bias);
                visits[i] = base + tables[tb + (size_t)k * p.len + s];
                moves[i] = tables[tb + (size_t)(4u + k) * p.len + s];
                ut[i] = u[p.u_offset + visits[i] * p.u_stride + e];
                du[i] = dt * ut[i];
                decay_dt[i] = dt;
                if ((p.flags & DECAY) != 0u) {
                    decay_dt[i] += (float)tables[tb + (size_t)(8u + k) * p.len + s] * idle_dt;
                }
            }
            unsigned last_owner = chunk_last_owner(p.len, c0);
            for (unsigned n = 0u; n < ns; ++n) {
                float a_n = ssm[(size_t)e * ns + n];
                float a[ITEMS], h[ITEMS];
#pragma unroll
                for (unsigned i = 0u; i < ITEMS; ++i) {
                    a[i] = valid[i] ? expf(decay_dt[i] * a_n) : 1.0f;
                    float b = bc[p.b_offset + rows[i] * p.bc_stride + n] + dir_bs[moves[i] * 16u + n];
                    h[i] = valid[i] ? du[i] * b : 0.0f;
                }
                scan_chunk_state(&sh, n, a, h, last_owner);
#pragma unroll
                for (unsigned i = 0u; i < ITEMS; ++i) {
                    if (valid[i]) {
                        y[i] = fmaf(h[i], bc[p.c_offset + rows[i] * p.bc_stride + n], y[i]);
                    }
                }
            }
#pragma unroll
            for (unsigned i = 0u; i < ITEMS; ++i) {
                if (!valid[i]) continue;
                float yv = fmaf(d_skip, ut[i], y[i]);
                size_t o = visits[i] * p.channels + e;
                out[o] += yv;
                if ((p.flags & UNGATED) != 0u) {
                    ungated[o] += (p.flags & UNGATED_CLIP) != 0u ? fmaxf(yv, 0.0f) : yv;
                }
            }
            __syncthreads();
        }
    }
    for (unsigned s = tid; s < p.len; s += CHUNK_THREADS) {
        size_t row = base + s;
        float zt = z[p.z_offset + row * p.z_stride + e];
        size_t o = row * p.channels + e;
        out[o] = out[o] * zt / (1.0f + expf(-zt));
    }
}
