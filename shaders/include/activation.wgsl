// Fused activations, codes as ops::activation::Activation; included by kernels with an
// activation epilogue.

const ACT_RELU: u32 = 1u;
const ACT_SILU: u32 = 2u;
const ACT_GELU: u32 = 3u;

// GELU's erf is Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7).
fn activate(v: f32, kind: u32) -> f32 {
    switch kind {
        case ACT_RELU: { return max(v, 0.0); }
        case ACT_SILU: { return v / (1.0 + exp(-v)); }
        case ACT_GELU: {
            let a = abs(v) * 0.70710678;
            let t = 1.0 / (1.0 + 0.3275911 * a);
            let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
            let erf_a = 1.0 - poly * exp(-a * a);
            return 0.5 * v * (1.0 + sign(v) * erf_a);
        }
        default: { return v; }
    }
}
