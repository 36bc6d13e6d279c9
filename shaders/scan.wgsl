// Mamba-1 selective scan, as mamba_ssm's selective_scan_ref computes it, per (sequence, channel):
//   dt  = softplus(delta[t] + dt_bias)                (softplus when flagged)
//   h_n = exp(dt * A_n) * h_n + dt * B[t, n] * u[t]   (n < nstate <= 16)
//   y   = sum_n C[t, n] * h_n + D * u[t]
//   y  *= silu(z[t])                                  (when flagged)
// The 16 states live in four vec4 registers. B and C are shared by all channels: in the
// subgroup variant, eight invocations load the step's 32 B/C values with one vec4 load each and
// broadcast them (a software driver pays per invocation for every load, same address or not). The optional carried state
// makes the same kernel a decode step (len 1), and `reverse` walks the tokens backwards
// without copying them, and `accumulate` adds into the output (Vim's backward branch summed
// onto the forward one).

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
    flags: u32,
    _pad0: u32,
    _pad1: u32,
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
@group(0) @binding(6) var<storage, read_write> state: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;
@group(0) @binding(8) var<storage, read_write> ungated: array<f32>;
@group(0) @binding(9) var<storage, read> positions: array<u32>;

// #include ssm_inputs

fn state_at(base: u32, n: u32) -> f32 {
    return select(0.0, state[base + min(n, p.nstate - 1u)], n < p.nstate);
}

fn state4(base: u32, n0: u32) -> vec4<f32> {
    return vec4<f32>(state_at(base, n0), state_at(base, n0 + 1u), state_at(base, n0 + 2u), state_at(base, n0 + 3u));
}

fn store_state4(base: u32, n0: u32, v: vec4<f32>) {
    if (n0 < p.nstate) { state[base + n0] = v.x; }
    if (n0 + 1u < p.nstate) { state[base + n0 + 1u] = v.y; }
    if (n0 + 2u < p.nstate) { state[base + n0 + 2u] = v.z; }
    if (n0 + 3u < p.nstate) { state[base + n0 + 3u] = v.w; }
}

// Grid: x = channel blocks of 64, y = sequence. The sequence index comes from the workgroup,
// so B/C addresses are uniform and the driver can load them once for all invocations; no
// invocation returns early, for the same reason (ragged channels are clamped, not stored).
@compute @workgroup_size(64)
fn selective_scan(
    @builtin(workgroup_id) wg: vec3<u32>,
// #if subgroups
    @builtin(subgroup_invocation_id) lane: u32,
// #endif
    @builtin(local_invocation_index) li: u32,
) {
    let b = wg.y;
    let e_raw = wg.x * 64u + li;
    let valid = e_raw < p.channels;
    let e = min(e_raw, p.channels - 1u);
    let idx = b * p.channels + e;
    let ns = p.nstate;
    let abase = e * ns;
    let a0 = ssm4(abase, 0u);
    let a1 = ssm4(abase, 4u);
    let a2 = ssm4(abase, 8u);
    let a3 = ssm4(abase, 12u);
    let d_skip = ssm[p.channels * ns + e];
    let dt_bias = ssm[p.channels * ns + p.channels + e];
    let sbase = idx * ns;
    var h0 = vec4<f32>(0.0);
    var h1 = vec4<f32>(0.0);
    var h2 = vec4<f32>(0.0);
    var h3 = vec4<f32>(0.0);
    if ((p.flags & USE_STATE) != 0u) {
        h0 = state4(sbase, 0u);
        h1 = state4(sbase, 4u);
        h2 = state4(sbase, 8u);
        h3 = state4(sbase, 12u);
    }
    let reverse = (p.flags & REVERSE) != 0u;
    // Zero B past nstate keeps the padded states at zero.
    let m0 = vec4<f32>(vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(ns));
    let m1 = vec4<f32>(vec4<u32>(4u, 5u, 6u, 7u) < vec4<u32>(ns));
    let m2 = vec4<f32>(vec4<u32>(8u, 9u, 10u, 11u) < vec4<u32>(ns));
    let m3 = vec4<f32>(vec4<u32>(12u, 13u, 14u, 15u) < vec4<u32>(ns));
    // Delta of a pruned (zero-input) position, for GAP_DECAY.
    var idle_dt = dt_bias;
    if ((p.flags & SOFTPLUS) != 0u) {
        idle_dt = select(log(1.0 + exp(dt_bias)), dt_bias, dt_bias > 20.0);
    }
    var prev_pos = 0u;
    for (var s = 0u; s < p.len; s++) {
        let t = select(s, p.len - 1u - s, reverse);
        let row = b * p.len + t;
        let ut = u[p.u_offset + row * p.u_stride + e];
        var dt = delta[p.dt_offset + row * p.dt_stride + e] + dt_bias;
        if ((p.flags & SOFTPLUS) != 0u) {
            dt = select(log(1.0 + exp(dt)), dt, dt > 20.0);
        }
        if ((p.flags & GAP_DECAY) != 0u) {
            let pos = positions[row];
            if (s > 0u) {
                let gap = f32(max(abs(i32(pos) - i32(prev_pos)), 1) - 1);
                let g = gap * idle_dt;
                h0 *= exp(g * a0);
                h1 *= exp(g * a1);
                h2 *= exp(g * a2);
                h3 *= exp(g * a3);
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
        h0 = fma(exp(dt * a0), h0, du * b0);
        h1 = fma(exp(dt * a1), h1, du * b1);
        h2 = fma(exp(dt * a2), h2, du * b2);
        h3 = fma(exp(dt * a3), h3, du * b3);
        var y = dot(h0, c0) + dot(h1, c1) + dot(h2, c2) + dot(h3, c3);
        y = fma(d_skip, ut, y);
        if (valid && (p.flags & UNGATED) != 0u) {
            let o = row * p.channels + e;
            let v = select(y, max(y, 0.0), (p.flags & UNGATED_CLIP) != 0u);
            ungated[o] = select(v, ungated[o] + v, (p.flags & UNGATED_ADD) != 0u);
        }
        if ((p.flags & HAS_Z) != 0u) {
            let zt = z[p.z_offset + row * p.z_stride + e];
            y = y * zt / (1.0 + exp(-zt));
        }
        if (valid) {
            let o = row * p.channels + e;
            out[o] = select(y, out[o] + y, (p.flags & ACCUMULATE) != 0u);
        }
    }
    if (valid && (p.flags & WRITE_STATE) != 0u) {
        store_state4(sbase, 0u, h0);
        store_state4(sbase, 4u, h1);
        store_state4(sbase, 8u, h2);
        store_state4(sbase, 12u, h3);
    }
}
