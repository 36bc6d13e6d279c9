// Patch embeddings to the token sequence of a vision model:
//   out[b, t] = (t == cls_pos ? cls : patches[b, t - (t > cls_pos)]) + pos_embed[t]
// (Vim inserts its class token in the middle, then adds the position embedding; without a
// class token cls_pos is past the end and this is only the position add.)

struct Params {
    batch: u32,
    len: u32,
    dim: u32,
    cls_pos: u32,
    has_pos: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> patches: array<f32>;
@group(0) @binding(2) var<storage, read> cls: array<f32>;
@group(0) @binding(3) var<storage, read> pos_embed: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn embed_tokens(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = (wg.x + wg.y * nwg.x) * 256u + li;
    if (i >= p.batch * p.len * p.dim) {
        return;
    }
    let row = i / p.dim;
    let d = i - row * p.dim;
    let b = row / p.len;
    let t = row - b * p.len;
    var v: f32;
    if (t == p.cls_pos) {
        v = cls[d];
    } else {
        let patches_per_image = select(p.len, p.len - 1u, p.cls_pos < p.len);
        let m = select(t, t - 1u, t > p.cls_pos);
        v = patches[(b * patches_per_image + m) * p.dim + d];
    }
    if (p.has_pos != 0u) {
        v += pos_embed[t * p.dim + d];
    }
    out[i] = v;
}
