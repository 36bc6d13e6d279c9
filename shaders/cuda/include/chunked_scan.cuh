// The token-parallel scan of selective_scan_chunked (scan.cu) and zigzag_scan_chunked
// (zigzag_scan.cu), as mamba_ssm's CUDA kernel does it: a block of 128 threads scans one
// sequence in chunks of 128 * ITEMS steps, each thread owning ITEMS consecutive steps. Per
// state, a step is the affine map h -> a h + b; each thread composes its steps' maps in
// registers, the block scans those compositions (warp shuffles, then the warps' totals), and
// each thread replays its steps from the state its prefix gives. The state between chunks is
// carried in shared memory.

#define CHUNK_THREADS 128u
#define ITEMS 8u
#define CHUNK (CHUNK_THREADS * ITEMS)
#define WARPS (CHUNK_THREADS / 32u)
#define MAX_STATE 16u

// h -> a h + b applied to h, giving what the sequential scan gives where a composed map and
// the step-by-step recurrence part ways in f32: a zero state or a zero (forgetting) decay
// contributes nothing, and an infinite state stays so (finite steps never bring it back; a
// composed b can be the opposite infinity, from its own overflow, and their sum NaN).
__device__ __forceinline__ float apply_map(float a, float b, float h) {
    if (h == 0.0f || a == 0.0f) return b;
    float ah = a * h;
    return isinf(ah) ? ah : fmaf(a, h, b);
}

// The product of decays: a step that zeroes the state forgets it for good, however large a
// later decay (0 * inf would be NaN where the sequential scan has no trace of the state).
__device__ __forceinline__ float chain_decay(float a, float later) {
    return a == 0.0f || later == 0.0f ? 0.0f : a * later;
}

// What a block's scan shares: the carried states and the warps' totals.
struct ChunkShared {
    float carry[MAX_STATE];
    float warp_a[WARPS];
    float warp_b[WARPS];
};

// One state n over one chunk: this thread's steps are h -> a[i] h + b[i] (the identity past
// the sequence's end); on return b[i] holds the state after step i, and the carry the state
// after the chunk's last step (in thread `last_owner`). Every thread of the block calls it.
__device__ __forceinline__ void scan_chunk_state(ChunkShared* sh, unsigned n, const float* a,
                                                 float* b, unsigned last_owner) {
    unsigned tid = threadIdx.x;
    unsigned lane = tid & 31u;
    unsigned warp = tid >> 5u;
    // This thread's steps composed: h -> ta h + tb.
    float ta = 1.0f, tb = 0.0f;
#pragma unroll
    for (unsigned i = 0u; i < ITEMS; ++i) {
        tb = apply_map(a[i], b[i], tb);
        ta = chain_decay(ta, a[i]);
    }
    // Inclusive scan over the warp's lanes: each lane's map after all lanes before it.
#pragma unroll
    for (unsigned d = 1u; d < 32u; d <<= 1u) {
        float pa = __shfl_up_sync(0xffffffffu, ta, d);
        float pb = __shfl_up_sync(0xffffffffu, tb, d);
        if (lane >= d) {
            tb = apply_map(ta, tb, pb);
            ta = chain_decay(pa, ta);
        }
    }
    if (lane == 31u) {
        sh->warp_a[warp] = ta;
        sh->warp_b[warp] = tb;
    }
    __syncthreads();
    // The state entering this thread's first step: the carry through the earlier warps, then
    // the earlier lanes of its own.
    float h = sh->carry[n];
    for (unsigned w = 0u; w < warp; ++w) h = apply_map(sh->warp_a[w], sh->warp_b[w], h);
    float ea = __shfl_up_sync(0xffffffffu, ta, 1u);
    float eb = __shfl_up_sync(0xffffffffu, tb, 1u);
    if (lane > 0u) h = apply_map(ea, eb, h);
#pragma unroll
    for (unsigned i = 0u; i < ITEMS; ++i) {
        h = apply_map(a[i], b[i], h);
        b[i] = h;
    }
    // Everyone has read the carry and the warp totals: the thread of the chunk's last step,
    // whose state was replayed step by step, carries it on.
    __syncthreads();
    if (tid == last_owner) sh->carry[n] = h;
}

// The thread that owns the last step of the chunk starting at step c0 of `len`.
__device__ __forceinline__ unsigned chunk_last_owner(unsigned len, unsigned c0) {
    return (min(len - c0, CHUNK) - 1u) / ITEMS;
}
