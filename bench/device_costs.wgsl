// Micro-kernels behind `cargo run --release --example device_costs`: what one operation costs
// on the device, in f32 FMAs timed in the same run. On a CPU driver (lavapipe) these ratios,
// not the FMA ceiling, decide how fast a kernel can be: see docs/performance.md.
// Every entry: 64 invocations per workgroup, ITERS iterations, one measured operation (or
// one vec4 FMA group) per iteration, a result stored so that nothing is optimised away.

@group(0) @binding(0) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> data: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> data1: array<f32>;
@group(0) @binding(3) var<uniform> table: array<vec4<f32>, 4096>;
@group(0) @binding(4) var image: texture_2d<f32>;

const ITERS: u32 = 1024u;
// Indices wrap inside the 16 MiB `data` buffer.
const MASK: u32 = 0xfffffu;

// 6 independent vec4 chains: 48 FMAs per iteration. (8 chains, 32 live vec4 components plus
// the two constants, exceed the 32 vector registers and measured 20% slower.)
@compute @workgroup_size(64)
fn fma_throughput(@builtin(global_invocation_id) gid: vec3<u32>) {
    var a0 = vec4<f32>(f32(gid.x));
    var a1 = a0 + 1.0;
    var a2 = a0 + 2.0;
    var a3 = a0 + 3.0;
    var a4 = a0 + 4.0;
    var a5 = a0 + 5.0;
    let m = vec4<f32>(0.999);
    let c = vec4<f32>(0.001);
    // Two rounds per iteration, so that the loop's own count and branch weigh less.
    for (var i = 0u; i < ITERS; i++) {
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
        a2 = fma(a2, m, c);
        a3 = fma(a3, m, c);
        a4 = fma(a4, m, c);
        a5 = fma(a5, m, c);
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
        a2 = fma(a2, m, c);
        a3 = fma(a3, m, c);
        a4 = fma(a4, m, c);
        a5 = fma(a5, m, c);
    }
    out[gid.x] = a0 + a1 + a2 + a3 + a4 + a5;
}

// 8 independent vec4 chains of exp2: 32 exps per iteration.
@compute @workgroup_size(64)
fn exp2_throughput(@builtin(global_invocation_id) gid: vec3<u32>) {
    var a0 = vec4<f32>(f32(gid.x & 7u) * -0.01);
    var a1 = a0 - 0.1;
    var a2 = a0 - 0.2;
    var a3 = a0 - 0.3;
    var a4 = a0 - 0.4;
    var a5 = a0 - 0.5;
    var a6 = a0 - 0.6;
    var a7 = a0 - 0.7;
    for (var i = 0u; i < ITERS; i++) {
        a0 = exp2(a0) - 1.5;
        a1 = exp2(a1) - 1.5;
        a2 = exp2(a2) - 1.5;
        a3 = exp2(a3) - 1.5;
        a4 = exp2(a4) - 1.5;
        a5 = exp2(a5) - 1.5;
        a6 = exp2(a6) - 1.5;
        a7 = exp2(a7) - 1.5;
    }
    out[gid.x] = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
}

// ITERS vec4 storage loads from index `first` on, 64 vec4s apart.
fn sum_storage_vec4(first: u32) -> vec4<f32> {
    var acc = vec4<f32>(0.0);
    var i = first;
    for (var it = 0u; it < ITERS; it++) {
        acc += data[i & MASK];
        i += 64u;
    }
    return acc;
}

// A vec4 storage load, a different address in every invocation.
@compute @workgroup_size(64)
fn storage_vec4(@builtin(global_invocation_id) gid: vec3<u32>) {
    out[gid.x] = sum_storage_vec4(gid.x);
}

// The same, at one address for the whole workgroup.
@compute @workgroup_size(64)
fn storage_vec4_same_address(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
    out[gid.x] = sum_storage_vec4(wg.x);
}

// #if int64
@group(0) @binding(5) var<storage, read> data8: array<vec4<u64>>;

// A vec4<u64> storage load (8 floats' worth), unpacked to two vec4<f32> as the matmul does.
@compute @workgroup_size(64)
fn storage_vec4_u64(@builtin(global_invocation_id) gid: vec3<u32>) {
    var acc = vec4<f32>(0.0);
    var i = gid.x;
    for (var it = 0u; it < ITERS; it++) {
        let v = data8[i & (MASK >> 1u)];
        acc += bitcast<vec4<f32>>(vec4<u32>(v)) + bitcast<vec4<f32>>(vec4<u32>(v >> vec4<u32>(32u)));
        i += 64u;
    }
    out[gid.x] = acc;
}
// #endif

// A scalar storage load.
@compute @workgroup_size(64)
fn storage_f32(@builtin(global_invocation_id) gid: vec3<u32>) {
    var acc = 0.0;
    var i = gid.x;
    for (var it = 0u; it < ITERS; it++) {
        acc += data1[i & MASK];
        i += 64u;
    }
    out[gid.x] = vec4<f32>(acc);
}

var<workgroup> shared_rows: array<vec4<f32>, 1024>;

// A vec4 workgroup-memory load.
@compute @workgroup_size(64)
fn workgroup_vec4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var i = li; i < 1024u; i += 64u) {
        shared_rows[i] = vec4<f32>(f32(i));
    }
    workgroupBarrier();
    var acc = vec4<f32>(0.0);
    var i = li;
    for (var it = 0u; it < ITERS; it++) {
        acc += shared_rows[i & 1023u];
        i += 7u;
    }
    out[gid.x] = acc;
}

// A vec4 uniform-buffer load at a computed index.
@compute @workgroup_size(64)
fn uniform_vec4(@builtin(global_invocation_id) gid: vec3<u32>) {
    var acc = vec4<f32>(0.0);
    var i = gid.x;
    for (var it = 0u; it < ITERS; it++) {
        acc += table[i & 4095u];
        i += 64u;
    }
    out[gid.x] = acc;
}

// An rgba32float texel load.
@compute @workgroup_size(64)
fn texture_vec4(@builtin(global_invocation_id) gid: vec3<u32>) {
    var acc = vec4<f32>(0.0);
    let x = gid.x & 1023u;
    for (var it = 0u; it < ITERS; it++) {
        acc += textureLoad(image, vec2<u32>(x, it & 1023u), 0);
    }
    out[gid.x] = acc;
}

// #if subgroups
// A vec4 subgroup shuffle from a constant lane (a broadcast), plus the add that consumes it.
@compute @workgroup_size(64)
fn subgroup_broadcast_vec4(@builtin(global_invocation_id) gid: vec3<u32>) {
    var acc = vec4<f32>(0.0);
    var v = vec4<f32>(f32(gid.x));
    for (var it = 0u; it < ITERS; it++) {
        acc += subgroupShuffle(v, 3u);
        v = v.yzwx;
    }
    out[gid.x] = acc;
}
// #endif

// One store: what a dispatch costs beyond its work.
@compute @workgroup_size(64)
fn empty_dispatch(@builtin(global_invocation_id) gid: vec3<u32>) {
    out[gid.x] = vec4<f32>(1.0);
}
