//! Elementwise activations that kernels apply to their outputs before storing them
//! (`activate` in `shaders/include/activation.wgsl`, used by matmul and dwconv2d), with their
//! CPU references.

/// The codes are the shaders' `ACT_*` constants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Activation {
    #[default]
    None = 0,
    Relu = 1,
    Silu = 2,
    /// The exact (erf) form, PyTorch's `nn.GELU()` default.
    Gelu = 3,
}

impl Activation {
    pub(crate) fn code(self) -> u32 {
        self as u32
    }

    /// CPU reference.
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::None => x,
            Activation::Relu => x.max(0.0),
            Activation::Silu => crate::ops::silu(x),
            Activation::Gelu => {
                (0.5 * x as f64 * (1.0 + erf(x as f64 / std::f64::consts::SQRT_2))) as f32
            }
        }
    }
}

/// erf to about 1e-10 for the references (the shaders use a 1.5e-7 approximation): its
/// Maclaurin series, which converges without harmful cancellation for |x| < 4, and ±1 beyond
/// (1 - erf(4) < 2e-8).
fn erf(x: f64) -> f64 {
    if x.abs() >= 4.0 {
        return x.signum();
    }
    // Terms (-1)^n x^(2n+1) / (n! (2n+1)).
    let (mut sum, mut power, mut n) = (0.0, x, 0.0);
    while power.abs() > 1e-17 {
        sum += power / (2.0 * n + 1.0);
        n += 1.0;
        power *= -x * x / n;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_and_gelu_match_known_values() {
        // erf(0.5), erf(1), erf(2), erf(3.5) from tables.
        for (x, want) in [
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (3.5, 0.999_999_256_901_627_7),
        ] {
            assert!((erf(x) - want).abs() < 1e-10, "erf({x}) = {}", erf(x));
            assert!((erf(-x) + want).abs() < 1e-10);
        }
        // torch.nn.functional.gelu(torch.tensor(1.0)) = 0.8413447.
        assert!((Activation::Gelu.apply(1.0) - 0.841_344_7).abs() < 1e-7);
    }
}
