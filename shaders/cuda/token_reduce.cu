// Token reduction for SSM language models (ALGORITHMS.md 5.3); the CUDA twin of
// token_reduce.wgsl, whose header describes the passes: per sequence b of `len` tokens, remove
// `remove` tokens by pruning or merging them into a similar kept token, in both the hidden-state
// and the residual stream with one set of indices.
//   utr_roles:     split into A (removal candidates) and B (kept, merge targets); the last
//                  token is always B.
//   utr_lists:     each sequence's A and B tokens in order, each token's slot in its list and
//                  its inverse feature norm (the host then computes sims = A · Bᵀ).
//   utr_code_sort: the authors' code (ToR_SSM): each channel sorted over the tokens.
//   utr_match:     for each A token, its most cosine-similar B token and that similarity.
//   utr_select:    the `remove` A tokens with the highest key, numbered 0.. by key order.
//   utr_plan:      kept tokens in order, and per kept token a CSR list of the selected tokens
//                  that merge into it (hidden-stream sources first, then residual-only).
//   utr_merge:     out[slot] = mean of the kept token and its merged sources, per stream.
// Everything is O(len^2) per sequence with one thread per token and no block sync. The per-token
// passes run one sequence per block row (blockIdx.y), launched as [len / 64, batch] blocks.

struct Params {
    unsigned batch;
    unsigned len;
    unsigned remove;
    unsigned dim;
    unsigned split;
    unsigned hidden_pruned;
    unsigned residual_pruned;
    // Kept tokens per sequence (len - remove).
    unsigned keep;
    // A and B tokens per sequence (the same in every sequence).
    unsigned n_a;
    unsigned n_b;
    unsigned _pad0;
    unsigned _pad1;
};

// Per token, `info` holds 4 words: role, best match (NONE if none), key (f32 bits), selection
// rank (NONE). Per kept slot, `plan` holds 4: token, CSR offset, hidden-stream count,
// residual-stream count.
#define NONE 0xffffffffu
#define ROLE_A 0u
#define ROLE_B 1u
#define SPLIT_SCORE 0u
#define SPLIT_ALTERNATE 1u
#define SPLIT_CODE 3u

// Score of token j of the sequence at base; the last token ranks above everything.
__device__ __forceinline__ float score_key(const Params& p, const float* scores, unsigned base,
                                           unsigned j) {
    return j == p.len - 1u ? 3.4e38f : scores[base + j];
}

extern "C" __global__ void __launch_bounds__(64) utr_roles(const Params p, const float* scores, unsigned* info) {
    unsigned i = blockIdx.x * 64u + threadIdx.x;
    if (i >= p.len) return;
    unsigned base = blockIdx.y * p.len;
    unsigned t = base + i;
    bool last = i == p.len - 1u;
    unsigned role;
    float key = -3.4e38f;
    if (p.split == SPLIT_SCORE) {
        // Rank = tokens that beat this one (higher score, ties to the lower index).
        float s = score_key(p, scores, base, i);
        unsigned rank = 0u;
        for (unsigned j = 0u; j < p.len; j++) {
            float o = score_key(p, scores, base, j);
            rank += (unsigned)(o > s || (o == s && j < i));
        }
        role = rank >= p.len - p.len / 2u ? ROLE_A : ROLE_B;
    } else if (p.split == SPLIT_ALTERNATE || p.split == SPLIT_CODE) {
        role = i % 2u == 0u && !last ? ROLE_A : ROLE_B;
    } else {
        // Pruning only: every token but the last is a candidate, the least important first.
        role = last ? ROLE_B : ROLE_A;
        key = -scores[t];
    }
    info[4u * t] = role;
    info[4u * t + 1u] = NONE;
    info[4u * t + 2u] = __float_as_uint(key);
    info[4u * t + 3u] = NONE;
}

// Feature c of token t; the authors' code compares clipped features (max(x, 0)).
__device__ __forceinline__ float feature(const Params& p, const float* feat, unsigned t,
                                         unsigned c) {
    float v = feat[t * p.dim + c];
    return p.split == SPLIT_CODE ? fmaxf(v, 0.0f) : v;
}

// 1 / |feature row t|, 0 for a zero row (its similarity to anything is then 0).
__device__ __forceinline__ float inverse_norm(const Params& p, const float* feat, unsigned t) {
    float acc = 0.0f;
    for (unsigned c = 0u; c < p.dim; c++) {
        float v = feature(p, feat, t, c);
        acc += v * v;
    }
    return acc > 0.0f ? 1.0f / sqrtf(acc) : 0.0f;
}

// Per sequence, its A tokens a_idx [B, n_a] and B tokens b_idx [B, n_b] in order; per token,
// its slot in its list and 1 / |feature row|.
extern "C" __global__ void __launch_bounds__(64) utr_lists(const Params p, const float* feat, unsigned* info,
                                     unsigned* b_idx, float* inv_norms, unsigned* slots,
                                     unsigned* a_idx) {
    unsigned i = blockIdx.x * 64u + threadIdx.x;
    if (i >= p.len) return;
    unsigned base = blockIdx.y * p.len;
    unsigned t = base + i;
    inv_norms[t] = inverse_norm(p, feat, t);
    unsigned role = info[4u * t];
    unsigned slot = 0u;
    for (unsigned j = 0u; j < i; j++) slot += (unsigned)(info[4u * (base + j)] == role);
    slots[t] = slot;
    // The lists hold exactly n_a and n_b tokens unless NaN scores broke the split's ranks:
    // what would overflow into the next sequence is dropped.
    if (role == ROLE_A) {
        if (slot < p.n_a) a_idx[blockIdx.y * p.n_a + slot] = i;
    } else {
        if (slot < p.n_b) b_idx[blockIdx.y * p.n_b + slot] = i;
    }
}

// A · Bᵀ of the gathered feature rows, sims [B * n_a, B * n_b] (only each sequence's own block
// read).
extern "C" __global__ void __launch_bounds__(64) utr_match(const Params p, const float* sims, unsigned* info,
                                     const unsigned* b_idx_in, const float* inv_norms_in,
                                     const unsigned* slots_in) {
    unsigned i = blockIdx.x * 64u + threadIdx.x;
    unsigned base = blockIdx.y * p.len;
    unsigned t = base + i;
    if (i >= p.len || info[4u * t] != ROLE_A) return;
    unsigned b = blockIdx.y;
    // The code's similarity rows are order statistics (already normalised): A row i stands for
    // token 2i and B row k for token 2k + 1, as its positional ToMe indexing maps them. Rows are
    // elementwise non-increasing and non-negative, so every A row's best match is B row 0
    // (token 1) and the similarity falls with i: the code removes the first even positions into
    // token 1, and its shuffle of targets against sources changes nothing.
    bool code = p.split == SPLIT_CODE;
    unsigned rows_a = code ? p.len - p.len / 2u : p.n_a;
    unsigned cols_b = code ? p.len / 2u : p.n_b;
    unsigned row = (b * rows_a + slots_in[t]) * (p.batch * cols_b) + b * cols_b;
    float inv_t = inv_norms_in[t];
    unsigned best = NONE;
    float best_sim = -3.4e38f;
    for (unsigned k = 0u; k < cols_b; k++) {
        unsigned j = code ? 2u * k + 1u : b_idx_in[b * p.n_b + k];
        float scale = code ? 1.0f : inv_t * inv_norms_in[base + j];
        float sim = sims[row + k] * scale;
        if (sim > best_sim) {
            best = j;
            best_sim = sim;
        }
    }
    info[4u * t + 1u] = best;
    info[4u * t + 2u] = __float_as_uint(best_sim);
}

// The authors' code: normalise the clipped features per token, then sort each channel over the
// tokens independently (descending); the first len/2 rank rows go to B, the rest to A. One
// thread per (token, channel) counts the tokens that beat it in its channel.
extern "C" __global__ void __launch_bounds__(64) utr_code_sort(const Params p, const float* feat,
                                         const float* inv_norms_code, float* sorted_a,
                                         float* sorted_b) {
    unsigned e = blockIdx.x * 64u + threadIdx.x;
    if (e >= p.len * p.dim) return;
    unsigned i = e / p.dim;
    unsigned c = e % p.dim;
    unsigned base = blockIdx.y * p.len;
    float v = feature(p, feat, base + i, c) * inv_norms_code[base + i];
    unsigned rank = 0u;
    for (unsigned j = 0u; j < p.len; j++) {
        float o = feature(p, feat, base + j, c) * inv_norms_code[base + j];
        rank += (unsigned)(o > v || (o == v && j < i));
    }
    unsigned mid = p.len / 2u;
    if (rank < mid) {
        sorted_b[(blockIdx.y * mid + rank) * p.dim + c] = v;
    } else {
        sorted_a[(blockIdx.y * (p.len - mid) + rank - mid) * p.dim + c] = v;
    }
}

extern "C" __global__ void __launch_bounds__(64) utr_select(const Params p, unsigned* info_sel) {
    unsigned i = blockIdx.x * 64u + threadIdx.x;
    unsigned base = blockIdx.y * p.len;
    unsigned t = base + i;
    if (i >= p.len || info_sel[4u * t] != ROLE_A) return;
    float k = __uint_as_float(info_sel[4u * t + 2u]);
    unsigned rank = 0u;
    for (unsigned j = 0u; j < p.len; j++) {
        unsigned u = base + j;
        if (info_sel[4u * u] == ROLE_A) {
            float o = __uint_as_float(info_sel[4u * u + 2u]);
            rank += (unsigned)(o > k || (o == k && j < i));
        }
    }
    if (rank < p.remove) info_sel[4u * t + 3u] = rank;
}

__device__ __forceinline__ unsigned sel_of(const unsigned* info_in, unsigned u) {
    return info_in[4u * u + 3u];
}

__device__ __forceinline__ unsigned target_of(const unsigned* info_in, unsigned u) {
    return info_in[4u * u + 1u];
}

// Selected token u merges into a kept token in the residual stream (and in the hidden stream,
// which prunes at least as many, when sel >= hidden_pruned).
__device__ __forceinline__ bool merges_residual(const Params& p, const unsigned* info_in,
                                                unsigned u) {
    unsigned s = sel_of(info_in, u);
    return s != NONE && s >= p.residual_pruned && target_of(info_in, u) != NONE;
}

__device__ __forceinline__ bool merges_hidden(const Params& p, const unsigned* info_in,
                                              unsigned u) {
    return merges_residual(p, info_in, u) && sel_of(info_in, u) >= p.hidden_pruned;
}

extern "C" __global__ void __launch_bounds__(64) utr_plan(const Params p, const unsigned* info_in, unsigned* plan,
                                    unsigned* srcs) {
    unsigned i = blockIdx.x * 64u + threadIdx.x;
    if (i >= p.len) return;
    unsigned b = blockIdx.y;
    unsigned base = b * p.len;
    unsigned t = base + i;
    // The CSR list of kept token k starts after the sources of every kept token before it.
    unsigned dest = i;
    if (sel_of(info_in, t) != NONE) {
        if (!merges_residual(p, info_in, t)) return;
        dest = target_of(info_in, t);
    }
    unsigned offset = 0u;
    unsigned slot = 0u;
    unsigned count_h = 0u;
    unsigned count_r = 0u;
    unsigned before_h = 0u;
    unsigned before_r = 0u;
    for (unsigned j = 0u; j < p.len; j++) {
        unsigned u = base + j;
        slot += (unsigned)(j < i && sel_of(info_in, u) == NONE);
        if (merges_residual(p, info_in, u)) {
            unsigned into = target_of(info_in, u);
            offset += (unsigned)(into < dest);
            if (into == dest) {
                bool h = merges_hidden(p, info_in, u);
                count_h += (unsigned)h;
                count_r += 1u;
                before_h += (unsigned)(h && j < i);
                before_r += (unsigned)(!h && j < i);
            }
        }
    }
    if (sel_of(info_in, t) == NONE) {
        // keep slots exactly unless NaN keys broke the selection's ranks: what would overflow
        // into the next sequence is dropped.
        if (slot < p.keep) {
            unsigned s = 4u * (b * p.keep + slot);
            plan[s] = i;
            plan[s + 1u] = offset;
            plan[s + 2u] = count_h;
            plan[s + 3u] = count_r;
        }
    } else {
        // Hidden-stream sources first, then the residual-only ones.
        unsigned within = merges_hidden(p, info_in, t) ? before_h : count_h + before_r;
        srcs[base + offset + within] = i;
    }
}

// NaN keys can select more than `remove` tokens and leave plan rows unwritten; what utr_merge
// reads through them is kept inside the sequence (min with len - 1), as WGSL's clamping keeps
// it inside the buffer. Valid rows and sources are below len, which this leaves unchanged.

// Mean of the kept token and its first `count` sources in channel c of stream x.
__device__ __forceinline__ float merged(const Params& p, const unsigned* plan_in,
                                        const unsigned* srcs_in, const float* x, unsigned base,
                                        unsigned s, unsigned count, unsigned c) {
    unsigned token = min(plan_in[s], p.len - 1u);
    unsigned first = plan_in[s + 1u];
    float acc = x[(base + token) * p.dim + c];
    for (unsigned k = 0u; k < count && first + k < p.len; k++) {
        unsigned src = base + min(srcs_in[base + first + k], p.len - 1u);
        acc += x[src * p.dim + c];
    }
    return acc / (float)(1u + count);
}

// The authors' hidden-stream hybrid (bipartite_hybrid_pure): in channel c a source counts only
// if its value is among the remove/2 largest of all removed tokens in that channel (merged
// there, pruned elsewhere); the divisor counts the sources among the first remove/2 removed
// tokens by position. All removed tokens of the sequence are its CSR entries when none is
// pruned in the residual stream; otherwise the entries past the written ones are stale, and
// those out of range are skipped.
__device__ __forceinline__ float merged_code(const Params& p, const unsigned* plan_in,
                                             const unsigned* srcs_in, const float* x0,
                                             unsigned base, unsigned s, unsigned count,
                                             unsigned c) {
    unsigned token = min(plan_in[s], p.len - 1u);
    unsigned first = plan_in[s + 1u];
    unsigned half = p.remove / 2u;
    float acc = x0[(base + token) * p.dim + c];
    unsigned size = 1u;
    for (unsigned k = 0u; k < count && first + k < p.len; k++) {
        unsigned src = min(srcs_in[base + first + k], p.len - 1u);
        float v = x0[(base + src) * p.dim + c];
        unsigned channel_rank = 0u;
        unsigned position_rank = 0u;
        for (unsigned m = 0u; m < p.remove; m++) {
            unsigned other = srcs_in[base + m];
            if (other >= p.len) continue;
            float o = x0[(base + other) * p.dim + c];
            channel_rank += (unsigned)(o > v || (o == v && other < src));
            position_rank += (unsigned)(other < src);
        }
        acc += channel_rank < half ? v : 0.0f;
        size += (unsigned)(position_rank < half);
    }
    return acc / (float)size;
}

extern "C" __global__ void __launch_bounds__(64) utr_merge(const Params p, const unsigned* plan_in,
                                     const unsigned* srcs_in, const float* x0, const float* x1,
                                     const unsigned* pos_in, float* out0, float* out1,
                                     unsigned* pos_out) {
    unsigned e = (blockIdx.x + blockIdx.y * gridDim.x) * 64u + threadIdx.x;
    if (e >= p.batch * p.keep * p.dim) return;
    unsigned row = e / p.dim;
    unsigned c = e % p.dim;
    unsigned base = row / p.keep * p.len;
    unsigned s = 4u * row;
    if (p.split == SPLIT_CODE) {
        out0[e] = merged_code(p, plan_in, srcs_in, x0, base, s, plan_in[s + 2u], c);
    } else {
        out0[e] = merged(p, plan_in, srcs_in, x0, base, s, plan_in[s + 2u], c);
    }
    out1[e] = merged(p, plan_in, srcs_in, x1, base, s, plan_in[s + 3u], c);
    if (c == 0u) pos_out[row] = pos_in[base + min(plan_in[s], p.len - 1u)];
}
