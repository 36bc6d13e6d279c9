// Causal depthwise conv1d, width 4, + SiLU, for Mamba's x branch:
//   c[t, e] = bias[e] + sum_k w[e, k] * x[t - 3 + k, e];   out = c * sigmoid(c)
// One invocation per (sequence, channel) walks the tokens with a 4-tap window in registers,
// so each input is read once. Positions before the start read the carried conv state (the
// last 4 inputs, oldest first, as mamba_ssm's conv_state) when use_state != 0, else zero;
// with write_state != 0 the last 4 inputs are stored back: prefill and decode steps are the
// same kernel. With reverse != 0 the tokens are walked last to first: the causal conv of the
// flipped sequence, written at the original positions (Vim's backward branch), with no copies.
// With has_positions != 0 the tokens are the kept ones of a pruned sequence and `positions`
// holds their original positions: the window slides over the original positions, reading
// pruned ones as zero (the alignment that decays the scan's state over the same gaps).
// `conv1d_silu_vec4` (channels, offset and stride multiples of 4) gives each invocation four
// channels and reads and writes vec4s: a software driver pays per load instruction nearly
// whatever its width.

struct Params {
    batch: u32,
    len: u32,
    channels: u32,
    x_offset: u32,
    x_stride: u32,
    use_state: u32,
    write_state: u32,
    reverse: u32,
    has_positions: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> state: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read> positions: array<u32>;
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> out4: array<vec4<f32>>;

// How far the window moves before token s (at original position `here`): the zeros of the
// pruned positions since the previous kept token (at most 3 matter), then the token itself.
fn zeros_before(s: u32, here: u32, previous: u32) -> u32 {
    let gap = select(select(here - previous, previous - here, p.reverse != 0u), 1u, s == 0u);
    return clamp(gap, 1u, 4u) - 1u;
}

@compute @workgroup_size(64)
fn conv1d_silu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let idx = (wg.x + wg.y * nwg.x) * 64u + li;
    if (idx >= p.batch * p.channels) {
        return;
    }
    let b = idx / p.channels;
    let e = idx - b * p.channels;
    let w = weight[e];
    let c0 = bias[e];
    // window = (x[t-4], x[t-3], x[t-2], x[t-1])
    var window = vec4<f32>(0.0);
    if (p.use_state != 0u) {
        window = state[idx];
    }
    var previous = 0u;
    for (var s = 0u; s < p.len; s++) {
        let t = select(s, p.len - 1u - s, p.reverse != 0u);
        let row = b * p.len + t;
        let xt = x[p.x_offset + row * p.x_stride + e];
        if (p.has_positions != 0u) {
            let here = positions[row];
            for (var k = zeros_before(s, here, previous); k > 0u; k--) {
                window = vec4<f32>(window.yzw, 0.0);
            }
            previous = here;
        }
        window = vec4<f32>(window.yzw, xt);
        let c = c0 + dot(window, w);
        out[row * p.channels + e] = c / (1.0 + exp(-c));
    }
    if (p.write_state != 0u) {
        state[idx] = window;
    }
}

// Four channels e..e+3: tap k of each (x[t-4+k] and w[., k]) is a vec4 over the channels.
@compute @workgroup_size(64)
fn conv1d_silu_vec4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let idx = (wg.x + wg.y * nwg.x) * 64u + li;
    let groups = p.channels / 4u;
    if (idx >= p.batch * groups) {
        return;
    }
    let b = idx / groups;
    let e = (idx - b * groups) * 4u;
    let we0 = weight[e];
    let we1 = weight[e + 1u];
    let we2 = weight[e + 2u];
    let we3 = weight[e + 3u];
    let w0 = vec4<f32>(we0.x, we1.x, we2.x, we3.x);
    let w1 = vec4<f32>(we0.y, we1.y, we2.y, we3.y);
    let w2 = vec4<f32>(we0.z, we1.z, we2.z, we3.z);
    let w3 = vec4<f32>(we0.w, we1.w, we2.w, we3.w);
    let c0 = vec4<f32>(bias[e], bias[e + 1u], bias[e + 2u], bias[e + 3u]);
    // x[t-4], x[t-3], x[t-2], x[t-1] of the four channels.
    var x0 = vec4<f32>(0.0);
    var x1 = vec4<f32>(0.0);
    var x2 = vec4<f32>(0.0);
    var x3 = vec4<f32>(0.0);
    let s0 = b * p.channels + e;
    if (p.use_state != 0u) {
        let h0 = state[s0];
        let h1 = state[s0 + 1u];
        let h2 = state[s0 + 2u];
        let h3 = state[s0 + 3u];
        x0 = vec4<f32>(h0.x, h1.x, h2.x, h3.x);
        x1 = vec4<f32>(h0.y, h1.y, h2.y, h3.y);
        x2 = vec4<f32>(h0.z, h1.z, h2.z, h3.z);
        x3 = vec4<f32>(h0.w, h1.w, h2.w, h3.w);
    }
    var previous = 0u;
    for (var s = 0u; s < p.len; s++) {
        let t = select(s, p.len - 1u - s, p.reverse != 0u);
        let row = b * p.len + t;
        let xt = x4[(p.x_offset + row * p.x_stride + e) / 4u];
        if (p.has_positions != 0u) {
            let here = positions[row];
            for (var k = zeros_before(s, here, previous); k > 0u; k--) {
                x0 = x1;
                x1 = x2;
                x2 = x3;
                x3 = vec4<f32>(0.0);
            }
            previous = here;
        }
        x0 = x1;
        x1 = x2;
        x2 = x3;
        x3 = xt;
        let c = c0 + w0 * x0 + w1 * x1 + w2 * x2 + w3 * x3;
        out4[(row * p.channels + e) / 4u] = c / (1.0 + exp(-c));
    }
    if (p.write_state != 0u) {
        state[s0] = vec4<f32>(x0.x, x1.x, x2.x, x3.x);
        state[s0 + 1u] = vec4<f32>(x0.y, x1.y, x2.y, x3.y);
        state[s0 + 2u] = vec4<f32>(x0.z, x1.z, x2.z, x3.z);
        state[s0 + 3u] = vec4<f32>(x0.w, x1.w, x2.w, x3.w);
    }
}
