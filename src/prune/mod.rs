//! Token pruning schedules: after which layers a vision model drops tokens, and how many it
//! keeps (ALGORITHMS.md section 4.2). The GPU side is [`crate::ops::topk`] (which tokens) and
//! [`crate::ops::gather_rows`] (compaction).

pub mod reduce;

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::ops::gather_rows::gather_rows;
use crate::ops::importance::Reduce;
use crate::ops::topk::{score_topk, KeepOrder};
use crate::runtime::{Recorder, Tensor};

/// After 1-indexed layer `after_layer`, keep `keep_ratio` (in (0, 1]) of the tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PruneStep {
    pub after_layer: usize,
    pub keep_ratio: f64,
}

/// Pruning steps in increasing layer order; empty: no pruning.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PruneSchedule {
    steps: Vec<PruneStep>,
}

/// The ToP authors' schedules for their 24-layer Vim models, keep ratio 0.8 (ALGORITHMS.md 4.2
/// "Schedules"; the code labels "start 10, every 10" vim-t and "start 5, every 5, < 20" vim-s).
pub const PRESETS: &[(&str, &str)] =
    &[("vim-t", "10:0.8,20:0.8"), ("vim-s", "5:0.8,10:0.8,15:0.8")];

impl PruneSchedule {
    /// A preset name (see [`PRESETS`]) or `"LAYER:RATIO,..."`, e.g. `"5:0.8,10:0.8,15:0.8"`:
    /// prune after those 1-indexed layers (strictly increasing), keeping that fraction.
    pub fn parse(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        let text = PRESETS
            .iter()
            .find(|(name, _)| *name == spec)
            .map_or(spec, |(_, steps)| steps);
        let bad = |what: String| Error::InvalidInput(format!("prune schedule `{spec}`: {what}"));
        if text.is_empty() {
            let names: Vec<&str> = PRESETS.iter().map(|(name, _)| *name).collect();
            return Err(bad(format!(
                "empty (expected LAYER:RATIO,... or one of {})",
                names.join(", ")
            )));
        }
        let mut steps: Vec<PruneStep> = Vec::new();
        for (i, part) in text.split(',').map(str::trim).enumerate() {
            let Some((layer, ratio)) = part.split_once(':') else {
                return Err(bad(if part.is_empty() {
                    format!("step {} is empty", i + 1)
                } else {
                    format!("`{part}` is not LAYER:RATIO")
                }));
            };
            let after_layer: usize = match layer.trim().parse() {
                Ok(l) if l >= 1 => l,
                _ => {
                    return Err(bad(format!(
                        "layer `{}` in `{part}` is not a layer number (1, 2, ...)",
                        layer.trim()
                    )))
                }
            };
            let keep_ratio: f64 = ratio.trim().parse().map_err(|_| {
                bad(format!(
                    "keep ratio `{}` in `{part}` is not a number",
                    ratio.trim()
                ))
            })?;
            if !(keep_ratio > 0.0 && keep_ratio <= 1.0) {
                return Err(bad(format!(
                    "keep ratio {keep_ratio} in `{part}` is outside (0, 1]"
                )));
            }
            if let Some(prev) = steps.last().filter(|s| s.after_layer >= after_layer) {
                return Err(bad(format!(
                    "layers must increase: `{part}` comes after layer {}",
                    prev.after_layer
                )));
            }
            steps.push(PruneStep {
                after_layer,
                keep_ratio,
            });
        }
        Ok(PruneSchedule { steps })
    }

    pub fn steps(&self) -> &[PruneStep] {
        &self.steps
    }

    /// Refuse steps that cannot act on a `depth`-layer model (pruning after the last layer
    /// changes nothing: the head reads the class token or the mean of what is left).
    pub fn check_depth(&self, depth: usize) -> Result<()> {
        match self.steps.last() {
            Some(s) if s.after_layer >= depth => Err(Error::InvalidInput(format!(
                "prune schedule `{self}`: layer {} is not before the last of {depth} layers",
                s.after_layer
            ))),
            _ => Ok(()),
        }
    }

    /// The tokens each of the `depth` layers runs on (per image), starting from `initial_len`.
    pub fn token_counts(&self, initial_len: usize, depth: usize, has_cls: bool) -> Vec<usize> {
        let mut n = initial_len;
        (1..=depth)
            .map(|layer| {
                let runs_on = n;
                if let Some(s) = self.steps.iter().find(|s| s.after_layer == layer) {
                    n = kept_tokens(n, s.keep_ratio, has_cls);
                }
                runs_on
            })
            .collect()
    }
}

/// How many of `n_current` tokens one pruning step at `keep_ratio` keeps, the class token
/// included.
///
/// With a class token this is the ToP authors' rounding (ALGORITHMS.md 4.2 step 2;
/// `vim/models_mamba.py`): `k = ceil((N - 1) * ratio)` in f64 as Python's `math.ceil`, then
/// `k + 1` if `k` is even; the step keeps the class token and the best `k - 1` others, `k` in
/// all, odd so that the class token is exactly in the middle. At 0.8: 197 -> 157 -> 125 -> 101.
/// Without a class token (PlainMamba), `ceil(N * ratio)`. A ratio of 1 keeps all `N` (the
/// formula would drop one token of an even `N`), so such a schedule is the unpruned model.
pub fn kept_tokens(n_current: usize, keep_ratio: f64, has_cls: bool) -> usize {
    if keep_ratio >= 1.0 {
        return n_current;
    }
    if !has_cls {
        return (n_current as f64 * keep_ratio).ceil() as usize;
    }
    let k = (n_current.saturating_sub(1) as f64 * keep_ratio).ceil() as usize;
    k + usize::from(k.is_multiple_of(2))
}

impl FromStr for PruneSchedule {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Display for PruneSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.steps.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{}:{}", s.after_layer, s.keep_ratio)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(spec: &str) -> String {
        match PruneSchedule::parse(spec) {
            Err(Error::InvalidInput(msg)) => msg,
            other => panic!("`{spec}`: expected InvalidInput, got {other:?}"),
        }
    }

    #[test]
    fn parses_specs_and_presets() {
        let s = PruneSchedule::parse(" 5:0.8, 10 : 0.75,15:1 ").unwrap();
        let layers: Vec<usize> = s.steps().iter().map(|s| s.after_layer).collect();
        assert_eq!(layers, [5, 10, 15]);
        assert_eq!(s.steps()[1].keep_ratio, 0.75);
        assert_eq!(s.to_string(), "5:0.8,10:0.75,15:1");
        assert_eq!(s.to_string().parse::<PruneSchedule>().unwrap(), s);
        let vim_s: PruneSchedule = "vim-s".parse().unwrap();
        assert_eq!(vim_s.to_string(), "5:0.8,10:0.8,15:0.8");
        assert_eq!(
            PruneSchedule::parse("vim-t").unwrap().to_string(),
            "10:0.8,20:0.8"
        );
    }

    #[test]
    fn names_the_bad_part() {
        assert!(error_of("").contains("empty"));
        assert!(error_of("  ").contains("vim-t"));
        assert!(error_of("5:0.8,,10:0.8").contains("step 2 is empty"));
        assert!(error_of("5:0.8,10").contains("`10` is not LAYER:RATIO"));
        assert!(error_of("x:0.8").contains("layer `x`"));
        assert!(error_of("0:0.8").contains("layer `0`"));
        assert!(error_of("-3:0.8").contains("layer `-3`"));
        assert!(error_of("5:abc").contains("keep ratio `abc`"));
        for ratio in ["0", "-0.5", "1.01", "nan", "inf"] {
            let msg = error_of(&format!("5:0.8,10:{ratio}"));
            assert!(
                msg.contains("outside (0, 1]") && msg.contains("10:"),
                "{msg}"
            );
        }
        assert!(error_of("10:0.8,5:0.8").contains("`5:0.8` comes after layer 10"));
        assert!(error_of("5:0.8,5:0.8").contains("layers must increase"));
    }

    #[test]
    fn authors_rounding() {
        // ALGORITHMS.md 4.2 step 5: 197 -> 157 -> 125 -> 101 at 0.8.
        assert_eq!(kept_tokens(197, 0.8, true), 157);
        assert_eq!(kept_tokens(157, 0.8, true), 125);
        assert_eq!(kept_tokens(125, 0.8, true), 101);
        // ceil(196 * 0.75) = 147 is exact and odd; ceil(196 * 0.7) = 138 (f64: 137.2) -> 139.
        assert_eq!(kept_tokens(197, 0.75, true), 147);
        assert_eq!(kept_tokens(197, 0.7, true), 139);
        assert_eq!(kept_tokens(1, 0.5, true), 1);
        assert_eq!(kept_tokens(3, 0.1, true), 1);
        // Ratio 1 keeps everything, also where the formula would round an even N down.
        assert_eq!(kept_tokens(197, 1.0, true), 197);
        assert_eq!(kept_tokens(50, 1.0, true), 50);
        assert_eq!(kept_tokens(196, 0.8, false), 157);
        assert_eq!(kept_tokens(196, 0.5, false), 98);
        assert_eq!(kept_tokens(196, 1.0, false), 196);
    }

    #[test]
    fn token_counts_follow_the_schedule() {
        let vim_s = PruneSchedule::parse("vim-s").unwrap();
        let counts = vim_s.token_counts(197, 24, true);
        let want: Vec<usize> = [(197, 5), (157, 5), (125, 5), (101, 9)]
            .iter()
            .flat_map(|&(n, layers)| std::iter::repeat_n(n, layers))
            .collect();
        assert_eq!(counts, want);
        // ALGORITHMS.md: mean tokens per layer about 137.7 of 197.
        let mean = counts.iter().sum::<usize>() as f64 / 24.0;
        assert!((mean - 137.67).abs() < 0.01, "{mean}");
        let vim_t = PruneSchedule::parse("vim-t").unwrap();
        assert_eq!(vim_t.token_counts(197, 24, true)[23], 125);
        assert_eq!(PruneSchedule::default().token_counts(10, 3, false), [10; 3]);
        assert!(vim_t.check_depth(24).is_ok());
        assert!(vim_t.check_depth(20).is_err());
        assert!(PruneSchedule::default().check_depth(1).is_ok());
    }
}

/// Which score decides the tokens a step keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Importance {
    /// Mean over channels of the clipped SSM output `max(0, y)` (y before the gate), summed
    /// over the scan directions at original positions (both papers' metric; the default).
    #[default]
    Clipped,
    /// The same without the clip (ablation).
    Unclipped,
    /// Euclidean norm of the token's mixer output (ablation).
    L2,
    /// Uniformly random (ablation baseline).
    Random,
}

impl Importance {
    pub const NAMES: &[(&str, Importance)] = &[
        ("clipped", Importance::Clipped),
        ("unclipped", Importance::Unclipped),
        ("l2", Importance::L2),
        ("random", Importance::Random),
    ];

    /// Whether the scans must store their ungated output, and clipped.
    pub fn from_scan(self) -> Option<bool> {
        match self {
            Importance::Clipped => Some(true),
            Importance::Unclipped => Some(false),
            Importance::L2 | Importance::Random => None,
        }
    }
}

/// Where kept tokens go in the compacted sequence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Align {
    /// In importance order, as ViT pruning leaves them (the baseline the paper says fails).
    Score,
    /// In original order: each scan then visits the kept tokens in its own order, with the
    /// state carried over the pruned positions.
    Carry,
    /// As `Carry`, but each pruned position between two kept tokens still decays the state as
    /// a zero-input token would (`delta = softplus(dt_bias)`), so the distance between kept
    /// tokens is the unpruned one (our reading of the paper's hidden state alignment). The
    /// default: best top-1 at every keep ratio in docs/pruning.md.
    #[default]
    Decay,
}

impl Align {
    pub const NAMES: &[(&str, Align)] = &[
        ("score", Align::Score),
        ("carry", Align::Carry),
        ("decay", Align::Decay),
    ];
}

/// Parse `name` as one of `names` (a CLI option's value).
pub fn parse_name<T: Copy>(what: &str, names: &[(&str, T)], name: &str) -> Result<T> {
    names
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let known: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
            Error::InvalidInput(format!(
                "unknown {what} `{name}` (one of: {})",
                known.join(", ")
            ))
        })
}

/// The CLI name of `value` in `names` (the inverse of [`parse_name`]).
pub fn name_of<T: PartialEq>(names: &[(&'static str, T)], value: T) -> &'static str {
    names
        .iter()
        .find(|(_, v)| *v == value)
        .map_or("?", |(n, _)| *n)
}

/// A pruning configuration for a vision model's forward pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pruning {
    pub schedule: PruneSchedule,
    pub importance: Importance,
    pub align: Align,
    /// For [`Importance::Random`].
    pub seed: u32,
}

/// A vision model's token streams between two layers (all `[B·N, D]`; a residual stream in
/// models that keep one apart) and the original index of every current token (u32 `[B, N]`).
pub struct TokenStreams {
    pub hidden: Tensor,
    pub residual: Option<Tensor>,
    pub positions: Tensor,
    /// Tokens per image now.
    pub len: usize,
    /// The importance scores `[B, N_before]` that decided the last pruning step, if any.
    pub scores: Option<Tensor>,
}

impl Pruning {
    /// The keep ratio of the step after 0-indexed layer `layer`, if there is one.
    pub fn ratio_after(&self, layer: usize) -> Option<f64> {
        self.schedule
            .steps()
            .iter()
            .find(|s| s.after_layer == layer + 1 && s.keep_ratio < 1.0)
            .map(|s| s.keep_ratio)
    }

    /// Whether layer `layer`'s scans must store their ungated output for this step's scores,
    /// and clipped.
    pub fn scan_scores(&self, layer: usize) -> Option<bool> {
        self.ratio_after(layer).and(self.importance.from_scan())
    }

    /// Start a pruned forward pass of a model `depth` layers deep over `batch` images of `len`
    /// tokens: check the schedule against the depth and return the identity position map
    /// u32 `[batch, len]` (token t of every image is original token t).
    pub fn begin(&self, rec: &Recorder, depth: usize, batch: usize, len: usize) -> Result<Tensor> {
        self.schedule.check_depth(depth)?;
        let ids: Vec<u32> = (0..batch).flat_map(|_| 0..len as u32).collect();
        rec.context().upload_u32("positions", &[batch, len], &ids)
    }

    /// Record one pruning step after layer `layer`: scores, top-k (the class token at
    /// `(N - 1) / 2` kept in the middle when `has_cls`), and the gather of both streams and the
    /// position map. `ungated` is the layer's summed scan output when [`Self::scan_scores`]
    /// asked for it. Returns the streams unchanged when no step follows this layer.
    pub fn after_layer(
        &self,
        rec: &mut Recorder,
        layer: usize,
        streams: TokenStreams,
        ungated: Option<&Tensor>,
        batch: usize,
        has_cls: bool,
    ) -> Result<TokenStreams> {
        let Some(ratio) = self.ratio_after(layer) else {
            return Ok(streams);
        };
        let keep = kept_tokens(streams.len, ratio, has_cls);
        if keep == streams.len {
            return Ok(streams);
        }
        // The rows the scores come from, and how each becomes a score.
        let (rows, reduce) = match (self.importance, ungated) {
            (Importance::Clipped | Importance::Unclipped, Some(ungated)) => (ungated, Reduce::Mean),
            (Importance::Clipped | Importance::Unclipped, None) => {
                return Err(Error::InvalidInput(format!(
                    "pruning after layer {}: the scan scores were not recorded",
                    layer + 1
                )))
            }
            (Importance::L2, _) => (&streams.hidden, Reduce::L2),
            (Importance::Random, _) => (
                &streams.hidden,
                Reduce::Random {
                    seed: self.seed ^ (layer as u32).wrapping_mul(0x9e37_79b9),
                },
            ),
        };
        let order = match self.align {
            Align::Score => KeepOrder::Score,
            Align::Carry => KeepOrder::Ascending,
            // The position map must increase through the class token.
            Align::Decay => KeepOrder::Balanced,
        };
        let cls = has_cls.then_some((streams.len - 1) / 2);
        let (scores, kept) = score_topk(rec, rows, batch, reduce, keep, cls, order)?;
        let gathered = gather_rows(
            rec,
            &kept,
            &streams.hidden,
            streams.residual.as_ref(),
            Some(&streams.positions),
        )?;
        let positions = gathered
            .positions
            .ok_or_else(|| Error::Gpu("gather_rows dropped the position map".into()))?;
        Ok(TokenStreams {
            hidden: gathered.x,
            residual: gathered.y,
            positions,
            len: keep,
            scores: Some(scores),
        })
    }
}
