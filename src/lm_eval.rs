//! Language-model evaluation without downloaded benchmarks: perplexity of a text and next-token
//! top-1 agreement with the unreduced model, under a token reduction (ALGORITHMS.md 5.4,
//! "Evaluation adjustment"). Text is byte-level: each byte is a token id.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::models::lm::LanguageModel;
use crate::prune::reduce::Reduction;
use crate::runtime::Context;

#[derive(Clone, Debug, Default, Serialize)]
pub struct LmScore {
    pub perplexity: f64,
    /// Fraction of scored outputs whose argmax equals the unreduced model's.
    pub agreement: f64,
    /// Outputs scored.
    pub scored: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct LmEval {
    pub windows: usize,
    pub tokens: usize,
    pub unreduced_perplexity: f64,
    /// Mean output length over input length.
    pub kept: f64,
    pub flops_reduction: f64,
    /// The paper's rule: an output m% shorter is scored against the first (1 - m)% of the
    /// labels, output k against token k + 1 and against unreduced output k.
    pub paper: LmScore,
    /// The authors' harness (ALGORITHMS.md 5.4): the continuation window shifted left by the
    /// number of removed tokens, i.e. outputs aligned to the end of the input: output k of n'
    /// scored as the unreduced output at position k + (n - n') and against its next token.
    pub end_aligned: LmScore,
    /// Output k at the input position p_k of the token it descends from, scored against token
    /// p_k + 1 and unreduced output p_k.
    pub positions: LmScore,
}

#[derive(Default)]
struct Acc {
    nll: f64,
    agree: usize,
    n: usize,
}

impl Acc {
    fn add(&mut self, logits: &[f32], target: u8, reference: &[f32]) {
        self.nll += nll(logits, target as usize);
        self.agree += usize::from(argmax(logits) == argmax(reference));
        self.n += 1;
    }

    fn score(&self) -> LmScore {
        LmScore {
            perplexity: (self.nll / self.n.max(1) as f64).exp(),
            agreement: self.agree as f64 / self.n.max(1) as f64,
            scored: self.n,
        }
    }
}

fn nll(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().fold(f32::MIN, |m, &v| m.max(v)) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    max + sum.ln() - logits[target] as f64
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
        .0
}

/// Evaluate `text` in consecutive windows of `window` bytes (the last partial one included
/// when it has at least two bytes), unreduced and under `reduction`.
pub async fn evaluate(
    ctx: &Context,
    model: &LanguageModel,
    text: &[u8],
    window: usize,
    reduction: &Reduction,
) -> Result<LmEval> {
    let mut all = evaluate_each(ctx, model, text, window, std::slice::from_ref(reduction)).await?;
    Ok(all.remove(0))
}

/// [`evaluate`] under each of `reductions`, running the unreduced model once.
pub async fn evaluate_each(
    ctx: &Context,
    model: &LanguageModel,
    text: &[u8],
    window: usize,
    reductions: &[Reduction],
) -> Result<Vec<LmEval>> {
    let vocab = model.vocab_size();
    if vocab < 256 {
        return Err(Error::InvalidInput(format!(
            "lm-eval feeds bytes as token ids; the model's vocabulary has {vocab} < 256 entries"
        )));
    }
    if window < 2 || text.len() < 2 {
        return Err(Error::InvalidInput(
            "lm-eval needs a window and a text of at least 2 bytes".into(),
        ));
    }
    let mut base = Acc::default();
    let mut scores: Vec<[Acc; 3]> = reductions.iter().map(|_| Default::default()).collect();
    let (mut windows, mut kept_sum, mut flops_sum) =
        (0, vec![0.0; reductions.len()], vec![0.0; reductions.len()]);
    for chunk in text.chunks(window).filter(|c| c.len() >= 2) {
        let ids: Vec<i64> = chunk.iter().map(|&b| b as i64).collect();
        let (full, _) = model.run(ctx, &ids, 1, false).await?;
        let len = chunk.len();
        let row = |x: &[f32], k: usize| x[k * vocab..(k + 1) * vocab].to_vec();
        for k in 0..len - 1 {
            let r = row(&full, k);
            base.add(&r, chunk[k + 1], &r);
        }
        for (i, reduction) in reductions.iter().enumerate() {
            let (reduced, pos) = model.run_reduced(ctx, &ids, reduction).await?;
            let [paper, end, positions] = &mut scores[i];
            let shift = len - pos.len();
            for (k, &p) in pos.iter().enumerate() {
                let out = row(&reduced, k);
                if k + 1 < len {
                    paper.add(&out, chunk[k + 1], &row(&full, k));
                }
                if k + shift + 1 < len {
                    end.add(&out, chunk[k + shift + 1], &row(&full, k + shift));
                }
                let p = p as usize;
                if p + 1 < len {
                    positions.add(&out, chunk[p + 1], &row(&full, p));
                }
            }
            kept_sum[i] += pos.len() as f64 / len as f64;
            flops_sum[i] += reduction.flops_reduction(len, model.n_layer());
        }
        windows += 1;
    }
    Ok(scores
        .iter()
        .enumerate()
        .map(|(i, [paper, end, positions])| LmEval {
            windows,
            tokens: text.len(),
            unreduced_perplexity: base.score().perplexity,
            kept: kept_sum[i] / windows as f64,
            flops_reduction: flops_sum[i] / windows as f64,
            paper: paper.score(),
            end_aligned: end.score(),
            positions: positions.score(),
        })
        .collect())
}
