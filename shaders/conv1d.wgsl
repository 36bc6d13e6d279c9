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
// With directions = 2 the grid makes two walks, the second reversed, with the second conv's
// weights (stacked after the first's) into the second half of `out`: Vim's two directions in
// one dispatch.
// `conv1d_silu_vec4` (channels, offset and stride multiples of 4) gives each invocation four
// channels and reads and writes vec4s, `conv1d_silu_u64` eight as vec4<u64>s: a software
// driver pays per load component, nearly whatever its width.

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
    directions: u32,
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

// How far the window moves before token s (in `row`), besides the token itself: the zeros of
// the pruned positions since the previous kept token (at most 3 matter); none without
// positions.
fn gap_before(s: u32, row: u32, previous: ptr<function, u32>, reverse: bool) -> u32 {
    if (p.has_positions == 0u) {
        return 0u;
    }
    let here = positions[row];
    let gap = select(select(here - *previous, *previous - here, reverse), 1u, s == 0u);
    *previous = here;
    return clamp(gap, 1u, 4u) - 1u;
}

// An invocation's work: sequence `seq`, channels from `e`, walk `dir` (its weights start at
// row `w`, its outputs at element `out`), last to first when `reverse`; `live` is false past
// the last one.
struct Block {
    seq: u32,
    e: u32,
    dir: u32,
    w: u32,
    out: u32,
    reverse: bool,
    live: bool,
}

// The block of an invocation that takes `width` channels, in workgroups of `group`.
fn block_of(wg: vec3<u32>, nwg: vec3<u32>, li: u32, group: u32, width: u32) -> Block {
    let idx = (wg.x + wg.y * nwg.x) * group + li;
    let blocks = p.channels / width;
    let walk = idx / blocks;
    let dir = walk / p.batch;
    return Block(walk - dir * p.batch, (idx - walk * blocks) * width, dir, dir * p.channels,
                 dir * p.batch * p.len * p.channels, (p.reverse != 0u) != (dir == 1u), dir < p.directions);
}

// The row of step s of sequence `seq`'s walk (last to first when reversed).
fn row_at(seq: u32, s: u32, reverse: bool) -> u32 {
    return seq * p.len + select(s, p.len - 1u - s, reverse);
}

@compute @workgroup_size(64)
fn conv1d_silu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let block = block_of(wg, nwg, li, 64u, 1u);
    let b = block.seq;
    let e = block.e;
    if (!block.live) {
        return;
    }
    let w = weight[block.w + e];
    let c0 = bias[block.w + e];
    // window = (x[t-4], x[t-3], x[t-2], x[t-1])
    var window = vec4<f32>(0.0);
    if (p.use_state != 0u) {
        window = state[b * p.channels + e];
    }
    var previous = 0u;
    for (var s = 0u; s < p.len; s++) {
        let row = row_at(b, s, block.reverse);
        for (var k = gap_before(s, row, &previous, block.reverse); k > 0u; k--) {
            window = vec4<f32>(window.yzw, 0.0);
        }
        window = vec4<f32>(window.yzw, x[p.x_offset + row * p.x_stride + e]);
        let c = c0 + dot(window, w);
        out[block.out + row * p.channels + e] = c / (1.0 + exp(-c));
    }
    if (p.write_state != 0u) {
        state[b * p.channels + e] = window;
    }
}

// Four channels: their last four inputs (x0 = x[t-4] .. x3 = x[t-1]), their taps (tap k of
// each in wk) and biases. The vec4 and 64-bit kernels below hold one or two of these.
struct Window {
    x0: vec4<f32>,
    x1: vec4<f32>,
    x2: vec4<f32>,
    x3: vec4<f32>,
}

struct Taps {
    w0: vec4<f32>,
    w1: vec4<f32>,
    w2: vec4<f32>,
    w3: vec4<f32>,
    bias: vec4<f32>,
}

fn slide(w: Window, x: vec4<f32>) -> Window {
    return Window(w.x1, w.x2, w.x3, x);
}

// Rows c.x..c.w of `[channels, 4]` vec4s (the weights, a sequence's conv states), transposed.
fn taps_of(c: vec4<u32>) -> Taps {
    let a = weight[c.x];
    let b = weight[c.y];
    let d = weight[c.z];
    let e = weight[c.w];
    return Taps(vec4<f32>(a.x, b.x, d.x, e.x), vec4<f32>(a.y, b.y, d.y, e.y), vec4<f32>(a.z, b.z, d.z, e.z),
                vec4<f32>(a.w, b.w, d.w, e.w), vec4<f32>(bias[c.x], bias[c.y], bias[c.z], bias[c.w]));
}

// The carried state of sequence `seq`'s channels c, or zeros.
fn window_of(seq: u32, c: vec4<u32>) -> Window {
    if (p.use_state == 0u) {
        return Window(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    }
    let base = seq * p.channels;
    let a = state[base + c.x];
    let b = state[base + c.y];
    let d = state[base + c.z];
    let e = state[base + c.w];
    return Window(vec4<f32>(a.x, b.x, d.x, e.x), vec4<f32>(a.y, b.y, d.y, e.y), vec4<f32>(a.z, b.z, d.z, e.z),
                  vec4<f32>(a.w, b.w, d.w, e.w));
}

fn store_window(seq: u32, c: vec4<u32>, w: Window) {
    let base = seq * p.channels;
    state[base + c.x] = vec4<f32>(w.x0.x, w.x1.x, w.x2.x, w.x3.x);
    state[base + c.y] = vec4<f32>(w.x0.y, w.x1.y, w.x2.y, w.x3.y);
    state[base + c.z] = vec4<f32>(w.x0.z, w.x1.z, w.x2.z, w.x3.z);
    state[base + c.w] = vec4<f32>(w.x0.w, w.x1.w, w.x2.w, w.x3.w);
}

fn conv_silu(t: Taps, w: Window) -> vec4<f32> {
    let c = t.bias + t.w0 * w.x0 + t.w1 * w.x1 + t.w2 * w.x2 + t.w3 * w.x3;
    return c / (1.0 + exp(-c));
}

// Four channels e..e+3, read and written as vec4s.
@compute @workgroup_size(64)
fn conv1d_silu_vec4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let block = block_of(wg, nwg, li, 64u, 4u);
    let b = block.seq;
    let e = block.e;
    if (!block.live) {
        return;
    }
    let c = vec4<u32>(e) + vec4<u32>(0u, 1u, 2u, 3u);
    let taps = taps_of(c + vec4<u32>(block.w));
    var win = window_of(b, c);
    var previous = 0u;
    for (var s = 0u; s < p.len; s++) {
        let row = row_at(b, s, block.reverse);
        for (var k = gap_before(s, row, &previous, block.reverse); k > 0u; k--) {
            win = slide(win, vec4<f32>(0.0));
        }
        win = slide(win, x4[(p.x_offset + row * p.x_stride + e) / 4u]);
        out4[(block.out + row * p.channels + e) / 4u] = conv_silu(taps, win);
    }
    if (p.write_state != 0u) {
        store_window(b, c, win);
    }
}

// #if int64
// Eight channels e..e+7 (channels, offset and stride multiples of 8), read and written as one
// vec4<u64>: the driver's loads and stores cost per component, so 8-byte components halve
// them (1.4x faster at Vim-Ti's shape).
@group(0) @binding(1) var<storage, read> x8: array<vec4<u64>>;
@group(0) @binding(5) var<storage, read_write> out8: array<vec4<u64>>;

// #include packed8

// Workgroups of 8: there are few invocations (48 for Vim-Ti's 384 channels), and a CPU
// driver runs each workgroup on one thread.
@compute @workgroup_size(8)
fn conv1d_silu_u64(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let block = block_of(wg, nwg, li, 8u, 8u);
    let b = block.seq;
    let e = block.e;
    if (!block.live) {
        return;
    }
    let even = vec4<u32>(e) + vec4<u32>(0u, 2u, 4u, 6u);
    let odd = even + vec4<u32>(1u);
    let taps_even = taps_of(even + vec4<u32>(block.w));
    let taps_odd = taps_of(odd + vec4<u32>(block.w));
    var win_even = window_of(b, even);
    var win_odd = window_of(b, odd);
    var previous = 0u;
    for (var s = 0u; s < p.len; s++) {
        let row = row_at(b, s, block.reverse);
        for (var k = gap_before(s, row, &previous, block.reverse); k > 0u; k--) {
            win_even = slide(win_even, vec4<f32>(0.0));
            win_odd = slide(win_odd, vec4<f32>(0.0));
        }
        let xt = unpack8(x8[(p.x_offset + row * p.x_stride + e) / 8u]);
        win_even = slide(win_even, xt.lo);
        win_odd = slide(win_odd, xt.hi);
        out8[(block.out + row * p.channels + e) / 8u] = pack8(Eight(conv_silu(taps_even, win_even), conv_silu(taps_odd, win_odd)));
    }
    if (p.write_state != 0u) {
        store_window(b, even, win_even);
        store_window(b, odd, win_odd);
    }
}
// #endif
