// The token grid after pruning; the CUDA twin of kept_grid.wgsl. Per image, from the position
// map (the original raster index of each kept token):
//   slots[b, q]  = the sequence index of the kept token at grid cell q, or NONE if pruned;
//   tables[b]    = [orders (4 x keep) | directions (4 x keep) | gaps (4 x keep)], as
//                  ScanOrders::table lays them out.
// Over the grid (BY_SEQUENCE unset), scan k walks the unpruned scan's table (`grid`) and visits
// the kept tokens in that order, keeping its move codes; a gap is how many pruned cells the walk
// passed since the previous kept token. With BY_SEQUENCE (the `score` baseline), scans 0 and 2
// walk the sequence forwards, 1 and 3 backwards, with move codes from the positions, no gaps.
// One block per image: all threads clear and fill the slot map, then one thread per scan walks it.

struct Params {
    unsigned len;
    unsigned keep;
    unsigned width;
    unsigned flags;
};

#define BY_SEQUENCE 1u
#define NONE 0xffffffffu
#define START 0u
#define RIGHT 1u
#define LEFT 2u
#define UP 3u
#define DOWN 4u

// The move from cell a to cell b, as ScanOrders' `moves` names it.
__device__ __forceinline__ unsigned move_code(const Params& p, unsigned a, unsigned b) {
    unsigned ra = a / p.width;
    unsigned rb = b / p.width;
    if (ra == rb) return b % p.width > a % p.width ? RIGHT : LEFT;
    return rb > ra ? DOWN : UP;
}

extern "C" __global__ void __launch_bounds__(64) kept_grid(const Params p, const unsigned* positions,
                                     const unsigned* grid, unsigned* slots, unsigned* tables) {
    unsigned li = threadIdx.x;
    unsigned b = blockIdx.x;
    unsigned sb = b * p.len;
    unsigned pb = b * p.keep;
    for (unsigned q = li; q < p.len; q += 64u) slots[sb + q] = NONE;
    __syncthreads();
    // Positions are distinct cells below len by contract; one past the grid is dropped here
    // (WGSL would clamp it into the buffer).
    for (unsigned i = li; i < p.keep; i += 64u) {
        unsigned pos = positions[pb + i];
        if (pos < p.len) slots[sb + pos] = i;
    }
    __syncthreads();
    if (li >= 4u) return;
    unsigned k = li;
    unsigned tb = b * 12u * p.keep;
    unsigned orders = tb + k * p.keep;
    unsigned dirs = tb + (4u + k) * p.keep;
    unsigned gaps = tb + (8u + k) * p.keep;
    if ((p.flags & BY_SEQUENCE) != 0u) {
        unsigned prev = 0u;
        for (unsigned s = 0u; s < p.keep; s++) {
            unsigned i = k % 2u == 1u ? p.keep - 1u - s : s;
            unsigned pos = positions[pb + i];
            tables[orders + s] = i;
            tables[dirs + s] = s == 0u ? START : move_code(p, prev, pos);
            tables[gaps + s] = 0u;
            prev = pos;
        }
        return;
    }
    // `grid` is ScanOrders' table of this very grid: its cells are below len.
    unsigned s = 0u;
    unsigned last = 0u;
    for (unsigned r = 0u; r < p.len; r++) {
        unsigned i = slots[sb + grid[k * p.len + r]];
        if (i != NONE) {
            tables[orders + s] = i;
            tables[dirs + s] = grid[(4u + k) * p.len + r];
            tables[gaps + s] = s == 0u ? 0u : r - last - 1u;
            last = r;
            s++;
        }
    }
}
