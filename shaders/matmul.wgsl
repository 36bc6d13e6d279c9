// y[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]): PyTorch's linear layer, weight [out, in].
// x is a strided row view (offset + row * x_stride), so column slices of a wider activation
// (the dt part of x_proj's output) are read in place. The epilogue applies an activation and
// adds a residual [m, n], so conv+BN+ReLU stems and `x + f(x)` connections cost no extra pass.
//
// On a CPU driver (lavapipe, Mesa 22.3) every storage-buffer load is a loop over the SIMD
// lanes, even where the address is the same in all of them, while FMAs and subgroup shuffles
// are single vector instructions: the flops per load instruction set the speed. The portable
// kernels give each invocation a 4 x 8 block (12 vec4 loads per 128 multiply-adds); the
// subgroup kernels share the rows of x across a subgroup (see below).
//
// Grouped (FLAGS' GROUPED bit; the grid's z is the group): group g multiplies x rows from
// g * x_group on (in floats) with weight rows g * n.. (the weights stacked as [groups, n, k])
// into y from g * y_group on, so that the same projection of several directions (Vim's two
// x_projs) is one dispatch. Grouped matmuls have no bias or residual. Without the bit the
// group terms fold away at pipeline creation, so a plain matmul's code is unchanged (as
// private per-group offsets, the tile measured 5-10% slower on lavapipe).

struct Params {
    m: u32,
    n: u32,
    k: u32,
    x_offset: u32,
    x_stride: u32,
    y_offset: u32,
    y_stride: u32,
    x_group: u32,
    y_group: u32,
    _pad0: u32,
    _pad1: u32,
}

// The epilogue's options are a pipeline constant, so a matmul pays only for those it uses:
// SIMD code on a CPU driver runs both sides of a branch, and the bias, activation and
// residual code, run for every output, took 10-18% of the time at Vim-Ti's shapes.
override FLAGS: u32;
const HAS_BIAS: u32 = 1u;
const HAS_RESIDUAL: u32 = 2u;
// Bits 2-3: the activation's code.
const ACTIVATION_SHIFT: u32 = 2u;
const GROUPED: u32 = 16u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> residual: array<f32>;
// The scalar entry point (k, strides or offset not multiples of 4) reads the same buffers.
@group(0) @binding(1) var<storage, read> x1: array<f32>;
@group(0) @binding(2) var<storage, read> w1: array<f32>;

// #include activation

// The invocation's group (the grid's z), read only when GROUPED.
var<private> group: u32;

fn set_group(g: u32) {
    group = g;
}

// `stride` times the group, or 0 for a plain matmul.
fn group_offset(stride: u32) -> u32 {
    return select(0u, group * stride, (FLAGS & GROUPED) != 0u);
}

// The weight row of output column `col`; columns past n are clamped to the last one and never
// stored.
fn w_row(col: u32) -> u32 {
    return group_offset(p.n) + min(col, p.n - 1u);
}

fn w_rows(col: vec4<u32>) -> vec4<u32> {
    return vec4<u32>(group_offset(p.n)) + min(col, vec4<u32>(p.n - 1u));
}

// The epilogue for output (m, col): activation, then the residual.
fn finish(v: f32, m: u32, col: u32) -> f32 {
    var out = activate(v, FLAGS >> ACTIVATION_SHIFT);
    if ((FLAGS & HAS_RESIDUAL) != 0u) {
        out += residual[m * p.n + col];
    }
    return out;
}

// Stores outputs (m, n0..n0 + 3) = v + bias through the epilogue; rows past m and columns past
// n are dropped.
fn store_row(m: u32, n0: u32, v: vec4<f32>) {
    if (m >= p.m || n0 >= p.n) {
        return;
    }
    var o = v;
    if ((FLAGS & HAS_BIAS) != 0u) {
        o += vec4<f32>(bias[n0], bias[min(n0 + 1u, p.n - 1u)], bias[min(n0 + 2u, p.n - 1u)], bias[min(n0 + 3u, p.n - 1u)]);
    }
    let base = p.y_offset + group_offset(p.y_group) + m * p.y_stride + n0;
    y[base] = finish(o.x, m, n0);
    if (n0 + 1u < p.n) { y[base + 1u] = finish(o.y, m, n0 + 1u); }
    if (n0 + 2u < p.n) { y[base + 2u] = finish(o.z, m, n0 + 2u); }
    if (n0 + 3u < p.n) { y[base + 3u] = finish(o.w, m, n0 + 3u); }
}

// Where x row m starts (in floats); rows past m read the last row and are never stored.
fn x_start(m: u32) -> u32 {
    return p.x_offset + group_offset(p.x_group) + min(m, p.m - 1u) * p.x_stride;
}

const WG: u32 = 8u;
const TM: u32 = 8u;

// Four rows (or four k-components) of a 4 x 4 block.
struct Rows {
    r0: vec4<f32>,
    r1: vec4<f32>,
    r2: vec4<f32>,
    r3: vec4<f32>,
}

// Four rows as columns: r0 = (c0.x, c1.x, c2.x, c3.x), and so on.
fn transpose(c0: vec4<f32>, c1: vec4<f32>, c2: vec4<f32>, c3: vec4<f32>) -> Rows {
    return Rows(vec4<f32>(c0.x, c1.x, c2.x, c3.x), vec4<f32>(c0.y, c1.y, c2.y, c3.y),
                vec4<f32>(c0.z, c1.z, c2.z, c3.z), vec4<f32>(c0.w, c1.w, c2.w, c3.w));
}

// The invocation's four weight columns (rows of w) at vec4 kk, transposed: r0 holds k = 4kk for
// columns 0..3, and so on, so that each output row accumulates as one vec4 FMA chain.
fn weight_block(wr: vec4<u32>, kk: u32) -> Rows {
    return transpose(w4[wr.x + kk], w4[wr.y + kk], w4[wr.z + kk], w4[wr.w + kk]);
}

// acc + (x, 4 values along k) times the 4 x 4 weight block w (w.ri: k-position i of 4 columns).
fn mac4(acc: vec4<f32>, x: vec4<f32>, w: Rows) -> vec4<f32> {
    return fma(vec4<f32>(x.x), w.r0, fma(vec4<f32>(x.y), w.r1, fma(vec4<f32>(x.z), w.r2, fma(vec4<f32>(x.w), w.r3, acc))));
}

// acc.ri += a.ri (vec4 along k) times the weight block b.
fn mac(acc: Rows, b: Rows, a: Rows) -> Rows {
    return Rows(mac4(acc.r0, a.r0, b), mac4(acc.r1, a.r1, b), mac4(acc.r2, a.r2, b), mac4(acc.r3, a.r3, b));
}

fn store_block(m0: u32, n0: u32, acc: array<vec4<f32>, TM>) {
    for (var i = 0u; i < TM; i++) {
        store_row(m0 + i, n0, acc[i]);
    }
}

@compute @workgroup_size(8, 8)
fn matmul_vec4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    set_group(wg.z);
    let n0 = (wg.x * WG + lid.x) * 4u;
    let m0 = (wg.y * WG + lid.y) * TM;
    if (n0 >= p.n || m0 >= p.m) {
        return;
    }
    let k4 = p.k / 4u;
    // Out-of-range rows and columns are clamped to the last valid one and never stored.
    let wr = w_rows(vec4<u32>(n0) + vec4<u32>(0u, 1u, 2u, 3u)) * k4;
    var xr: array<u32, TM>;
    for (var i = 0u; i < TM; i++) {
        xr[i] = x_start(m0 + i) / 4u;
    }
    let zero = Rows(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    var lo = zero;
    var hi = zero;
    for (var kk = 0u; kk < k4; kk++) {
        let b = weight_block(wr, kk);
        lo = mac(lo, b, Rows(x4[xr[0] + kk], x4[xr[1] + kk], x4[xr[2] + kk], x4[xr[3] + kk]));
        hi = mac(hi, b, Rows(x4[xr[4] + kk], x4[xr[5] + kk], x4[xr[6] + kk], x4[xr[7] + kk]));
    }
    store_block(m0, n0, array<vec4<f32>, TM>(lo.r0, lo.r1, lo.r2, lo.r3, hi.r0, hi.r1, hi.r2, hi.r3));
}

@compute @workgroup_size(8, 8)
fn matmul_scalar(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    set_group(wg.z);
    let n0 = (wg.x * WG + lid.x) * 4u;
    let m0 = (wg.y * WG + lid.y) * TM;
    if (n0 >= p.n || m0 >= p.m) {
        return;
    }
    var acc: array<vec4<f32>, TM>;
    for (var kk = 0u; kk < p.k; kk++) {
        var b = vec4<f32>(0.0);
        for (var j = 0u; j < 4u; j++) {
            b[j] = w1[w_row(n0 + j) * p.k + kk];
        }
        for (var i = 0u; i < TM; i++) {
            let a = x1[x_start(m0 + i) + kk];
            acc[i] = fma(vec4<f32>(a), b, acc[i]);
        }
    }
    store_block(m0, n0, acc);
}

// #if subgroups
// Subgroup variants: the lanes of a subgroup span columns and share a block of rows. Per
// chunk of 8 units along k, lane q loads unit q of each row and the others read it with a
// shuffle, so x costs one load per row per chunk for the whole subgroup; each lane loads only
// its weights, and each weight load feeds every row of the block. The shuffles name a lane
// that is the same in every invocation, which the driver compiles as a broadcast (measured as
// fast as subgroupBroadcast, which WGSL allows only with a constant lane).

// Vec4 kq of the x row starting at vec4 `row`, zero past k (a chunk's last lanes).
fn x_vec_at(row: u32, kq: u32) -> vec4<f32> {
    let k4 = p.k / 4u;
    return select(vec4<f32>(0.0), x4[row + min(kq, k4 - 1u)], kq < k4);
}

// (The 4-row kernel's unit is a vec4.) x[m, 4kq..4kq + 3], zero past k.
fn x_vec(m: u32, kq: u32) -> vec4<f32> {
    return x_vec_at(x_start(m) / 4u, kq);
}

fn x_rows(m: u32, kq: u32) -> Rows {
    return Rows(x_vec(m, kq), x_vec(m + 1u, kq), x_vec(m + 2u, kq), x_vec(m + 3u, kq));
}

// What lane j holds of four rows.
fn lane_rows(x: Rows, j: u32) -> Rows {
    return Rows(subgroupShuffle(x.r0, j), subgroupShuffle(x.r1, j), subgroupShuffle(x.r2, j), subgroupShuffle(x.r3, j));
}

fn store_rows(m0: u32, n0: u32, acc: Rows) {
    store_row(m0, n0, acc.r0);
    store_row(m0 + 1u, n0, acc.r1);
    store_row(m0 + 2u, n0, acc.r2);
    store_row(m0 + 3u, n0, acc.r3);
}

// The tile: 20 rows x 8 columns per lane, 64 columns per subgroup-sized workgroup. Along k it
// steps in units of 8 values: each weight unit feeds 20 rows and each shuffled x value 8
// columns. On lavapipe the driver keeps the tile on the stack: 20 rows ran 1.04-1.08x faster
// than 16 (fewer weight loads per FMA; 197 rows are 10 tiles with 3 rows to spare), 24 and 32
// rows ran slower (the stack outgrows the L1 cache). The 32 x 4 vec4 tile it replaced ran
// 1.25x slower. Rows past m are clamped as in `x_vec`; the steps stop at k.
// The five 4-row groups of `Tile` below.
const TILE_ROWS: u32 = 20u;

// A unit is 8 values along k (an `Eight`): the k-order inside it differs between the load
// paths below, but x and w always use the same one, so their products pair up.
// #if int64
// With 64-bit integers a unit is one vec4<u64> load (packed8). Here k, the x offset and the x
// stride are multiples of 8.
@group(0) @binding(1) var<storage, read> x8: array<vec4<u64>>;
@group(0) @binding(2) var<storage, read> w8: array<vec4<u64>>;

// #include packed8

const UNIT_ELEMS: u32 = 8u;

// Unit u of the x row starting at unit `row`.
fn x_unit(row: u32, u: u32) -> Eight {
    return unpack8(x8[row + u]);
}

// Unit u of the weight row starting at unit `row`; the steps stop at k.
fn w_unit(row: u32, u: u32) -> Eight {
    return unpack8(w8[row + u]);
}
// #else
// Without them a unit is two vec4 loads; k, the x offset and stride are multiples of 4, so a
// unit may end half past k.
const UNIT_ELEMS: u32 = 4u;

// (As packed8 declares it.)
struct Eight {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

fn x_unit(row: u32, u: u32) -> Eight {
    return Eight(x_vec_at(row, 2u * u), x_vec_at(row, 2u * u + 1u));
}

fn w_unit(row: u32, u: u32) -> Eight {
    let k4 = p.k / 4u;
    return Eight(w4[row + min(2u * u, k4 - 1u)], w4[row + min(2u * u + 1u, k4 - 1u)]);
}
// #endif

// One row's value in each of the lane's 8 columns.
struct Cols {
    a: vec4<f32>,
    b: vec4<f32>,
}

// A weight unit transposed for the lane's 8 columns: lo_a.r0 holds k-position lo.x of columns
// 0..3, and so on.
struct WeightUnit {
    lo_a: Rows,
    lo_b: Rows,
    hi_a: Rows,
    hi_b: Rows,
}

// Unit u of the weight rows (columns of y) starting at units wa (columns 0..3) and wb (4..7).
fn weight_unit(wa: vec4<u32>, wb: vec4<u32>, u: u32) -> WeightUnit {
    let c0 = w_unit(wa.x, u);
    let c1 = w_unit(wa.y, u);
    let c2 = w_unit(wa.z, u);
    let c3 = w_unit(wa.w, u);
    let c4 = w_unit(wb.x, u);
    let c5 = w_unit(wb.y, u);
    let c6 = w_unit(wb.z, u);
    let c7 = w_unit(wb.w, u);
    return WeightUnit(transpose(c0.lo, c1.lo, c2.lo, c3.lo), transpose(c4.lo, c5.lo, c6.lo, c7.lo),
                      transpose(c0.hi, c1.hi, c2.hi, c3.hi), transpose(c4.hi, c5.hi, c6.hi, c7.hi));
}

// acc += x (8 values along k) times the weight unit.
fn mac_unit(acc: Cols, x: Eight, w: WeightUnit) -> Cols {
    return Cols(mac4(mac4(acc.a, x.lo, w.lo_a), x.hi, w.hi_a), mac4(mac4(acc.b, x.lo, w.lo_b), x.hi, w.hi_b));
}

// What lane j holds of one row's unit.
fn lane_unit(x: Eight, j: u32) -> Eight {
    return Eight(subgroupShuffle(x.lo, j), subgroupShuffle(x.hi, j));
}

// Four rows. The unrolled structs keep the tile in registers: an array indexed in a loop
// stays in memory and runs 4x slower.
struct Cols4 {
    r0: Cols,
    r1: Cols,
    r2: Cols,
    r3: Cols,
}

struct Eight4 {
    r0: Eight,
    r1: Eight,
    r2: Eight,
    r3: Eight,
}

fn mac_rows4(acc: Cols4, x: Eight4, w: WeightUnit, j: u32) -> Cols4 {
    return Cols4(mac_unit(acc.r0, lane_unit(x.r0, j), w), mac_unit(acc.r1, lane_unit(x.r1, j), w),
                 mac_unit(acc.r2, lane_unit(x.r2, j), w), mac_unit(acc.r3, lane_unit(x.r3, j), w));
}

struct Tile {
    g0: Cols4,
    g1: Cols4,
    g2: Cols4,
    g3: Cols4,
    g4: Cols4,

}

struct XTile {
    g0: Eight4,
    g1: Eight4,
    g2: Eight4,
    g3: Eight4,
    g4: Eight4,

}

// Where the tile's x rows start, in units: computed once, as every read of `p` inside the loop
// is a uniform-buffer load that the driver does not hoist.
struct RowStarts {
    g0: vec4<u32>,
    g1: vec4<u32>,
    g2: vec4<u32>,
    g3: vec4<u32>,
    g4: vec4<u32>,
}

fn row_starts4(m: u32) -> vec4<u32> {
    return vec4<u32>(x_start(m), x_start(m + 1u), x_start(m + 2u), x_start(m + 3u)) / UNIT_ELEMS;
}

fn x_rows4(rows: vec4<u32>, u: u32) -> Eight4 {
    return Eight4(x_unit(rows.x, u), x_unit(rows.y, u), x_unit(rows.z, u), x_unit(rows.w, u));
}

fn x_tile(rows: RowStarts, u: u32) -> XTile {
    return XTile(x_rows4(rows.g0, u), x_rows4(rows.g1, u), x_rows4(rows.g2, u), x_rows4(rows.g3, u), x_rows4(rows.g4, u));
}

// acc += (lane j's unit of each row) times the weight unit.
fn mac_tile(acc: Tile, w: WeightUnit, x: XTile, j: u32) -> Tile {
    return Tile(mac_rows4(acc.g0, x.g0, w, j), mac_rows4(acc.g1, x.g1, w, j),
                mac_rows4(acc.g2, x.g2, w, j), mac_rows4(acc.g3, x.g3, w, j), mac_rows4(acc.g4, x.g4, w, j));
}

fn store_rows4(m0: u32, n0: u32, acc: Cols4) {
    store_row(m0, n0, acc.r0.a);
    store_row(m0, n0 + 4u, acc.r0.b);
    store_row(m0 + 1u, n0, acc.r1.a);
    store_row(m0 + 1u, n0 + 4u, acc.r1.b);
    store_row(m0 + 2u, n0, acc.r2.a);
    store_row(m0 + 2u, n0 + 4u, acc.r2.b);
    store_row(m0 + 3u, n0, acc.r3.a);
    store_row(m0 + 3u, n0 + 4u, acc.r3.b);
}

// The tile of rows m0.. and the lane's columns n0..n0 + 7, before the epilogue.
fn accumulate_tile(m0: u32, n0: u32, lane: u32) -> Tile {
    let units = (p.k + 7u) / 8u;
    let q = lane & 7u;
    let row_len = p.k / UNIT_ELEMS;
    let wa = w_rows(vec4<u32>(n0) + vec4<u32>(0u, 1u, 2u, 3u)) * row_len;
    let wb = w_rows(vec4<u32>(n0) + vec4<u32>(4u, 5u, 6u, 7u)) * row_len;
    let z = Cols(vec4<f32>(0.0), vec4<f32>(0.0));
    let z4 = Cols4(z, z, z, z);
    var acc = Tile(z4, z4, z4, z4, z4);
    let rows = RowStarts(row_starts4(m0), row_starts4(m0 + 4u), row_starts4(m0 + 8u), row_starts4(m0 + 12u), row_starts4(m0 + 16u));
    for (var u0 = 0u; u0 < units; u0 += 8u) {
        // Lanes past k load the last unit, which no step reads.
        let x = x_tile(rows, min(u0 + q, units - 1u));
        // A loop, not 8 unrolled steps: the lane index need not be a constant (a uniform one
        // compiles to the same permute), and the 8x smaller body runs 1.2x faster on lavapipe,
        // whose straight-line version overflowed the instruction cache. A short k (a dt_proj's
        // rank, 12 in Vim-Ti: 2 units) runs only the steps it has.
        let steps = min(8u, units - u0);
        for (var j = 0u; j < steps; j++) {
            acc = mac_tile(acc, weight_unit(wa, wb, u0 + j), x, j);
        }
    }
    return acc;
}

@compute @workgroup_size(8)
fn matmul_subgroup(@builtin(workgroup_id) wg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32, @builtin(local_invocation_index) li: u32) {
    set_group(wg.z);
    let n0 = (wg.x * 8u + li) * 8u;
    let m0 = wg.y * TILE_ROWS;
    let acc = accumulate_tile(m0, n0, lane);
    store_rows4(m0, n0, acc.g0);
    store_rows4(m0 + 4u, n0, acc.g1);
    store_rows4(m0 + 8u, n0, acc.g2);
    store_rows4(m0 + 12u, n0, acc.g3);
    store_rows4(m0 + 16u, n0, acc.g4);
}

// #if int64
// The same tile storing each row's 8 columns as one vec4<u64>, with bias and residual read
// the same way, where y's offset and stride and n are multiples of 8: stores are lane loops
// too, and per float this halves them (5-6% of the whole matmul at 197 x 384 x 1536).
@group(0) @binding(3) var<storage, read> bias8: array<vec4<u64>>;
@group(0) @binding(4) var<storage, read_write> y8: array<vec4<u64>>;
@group(0) @binding(5) var<storage, read> residual8: array<vec4<u64>>;

// 8 consecutive floats as the lane's columns (`unpack8` splits the even and odd ones).
fn cols_of(v: vec4<u64>) -> Cols {
    let e = unpack8(v);
    return Cols(vec4<f32>(e.lo.x, e.hi.x, e.lo.y, e.hi.y), vec4<f32>(e.lo.z, e.hi.z, e.lo.w, e.hi.w));
}

fn activate4(v: vec4<f32>) -> vec4<f32> {
    let kind = FLAGS >> ACTIVATION_SHIFT;
    return vec4<f32>(activate(v.x, kind), activate(v.y, kind), activate(v.z, kind), activate(v.w, kind));
}

// Row m of the lane's columns through the epilogue (`bias` already read), stored.
fn store_wide(m: u32, n0: u32, v: Cols, bias: Cols) {
    if (m >= p.m || n0 >= p.n) {
        return;
    }
    var o = Cols(activate4(v.a + bias.a), activate4(v.b + bias.b));
    if ((FLAGS & HAS_RESIDUAL) != 0u) {
        let r = cols_of(residual8[(m * p.n + n0) / 8u]);
        o = Cols(o.a + r.a, o.b + r.b);
    }
    let packed = Eight(vec4<f32>(o.a.x, o.a.z, o.b.x, o.b.z), vec4<f32>(o.a.y, o.a.w, o.b.y, o.b.w));
    y8[(p.y_offset + group_offset(p.y_group) + m * p.y_stride + n0) / 8u] = pack8(packed);
}

fn store_wide_rows4(m0: u32, n0: u32, acc: Cols4, bias: Cols) {
    store_wide(m0, n0, acc.r0, bias);
    store_wide(m0 + 1u, n0, acc.r1, bias);
    store_wide(m0 + 2u, n0, acc.r2, bias);
    store_wide(m0 + 3u, n0, acc.r3, bias);
}

@compute @workgroup_size(8)
fn matmul_subgroup_wide(@builtin(workgroup_id) wg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32, @builtin(local_invocation_index) li: u32) {
    set_group(wg.z);
    let n0 = (wg.x * 8u + li) * 8u;
    let m0 = wg.y * TILE_ROWS;
    let acc = accumulate_tile(m0, n0, lane);
    // Read once per tile, not per row.
    var bias = Cols(vec4<f32>(0.0), vec4<f32>(0.0));
    if ((FLAGS & HAS_BIAS) != 0u) {
        bias = cols_of(bias8[min(n0, p.n - 8u) / 8u]);
    }
    store_wide_rows4(m0, n0, acc.g0, bias);
    store_wide_rows4(m0 + 4u, n0, acc.g1, bias);
    store_wide_rows4(m0 + 8u, n0, acc.g2, bias);
    store_wide_rows4(m0 + 12u, n0, acc.g3, bias);
    store_wide_rows4(m0 + 16u, n0, acc.g4, bias);
}
// #endif

// Few rows (decode steps, a head over class tokens): 4 rows, 64 lanes x 4 columns per
// workgroup, so that a small m does not pay for 20 rows of multiply-adds.
@compute @workgroup_size(64)
fn matmul_subgroup_rows4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32, @builtin(local_invocation_index) li: u32) {
    set_group(wg.z);
    let n0 = (wg.x * 64u + li) * 4u;
    let m0 = wg.y * 4u;
    let k4 = p.k / 4u;
    let q = lane & 7u;
    let wr = w_rows(vec4<u32>(n0) + vec4<u32>(0u, 1u, 2u, 3u)) * k4;
    var acc = Rows(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var c0 = 0u; c0 < k4; c0 += 8u) {
        let x = x_rows(m0, c0 + q);
        acc = mac(acc, weight_block(wr, c0), lane_rows(x, 0u));
        acc = mac(acc, weight_block(wr, min(c0 + 1u, k4 - 1u)), lane_rows(x, 1u));
        acc = mac(acc, weight_block(wr, min(c0 + 2u, k4 - 1u)), lane_rows(x, 2u));
        acc = mac(acc, weight_block(wr, min(c0 + 3u, k4 - 1u)), lane_rows(x, 3u));
        acc = mac(acc, weight_block(wr, min(c0 + 4u, k4 - 1u)), lane_rows(x, 4u));
        acc = mac(acc, weight_block(wr, min(c0 + 5u, k4 - 1u)), lane_rows(x, 5u));
        acc = mac(acc, weight_block(wr, min(c0 + 6u, k4 - 1u)), lane_rows(x, 6u));
        acc = mac(acc, weight_block(wr, min(c0 + 7u, k4 - 1u)), lane_rows(x, 7u));
    }
    store_rows(m0, n0, acc);
}
// #endif
