// Per-step B/C and per-channel A reads shared by the selective scans (scan.wgsl,
// zigzag_scan.wgsl); they expect bindings `bc` (vec4 array with subgroups, else f32) and `ssm`,
// and `p.nstate`.

// #if subgroups
// B or C for one step, n = 4 * k ..: lane q < 8 of the subgroup loaded vec4 q of
// [B(16) | C(16)]; offsets and stride are multiples of 4 (checked by the launcher).
fn fetch_bc(lane: u32, b_base: u32, c_base: u32) -> vec4<f32> {
    let q = lane & 7u;
    return bc[select(b_base + 4u * q, c_base + 4u * (q - 4u), q >= 4u) / 4u];
}
// #else
// Element n of a state-sized row, zero past nstate: states n >= nstate then stay zero.
fn bc_at(base: u32, n: u32) -> f32 {
    return select(0.0, bc[base + min(n, p.nstate - 1u)], n < p.nstate);
}

fn bc4(base: u32, n0: u32) -> vec4<f32> {
    return vec4<f32>(bc_at(base, n0), bc_at(base, n0 + 1u), bc_at(base, n0 + 2u), bc_at(base, n0 + 3u));
}

// #endif

fn ssm_at(base: u32, n: u32) -> f32 {
    return select(0.0, ssm[base + min(n, p.nstate - 1u)], n < p.nstate);
}

fn ssm4(base: u32, n0: u32) -> vec4<f32> {
    return vec4<f32>(ssm_at(base, n0), ssm_at(base, n0 + 1u), ssm_at(base, n0 + 2u), ssm_at(base, n0 + 3u));
}
