// out[r] = index of the largest x[r, :] (the first one on ties, as torch.argmax), one workgroup
// per row. Greedy decoding reads back these 4 bytes instead of a vocabulary of logits.
// A row holding NaN or an infinity gives 0xffffffff (no index), so a decoder stops on the
// GPU's word instead of feeding a wrong id back: the finiteness check rides on this reduction.

struct Params {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

const WG: u32 = 256u;
var<workgroup> best_val: array<f32, WG>;
var<workgroup> best_idx: array<u32, WG>;
// Zero at the workgroup's start, as WGSL initialises workgroup memory.
var<workgroup> non_finite: atomic<u32>;

@compute @workgroup_size(256)
fn argmax(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.cols;
    var v = -3.0e38;
    var i = 0xffffffffu;
    var bad = false;
    for (var c = li; c < p.cols; c += WG) {
        let xc = x[base + c];
        bad = bad || (bitcast<u32>(xc) & 0x7f800000u) == 0x7f800000u;
        if (xc > v) {
            v = xc;
            i = c;
        }
    }
    if (bad) {
        atomicOr(&non_finite, 1u);
    }
    best_val[li] = v;
    best_idx[li] = i;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            let ov = best_val[li + s];
            let oi = best_idx[li + s];
            if (ov > best_val[li] || (ov == best_val[li] && oi < best_idx[li])) {
                best_val[li] = ov;
                best_idx[li] = oi;
            }
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        out[row] = select(best_idx[0], 0xffffffffu, atomicLoad(&non_finite) != 0u);
    }
}
