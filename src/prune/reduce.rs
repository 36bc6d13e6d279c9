//! Token reduction for Mamba / Mamba-2 language models (paper B, ALGORITHMS.md 5): after which
//! layers, how many tokens, and how (unified prune + merge, or a baseline). The LM backbone
//! calls [`Reduction::after_layer`]; the GPU work is [`crate::ops::token_reduce`].

use std::str::FromStr;

use crate::error::{Error, Result};
use crate::ops::importance::{importance, Reduce};
use crate::ops::token_reduce::{token_reduce, ReduceArgs, Reduced, Split};
use crate::runtime::{Recorder, Tensor};

/// How tokens are removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Importance split, similarity matching; hidden stream hybrid (q = 0.5: half of the
    /// removed tokens pruned, half merged), residual stream merged (paper B 4.2-4.3).
    Unified,
    /// Drop the least important tokens (EViT-style).
    PruneOnly,
    /// Bipartite merging of even positions into odd ones regardless of importance (PuMer/ToMe).
    MergeOnly,
    /// The unified method as the authors' code computes it (ALGORITHMS.md 5.4, 6.4): even
    /// positions removed, matched through per-channel sorted clipped block outputs, the hidden
    /// stream merged per channel (its q = 0.5), the residual merged.
    UnifiedCode,
}

impl FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "unified" => Ok(Method::Unified),
            "prune" | "prune-only" | "evit" => Ok(Method::PruneOnly),
            "merge" | "merge-only" | "pumer" => Ok(Method::MergeOnly),
            "unified-code" | "tor-ssm" => Ok(Method::UnifiedCode),
            _ => Err(Error::InvalidInput(format!(
                "reduction method `{s}`: expected unified, prune-only, merge-only or unified-code"
            ))),
        }
    }
}

/// What the importance score is the clipped channel mean of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// The SSM output y before the gate (width d_inner), as the paper's Eq. 5 writes it.
    SsmOutput,
    /// The block output after out_proj (width d_model), as the authors' code computes it
    /// (ALGORITHMS.md 5.4 step 1).
    BlockOutput,
}

impl FromStr for Metric {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ssm" | "paper" => Ok(Metric::SsmOutput),
            "block" | "code" => Ok(Metric::BlockOutput),
            _ => Err(Error::InvalidInput(format!(
                "importance metric `{s}`: expected ssm (paper) or block (authors' code)"
            ))),
        }
    }
}

/// The paper's reduction layers (0-indexed `backbone.layers`, as the authors' anchors) per
/// model size (ALGORITHMS.md 5.3), and the authors' default ratio.
pub const PRESETS: &[(&str, &str)] = &[
    ("mamba2-2.7b", "12,17,22,27,32,37,42"),
    ("mamba-2.8b", "12,17,22,27,32,37,42"),
    ("mamba2-1.3b", "10,15,20,25,30,35"),
    ("mamba-1.4b", "10,15,20,25,30,35"),
];
pub const DEFAULT_RATIO: f64 = 0.905;

#[derive(Clone, Debug, PartialEq)]
pub struct Reduction {
    /// After these 0-indexed layers, increasing.
    layers: Vec<usize>,
    /// Keep `ceil(N * ratio)` of `N` tokens at each of them (fewer removed when the split has
    /// too few candidates).
    ratio: f64,
    pub method: Method,
    pub metric: Metric,
}

impl Reduction {
    /// `"LAYERS:RATIO"`, `"LAYERS"` (ratio 0.905) where LAYERS is `12,17,22` (0-indexed) or a
    /// preset name (see [`PRESETS`]).
    pub fn parse(spec: &str, method: Method, metric: Metric) -> Result<Self> {
        let bad = |what: String| Error::InvalidInput(format!("reduction `{spec}`: {what}"));
        let (layers, ratio) = match spec.trim().rsplit_once(':') {
            Some((l, r)) => {
                let ratio: f64 = r
                    .trim()
                    .parse()
                    .map_err(|_| bad(format!("ratio `{}` is not a number", r.trim())))?;
                (l.trim(), ratio)
            }
            None => (spec.trim(), DEFAULT_RATIO),
        };
        let layers = PRESETS
            .iter()
            .find(|(name, _)| *name == layers)
            .map_or(layers, |(_, l)| l);
        let layers = layers
            .split(',')
            .map(|l| {
                l.trim().parse::<usize>().map_err(|_| {
                    bad(format!(
                        "`{}` is not a layer index (or a preset name)",
                        l.trim()
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Self::new(layers, ratio, method, metric).map_err(|e| bad(e.to_string()))
    }

    pub fn new(layers: Vec<usize>, ratio: f64, method: Method, metric: Metric) -> Result<Self> {
        if !(ratio > 0.0 && ratio <= 1.0) {
            return Err(Error::InvalidInput(format!(
                "ratio {ratio} is outside (0, 1]"
            )));
        }
        if layers.is_empty() || layers.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::InvalidInput(format!(
                "layers {layers:?} must be a non-empty increasing list"
            )));
        }
        Ok(Reduction {
            layers,
            ratio,
            method,
            metric,
        })
    }

    pub fn layers(&self) -> &[usize] {
        &self.layers
    }

    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    /// Refuse layers a `depth`-layer model does not have before its last.
    pub fn check_depth(&self, depth: usize) -> Result<()> {
        match self.layers.last() {
            Some(&l) if l + 1 >= depth => Err(Error::InvalidInput(format!(
                "reduction after layer {l} needs more than {} layers (the model has {depth})",
                l + 1
            ))),
            _ => Ok(()),
        }
    }

    fn split(&self) -> Split {
        match self.method {
            Method::Unified => Split::Importance,
            Method::PruneOnly => Split::Prune,
            Method::MergeOnly => Split::Alternate,
            Method::UnifiedCode => Split::Code,
        }
    }

    /// The reduction of a sequence of `len` tokens: `N - ceil(N * ratio)` removed (the
    /// authors' `r`), capped by the split's candidates.
    pub fn args(&self, len: usize) -> ReduceArgs {
        let split = self.split();
        let wanted = len - ((len as f64 * self.ratio).ceil() as usize).min(len);
        let remove = wanted.min(split.candidates(len));
        let (hidden_pruned, residual_pruned) = match self.method {
            Method::Unified => (remove / 2, 0),
            Method::PruneOnly => (remove, remove),
            Method::MergeOnly | Method::UnifiedCode => (0, 0),
        };
        ReduceArgs {
            split,
            remove,
            hidden_pruned,
            residual_pruned,
        }
    }

    /// The tokens each of `depth` layers runs on, starting from `len`.
    pub fn token_counts(&self, len: usize, depth: usize) -> Vec<usize> {
        let mut n = len;
        (0..depth)
            .map(|layer| {
                let runs_on = n;
                if self.layers.contains(&layer) {
                    n -= self.args(n).remove;
                }
                runs_on
            })
            .collect()
    }

    /// `1 - mean over layers of the kept fraction` (the authors' logged sparsity, which their
    /// tables call FLOPS reduction; ALGORITHMS.md 5.4).
    pub fn flops_reduction(&self, len: usize, depth: usize) -> f64 {
        let counts = self.token_counts(len, depth);
        1.0 - counts.iter().sum::<usize>() as f64 / (len * depth) as f64
    }

    /// The ratio whose [`Reduction::flops_reduction`] on `len` tokens comes closest to `target`
    /// (bisection; the count is stepwise in the ratio).
    pub fn ratio_for_flops(
        layers: &[usize],
        len: usize,
        depth: usize,
        target: f64,
        method: Method,
    ) -> Result<f64> {
        let at = |ratio: f64| -> Result<f64> {
            Ok(
                Self::new(layers.to_vec(), ratio, method, Metric::SsmOutput)?
                    .flops_reduction(len, depth),
            )
        };
        let (mut lo, mut hi) = (1e-3, 1.0);
        for _ in 0..50 {
            let mid = 0.5 * (lo + hi);
            if at(mid)? > target {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let best = if (at(lo)? - target).abs() < (at(hi)? - target).abs() {
            lo
        } else {
            hi
        };
        Ok(best)
    }

    /// This schedule with the ratio whose FLOPs reduction on `len` tokens through `depth`
    /// layers comes closest to `target` (a fraction).
    pub fn for_flops(&self, len: usize, depth: usize, target: f64) -> Result<Self> {
        let ratio = Self::ratio_for_flops(&self.layers, len, depth, target, self.method)?;
        Self::new(self.layers.clone(), ratio, self.method, self.metric)
    }

    /// Reduce after layer `layer` if scheduled: `hidden` is the layer's block output, `residual`
    /// the stream it is added to, `ssm_y` the SSM output before the gate (for
    /// [`Metric::SsmOutput`]), `positions` u32 `[B, N]`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn after_layer(
        &self,
        rec: &mut Recorder,
        layer: usize,
        batch: usize,
        hidden: &Tensor,
        residual: &Tensor,
        ssm_y: Option<&Tensor>,
        positions: &Tensor,
    ) -> Result<Option<Reduced>> {
        let len = positions.numel() / batch;
        let args = self.args(len);
        if !self.layers.contains(&layer) || args.remove == 0 {
            return Ok(None);
        }
        let source = match self.metric {
            Metric::SsmOutput => ssm_y.unwrap_or(hidden),
            Metric::BlockOutput => hidden,
        };
        let scores = importance(rec, source, batch, Reduce::ClippedMean)?;
        token_reduce(rec, args, &scores, hidden, hidden, residual, positions).map(Some)
    }

    /// Whether layer `layer` needs the SSM output before the gate.
    pub(crate) fn wants_ssm_output(&self, layer: usize) -> bool {
        self.metric == Metric::SsmOutput && self.layers.contains(&layer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs_and_presets() {
        let r = Reduction::parse("12,17,22:0.9", Method::Unified, Metric::SsmOutput).unwrap();
        assert_eq!((r.layers(), r.ratio()), (&[12, 17, 22][..], 0.9));
        let p = Reduction::parse("mamba2-2.7b", Method::Unified, Metric::SsmOutput).unwrap();
        assert_eq!((p.layers().len(), p.ratio()), (7, DEFAULT_RATIO));
        for bad in ["", "3,2:0.9", "1:0", "1:1.5", "a:0.9", "1:x"] {
            assert!(
                Reduction::parse(bad, Method::Unified, Metric::SsmOutput).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn flops_reduction_matches_the_authors_figure() {
        // ALGORITHMS.md 5.4: 64 layers, anchors 12..42, rho 0.905 -> 29.8%.
        let r = Reduction::parse("mamba2-2.7b:0.905", Method::Unified, Metric::SsmOutput).unwrap();
        let f = r.flops_reduction(2048, 64);
        assert!((f - 0.298).abs() < 0.002, "{f}");
        assert_eq!(r.token_counts(10, 13)[12], 10 - r.args(10).remove);
    }
}
