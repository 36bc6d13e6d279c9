// PlainMamba's 2-D selective scan (PlainMamba2D in ChenhongyiYang/PlainMamba): four snake-order
// scans of each image, summed at the original positions and gated. For direction k with
// order o = orders[k] and moves d = directions[k] (both over scan steps s, o indexing the
// image's token sequence):
//   dt  = softplus(delta[s] + dt_bias)
//   h_n = exp(dt * A_n) * h_n + dt * (B[s, n] + dir_B[d[s], n]) * u[o[s]]
//   y_k[o[s]] = sum_n C[s, n] * h_n + D * u[o[s]]
//   out = (y_0 + y_1 + y_2 + y_3) * silu(z)
// Only u follows the scan order: delta, B and C are read at raster position s, because the
// authors' code permutes only u and trained weights depend on it. So step s of every
// direction shares dt, exp(dt * A), B and C: one invocation per (image, channel) runs the four
// directions in lockstep, computing those once per step, and adds each direction's y into its
// own output column (zeroed first), which a last pass gates. As in scan.wgsl, each
// direction's 16 states live in four vec4 registers, and the subgroup variant loads each
// step's B and C with one vec4 load per lane and broadcasts them.
// After pruning, each image has its own tables (the kept tokens' scans over the grid), and
// with DECAY the state first decays over the g = gaps[k][s] pruned tokens skipped before step
// s, as zero-input tokens would: h *= exp(g * softplus(2 dt_bias) * A) (a zero token's dt_proj
// output is its bias, which the scan adds again). With UNGATED, sum_k y_k (each clipped at
// zero with UNGATED_CLIP) is also stored, for pruning's importance scores.

struct Params {
    batch: u32,
    len: u32,
    channels: u32,
    nstate: u32,
    u_offset: u32,
    u_stride: u32,
    dt_offset: u32,
    dt_stride: u32,
    b_offset: u32,
    c_offset: u32,
    bc_stride: u32,
    z_offset: u32,
    z_stride: u32,
    // 0: one table for every image; else each image's table size (12 len).
    table_stride: u32,
    flags: u32,
    _pad0: u32,
}

const DECAY: u32 = 1u;
const UNGATED: u32 = 2u;
const UNGATED_CLIP: u32 = 4u;
const UNGATED_ADD: u32 = 8u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> u: array<f32>;
@group(0) @binding(2) var<storage, read> delta: array<f32>;
// #if subgroups
@group(0) @binding(3) var<storage, read> bc: array<vec4<f32>>;
// #else
@group(0) @binding(3) var<storage, read> bc: array<f32>;
// #endif
// [A (channels x nstate) | D (channels) | dt_bias (channels)]
@group(0) @binding(4) var<storage, read> ssm: array<f32>;
@group(0) @binding(5) var<storage, read> z: array<f32>;
// [orders (4 x len) | directions (4 x len) | gaps (4 x len)], per image or shared.
@group(0) @binding(6) var<storage, read> tables: array<u32>;
// [5 directions, 16 states] (zero past nstate), four vec4 per direction.
@group(0) @binding(7) var<storage, read> dir_b: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> out: array<f32>;
@group(0) @binding(9) var<storage, read_write> ungated: array<f32>;

// #include ssm_inputs

struct State {
    h0: vec4<f32>,
    h1: vec4<f32>,
    h2: vec4<f32>,
    h3: vec4<f32>,
}

// What the four directions share at one step: dt, exp(dt * A), B (zero past nstate) and C.
struct Shared {
    dt: f32,
    da0: vec4<f32>,
    da1: vec4<f32>,
    da2: vec4<f32>,
    da3: vec4<f32>,
    b0: vec4<f32>,
    b1: vec4<f32>,
    b2: vec4<f32>,
    b3: vec4<f32>,
    c0: vec4<f32>,
    c1: vec4<f32>,
    c2: vec4<f32>,
    c3: vec4<f32>,
}

// Step s of direction k for channel e of the image whose first row is `base` and table
// starts at `tb`: decay over skipped tokens, update the direction's state and add its y into
// the output at the token it visits.
fn advance(st: ptr<function, State>, sh: Shared, idle: State, k: u32, s: u32, base: u32, tb: u32, e: u32, d_skip: f32, valid: bool) {
    let pos = base + tables[tb + k * p.len + s];
    let dir = tables[tb + (4u + k) * p.len + s] * 4u;
    if ((p.flags & DECAY) != 0u) {
        let gap = f32(tables[tb + (8u + k) * p.len + s]);
        if (gap > 0.0) {
            (*st).h0 *= exp(gap * idle.h0);
            (*st).h1 *= exp(gap * idle.h1);
            (*st).h2 *= exp(gap * idle.h2);
            (*st).h3 *= exp(gap * idle.h3);
        }
    }
    let ut = u[p.u_offset + pos * p.u_stride + e];
    let du = sh.dt * ut;
    // dir_b is zero past nstate, like sh.b*.
    (*st).h0 = fma(sh.da0, (*st).h0, du * (sh.b0 + dir_b[dir]));
    (*st).h1 = fma(sh.da1, (*st).h1, du * (sh.b1 + dir_b[dir + 1u]));
    (*st).h2 = fma(sh.da2, (*st).h2, du * (sh.b2 + dir_b[dir + 2u]));
    (*st).h3 = fma(sh.da3, (*st).h3, du * (sh.b3 + dir_b[dir + 3u]));
    let y = fma(d_skip, ut, dot((*st).h0, sh.c0) + dot((*st).h1, sh.c1) + dot((*st).h2, sh.c2) + dot((*st).h3, sh.c3));
    if (valid) {
        out[pos * p.channels + e] += y;
        if ((p.flags & UNGATED) != 0u) {
            ungated[pos * p.channels + e] += select(y, max(y, 0.0), (p.flags & UNGATED_CLIP) != 0u);
        }
    }
}

// Grid: x = channel blocks of 64, y = image; every address but the channel's is uniform
// across the workgroup, and no invocation returns early (ragged channels are not stored).
@compute @workgroup_size(64)
fn zigzag_scan(
    @builtin(workgroup_id) wg: vec3<u32>,
// #if subgroups
    @builtin(subgroup_invocation_id) lane: u32,
// #endif
    @builtin(local_invocation_index) li: u32,
) {
    let base = wg.y * p.len;
    let tb = wg.y * p.table_stride;
    let e_raw = wg.x * 64u + li;
    let valid = e_raw < p.channels;
    let e = min(e_raw, p.channels - 1u);
    let ns = p.nstate;
    let a0 = ssm4(e * ns, 0u);
    let a1 = ssm4(e * ns, 4u);
    let a2 = ssm4(e * ns, 8u);
    let a3 = ssm4(e * ns, 12u);
    let d_skip = ssm[p.channels * ns + e];
    let dt_bias = ssm[p.channels * ns + p.channels + e];
    // Zero B past nstate keeps the padded states at zero.
    let m0 = vec4<f32>(vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(ns));
    let m1 = vec4<f32>(vec4<u32>(4u, 5u, 6u, 7u) < vec4<u32>(ns));
    let m2 = vec4<f32>(vec4<u32>(8u, 9u, 10u, 11u) < vec4<u32>(ns));
    let m3 = vec4<f32>(vec4<u32>(12u, 13u, 14u, 15u) < vec4<u32>(ns));
    // A pruned token's delta: softplus(2 dt_bias).
    let idle_dt = select(log(1.0 + exp(2.0 * dt_bias)), 2.0 * dt_bias, 2.0 * dt_bias > 20.0);
    let idle = State(idle_dt * a0, idle_dt * a1, idle_dt * a2, idle_dt * a3);
    if (valid) {
        let zero_ungated = (p.flags & (UNGATED | UNGATED_ADD)) == UNGATED;
        for (var s = 0u; s < p.len; s++) {
            out[(base + s) * p.channels + e] = 0.0;
            if (zero_ungated) {
                ungated[(base + s) * p.channels + e] = 0.0;
            }
        }
    }
    let zero = State(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    var st0 = zero;
    var st1 = zero;
    var st2 = zero;
    var st3 = zero;
    for (var s = 0u; s < p.len; s++) {
        // delta, B and C at raster position s, for every direction.
        let row = base + s;
        var dt = delta[p.dt_offset + row * p.dt_stride + e] + dt_bias;
        dt = select(log(1.0 + exp(dt)), dt, dt > 20.0);
        let bb = p.b_offset + row * p.bc_stride;
        let cb = p.c_offset + row * p.bc_stride;
// #if subgroups
        let v = fetch_bc(lane, bb, cb);
        let sh = Shared(
            dt, exp(dt * a0), exp(dt * a1), exp(dt * a2), exp(dt * a3),
            subgroupBroadcast(v, 0u) * m0, subgroupBroadcast(v, 1u) * m1,
            subgroupBroadcast(v, 2u) * m2, subgroupBroadcast(v, 3u) * m3,
            subgroupBroadcast(v, 4u), subgroupBroadcast(v, 5u),
            subgroupBroadcast(v, 6u), subgroupBroadcast(v, 7u),
        );
// #else
        let sh = Shared(
            dt, exp(dt * a0), exp(dt * a1), exp(dt * a2), exp(dt * a3),
            bc4(bb, 0u) * m0, bc4(bb, 4u) * m1, bc4(bb, 8u) * m2, bc4(bb, 12u) * m3,
            bc4(cb, 0u), bc4(cb, 4u), bc4(cb, 8u), bc4(cb, 12u),
        );
// #endif
        advance(&st0, sh, idle, 0u, s, base, tb, e, d_skip, valid);
        advance(&st1, sh, idle, 1u, s, base, tb, e, d_skip, valid);
        advance(&st2, sh, idle, 2u, s, base, tb, e, d_skip, valid);
        advance(&st3, sh, idle, 3u, s, base, tb, e, d_skip, valid);
    }
    if (valid) {
        for (var s = 0u; s < p.len; s++) {
            let row = base + s;
            let zt = z[p.z_offset + row * p.z_stride + e];
            let o = row * p.channels + e;
            out[o] = out[o] * zt / (1.0 + exp(-zt));
        }
    }
}
