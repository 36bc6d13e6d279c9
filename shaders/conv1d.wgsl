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
            // Zeros for the pruned positions since the previous kept token (at most 3 matter).
            let here = positions[row];
            let gap = select(select(here - previous, previous - here, p.reverse != 0u), 1u, s == 0u);
            for (var k = 1u; k < min(gap, 4u); k++) {
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
