// Eight f32s carried as one vec4<u64>, their bits reinterpreted, never converted: a CPU
// driver's loads and stores cost per component, so 8-byte components halve them. Element 2i
// sits in the low half of component i (`lo[i]`), element 2i + 1 in its high half (`hi[i]`).
// Kernels that only compute elementwise (or sum) never see the order.

struct Eight {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

fn unpack8(v: vec4<u64>) -> Eight {
    return Eight(bitcast<vec4<f32>>(vec4<u32>(v)), bitcast<vec4<f32>>(vec4<u32>(v >> vec4<u32>(32u))));
}

fn pack8(e: Eight) -> vec4<u64> {
    return vec4<u64>(bitcast<vec4<u32>>(e.lo)) | (vec4<u64>(bitcast<vec4<u32>>(e.hi)) << vec4<u32>(32u));
}
