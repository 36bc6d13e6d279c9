// Mamba-1 selective scan, as mamba_ssm's selective_scan_ref computes it, per (sequence, channel):
//   dt  = softplus(delta[t] + dt_bias)                (softplus when flagged)
//   h_n = exp(dt * A_n) * h_n + dt * B[t, n] * u[t]   (n < nstate <= 16)
//   y   = sum_n C[t, n] * h_n + D * u[t]
//   y  *= silu(z[t])                                  (when flagged)
// An invocation scans W channels: two in the subgroup variant (V = vec2, u/delta/z/out loaded as
// vec2s, so even channel counts, offsets and strides), because a software driver pays per load
// instruction nearly whatever its width (four channels would keep 128 values live and spill,
// which was slower); one in the portable variant, for any layout. The 16 states live in named
// registers h0..h15 (an indexed array would not stay in registers). B and C are shared by all
// channels: in the subgroup variant, eight invocations load the step's 32 B/C values with one
// vec4 load each and broadcast them. A is held times log2(e), for exp2.
// With DT_PROJ (subgroup variant only) the kernel computes delta itself, as dt_proj's
// product of x_proj's first dt_rank <= 16 columns (read from the B/C binding, beside B and C)
// with the channel's dt_proj row (bound in delta's place): a few multiply-adds per step
// instead of a separate matmul that writes delta and a load that reads it back.
// FLAGS is a pipeline constant, so the options cost no branches per step. The optional carried
// state makes the same kernel a decode step (len 1), REVERSE walks the tokens backwards without
// copying them, and ACCUMULATE adds into the output (Vim's backward branch summed onto the
// forward one).

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
    dt_rank: u32,
    _pad1: u32,
    _pad2: u32,
}

const HAS_Z: u32 = 1u;
const SOFTPLUS: u32 = 2u;
const USE_STATE: u32 = 4u;
const WRITE_STATE: u32 = 8u;
const REVERSE: u32 = 16u;
const ACCUMULATE: u32 = 32u;
// Also store the ungated output (token importance for pruning), clipped at 0, added.
const UNGATED: u32 = 64u;
const UNGATED_CLIP: u32 = 128u;
const UNGATED_ADD: u32 = 256u;
// Decay the state over the pruned positions between kept tokens (positions binding).
const GAP_DECAY: u32 = 512u;
// The grid has invocations past the last channel: they compute but store nothing.
const RAGGED: u32 = 1024u;
// DT_PROJ: bits 11-13 hold how many vec4s the dt rank spans (1 to 4; 0: delta is given).
const DT_VEC4S_SHIFT: u32 = 11u;
const DT_PROJ: u32 = 7u << DT_VEC4S_SHIFT;
override FLAGS: u32;
const LOG2E: f32 = 1.4426950408889634;

// #if subgroups
alias V = vec2<f32>;
const W: u32 = 2u;
const WG: u32 = 32u;
// #else
alias V = f32;
const W: u32 = 1u;
const WG: u32 = 64u;
// #endif

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> u: array<V>;
@group(0) @binding(2) var<storage, read> delta: array<V>;
// #if subgroups
@group(0) @binding(3) var<storage, read> bc: array<vec4<f32>>;
// #else
@group(0) @binding(3) var<storage, read> bc: array<f32>;
// #endif
@group(0) @binding(4) var<storage, read> ssm: array<f32>;
@group(0) @binding(5) var<storage, read> z: array<V>;
@group(0) @binding(6) var<storage, read_write> state: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<V>;
@group(0) @binding(8) var<storage, read_write> ungated: array<V>;
@group(0) @binding(9) var<storage, read> positions: array<u32>;

// #include ssm_inputs

// The W channels' values of per-channel rows `stride` apart, from element i on.
// #if subgroups
fn chan_ssm(i: u32, stride: u32) -> V {
    return V(ssm[i], ssm[i + stride]);
}
fn chan_state(i: u32, stride: u32) -> V {
    return V(state[i], state[i + stride]);
}
fn store_chan_state(i: u32, stride: u32, v: V) {
    state[i] = v.x;
    state[i + stride] = v.y;
}
// #else
fn chan_ssm(i: u32, stride: u32) -> V {
    return ssm[i];
}
fn chan_state(i: u32, stride: u32) -> V {
    return state[i];
}
fn store_chan_state(i: u32, stride: u32, v: V) {
    state[i] = v;
}
// #endif

fn a_at(e: u32, n: u32) -> V {
    return select(V(0.0), chan_ssm(e * p.nstate + min(n, p.nstate - 1u), p.nstate) * LOG2E, n < p.nstate);
}

fn h_at(base: u32, n: u32) -> V {
    if ((FLAGS & USE_STATE) == 0u || n >= p.nstate) {
        return V(0.0);
    }
    return chan_state(base + n, p.nstate);
}

fn store_h(base: u32, n: u32, v: V) {
    if (n < p.nstate) {
        store_chan_state(base + n, p.nstate, v);
    }
}

fn softplus(x: V) -> V {
    return select(log(1.0 + exp(x)), x, x > V(20.0));
}

// Per-invocation values the steps share (private: registers once inlined).
var<private> a0: V;
var<private> a1: V;
var<private> a2: V;
var<private> a3: V;
var<private> a4: V;
var<private> a5: V;
var<private> a6: V;
var<private> a7: V;
var<private> a8: V;
var<private> a9: V;
var<private> a10: V;
var<private> a11: V;
var<private> a12: V;
var<private> a13: V;
var<private> a14: V;
var<private> a15: V;
var<private> h0: V;
var<private> h1: V;
var<private> h2: V;
var<private> h3: V;
var<private> h4: V;
var<private> h5: V;
var<private> h6: V;
var<private> h7: V;
var<private> h8: V;
var<private> h9: V;
var<private> h10: V;
var<private> h11: V;
var<private> h12: V;
var<private> h13: V;
var<private> h14: V;
var<private> h15: V;
var<private> d_skip: V;
var<private> dt_bias: V;
var<private> idle_dt: V;
var<private> prev_pos: u32;
var<private> seq: u32;
var<private> e: u32;
var<private> in_range: bool;
var<private> m0: vec4<f32>;
var<private> m1: vec4<f32>;
var<private> m2: vec4<f32>;
var<private> m3: vec4<f32>;
// The dt_proj rows of the invocation's channels (a: e, b: e + 1), values 4i..4i + 3 in dti.
var<private> dt_a0: vec4<f32>;
var<private> dt_a1: vec4<f32>;
var<private> dt_a2: vec4<f32>;
var<private> dt_a3: vec4<f32>;
var<private> dt_b0: vec4<f32>;
var<private> dt_b1: vec4<f32>;
var<private> dt_b2: vec4<f32>;
var<private> dt_b3: vec4<f32>;
// #if subgroups
var<private> lane: u32;
// #endif

// #if subgroups
// Value r of dt_proj's row for channel ch (in the delta binding, `[channels, dt_rank]`), zero
// past the rank.
fn dt_weight(ch: u32, r: u32) -> f32 {
    let i = ch * p.dt_rank + min(r, p.dt_rank - 1u);
    let pair = delta[i / 2u];
    return select(0.0, select(pair.x, pair.y, (i & 1u) == 1u), r < p.dt_rank);
}

fn dt_weights(ch: u32, r0: u32) -> vec4<f32> {
    return vec4<f32>(dt_weight(ch, r0), dt_weight(ch, r0 + 1u), dt_weight(ch, r0 + 2u), dt_weight(ch, r0 + 3u));
}

// dt_proj for the token in `row`: lane q < 4 loads vec4 q of its dt columns, every lane
// reads the ones the rank spans; values past the rank (B's first ones) meet zero weights.
fn projected_dt(row: u32) -> V {
    let q = min(lane & 3u, (p.dt_rank - 1u) / 4u);
    let v = bc[(p.dt_offset + row * p.dt_stride) / 4u + q];
    let vec4s = (FLAGS & DT_PROJ) >> DT_VEC4S_SHIFT;
    let x0 = subgroupBroadcast(v, 0u);
    var dt = V(dot(x0, dt_a0), dot(x0, dt_b0));
    if (vec4s > 1u) {
        let x1 = subgroupBroadcast(v, 1u);
        dt += V(dot(x1, dt_a1), dot(x1, dt_b1));
    }
    if (vec4s > 2u) {
        let x2 = subgroupBroadcast(v, 2u);
        dt += V(dot(x2, dt_a2), dot(x2, dt_b2));
    }
    if (vec4s > 3u) {
        let x3 = subgroupBroadcast(v, 3u);
        dt += V(dot(x3, dt_a3), dot(x3, dt_b3));
    }
    return dt;
}
// #endif

// dt for the token in `row`, before its bias: given, or projected here.
fn delta_at(row: u32) -> V {
// #if subgroups
    if ((FLAGS & DT_PROJ) != 0u) {
        return projected_dt(row);
    }
// #endif
    return delta[(p.dt_offset + row * p.dt_stride + e) / W];
}

// One token: step s of the walk.
fn step(s: u32) {
    let t = select(s, p.len - 1u - s, (FLAGS & REVERSE) != 0u);
    let row = seq * p.len + t;
    let ut = u[(p.u_offset + row * p.u_stride + e) / W];
    var dt = delta_at(row) + dt_bias;
    var zt = V(0.0);
    if ((FLAGS & HAS_Z) != 0u) {
        zt = z[(p.z_offset + row * p.z_stride + e) / W];
    }
    if ((FLAGS & SOFTPLUS) != 0u) {
        dt = softplus(dt);
    }
    // The pruned positions since the previous kept token decay the state as zero-input
    // tokens: exp2(g·A)·exp2(dt·A) = exp2((dt + g)·A), folded into this token's exps.
    var decay_dt = dt;
    if ((FLAGS & GAP_DECAY) != 0u) {
        let pos = positions[row];
        if (s > 0u) {
            decay_dt += f32(max(abs(i32(pos) - i32(prev_pos)), 1) - 1) * idle_dt;
        }
        prev_pos = pos;
    }
    let du = dt * ut;
    let bb = p.b_offset + row * p.bc_stride;
    let cb = p.c_offset + row * p.bc_stride;
// #if subgroups
    let v = fetch_bc(lane, bb, cb);
    let b0 = subgroupBroadcast(v, 0u) * m0;
    let b1 = subgroupBroadcast(v, 1u) * m1;
    let b2 = subgroupBroadcast(v, 2u) * m2;
    let b3 = subgroupBroadcast(v, 3u) * m3;
    let c0 = subgroupBroadcast(v, 4u);
    let c1 = subgroupBroadcast(v, 5u);
    let c2 = subgroupBroadcast(v, 6u);
    let c3 = subgroupBroadcast(v, 7u);
// #else
    let b0 = bc4(bb, 0u);
    let b1 = bc4(bb, 4u);
    let b2 = bc4(bb, 8u);
    let b3 = bc4(bb, 12u);
    let c0 = bc4(cb, 0u);
    let c1 = bc4(cb, 4u);
    let c2 = bc4(cb, 8u);
    let c3 = bc4(cb, 12u);
// #endif
    h0 = fma(exp2(decay_dt * a0), h0, du * b0.x);
    var y = h0 * c0.x;
    h1 = fma(exp2(decay_dt * a1), h1, du * b0.y);
    y = fma(h1, V(c0.y), y);
    h2 = fma(exp2(decay_dt * a2), h2, du * b0.z);
    y = fma(h2, V(c0.z), y);
    h3 = fma(exp2(decay_dt * a3), h3, du * b0.w);
    y = fma(h3, V(c0.w), y);
    h4 = fma(exp2(decay_dt * a4), h4, du * b1.x);
    y = fma(h4, V(c1.x), y);
    h5 = fma(exp2(decay_dt * a5), h5, du * b1.y);
    y = fma(h5, V(c1.y), y);
    h6 = fma(exp2(decay_dt * a6), h6, du * b1.z);
    y = fma(h6, V(c1.z), y);
    h7 = fma(exp2(decay_dt * a7), h7, du * b1.w);
    y = fma(h7, V(c1.w), y);
    h8 = fma(exp2(decay_dt * a8), h8, du * b2.x);
    y = fma(h8, V(c2.x), y);
    h9 = fma(exp2(decay_dt * a9), h9, du * b2.y);
    y = fma(h9, V(c2.y), y);
    h10 = fma(exp2(decay_dt * a10), h10, du * b2.z);
    y = fma(h10, V(c2.z), y);
    h11 = fma(exp2(decay_dt * a11), h11, du * b2.w);
    y = fma(h11, V(c2.w), y);
    h12 = fma(exp2(decay_dt * a12), h12, du * b3.x);
    y = fma(h12, V(c3.x), y);
    h13 = fma(exp2(decay_dt * a13), h13, du * b3.y);
    y = fma(h13, V(c3.y), y);
    h14 = fma(exp2(decay_dt * a14), h14, du * b3.z);
    y = fma(h14, V(c3.z), y);
    h15 = fma(exp2(decay_dt * a15), h15, du * b3.w);
    y = fma(h15, V(c3.w), y);
    y = fma(d_skip, ut, y);
    let o = (row * p.channels + e) / W;
    if (in_range && (FLAGS & UNGATED) != 0u) {
        var g = y;
        if ((FLAGS & UNGATED_CLIP) != 0u) {
            g = max(g, V(0.0));
        }
        if ((FLAGS & UNGATED_ADD) != 0u) {
            g += ungated[o];
        }
        ungated[o] = g;
    }
    if ((FLAGS & HAS_Z) != 0u) {
        y = y * zt / (1.0 + exp(-zt));
    }
    if ((FLAGS & ACCUMULATE) != 0u) {
        y += out[o];
    }
    if (in_range) {
        out[o] = y;
    }
}

// Grid: x = blocks of 64 channels, y = sequence. The sequence index comes from the workgroup,
// so B/C addresses are uniform; no invocation returns early (the broadcasts need all lanes):
// past the last channel, invocations clamp to it and store nothing.
@compute @workgroup_size(WG)
fn selective_scan(
    @builtin(workgroup_id) wg: vec3<u32>,
// #if subgroups
    @builtin(subgroup_invocation_id) subgroup_lane: u32,
// #endif
    @builtin(local_invocation_index) li: u32,
) {
// #if subgroups
    lane = subgroup_lane;
// #endif
    seq = wg.y;
    let i_raw = wg.x * WG + li;
    in_range = (FLAGS & RAGGED) == 0u || i_raw * W < p.channels;
    e = min(i_raw * W, p.channels - W);
    let ns = p.nstate;
    a0 = a_at(e, 0u);
    a1 = a_at(e, 1u);
    a2 = a_at(e, 2u);
    a3 = a_at(e, 3u);
    a4 = a_at(e, 4u);
    a5 = a_at(e, 5u);
    a6 = a_at(e, 6u);
    a7 = a_at(e, 7u);
    a8 = a_at(e, 8u);
    a9 = a_at(e, 9u);
    a10 = a_at(e, 10u);
    a11 = a_at(e, 11u);
    a12 = a_at(e, 12u);
    a13 = a_at(e, 13u);
    a14 = a_at(e, 14u);
    a15 = a_at(e, 15u);
    d_skip = chan_ssm(p.channels * ns + e, 1u);
    dt_bias = chan_ssm(p.channels * ns + p.channels + e, 1u);
    let sbase = (seq * p.channels + e) * ns;
    h0 = h_at(sbase, 0u);
    h1 = h_at(sbase, 1u);
    h2 = h_at(sbase, 2u);
    h3 = h_at(sbase, 3u);
    h4 = h_at(sbase, 4u);
    h5 = h_at(sbase, 5u);
    h6 = h_at(sbase, 6u);
    h7 = h_at(sbase, 7u);
    h8 = h_at(sbase, 8u);
    h9 = h_at(sbase, 9u);
    h10 = h_at(sbase, 10u);
    h11 = h_at(sbase, 11u);
    h12 = h_at(sbase, 12u);
    h13 = h_at(sbase, 13u);
    h14 = h_at(sbase, 14u);
    h15 = h_at(sbase, 15u);
    // Zero B past nstate keeps the padded states at zero.
    m0 = vec4<f32>(vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(ns));
    m1 = vec4<f32>(vec4<u32>(4u, 5u, 6u, 7u) < vec4<u32>(ns));
    m2 = vec4<f32>(vec4<u32>(8u, 9u, 10u, 11u) < vec4<u32>(ns));
    m3 = vec4<f32>(vec4<u32>(12u, 13u, 14u, 15u) < vec4<u32>(ns));
// #if subgroups
    if ((FLAGS & DT_PROJ) != 0u) {
        dt_a0 = dt_weights(e, 0u);
        dt_a1 = dt_weights(e, 4u);
        dt_a2 = dt_weights(e, 8u);
        dt_a3 = dt_weights(e, 12u);
        dt_b0 = dt_weights(e + 1u, 0u);
        dt_b1 = dt_weights(e + 1u, 4u);
        dt_b2 = dt_weights(e + 1u, 8u);
        dt_b3 = dt_weights(e + 1u, 12u);
    }
// #endif
    // Delta of a pruned (zero-input) position, for GAP_DECAY.
    idle_dt = dt_bias;
    if ((FLAGS & SOFTPLUS) != 0u) {
        idle_dt = softplus(dt_bias);
    }
    // Two tokens per iteration: half the loop overhead.
    var s = 0u;
    for (; s + 1u < p.len; s += 2u) {
        step(s);
        step(s + 1u);
    }
    if (s < p.len) {
        step(s);
    }
    if (in_range && (FLAGS & WRITE_STATE) != 0u) {
        store_h(sbase, 0u, h0);
        store_h(sbase, 1u, h1);
        store_h(sbase, 2u, h2);
        store_h(sbase, 3u, h3);
        store_h(sbase, 4u, h4);
        store_h(sbase, 5u, h5);
        store_h(sbase, 6u, h6);
        store_h(sbase, 7u, h7);
        store_h(sbase, 8u, h8);
        store_h(sbase, 9u, h9);
        store_h(sbase, 10u, h10);
        store_h(sbase, 11u, h11);
        store_h(sbase, 12u, h12);
        store_h(sbase, 13u, h13);
        store_h(sbase, 14u, h14);
        store_h(sbase, 15u, h15);
    }
}
