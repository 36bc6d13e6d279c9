// Top-k token selection for pruning, one block per image; the CUDA twin of topk.wgsl:
//   out[b, :] = the `keep` best tokens of scores[b, :] (a protected class token always among
//               them, at index (keep - 1) / 2), in original order or in score order; or, balanced,
//               the best half on each side of the class token, in original order.
// "Best" is a strict total order: higher score first, ties to the lower index, NaN below every
// number (-0 and +0 are equal). Scores are read as bits and mapped to u32 keys that compare as
// the scores do, so no float compare (or flush-to-zero of subnormals) is involved.
//
// A token's rank is how many tokens beat it: O(N^2) compares, which for the ~200 tokens of an
// image cost less than a sort's barriers. Each thread ranks four tokens at once against keys
// that pass through shared memory four to a uint4. The m = keep - (class token) best are chosen.
// In score order a chosen token of rank r goes straight to slot r; in original order it sets its
// bit in a shared bitmask, and its slot is the number of bits before it.
// With score_mode > 0 the block first scores its image's tokens itself, from their rows of x
// (mode score_mode - 1 of include/row_score.cuh), and stores the scores.

struct Params {
    unsigned batch;
    unsigned len;
    unsigned keep;
    // Position of the protected class token, or >= len for none.
    unsigned cls;
    // 0: original order, 1: score order, 2: original order balanced around the class token.
    unsigned order;
    // 0: scores given; else 1 + the row_score mode that computes them from x.
    unsigned score_mode;
    unsigned channels;
    unsigned seed;
};

// #include row_score

#define WG 64u
// Tokens a thread ranks at a time, and keys per tile element.
#define LANES 4u
#define MAX_LEN 4096u
#define ORDER_SCORE 1u
#define ORDER_BALANCED 2u

// Larger key = better score. NaN maps to 1, below -inf (0x007fffff); the class token and
// positions past the end to 0: they beat no token, and the class token is never among the m
// best (m <= len - 1 with a class token).
__device__ __forceinline__ unsigned key_of(const Params& p, const unsigned* scores, unsigned base,
                                           unsigned j) {
    if (j == p.cls || j >= p.len) return 0u;
    unsigned bits = scores[base + j];
    unsigned magnitude = bits & 0x7fffffffu;
    if (magnitude > 0x7f800000u) return 1u;
    if (magnitude == 0u) return 0x80000000u;
    return bits >= 0x80000000u ? ~bits : bits | 0x80000000u;
}

// 1 where token (ki, i) ranks before token (kj, j) (higher key, or the same and a lower index).
// Balanced, only tokens on the same side of the class token compete.
__device__ __forceinline__ unsigned beats(const Params& p, unsigned ki, unsigned i, unsigned kj,
                                          unsigned j) {
    bool better = ki > kj || (ki == kj && i < j);
    bool same_side = (i < p.cls) == (j < p.cls);
    return (unsigned)(better && (same_side || p.order != ORDER_BALANCED));
}

// Output slot of the chosen token of rank `r` among the chosen: the class token takes slot
// half = m / 2, the ones from there on move up by one.
__device__ __forceinline__ unsigned slot(unsigned r, unsigned half, bool has_cls) {
    return r + (unsigned)(has_cls && r >= half);
}

extern "C" __global__ void __launch_bounds__(64) topk(const Params p, unsigned* scores, unsigned* out,
                                                      const float* x) {
    __shared__ uint4 tile[WG];
    // One bit per token; the host refuses len > MAX_LEN.
    __shared__ unsigned chosen[MAX_LEN / 32u];
    unsigned li = threadIdx.x;
    unsigned b = blockIdx.x + blockIdx.y * gridDim.x;
    // Whole blocks leave together, so the barriers stay uniform.
    if (b >= p.batch) return;
    unsigned base = b * p.len;
    unsigned out_base = b * p.keep;
    bool has_cls = p.cls < p.len;
    // Chosen tokens besides the class token.
    unsigned m = p.keep - (unsigned)has_cls;
    unsigned half = m / 2u;
    // Cleared before the first barrier below, which every thread passes before any atomicOr
    // (len >= keep >= 1, so the loops below run).
    for (unsigned w = li; w < MAX_LEN / 32u; w += WG) chosen[w] = 0u;
    if (p.score_mode != 0u) {
        for (unsigned j = li; j < p.len; j += WG)
            scores[base + j] = __float_as_uint(row_score(x, base + j, p.channels, p.score_mode - 1u, p.seed));
        __syncthreads();
    }

    for (unsigned q = 0u; q < p.len; q += WG * LANES) {
        unsigned first = q + LANES * li;
        unsigned kj[LANES];
        unsigned rank[LANES];
        for (unsigned c = 0u; c < LANES; c++) {
            kj[c] = key_of(p, scores, base, first + c);
            rank[c] = 0u;
        }
        for (unsigned start = 0u; start < p.len; start += WG * LANES) {
            __syncthreads();
            unsigned t = start + LANES * li;
            tile[li] = make_uint4(key_of(p, scores, base, t), key_of(p, scores, base, t + 1u),
                                  key_of(p, scores, base, t + 2u), key_of(p, scores, base, t + 3u));
            __syncthreads();
            unsigned quads = min(WG, (p.len - start + 3u) / 4u);
            for (unsigned s = 0u; s < quads; s++) {
                uint4 ki = tile[s];
                unsigned i = start + 4u * s;
                for (unsigned c = 0u; c < LANES; c++) {
                    unsigned j = first + c;
                    rank[c] += beats(p, ki.x, i, kj[c], j) + beats(p, ki.y, i + 1u, kj[c], j) +
                               beats(p, ki.z, i + 2u, kj[c], j) + beats(p, ki.w, i + 3u, kj[c], j);
                }
            }
        }
        for (unsigned c = 0u; c < LANES; c++) {
            unsigned token = first + c;
            // Balanced: the best `half` before the class token and the best m - half after
            // it, so in original order the class token sits at slot half, among its neighbours.
            unsigned quota =
                p.order == ORDER_BALANCED && has_cls ? (token < p.cls ? half : m - half) : m;
            if (token < p.len && rank[c] < quota) {
                if (p.order == ORDER_SCORE) {
                    out[out_base + slot(rank[c], half, has_cls)] = token;
                } else {
                    atomicOr(&chosen[token / 32u], 1u << (token % 32u));
                }
            }
        }
    }

    if (p.order != ORDER_SCORE) {
        __syncthreads();
        for (unsigned token = li; token < p.len; token += WG) {
            unsigned w = token / 32u;
            unsigned bit = 1u << (token % 32u);
            unsigned word = chosen[w];
            if ((word & bit) != 0u) {
                unsigned before = __popc(word & (bit - 1u));
                for (unsigned v = 0u; v < w; v++) before += __popc(chosen[v]);
                out[out_base + slot(before, half, has_cls)] = token;
            }
        }
    }
    if (has_cls && li == 0u) out[out_base + half] = p.cls;
}
