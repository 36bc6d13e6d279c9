// The token grid after pruning: for each image, where its kept tokens sit on the grid and the
// four PlainMamba scans over them, built from the position map (the original raster index of
// each kept token, ascending unless the tokens are kept in score order).
//   slots[b, q]  = the sequence index of the kept token at grid cell q, or NONE if pruned;
//   tables[b]    = [orders (4 x keep) | directions (4 x keep) | gaps (4 x keep)], as
//                  ScanOrders::table lays them out.
// Over the grid (BY_SEQUENCE unset), scan k walks the unpruned scan's table (`grid`: the
// ScanOrders table of the whole grid) and visits the kept tokens in that order: each step
// keeps the move code the unpruned scan has there, and its gap is how many pruned cells the
// walk passed since the previous kept token. With BY_SEQUENCE (the `score` baseline: a model
// that knows only the token sequence), scans 0 and 2 walk the sequence forwards, 1 and 3
// backwards, with move codes from the positions and no gaps.
// One workgroup per image: the slot map is cleared and filled by all invocations, then one
// invocation per scan walks it (a few hundred steps).

struct Params {
    len: u32,
    keep: u32,
    width: u32,
    flags: u32,
}

const BY_SEQUENCE: u32 = 1u;
const NONE: u32 = 0xffffffffu;
const START: u32 = 0u;
const RIGHT: u32 = 1u;
const LEFT: u32 = 2u;
const UP: u32 = 3u;
const DOWN: u32 = 4u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> positions: array<u32>;
@group(0) @binding(2) var<storage, read> grid: array<u32>;
@group(0) @binding(3) var<storage, read_write> slots: array<u32>;
@group(0) @binding(4) var<storage, read_write> tables: array<u32>;

// The move from cell a to cell b, as ScanOrders' `moves` names it.
fn move_code(a: u32, b: u32) -> u32 {
    let ra = a / p.width;
    let rb = b / p.width;
    if (ra == rb) {
        return select(LEFT, RIGHT, b % p.width > a % p.width);
    }
    return select(UP, DOWN, rb > ra);
}

@compute @workgroup_size(64)
fn kept_grid(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let b = wg.x;
    let sb = b * p.len;
    let pb = b * p.keep;
    for (var q = li; q < p.len; q += 64u) {
        slots[sb + q] = NONE;
    }
    storageBarrier();
    for (var i = li; i < p.keep; i += 64u) {
        slots[sb + positions[pb + i]] = i;
    }
    storageBarrier();
    if (li >= 4u) {
        return;
    }
    let k = li;
    let tb = b * 12u * p.keep;
    let orders = tb + k * p.keep;
    let dirs = tb + (4u + k) * p.keep;
    let gaps = tb + (8u + k) * p.keep;
    if ((p.flags & BY_SEQUENCE) != 0u) {
        var prev = 0u;
        for (var s = 0u; s < p.keep; s++) {
            let i = select(s, p.keep - 1u - s, k % 2u == 1u);
            let pos = positions[pb + i];
            tables[orders + s] = i;
            tables[dirs + s] = select(move_code(prev, pos), START, s == 0u);
            tables[gaps + s] = 0u;
            prev = pos;
        }
        return;
    }
    var s = 0u;
    var last = 0u;
    for (var r = 0u; r < p.len; r++) {
        let i = slots[sb + grid[k * p.len + r]];
        if (i != NONE) {
            tables[orders + s] = i;
            tables[dirs + s] = grid[(4u + k) * p.len + r];
            tables[gaps + s] = select(r - last - 1u, 0u, s == 0u);
            last = r;
            s++;
        }
    }
}
