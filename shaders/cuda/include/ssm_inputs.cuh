// Per-step B/C and per-channel A reads shared by the selective scans (scan.cu, zigzag_scan.cu);
// the CUDA twin of include/ssm_inputs.wgsl's portable part, plus their softplus.

// Elements n0..n0+3 of a state-sized row of `v` from `base`, zero past nstate: states
// n >= nstate then stay zero. WGSL's bc4 (v = bc) and ssm4 (v = ssm).
__device__ __forceinline__ float row_at(const float* v, unsigned nstate, size_t base, unsigned n) {
    return n < nstate ? v[base + n] : 0.0f;
}

__device__ __forceinline__ float4 row4(const float* v, unsigned nstate, size_t base, unsigned n0) {
    return make_float4(row_at(v, nstate, base, n0), row_at(v, nstate, base, n0 + 1u),
                       row_at(v, nstate, base, n0 + 2u), row_at(v, nstate, base, n0 + 3u));
}

// PyTorch's softplus (threshold 20).
__device__ __forceinline__ float softplus(float x) {
    return x > 20.0f ? x : logf(1.0f + expf(x));
}
