// Top-k token selection for pruning, one workgroup per image:
//   out[b, :] = the `keep` best tokens of scores[b, :] (a protected class token always among
//               them, at index (keep - 1) / 2), in original order or in score order; or, balanced,
//               the best half on each side of the class token, in original order.
// "Best" is a strict total order: higher score first, ties to the lower index, NaN below every
// number (-0 and +0 are equal). Scores are read as bits and mapped to u32 keys that compare as
// the scores do, so no float compare (or flush-to-zero of subnormals) is involved.
//
// A token's rank is how many tokens beat it: O(N^2) compares, which for the ~200 tokens of an
// image cost less on a CPU driver than the barriers of a sort. Each invocation ranks four
// tokens at once against keys that pass through workgroup memory four to a vec4: one loop
// iteration makes 16 compares (lavapipe pays per loop iteration and per load far more than
// per compare; one token per invocation was twice as slow). The m = keep - (class token) best
// are chosen. In score order a chosen token of rank r goes straight to slot r; in original
// order it sets its bit in a workgroup bitmask, and its slot is the number of bits before it.
// With score_mode > 0 the workgroup first scores its image's tokens itself, from their rows of
// x (mode score_mode - 1 of include/row_score.wgsl), and stores the scores: the importance
// pass and its dispatch folded into this one.
// lavapipe cuts every loop short once an invocation has run 65535 loop iterations in all
// (gallivm's LP_MAX_TGSI_LOOP_ITERATIONS); this kernel runs about N^2 / 1024, 16,384 at MAX_LEN.

struct Params {
    batch: u32,
    len: u32,
    keep: u32,
    // Position of the protected class token, or >= len for none.
    cls: u32,
    // 0: original order, 1: score order, 2: original order balanced around the class token.
    order: u32,
    // 0: scores given; else 1 + the row_score mode that computes them from x.
    score_mode: u32,
    channels: u32,
    seed: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// f32 scores as raw bits.
@group(0) @binding(1) var<storage, read_write> scores: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;
// Each token's row of channels, with score_mode > 0.
@group(0) @binding(3) var<storage, read> x: array<f32>;

// #include row_score

const WG: u32 = 64u;
// Tokens an invocation ranks at a time, and keys per tile element.
const LANES: u32 = 4u;
const MAX_LEN: u32 = 4096u;
const ORDER_SCORE: u32 = 1u;
const ORDER_BALANCED: u32 = 2u;
var<workgroup> tile: array<vec4<u32>, WG>;
var<workgroup> chosen: array<atomic<u32>, MAX_LEN / 32u>;

// Larger key = better score. NaN maps to 1, below -inf (0x007fffff); the class token and
// positions past the end to 0: they beat no token, and the class token is never among the m
// best (m <= len - 1 with a class token).
fn key_of(base: u32, j: u32) -> u32 {
    if (j == p.cls || j >= p.len) {
        return 0u;
    }
    let bits = scores[base + j];
    let magnitude = bits & 0x7fffffffu;
    if (magnitude > 0x7f800000u) {
        return 1u;
    }
    if (magnitude == 0u) {
        return 0x80000000u;
    }
    return select(bits | 0x80000000u, ~bits, bits >= 0x80000000u);
}

// Keys of tokens first .. first + 3.
fn keys4(base: u32, first: u32) -> vec4<u32> {
    return vec4<u32>(key_of(base, first), key_of(base, first + 1u), key_of(base, first + 2u), key_of(base, first + 3u));
}

// 1 where token (ki, i) ranks before token (kj, j) (higher key, or the same and a lower index).
// Balanced, only tokens on the same side of the class token compete.
fn beats(ki: u32, i: u32, kj: vec4<u32>, j: vec4<u32>) -> vec4<u32> {
    let k = vec4<u32>(ki);
    let better = (k > kj) | ((k == kj) & (vec4<u32>(i) < j));
    let cls = vec4<u32>(p.cls);
    let same_side = (vec4<u32>(i) < cls) == (j < cls);
    return vec4<u32>(better & (same_side | vec4<bool>(p.order != ORDER_BALANCED)));
}

// Output slot of the chosen token of rank `r` among the chosen: the class token takes slot
// half = m / 2, the ones from there on move up by one.
fn slot(r: u32, half: u32, has_cls: bool) -> u32 {
    return r + u32(has_cls && r >= half);
}

@compute @workgroup_size(64)
fn topk(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let b = wg.x + wg.y * nwg.x;
    // Whole workgroups leave together, so the barriers stay uniform.
    if (b >= p.batch) {
        return;
    }
    let base = b * p.len;
    let out_base = b * p.keep;
    let has_cls = p.cls < p.len;
    // Chosen tokens besides the class token.
    let m = p.keep - u32(has_cls);
    let half = m / 2u;
    for (var w = li; w < MAX_LEN / 32u; w += WG) {
        atomicStore(&chosen[w], 0u);
    }
    if (p.score_mode != 0u) {
        for (var j = li; j < p.len; j += WG) {
            scores[base + j] = bitcast<u32>(row_score(base + j, p.channels, p.score_mode - 1u, p.seed));
        }
        storageBarrier();
    }

    for (var q = 0u; q < p.len; q += WG * LANES) {
        let first = q + LANES * li;
        let kj = keys4(base, first);
        let j = vec4<u32>(first) + vec4<u32>(0u, 1u, 2u, 3u);
        var rank = vec4<u32>(0u);
        for (var start = 0u; start < p.len; start += WG * LANES) {
            workgroupBarrier();
            tile[li] = keys4(base, start + LANES * li);
            workgroupBarrier();
            let quads = min(WG, (p.len - start + 3u) / 4u);
            for (var s = 0u; s < quads; s++) {
                let ki = tile[s];
                let i = start + 4u * s;
                rank += beats(ki.x, i, kj, j) + beats(ki.y, i + 1u, kj, j) + beats(ki.z, i + 2u, kj, j) + beats(ki.w, i + 3u, kj, j);
            }
        }
        for (var c = 0u; c < LANES; c++) {
            let token = first + c;
            // Balanced: the best `half` before the class token and the best m - half after
            // it, so in original order the class token sits at slot half, among its neighbours.
            let quota = select(m, select(m - half, half, token < p.cls), p.order == ORDER_BALANCED && has_cls);
            if (token < p.len && rank[c] < quota) {
                if (p.order == ORDER_SCORE) {
                    out[out_base + slot(rank[c], half, has_cls)] = token;
                } else {
                    atomicOr(&chosen[token / 32u], 1u << (token % 32u));
                }
            }
        }
    }

    if (p.order != ORDER_SCORE) {
        workgroupBarrier();
        for (var token = li; token < p.len; token += WG) {
            let w = token / 32u;
            let bit = 1u << (token % 32u);
            let word = atomicLoad(&chosen[w]);
            if ((word & bit) != 0u) {
                var before = countOneBits(word & (bit - 1u));
                for (var v = 0u; v < w; v++) {
                    before += countOneBits(atomicLoad(&chosen[v]));
                }
                out[out_base + slot(before, half, has_cls)] = token;
            }
        }
    }
    if (has_cls && li == 0u) {
        out[out_base + half] = p.cls;
    }
}
