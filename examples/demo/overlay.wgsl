// The token grid overlay, drawn from the engine's own buffers (no readback): `cells` turns a
// layer's position map and step scores into one entry per original token, then the fragment
// shader paints two panels side by side: the image with kept / pruned cells, and the heatmap
// of the importance scores.

struct Params {
    rows: u32,
    cols: u32,
    // Original index of the class token, or NO_CLS.
    cls: u32,
    // Tokens of the unpruned sequence (patches + class token).
    tokens: u32,
    // Tokens the shown layer ran on (entries of `positions`), and of the next layer after a
    // pruning step (entries of `next`, else 0).
    n_layer: u32,
    n_next: u32,
    has_scores: u32,
    // Nothing was pruned: there is no position map, every token is kept.
    all_kept: u32,
    channels: u32,
    height: u32,
    width: u32,
    // Side of one panel in pixels.
    panel: u32,
    // The preprocess' normalization, to show the pixels the model saw.
    mean: vec4<f32>,
    stdev: vec4<f32>,
}

const NO_CLS: u32 = 0xffffffffu;
// Cell states.
const PRUNED: f32 = 0.0;   // pruned before the shown layer
const DROPPED: f32 = 1.0;  // the shown layer ran on it, the step after it drops it
const KEPT: f32 = 2.0;     // kept through the shown layer (and its step, if any)

@group(0) @binding(0) var<uniform> p: Params;

// ---- cells: one workgroup; per original token (state, score), then (min, max) score at
// index `tokens`.

@group(0) @binding(1) var<storage, read> positions: array<u32>;
@group(0) @binding(2) var<storage, read> scores: array<f32>;
@group(0) @binding(3) var<storage, read> next: array<u32>;
@group(0) @binding(4) var<storage, read_write> cells_out: array<vec2<f32>>;

var<workgroup> lo: array<f32, 256>;
var<workgroup> hi: array<f32, 256>;

@compute @workgroup_size(256)
fn cells(@builtin(local_invocation_index) lid: u32) {
    let initial = select(PRUNED, KEPT, p.all_kept == 1u);
    for (var t = lid; t < p.tokens; t += 256u) {
        cells_out[t] = vec2<f32>(initial, 0.0);
    }
    storageBarrier();
    workgroupBarrier();
    let ran_on = select(KEPT, DROPPED, p.n_next > 0u);
    var low = 3.0e38;
    var high = -3.0e38;
    for (var j = lid; j < p.n_layer; j += 256u) {
        let t = positions[j];
        var s = 0.0;
        if p.has_scores == 1u {
            s = scores[j];
            low = min(low, s);
            high = max(high, s);
        }
        if t < p.tokens {
            cells_out[t] = vec2<f32>(ran_on, s);
        }
    }
    storageBarrier();
    workgroupBarrier();
    for (var j = lid; j < p.n_next; j += 256u) {
        let t = next[j];
        if t < p.tokens {
            cells_out[t].x = KEPT;
        }
    }
    lo[lid] = low;
    hi[lid] = high;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride >>= 1u) {
        if lid < stride {
            lo[lid] = min(lo[lid], lo[lid + stride]);
            hi[lid] = max(hi[lid], hi[lid + stride]);
        }
        workgroupBarrier();
    }
    if lid == 0u {
        cells_out[p.tokens] = vec2<f32>(lo[0], hi[0]);
    }
}

// ---- draw: a full-screen triangle over the target, [panel x 2, panel] pixels. (Bindings
// apart from the compute ones: each pipeline's layout holds only those its entry uses.)

@group(0) @binding(5) var<storage, read> pixels: array<f32>;
@group(0) @binding(6) var<storage, read> cells_in: array<vec2<f32>>;

@vertex
fn vs(@builtin(vertex_index) i: u32) -> @builtin(position) vec4<f32> {
    let xy = vec2<f32>(f32((i << 1u) & 2u), f32(i & 2u));
    return vec4<f32>(xy * 2.0 - 1.0, 0.0, 1.0);
}

// Distinct from the egui theme and from each other, so that a screenshot can be checked by
// colour (tests/demo_screenshot.rs).
const PRUNED_TINT = vec3<f32>(0.85, 0.12, 0.12);
const DROPPED_TINT = vec3<f32>(0.95, 0.75, 0.10);
const KEPT_LINE = vec3<f32>(0.15, 0.85, 0.30);

// Dark blue -> cyan -> white: no red or green cast, so it cannot pass for the mask colours.
fn heat(x: f32) -> vec3<f32> {
    let a = vec3<f32>(0.06, 0.08, 0.30);
    let b = vec3<f32>(0.10, 0.55, 0.90);
    let c = vec3<f32>(0.95, 0.98, 1.00);
    if x < 0.5 {
        return mix(a, b, x * 2.0);
    }
    return mix(b, c, x * 2.0 - 1.0);
}

fn image_rgb(u: vec2<f32>) -> vec3<f32> {
    let x = min(u32(u.x * f32(p.width)), p.width - 1u);
    let y = min(u32(u.y * f32(p.height)), p.height - 1u);
    let plane = p.width * p.height;
    let i = y * p.width + x;
    if p.channels == 1u {
        return vec3<f32>(clamp(pixels[i] * p.stdev.x + p.mean.x, 0.0, 1.0));
    }
    return clamp(
        vec3<f32>(pixels[i], pixels[plane + i], pixels[2u * plane + i]) * p.stdev.xyz + p.mean.xyz,
        vec3<f32>(0.0),
        vec3<f32>(1.0),
    );
}

@fragment
fn fs(@builtin(position) frag: vec4<f32>) -> @location(0) vec4<f32> {
    let panel = f32(p.panel);
    let heatmap = frag.x >= panel;
    let u = vec2<f32>(frag.x - select(0.0, panel, heatmap), frag.y) / panel;
    let grid = vec2<f32>(f32(p.cols), f32(p.rows));
    let cell = min(vec2<u32>(u * grid), vec2<u32>(p.cols - 1u, p.rows - 1u));
    let g = cell.y * p.cols + cell.x;
    // Patches after the class token sit one index further in the sequence.
    let t = g + select(0u, 1u, p.cls != NO_CLS && g >= p.cls);
    let entry = cells_in[t];
    let state = entry.x;
    // Within a pixel of the cell's border.
    let f = fract(u * grid);
    let edge = min(min(f, 1.0 - f).x * panel / grid.x, min(f, 1.0 - f).y * panel / grid.y);
    let border = edge < 1.0;
    let rgb = image_rgb(u);
    var out: vec3<f32>;
    if !heatmap {
        if state == PRUNED {
            out = mix(rgb * 0.35, PRUNED_TINT, 0.6);
        } else if state == DROPPED {
            out = mix(rgb, DROPPED_TINT, 0.5);
        } else {
            out = select(rgb, KEPT_LINE, border);
        }
    } else {
        let range = cells_in[p.tokens];
        if state == PRUNED {
            out = vec3<f32>(0.12);
        } else if p.has_scores == 1u {
            out = heat((entry.y - range.x) / max(range.y - range.x, 1e-20));
            // Stripes over the tokens the step drops.
            let stripe = (u32(frag.x) + u32(frag.y)) % 8u < 2u;
            if state == DROPPED && stripe {
                out = vec3<f32>(0.0);
            }
        } else {
            // No step after this layer: the image, dimmed.
            out = rgb * 0.5 + vec3<f32>(0.05, 0.05, 0.15);
        }
        if border {
            out = vec3<f32>(0.0);
        }
    }
    return vec4<f32>(out, 1.0);
}
