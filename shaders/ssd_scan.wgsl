// Mamba-2's SSD scan (state space duality), per sequence b and head h with head dim P, state N:
//   dt[t]   = clamp(softplus(dt_raw[t, h] + dt_bias[h]), dt_min, dt_max)
//   S[t]    = exp(dt[t] * A[h]) * S[t-1] + dt[t] * x[t, h, :] (outer) B[t, g, :]   (S: P x N)
//   y[t, h] = S[t] C[t, g, :] + D[h] * x[t, h, :]
// where the head's group is g = h / (H / G) (B and C are shared by the H / G heads of a group).
//
// Two forms of the same recurrence:
// - ssd_step: the recurrence token by token, one invocation per (b, h, p) with its N state
//   values in the carried state buffer (decode: one token per call).
// - the chunked form for prefill (mamba_ssm's ssd_minimal_discrete), three dispatches:
//   1. ssd_chunk_state, per (b, h, chunk): the chunk's own end state from zero,
//      S_c = sum_j exp(cum[last] - cum[j]) dt[j] x[j] (outer) B[j], cum = the chunk's running sum
//      of dt * A, and the chunk's total log decay cum[last];
//   2. ssd_state_pass, per (b, h, state element): the states entering each chunk,
//      H_0 = initial (or 0), H_{c+1} = exp(cum_c[last]) H_c + S_c, written over S_c in place,
//      and the final state into the carry;
//   3. ssd_chunk_out, per (b, h, chunk, 8 query rows): the masked "attention" inside the chunk
//      plus the entering state,
//      y[i] = sum_{j<=i} exp(cum[i] - cum[j]) (C[i].B[j]) dt[j] x[j] + exp(cum[i]) H_c C[i] + D x[i].
// A length that is not a multiple of the chunk size leaves the last chunk short.

struct Params {
    batch: u32,
    len: u32,
    heads: u32,
    headdim: u32,
    nstate: u32,
    groups: u32,
    chunk: u32,
    nchunks: u32,
    x_offset: u32,
    x_stride: u32,
    dt_offset: u32,
    dt_stride: u32,
    b_offset: u32,
    c_offset: u32,
    bc_stride: u32,
    flags: u32,
    dt_min: f32,
    dt_max: f32,
    _pad0: u32,
    _pad1: u32,
}

const USE_STATE: u32 = 1u;
const WRITE_STATE: u32 = 2u;

const WG: u32 = 64u;
// Longest chunk (workgroup arrays are sized for it) and query rows per ssd_chunk_out workgroup.
const MAX_CHUNK: u32 = 256u;
const ROWS: u32 = 8u;
// State columns per ssd_chunk_state workgroup (four vec4 accumulators).
const NB: u32 = 16u;

@group(0) @binding(0) var<uniform> p: Params;

// ssd_step, ssd_chunk_out (bindings 1-5 shared), ssd_chunk_state (1-3, 5).
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dt: array<f32>;
@group(0) @binding(3) var<storage, read> bm: array<f32>;
@group(0) @binding(4) var<storage, read> cm: array<f32>;
// [A (heads, negative) | D (heads) | dt_bias (heads)]
@group(0) @binding(5) var<storage, read> ssm: array<f32>;
// ssd_step: [batch, heads, P, N], read when USE_STATE, always written.
@group(0) @binding(6) var<storage, read_write> state: array<f32>;
// ssd_chunk_out: the states entering each chunk, [batch, heads, nchunks, P, N].
@group(0) @binding(6) var<storage, read> chunk_in: array<f32>;
// ssd_step, ssd_chunk_out: y [batch * len, heads * P].
@group(0) @binding(7) var<storage, read_write> out: array<f32>;
// ssd_chunk_state: total log decay per chunk [batch, heads, nchunks], and the chunks' own
// end states [batch, heads, nchunks, P, N].
@group(0) @binding(4) var<storage, read_write> totals_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> states_out: array<f32>;
// ssd_state_pass.
@group(0) @binding(1) var<storage, read> totals: array<f32>;
@group(0) @binding(2) var<storage, read_write> states: array<f32>;
@group(0) @binding(3) var<storage, read_write> carry: array<f32>;

var<workgroup> sh_dt: array<f32, MAX_CHUNK>;
var<workgroup> sh_cum: array<f32, MAX_CHUNK>;
// ssd_chunk_out: weights of the masked "attention", [j][query row].
var<workgroup> sh_scores: array<f32, 2048>; // MAX_CHUNK * ROWS

fn dt_at(row: u32, h: u32) -> f32 {
    var v = dt[p.dt_offset + row * p.dt_stride + h] + ssm[2u * p.heads + h];
    v = select(log(1.0 + exp(v)), v, v > 20.0);
    return clamp(v, p.dt_min, p.dt_max);
}

fn x_at(row: u32, h: u32, pp: u32) -> f32 {
    return x[p.x_offset + row * p.x_stride + h * p.headdim + pp];
}

// B or C of row `row`, group g, elements n0..n0+3 (zero past nstate).
fn b4(row: u32, g: u32, n0: u32) -> vec4<f32> {
    let base = p.b_offset + row * p.bc_stride + g * p.nstate;
    let last = p.nstate - 1u;
    let n = vec4<u32>(n0, n0 + 1u, n0 + 2u, n0 + 3u);
    let v = vec4<f32>(bm[base + min(n.x, last)], bm[base + min(n.y, last)], bm[base + min(n.z, last)], bm[base + min(n.w, last)]);
    return select(vec4<f32>(0.0), v, n < vec4<u32>(p.nstate));
}

fn c4(row: u32, g: u32, n0: u32) -> vec4<f32> {
    let base = p.c_offset + row * p.bc_stride + g * p.nstate;
    let last = p.nstate - 1u;
    let n = vec4<u32>(n0, n0 + 1u, n0 + 2u, n0 + 3u);
    let v = vec4<f32>(cm[base + min(n.x, last)], cm[base + min(n.y, last)], cm[base + min(n.z, last)], cm[base + min(n.w, last)]);
    return select(vec4<f32>(0.0), v, n < vec4<u32>(p.nstate));
}

fn group_of(h: u32) -> u32 {
    return h / (p.heads / p.groups);
}

// sh_dt[j] and sh_cum[j] = sum_{k<=j} dt[k] * A for the first `count` tokens of the chunk
// starting at `row0`. Called by the whole workgroup (uniform control flow).
fn chunk_decay(row0: u32, h: u32, count: u32, li: u32) {
    let a = ssm[h];
    for (var j = li; j < count; j += WG) {
        let d = dt_at(row0 + j, h);
        sh_dt[j] = d;
        sh_cum[j] = d * a;
    }
    workgroupBarrier();
    if (li == 0u) {
        var s = 0.0;
        for (var j = 0u; j < count; j++) {
            s += sh_cum[j];
            sh_cum[j] = s;
        }
    }
    workgroupBarrier();
}

// One invocation per (b, h, p), token by token.
@compute @workgroup_size(64)
fn ssd_step(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let idx = (wg.x + wg.y * nwg.x) * WG + li;
    if (idx >= p.batch * p.heads * p.headdim) {
        return;
    }
    let b = idx / (p.heads * p.headdim);
    let h = (idx / p.headdim) % p.heads;
    let pp = idx % p.headdim;
    let g = group_of(h);
    let a = ssm[h];
    let d_skip = ssm[p.heads + h];
    let sbase = idx * p.nstate;
    let inner = p.heads * p.headdim;
    for (var s = 0u; s < p.len; s++) {
        let row = b * p.len + s;
        let d = dt_at(row, h);
        let decay = exp(d * a);
        let xv = x_at(row, h, pp);
        let dx = d * xv;
        let keep = s > 0u || (p.flags & USE_STATE) != 0u;
        var y = 0.0;
        for (var n = 0u; n < p.nstate; n++) {
            let prev = select(0.0, state[sbase + n], keep);
            let bn = bm[p.b_offset + row * p.bc_stride + g * p.nstate + n];
            let cn = cm[p.c_offset + row * p.bc_stride + g * p.nstate + n];
            let v = fma(decay, prev, dx * bn);
            state[sbase + n] = v;
            y = fma(cn, v, y);
        }
        out[row * inner + h * p.headdim + pp] = fma(d_skip, xv, y);
    }
}

// Grid: x = blocks of NB state columns, y = chunk, z = b * heads + h. Invocations walk P.
@compute @workgroup_size(64)
fn ssd_chunk_state(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let n0 = wg.x * NB;
    let c = wg.y;
    let h = wg.z % p.heads;
    let b = wg.z / p.heads;
    let t0 = c * p.chunk;
    let q = min(p.chunk, p.len - t0);
    let row0 = b * p.len + t0;
    let g = group_of(h);
    chunk_decay(row0, h, q, li);
    let last = sh_cum[q - 1u];
    // The weight of token j in the chunk's end state (each invocation reads back its own).
    for (var j = li; j < q; j += WG) {
        sh_dt[j] = exp(last - sh_cum[j]) * sh_dt[j];
    }
    workgroupBarrier();
    let bhc = (b * p.heads + h) * p.nchunks + c;
    for (var pp = li; pp < p.headdim; pp += WG) {
        var s0 = vec4<f32>(0.0);
        var s1 = vec4<f32>(0.0);
        var s2 = vec4<f32>(0.0);
        var s3 = vec4<f32>(0.0);
        for (var j = 0u; j < q; j++) {
            let row = row0 + j;
            let w = sh_dt[j] * x_at(row, h, pp);
            s0 = fma(vec4<f32>(w), b4(row, g, n0), s0);
            s1 = fma(vec4<f32>(w), b4(row, g, n0 + 4u), s1);
            s2 = fma(vec4<f32>(w), b4(row, g, n0 + 8u), s2);
            s3 = fma(vec4<f32>(w), b4(row, g, n0 + 12u), s3);
        }
        let base = (bhc * p.headdim + pp) * p.nstate + n0;
        var acc = array<vec4<f32>, 4>(s0, s1, s2, s3);
        for (var k = 0u; k < NB && n0 + k < p.nstate; k++) {
            states_out[base + k] = acc[k / 4u][k % 4u];
        }
    }
    if (wg.x == 0u && li == 0u) {
        totals_out[bhc] = last;
    }
}

// Grid: x = blocks of 64 state elements (P x N), y = h, z = b.
@compute @workgroup_size(64)
fn ssd_state_pass(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let size = p.headdim * p.nstate;
    let e = wg.x * WG + li;
    if (e >= size) {
        return;
    }
    let bh = wg.z * p.heads + wg.y;
    var s = 0.0;
    if ((p.flags & USE_STATE) != 0u) {
        s = carry[bh * size + e];
    }
    for (var c = 0u; c < p.nchunks; c++) {
        let i = (bh * p.nchunks + c) * size + e;
        let own = states[i];
        states[i] = s;
        s = fma(exp(totals[bh * p.nchunks + c]), s, own);
    }
    if ((p.flags & WRITE_STATE) != 0u) {
        carry[bh * size + e] = s;
    }
}

// Grid: x = chunk * ceil(chunk / ROWS) + row block, y = h, z = b. Invocations walk P.
@compute @workgroup_size(64)
fn ssd_chunk_out(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let blocks = (p.chunk + ROWS - 1u) / ROWS;
    let c = wg.x / blocks;
    let i0 = (wg.x % blocks) * ROWS;
    let h = wg.y;
    let b = wg.z;
    let t0 = c * p.chunk;
    let q = min(p.chunk, p.len - t0);
    // The short last chunk has fewer row blocks; those workgroups leave together.
    if (i0 >= q) {
        return;
    }
    let ni = min(ROWS, q - i0);
    let jn = i0 + ni; // tokens this block's rows see
    let row0 = b * p.len + t0;
    let g = group_of(h);
    chunk_decay(row0, h, jn, li);
    // Scores: (C[i] . B[j]) exp(cum[i] - cum[j]) dt[j] for j <= i, else 0.
    for (var k = li; k < jn * ROWS; k += WG) {
        let j = k / ROWS;
        let r = k % ROWS;
        let i = i0 + r;
        var s = 0.0;
        if (r < ni && j <= i) {
            var dot_cb = 0.0;
            for (var n = 0u; n < p.nstate; n += 4u) {
                dot_cb += dot(c4(row0 + i, g, n), b4(row0 + j, g, n));
            }
            s = dot_cb * exp(sh_cum[i] - sh_cum[j]) * sh_dt[j];
        }
        sh_scores[j * ROWS + r] = s;
    }
    workgroupBarrier();
    let d_skip = ssm[p.heads + h];
    let inner = p.heads * p.headdim;
    let size = p.headdim * p.nstate;
    let hin = ((b * p.heads + h) * p.nchunks + c) * size;
    for (var pp = li; pp < p.headdim; pp += WG) {
        // Inside the chunk: rows i0..i0+3 and i0+4..i0+7.
        var y0 = vec4<f32>(0.0);
        var y1 = vec4<f32>(0.0);
        for (var j = 0u; j < jn; j++) {
            let xv = vec4<f32>(x_at(row0 + j, h, pp));
            let k = j * ROWS;
            y0 = fma(xv, vec4<f32>(sh_scores[k], sh_scores[k + 1u], sh_scores[k + 2u], sh_scores[k + 3u]), y0);
            y1 = fma(xv, vec4<f32>(sh_scores[k + 4u], sh_scores[k + 5u], sh_scores[k + 6u], sh_scores[k + 7u]), y1);
        }
        // From the entering state: H_c[p, :] . C[i].
        var o0 = vec4<f32>(0.0);
        var o1 = vec4<f32>(0.0);
        let last = ni - 1u;
        for (var n = 0u; n < p.nstate; n += 4u) {
            let nn = vec4<u32>(n, n + 1u, n + 2u, n + 3u);
            let sb = hin + pp * p.nstate;
            let hv = select(vec4<f32>(0.0), vec4<f32>(chunk_in[sb + min(nn.x, p.nstate - 1u)], chunk_in[sb + min(nn.y, p.nstate - 1u)], chunk_in[sb + min(nn.z, p.nstate - 1u)], chunk_in[sb + min(nn.w, p.nstate - 1u)]), nn < vec4<u32>(p.nstate));
            o0.x += dot(hv, c4(row0 + i0, g, n));
            o0.y += dot(hv, c4(row0 + i0 + min(1u, last), g, n));
            o0.z += dot(hv, c4(row0 + i0 + min(2u, last), g, n));
            o0.w += dot(hv, c4(row0 + i0 + min(3u, last), g, n));
            o1.x += dot(hv, c4(row0 + i0 + min(4u, last), g, n));
            o1.y += dot(hv, c4(row0 + i0 + min(5u, last), g, n));
            o1.z += dot(hv, c4(row0 + i0 + min(6u, last), g, n));
            o1.w += dot(hv, c4(row0 + i0 + min(7u, last), g, n));
        }
        var ys = array<vec4<f32>, 2>(y0, y1);
        var os = array<vec4<f32>, 2>(o0, o1);
        for (var r = 0u; r < ni; r++) {
            let i = i0 + r;
            let row = row0 + i;
            let y = ys[r / 4u][r % 4u] + exp(sh_cum[i]) * os[r / 4u][r % 4u];
            out[row * inner + h * p.headdim + pp] = fma(d_skip, x_at(row, h, pp), y);
        }
    }
}
