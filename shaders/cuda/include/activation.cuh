// Fused activations, codes as ops::activation::Activation; the CUDA twin of
// include/activation.wgsl, included by kernels with an activation epilogue.

#define ACT_RELU 1u
#define ACT_SILU 2u
#define ACT_GELU 3u

// GELU's erf is Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7).
__device__ __forceinline__ float activate(float v, unsigned kind) {
    switch (kind) {
        case ACT_RELU: return fmaxf(v, 0.0f);
        case ACT_SILU: return v / (1.0f + expf(-v));
        case ACT_GELU: {
            float a = fabsf(v) * 0.70710678f;
            float t = 1.0f / (1.0f + 0.3275911f * a);
            float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
            float erf_a = 1.0f - poly * expf(-a * a);
            float sign = v > 0.0f ? 1.0f : (v < 0.0f ? -1.0f : 0.0f);
            return 0.5f * v * (1.0f + sign * erf_a);
        }
        default: return v;
    }
}
