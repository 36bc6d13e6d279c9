//! The language-model token-reduction study (`ssmgpu lm-study`): perplexity and top-1
//! agreement with the unreduced model against FLOPs reduction, for the unified method and the
//! two baselines, written as a Markdown report and a PNG plot.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::lm_eval::{evaluate_each, LmEval};
use crate::models::lm::LanguageModel;
use crate::plot::{line_panels, Panel};
use crate::prune::reduce::{Method, Metric, Reduction};
use crate::runtime::Context;

pub const METHODS: [(&str, Method); 4] = [
    ("unified", Method::Unified),
    ("prune-only", Method::PruneOnly),
    ("merge-only", Method::MergeOnly),
    ("unified-code", Method::UnifiedCode),
];

/// One model's results.
pub struct LmStudy {
    pub model: PathBuf,
    pub unreduced_perplexity: f64,
    /// (method name, target FLOPs reduction %, the reduction's ratio, result).
    pub rows: Vec<(&'static str, f64, f64, LmEval)>,
}

/// Every method at every FLOPs target after `layers`, on `text` in windows of `window` bytes.
pub fn study_model(
    ctx: &Context,
    dir: &Path,
    text: &[u8],
    window: usize,
    (layers, flops): (&[usize], &[f64]),
    mut progress: impl FnMut(&str),
) -> Result<LmStudy> {
    let lm = LanguageModel::load(ctx, dir)?;
    let mut plan = Vec::new();
    for (name, method) in METHODS {
        let schedule = Reduction::new(layers.to_vec(), 1.0, method, Metric::SsmOutput)?;
        for &pct in flops {
            plan.push((
                name,
                pct,
                schedule.for_flops(window, lm.n_layer(), pct / 100.0)?,
            ));
        }
    }
    let reductions: Vec<Reduction> = plan.iter().map(|p| p.2.clone()).collect();
    let results = pollster::block_on(evaluate_each(ctx, &lm, text, window, &reductions))?;
    let rows: Vec<_> = plan
        .into_iter()
        .zip(results)
        .map(|((name, pct, r), eval)| {
            progress(&format!(
                "{}: {name} at {pct}%: perplexity {:.3} (positions), agreement {:.1}%",
                dir.display(),
                eval.positions.perplexity,
                100.0 * eval.positions.agreement
            ));
            (name, pct, r.ratio(), eval)
        })
        .collect();
    Ok(LmStudy {
        model: dir.to_path_buf(),
        unreduced_perplexity: rows.first().map_or(f64::NAN, |r| r.3.unreduced_perplexity),
        rows,
    })
}

fn model_name(study: &LmStudy) -> String {
    study.model.file_name().map_or_else(
        || study.model.display().to_string(),
        |n| n.to_string_lossy().into(),
    )
}

/// The Markdown report: per model a table of every rule's scores, then whether the unified
/// method degrades least at the largest reduction.
pub fn markdown(studies: &[LmStudy], command: &str, plot: &str) -> String {
    let mut md = String::from("# Token reduction on the shipped language models: results\n\n");
    let _ = writeln!(
        md,
        "Made by `{command}`. Perplexity (PPL) and top-1 agreement with the unreduced model \
         under three alignments of the shortened output (see `token-reduction.md`): the \
         paper's rule, the authors' harness (end-aligned) and the input positions.\n\n\
         ![perplexity and agreement against FLOPs reduction]({plot})\n"
    );
    for s in studies {
        let _ = writeln!(
            md,
            "## {}\n\nUnreduced perplexity {:.3}.\n\n\
             | method | FLOPs red. % | ratio | kept tokens % | PPL paper | agree. paper % | \
             PPL end-aligned | agree. end % | PPL positions | agree. positions % |\n\
             |---|---|---|---|---|---|---|---|---|---|",
            model_name(s),
            s.unreduced_perplexity
        );
        for (name, _, ratio, e) in &s.rows {
            let _ = writeln!(
                md,
                "| {name} | {:.1} | {ratio:.4} | {:.1} | {:.2} | {:.1} | {:.2} | {:.1} | {:.3} | {:.1} |",
                100.0 * e.flops_reduction,
                100.0 * e.kept,
                e.paper.perplexity,
                100.0 * e.paper.agreement,
                e.end_aligned.perplexity,
                100.0 * e.end_aligned.agreement,
                e.positions.perplexity,
                100.0 * e.positions.agreement,
            );
        }
        let _ = writeln!(md, "\n{}\n", summary(s));
    }
    md
}

/// At the largest target: the methods ranked by perplexity at the input positions, and where
/// the unified method stands, as the paper describes it and as the authors' code computes it.
fn summary(s: &LmStudy) -> String {
    let top = s.rows.iter().map(|r| r.1).fold(f64::MIN, f64::max);
    let mut at: Vec<_> = s.rows.iter().filter(|r| r.1 == top).collect();
    at.sort_by(|a, b| {
        a.3.positions
            .perplexity
            .total_cmp(&b.3.positions.perplexity)
    });
    let ranking: Vec<String> = at
        .iter()
        .map(|r| format!("{} {:.3}", r.0, r.3.positions.perplexity))
        .collect();
    let place = |name: &str| at.iter().position(|r| r.0 == name).map_or(0, |p| p + 1);
    format!(
        "At {top}% FLOPs reduction, perplexity at the input positions, best first: {} \
         (unreduced {:.3}). The unified method as the paper describes it places {} of {}; as \
         the authors' code computes it, {} of {}.",
        ranking.join(", "),
        s.unreduced_perplexity,
        place("unified"),
        at.len(),
        place("unified-code"),
        at.len()
    )
}

/// Per model two panels: perplexity and agreement (input positions) against FLOPs reduction,
/// a line per method.
pub fn plot(studies: &[LmStudy], path: &Path) -> Result<()> {
    let mut panels = Vec::new();
    for s in studies {
        let line = |name: &str, value: &dyn Fn(&LmEval) -> f64, unreduced: f64| {
            let points = std::iter::once((0.0, unreduced))
                .chain(
                    s.rows
                        .iter()
                        .filter(|r| r.0 == name)
                        .map(|r| (100.0 * r.3.flops_reduction, value(&r.3))),
                )
                .collect();
            (name.to_string(), points)
        };
        panels.push(Panel {
            title: format!("{}: perplexity", model_name(s)),
            x_desc: "FLOPs reduction (%)".into(),
            y_desc: "perplexity (positions)".into(),
            reference: Some(("unreduced".into(), s.unreduced_perplexity)),
            lines: METHODS
                .iter()
                .map(|(n, _)| line(n, &|e| e.positions.perplexity, s.unreduced_perplexity))
                .collect(),
        });
        panels.push(Panel {
            title: format!("{}: agreement", model_name(s)),
            x_desc: "FLOPs reduction (%)".into(),
            y_desc: "top-1 agreement (%)".into(),
            reference: None,
            lines: METHODS
                .iter()
                .map(|(n, _)| line(n, &|e| 100.0 * e.positions.agreement, 100.0))
                .collect(),
        });
    }
    line_panels(&panels, path)
}
