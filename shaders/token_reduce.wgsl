// Token reduction for SSM language models (ALGORITHMS.md 5.3): per sequence b of `len` tokens,
// remove `remove` tokens by pruning or merging them into a similar kept token, in both the
// hidden-state and the residual stream with one set of indices. Six dispatches:
//   utr_roles:  split into A (candidates for removal) and B (kept, merge targets):
//               split 0: the len/2 least important tokens (scores) are A;
//               split 1: even positions are A (ToMe/PuMer bipartite);
//               split 2: every token is A, ranked by score (EViT-style pruning; no matching);
//               split 3: even positions are A, matched as the authors' code does (ToR_SSM,
//               ALGORITHMS.md 5.4): see utr_code_sort.
//               The last token is always B: the next-token logits must exist.
//   utr_lists:  each sequence's A and B tokens in order, each token's slot in its list and
//               its inverse feature norm. The host then gathers the A and B feature rows and
//               multiplies them (the matmul op): sims = A · Bᵀ.
//   utr_match:  for each A token, its most cosine-similar B token and that similarity.
//   utr_select: the `remove` A tokens with the highest key (similarity, or -score for split 2),
//               numbered 0.. by key order (sel); the others get NONE.
//   utr_plan:   kept tokens in original order, and per kept token the selected tokens that
//               merge into it (a CSR list: hidden-stream sources first, then residual-only).
//               A selected token with sel < hidden_pruned is pruned in the hidden stream,
//               with sel < residual_pruned in the residual stream; otherwise it is merged.
//   utr_merge:  out[slot] = mean of the kept token and its merged sources, per stream, and
//               the position map gathered alongside.
// Everything is O(len^2) per sequence with one invocation per token: no workgroup sync. The
// per-token passes run one sequence per workgroup row (workgroup_id.y), so loads indexed by
// another token of the sequence are uniform across the workgroup: a CPU driver (lavapipe)
// turns them into one scalar load instead of a per-lane gather.

struct Params {
    batch: u32,
    len: u32,
    remove: u32,
    dim: u32,
    split: u32,
    hidden_pruned: u32,
    residual_pruned: u32,
    // Kept tokens per sequence (len - remove).
    keep: u32,
    // A and B tokens per sequence (the same in every sequence).
    n_a: u32,
    n_b: u32,
    _pad0: u32,
    _pad1: u32,
}

const NONE: u32 = 0xffffffffu;
const ROLE_A: u32 = 0u;
const ROLE_B: u32 = 1u;
const SPLIT_SCORE: u32 = 0u;
const SPLIT_ALTERNATE: u32 = 1u;
const SPLIT_NONE: u32 = 2u;
const SPLIT_CODE: u32 = 3u;

@group(0) @binding(0) var<uniform> p: Params;
// Per token, 4 words: role, best match (NONE if none), key (f32 bits), selection rank (NONE).
@group(0) @binding(1) var<storage, read> scores: array<f32>;
@group(0) @binding(2) var<storage, read_write> info: array<u32>;
@group(0) @binding(1) var<storage, read> feat: array<f32>;
@group(0) @binding(1) var<storage, read_write> info_sel: array<u32>;
@group(0) @binding(1) var<storage, read> info_in: array<u32>;
// Per kept slot, 4 words: token, CSR offset, hidden-stream count, residual-stream count.
@group(0) @binding(2) var<storage, read_write> plan: array<u32>;
@group(0) @binding(3) var<storage, read_write> srcs: array<u32>;
// Per sequence, its A tokens [B, n_a] and B tokens [B, n_b] in order; per token, its slot in
// its list and 1 / |feature row|.
@group(0) @binding(3) var<storage, read_write> b_idx: array<u32>;
@group(0) @binding(4) var<storage, read_write> inv_norms: array<f32>;
@group(0) @binding(5) var<storage, read_write> slots: array<u32>;
@group(0) @binding(6) var<storage, read_write> a_idx: array<u32>;
// A · Bᵀ of the gathered feature rows, [B * n_a, B * n_b] (only each sequence's own block read).
@group(0) @binding(1) var<storage, read> sims: array<f32>;
@group(0) @binding(3) var<storage, read> b_idx_in: array<u32>;
@group(0) @binding(4) var<storage, read> inv_norms_in: array<f32>;
@group(0) @binding(5) var<storage, read> slots_in: array<u32>;

// Token i of sequence b, for the passes dispatched as [len / 64, batch] workgroups.
struct Token {
    i: u32,
    // The sequence's first token.
    base: u32,
    valid: bool,
}

fn token_of(wg: vec3<u32>, li: u32) -> Token {
    let i = wg.x * 64u + li;
    return Token(i, wg.y * p.len, i < p.len);
}


// Score of token j of the row at base; the last token ranks above everything.
fn score_key(base: u32, j: u32) -> f32 {
    return select(scores[base + j], 3.4e38, j == p.len - 1u);
}

@compute @workgroup_size(64)
fn utr_roles(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let tok = token_of(wg, li);
    if (!tok.valid) {
        return;
    }
    let i = tok.i;
    let base = tok.base;
    let t = base + i;
    let last = i == p.len - 1u;
    var role = ROLE_A;
    var key = -3.4e38;
    if (p.split == SPLIT_SCORE) {
        // Rank = tokens that beat this one (higher score, ties to the lower index).
        let s = score_key(base, i);
        var rank = 0u;
        for (var j = 0u; j < p.len; j++) {
            let o = score_key(base, j);
            rank += u32(o > s || (o == s && j < i));
        }
        role = select(ROLE_B, ROLE_A, rank >= p.len - p.len / 2u);
    } else if (p.split == SPLIT_ALTERNATE || p.split == SPLIT_CODE) {
        role = select(ROLE_B, ROLE_A, i % 2u == 0u && !last);
    } else {
        role = select(ROLE_A, ROLE_B, last);
        key = -scores[t];
    }
    info[4u * t] = role;
    info[4u * t + 1u] = NONE;
    info[4u * t + 2u] = bitcast<u32>(key);
    info[4u * t + 3u] = NONE;
}

// Feature c of token t; the authors' code compares clipped features (max(x, 0)).
fn feature(t: u32, c: u32) -> f32 {
    let v = feat[t * p.dim + c];
    return select(v, max(v, 0.0), p.split == SPLIT_CODE);
}

// 1 / |feature row t|, 0 for a zero row (its similarity to anything is then 0).
fn inverse_norm(t: u32) -> f32 {
    var acc = 0.0;
    for (var c = 0u; c < p.dim; c++) {
        let v = feature(t, c);
        acc += v * v;
    }
    return select(0.0, 1.0 / sqrt(acc), acc > 0.0);
}

@compute @workgroup_size(64)
fn utr_lists(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let tok = token_of(wg, li);
    if (!tok.valid) {
        return;
    }
    let t = tok.base + tok.i;
    inv_norms[t] = inverse_norm(t);
    let role = info[4u * t];
    var slot = 0u;
    for (var j = 0u; j < tok.i; j++) {
        slot += u32(info[4u * (tok.base + j)] == role);
    }
    slots[t] = slot;
    if (role == ROLE_A) {
        a_idx[wg.y * p.n_a + slot] = tok.i;
    } else {
        b_idx[wg.y * p.n_b + slot] = tok.i;
    }
}

@compute @workgroup_size(64)
fn utr_match(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let tok = token_of(wg, li);
    let t = tok.base + tok.i;
    if (!tok.valid || info[4u * t] != ROLE_A) {
        return;
    }
    let b = wg.y;
    // The code's similarity rows are order statistics (already normalised): A row i stands for
    // token 2i and B row k for token 2k + 1, as its positional ToMe indexing maps them. Rows
    // are elementwise non-increasing and non-negative, so every A row's best match is B row 0
    // (token 1) and the similarity falls with i: the code removes the first even positions
    // into token 1, and its shuffle of targets against sources changes nothing.
    let code = p.split == SPLIT_CODE;
    let rows_a = select(p.n_a, p.len - p.len / 2u, code);
    let cols_b = select(p.n_b, p.len / 2u, code);
    let row = (b * rows_a + slots_in[t]) * (p.batch * cols_b) + b * cols_b;
    let inv_t = inv_norms_in[t];
    var best = NONE;
    var best_sim = -3.4e38;
    for (var k = 0u; k < cols_b; k++) {
        let j = select(b_idx_in[b * p.n_b + k], 2u * k + 1u, code);
        let scale = select(inv_t * inv_norms_in[tok.base + j], 1.0, code);
        let sim = sims[row + k] * scale;
        if (sim > best_sim) {
            best = j;
            best_sim = sim;
        }
    }
    info[4u * t + 1u] = best;
    info[4u * t + 2u] = bitcast<u32>(best_sim);
}

@group(0) @binding(2) var<storage, read> inv_norms_code: array<f32>;
@group(0) @binding(3) var<storage, read_write> sorted_a: array<f32>;
@group(0) @binding(4) var<storage, read_write> sorted_b: array<f32>;

// The authors' code: normalise the clipped features per token, then sort each channel over
// the tokens independently (descending); the first len/2 rank rows go to B, the rest to A.
// One invocation per (token, channel) counts the tokens that beat it in its channel.
@compute @workgroup_size(64)
fn utr_code_sort(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let e = wg.x * 64u + li;
    if (e >= p.len * p.dim) {
        return;
    }
    let i = e / p.dim;
    let c = e % p.dim;
    let base = wg.y * p.len;
    let v = feature(base + i, c) * inv_norms_code[base + i];
    var rank = 0u;
    for (var j = 0u; j < p.len; j++) {
        let o = feature(base + j, c) * inv_norms_code[base + j];
        rank += u32(o > v || (o == v && j < i));
    }
    let mid = p.len / 2u;
    if (rank < mid) {
        sorted_b[(wg.y * mid + rank) * p.dim + c] = v;
    } else {
        sorted_a[(wg.y * (p.len - mid) + rank - mid) * p.dim + c] = v;
    }
}

@compute @workgroup_size(64)
fn utr_select(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let tok = token_of(wg, li);
    let i = tok.i;
    let base = tok.base;
    let t = base + i;
    if (!tok.valid || info_sel[4u * t] != ROLE_A) {
        return;
    }
    let k = bitcast<f32>(info_sel[4u * t + 2u]);
    var rank = 0u;
    for (var j = 0u; j < p.len; j++) {
        let u = base + j;
        if (info_sel[4u * u] == ROLE_A) {
            let o = bitcast<f32>(info_sel[4u * u + 2u]);
            rank += u32(o > k || (o == k && j < i));
        }
    }
    if (rank < p.remove) {
        info_sel[4u * t + 3u] = rank;
    }
}

fn sel_of(u: u32) -> u32 {
    return info_in[4u * u + 3u];
}

fn target_of(u: u32) -> u32 {
    return info_in[4u * u + 1u];
}

// Selected token u merges into a kept token in the residual stream (and in the hidden stream,
// which prunes at least as many, when sel >= hidden_pruned).
fn merges_residual(u: u32) -> bool {
    let s = sel_of(u);
    return s != NONE && s >= p.residual_pruned && target_of(u) != NONE;
}

fn merges_hidden(u: u32) -> bool {
    return merges_residual(u) && sel_of(u) >= p.hidden_pruned;
}

@compute @workgroup_size(64)
fn utr_plan(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let tok = token_of(wg, li);
    if (!tok.valid) {
        return;
    }
    let i = tok.i;
    let b = wg.y;
    let base = tok.base;
    let t = base + i;
    // The CSR list of kept token k starts after the sources of every kept token before it.
    var dest = i;
    if (sel_of(t) != NONE) {
        if (!merges_residual(t)) {
            return;
        }
        dest = target_of(t);
    }
    var offset = 0u;
    var slot = 0u;
    var count_h = 0u;
    var count_r = 0u;
    var before_h = 0u;
    var before_r = 0u;
    for (var j = 0u; j < p.len; j++) {
        let u = base + j;
        slot += u32(j < i && sel_of(u) == NONE);
        if (merges_residual(u)) {
            let into = target_of(u);
            offset += u32(into < dest);
            if (into == dest) {
                let h = merges_hidden(u);
                count_h += u32(h);
                count_r += 1u;
                before_h += u32(h && j < i);
                before_r += u32(!h && j < i);
            }
        }
    }
    if (sel_of(t) == NONE) {
        let s = 4u * (b * p.keep + slot);
        plan[s] = i;
        plan[s + 1u] = offset;
        plan[s + 2u] = count_h;
        plan[s + 3u] = count_r;
    } else {
        // Hidden-stream sources first, then the residual-only ones.
        let within = select(count_h + before_r, before_h, merges_hidden(t));
        srcs[base + offset + within] = i;
    }
}

@group(0) @binding(1) var<storage, read> plan_in: array<u32>;
@group(0) @binding(2) var<storage, read> srcs_in: array<u32>;
@group(0) @binding(3) var<storage, read> x0: array<f32>;
@group(0) @binding(4) var<storage, read> x1: array<f32>;
@group(0) @binding(5) var<storage, read> pos_in: array<u32>;
@group(0) @binding(6) var<storage, read_write> out0: array<f32>;
@group(0) @binding(7) var<storage, read_write> out1: array<f32>;
@group(0) @binding(8) var<storage, read_write> pos_out: array<u32>;

// Mean of the kept token and its first `count` sources in channel c of x (0: hidden, 1: residual).
fn merged(stream: u32, base: u32, s: u32, count: u32, c: u32) -> f32 {
    let token = plan_in[s];
    var acc = select(x1[(base + token) * p.dim + c], x0[(base + token) * p.dim + c], stream == 0u);
    for (var k = 0u; k < count; k++) {
        let src = base + srcs_in[base + plan_in[s + 1u] + k];
        acc += select(x1[src * p.dim + c], x0[src * p.dim + c], stream == 0u);
    }
    return acc / f32(1u + count);
}

// The authors' hidden-stream hybrid (bipartite_hybrid_pure): in channel c a source counts only
// if its value is among the remove/2 largest of all removed tokens in that channel (merged
// there, pruned elsewhere); the divisor counts the sources among the first remove/2 removed
// tokens by position. All removed tokens of the sequence are its CSR entries.
fn merged_code(base: u32, s: u32, count: u32, c: u32) -> f32 {
    let token = plan_in[s];
    let half = p.remove / 2u;
    var acc = x0[(base + token) * p.dim + c];
    var size = 1u;
    for (var k = 0u; k < count; k++) {
        let src = srcs_in[base + plan_in[s + 1u] + k];
        let v = x0[(base + src) * p.dim + c];
        var channel_rank = 0u;
        var position_rank = 0u;
        for (var m = 0u; m < p.remove; m++) {
            let other = srcs_in[base + m];
            let o = x0[(base + other) * p.dim + c];
            channel_rank += u32(o > v || (o == v && other < src));
            position_rank += u32(other < src);
        }
        acc += select(0.0, v, channel_rank < half);
        size += u32(position_rank < half);
    }
    return acc / f32(size);
}

@compute @workgroup_size(64)
fn utr_merge(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let e = (wg.x + wg.y * nwg.x) * 64u + li;
    if (e >= p.batch * p.keep * p.dim) {
        return;
    }
    let row = e / p.dim;
    let c = e % p.dim;
    let base = row / p.keep * p.len;
    let s = 4u * row;
    if (p.split == SPLIT_CODE) {
        out0[e] = merged_code(base, s, plan_in[s + 2u], c);
    } else {
        out0[e] = merged(0u, base, s, plan_in[s + 2u], c);
    }
    out1[e] = merged(1u, base, s, plan_in[s + 3u], c);
    if (c == 0u) {
        pos_out[row] = pos_in[base + plan_in[s]];
    }
}
