// Lets g++ compile the CUDA C kernels of this folder into a CPU library, so machines without a
// GPU run them (tests, CI). Each CUDA thread of a block is a fiber (ucontext) on the calling
// OS thread: a fiber runs until __syncthreads() or its end, and a block's barrier opens once
// every live fiber has reached it. Blocks run one after another, so `__shared__` variables are
// per-OS-thread statics. Deterministic, and orders of magnitude slower than a GPU. The orders
// (blocks backwards, fibers alternating) are chosen to expose races a fixed order would hide.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <tuple>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static thread_local

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

struct float4 { float x, y, z, w; };
struct uint4 { unsigned x, y, z, w; };
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

// The CUDA intrinsics the kernels use. CUDA's overloaded min/max device functions:
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }

inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
inline int __popc(unsigned v) { return __builtin_popcount(v); }

// Fibers of a block share one OS thread, so a plain read-modify-write is atomic.
inline unsigned atomicOr(unsigned* a, unsigned v) { unsigned o = *a; *a = o | v; return o; }

namespace ssmgpu_host {

constexpr size_t STACK_BYTES = 256 << 10;
constexpr unsigned MAX_THREADS = 1024;

// A fiber starts through ucontext (makecontext/setcontext, once per fiber and block); every
// switch after that is a GCC __builtin_setjmp/__builtin_longjmp pair, which saves no signal
// mask: swapcontext's system call per switch made barrier-heavy kernels 10x slower.
using JumpBuffer = void* [5];

struct Block {
    ucontext_t fibers[MAX_THREADS];
    JumpBuffer resume[MAX_THREADS];
    JumpBuffer scheduler;
    bool started[MAX_THREADS];
    bool done[MAX_THREADS];
    // Warp shuffles' exchange (see __shfl_up_sync).
    float shuffle_slots[2][MAX_THREADS];
    unsigned shuffle_turn[MAX_THREADS];
    unsigned current = 0;
    void (*body)(void*) = nullptr;
    void* args = nullptr;
    char* stacks = nullptr;
};
inline thread_local Block* block = nullptr;

// GCC's rule: a function calling __builtin_setjmp may not call __builtin_longjmp itself.
__attribute__((noinline)) inline void jump(JumpBuffer& to) { __builtin_longjmp(to, 1); }

inline dim3 thread_of(unsigned t) {
    return {t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y)};
}

inline void fiber_main() {
    Block* b = block;
    b->body(b->args);
    b->done[b->current] = true;
    jump(b->scheduler);
}

// Start fiber t, or resume it where it yielded; returns when it yields or ends.
__attribute__((noinline)) inline void enter(Block* b, unsigned t) {
    if (__builtin_setjmp(b->scheduler) != 0) return;
    if (b->started[t]) jump(b->resume[t]);
    b->started[t] = true;
    setcontext(&b->fibers[t]);
}

// Run one block: every fiber from its start to its end, in barrier-separated rounds.
inline void run_block(unsigned threads) {
    Block* b = block;
    for (unsigned t = 0; t < threads; ++t) {
        getcontext(&b->fibers[t]);
        b->fibers[t].uc_stack.ss_sp = b->stacks + (size_t)t * STACK_BYTES;
        b->fibers[t].uc_stack.ss_size = STACK_BYTES;
        b->fibers[t].uc_link = nullptr;
        makecontext(&b->fibers[t], fiber_main, 0);
        b->started[t] = false;
        b->done[t] = false;
        b->shuffle_turn[t] = 0;
    }
    // Rounds alternate the fibers' order, so that a kernel whose threads race (one writes
    // what another reads with no barrier between) gives a different answer here as on a GPU.
    unsigned live = threads;
    for (unsigned round = 0; live > 0; ++round) {
        for (unsigned i = 0; i < threads; ++i) {
            unsigned t = round % 2 == 0 ? i : threads - 1 - i;
            if (b->done[t]) continue;
            b->current = t;
            threadIdx = thread_of(t);
            enter(b, t);
            if (b->done[t]) --live;
        }
    }
}

}  // namespace ssmgpu_host

__attribute__((noinline)) inline void __syncthreads() {
    ssmgpu_host::Block* b = ssmgpu_host::block;
    if (__builtin_setjmp(b->resume[b->current]) == 0) ssmgpu_host::jump(b->scheduler);
}

// Warp shuffles over a block-wide exchange: every thread of the block must make the same
// calls (the scans' are uniform), since each is a barrier here. Two slot arrays, used in turn,
// need one barrier per shuffle: a thread can only overwrite a slot array after the next
// shuffle's barrier, which every thread reaches after reading it.
inline unsigned linear_thread() {
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}
inline float __shfl_up_sync(unsigned, float v, unsigned delta) {
    ssmgpu_host::Block* b = ssmgpu_host::block;
    unsigned t = linear_thread();
    float* slots = b->shuffle_slots[b->shuffle_turn[t]++ % 2u];
    slots[t] = v;
    __syncthreads();
    return t % 32u >= delta ? slots[t - delta] : v;
}

namespace ssmgpu_host {

template <class P, class... B, size_t... I>
void call(void (*kernel)(P, B...), const P& p, void* const* buffers, std::index_sequence<I...>) {
    kernel(p, static_cast<B>(buffers[I])...);
}

// Launch `kernel` over `grid` blocks of `block_dims` threads: `params` is the by-value
// parameter struct's bytes, `buffers` the device (here: host) pointers in order.
template <class P, class... B>
int emulate(void (*kernel)(P, B...), const unsigned* grid, const unsigned* block_dims,
            const void* params, void* const* buffers) {
    using Params = std::remove_cv_t<P>;
    Params p;
    memcpy(&p, params, sizeof p);
    unsigned threads = block_dims[0] * block_dims[1] * block_dims[2];
    if (threads == 0 || threads > MAX_THREADS) return 1;
    static thread_local Block state;
    static thread_local char* stacks = nullptr;
    if (!stacks) {
        void* m = mmap(nullptr, STACK_BYTES * MAX_THREADS, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) return 2;
        stacks = static_cast<char*>(m);
    }
    struct Args {
        void (*kernel)(P, B...);
        const Params* p;
        void* const* buffers;
    } args{kernel, &p, buffers};
    state.stacks = stacks;
    state.args = &args;
    state.body = [](void* a) {
        auto* args = static_cast<Args*>(a);
        call(args->kernel, *args->p, args->buffers, std::index_sequence_for<B...>{});
    };
    Block* outer = block;
    block = &state;
    blockDim = {block_dims[0], block_dims[1], block_dims[2]};
    gridDim = {grid[0], grid[1], grid[2]};
    // Blocks run last to first: a kernel whose blocks depend on each other's writes (which a
    // GPU runs in no set order) fails here rather than passing by luck of the order.
    for (unsigned z = grid[2]; z-- > 0;)
        for (unsigned y = grid[1]; y-- > 0;)
            for (unsigned x = grid[0]; x-- > 0;) {
                blockIdx = {x, y, z};
                run_block(threads);
            }
    block = outer;
    return 0;
}

}  // namespace ssmgpu_host

// One C symbol per kernel, `ssmgpu_launch_<name>`, that the runtime looks up.
#define SSMGPU_HOST_ENTRY(name)                                                             \
    extern "C" int ssmgpu_launch_##name(const unsigned* grid, const unsigned* block,        \
                                        const void* params, void* const* buffers) {         \
        return ssmgpu_host::emulate(name, grid, block, params, buffers);                    \
    }
