//! The zero-shot pruning study (`ssmgpu prune-study`): top-1 against FLOPs reduction for each
//! model, every alignment mode (with the default importance) and every importance metric (with
//! the default alignment), written as a Markdown table and a PNG plot.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::eval::{accuracy, LabelledImages};
use crate::models::vision::Classifier;
use crate::plot::{line_panels, Panel};
use crate::prune::{name_of, Align, Importance, PruneSchedule, Pruning};
use crate::runtime::Context;

/// One line of the plot: an alignment mode with an importance metric.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Method {
    pub align: Align,
    pub importance: Importance,
}

impl Method {
    /// Each alignment with the default importance, then each other importance with the
    /// default alignment.
    pub fn all() -> Vec<Method> {
        let aligns = Align::NAMES.iter().map(|&(_, align)| Method {
            align,
            importance: Importance::default(),
        });
        let importances = Importance::NAMES
            .iter()
            .filter(|(_, i)| *i != Importance::default())
            .map(|&(_, importance)| Method {
                align: Align::default(),
                importance,
            });
        aligns.chain(importances).collect()
    }

    pub fn label(&self) -> String {
        format!(
            "{} / {}",
            name_of(Align::NAMES, self.align),
            name_of(Importance::NAMES, self.importance)
        )
    }
}

/// One model's results.
pub struct ModelStudy {
    pub model: PathBuf,
    pub images: usize,
    pub unpruned_top1: f64,
    pub gflops: f64,
    /// (schedule, FLOPs reduction, top-1 per [`Method::all`]).
    pub rows: Vec<(PruneSchedule, f64, Vec<f64>)>,
}

/// The schedules swept for a model `depth` layers deep: one keep ratio after layers
/// `ceil(depth / 4)` and `ceil(depth / 2)`, from 0.9 down by 0.1 until the FLOPs reduction
/// reaches `max_reduction`.
pub fn schedules(
    depth: usize,
    flops: impl Fn(Option<&PruneSchedule>) -> f64,
    max_reduction: f64,
) -> Result<Vec<(PruneSchedule, f64)>> {
    let layers = [depth.div_ceil(4), depth.div_ceil(2)];
    let full = flops(None);
    let mut out = Vec::new();
    for tenths in (1..=9).rev() {
        let spec = layers
            .iter()
            .map(|l| format!("{l}:0.{tenths}"))
            .collect::<Vec<_>>()
            .join(",");
        let schedule = PruneSchedule::parse(&spec)?;
        let reduction = 1.0 - flops(Some(&schedule)) / full;
        out.push((schedule, reduction));
        if reduction >= max_reduction {
            break;
        }
    }
    Ok(out)
}

/// Run the study for one model; `progress` hears of each point as it is measured.
pub fn study_model(
    ctx: &Context,
    dir: &Path,
    set: &LabelledImages,
    (batch, limit): (usize, Option<usize>),
    mut progress: impl FnMut(&str),
) -> Result<ModelStudy> {
    let mut classifier = Classifier::load(ctx, dir)?;
    let unpruned = accuracy(ctx, &classifier, set, batch, limit)?;
    progress(&format!(
        "{}: unpruned top-1 {:.2}",
        dir.display(),
        unpruned.top1
    ));
    let depth = classifier.model.depth();
    let sweep = schedules(depth, |s| classifier.model.flops(s), 0.6)?;
    let mut rows = Vec::new();
    for (schedule, reduction) in sweep {
        let mut top1s = Vec::new();
        for method in Method::all() {
            classifier.pruning = Some(Pruning {
                schedule: schedule.clone(),
                importance: method.importance,
                align: method.align,
                seed: 0,
            });
            let a = accuracy(ctx, &classifier, set, batch, limit)?;
            progress(&format!(
                "{}: {schedule} ({:.1}% fewer FLOPs) {}: top-1 {:.2}",
                dir.display(),
                reduction * 100.0,
                method.label(),
                a.top1
            ));
            top1s.push(a.top1);
        }
        rows.push((schedule, reduction, top1s));
    }
    Ok(ModelStudy {
        model: dir.to_path_buf(),
        images: unpruned.images,
        unpruned_top1: unpruned.top1,
        gflops: classifier.model.flops(None) / 1e9,
        rows,
    })
}

fn model_name(study: &ModelStudy) -> String {
    study.model.file_name().map_or_else(
        || study.model.display().to_string(),
        |n| n.to_string_lossy().into(),
    )
}

/// The Markdown report: per model a table, then what the numbers say at 40% FLOPs
/// reduction or more.
pub fn markdown(studies: &[ModelStudy], data: &Path, command: &str, plot: &str) -> String {
    let methods = Method::all();
    let mut md = String::from("# Zero-shot token pruning on the shipped MNIST models\n\n");
    let _ = writeln!(
        md,
        "Top-1 (%) on `{}` against the engine's analytic FLOPs reduction, with no fine-tuning. \
         Every schedule prunes at one keep ratio after layers ⌈depth/4⌉ and ⌈depth/2⌉. Columns \
         are `align / importance`: each alignment with the default importance (clipped), and \
         each other importance with the default alignment (decay). Made by `{command}`.\n\n\
         ![top-1 against FLOPs reduction]({plot})\n",
        data.display()
    );
    for s in studies {
        let _ = writeln!(
            md,
            "## {}\n\n{} test images; unpruned top-1 {:.2}% at {:.4} GFLOPs per image.\n",
            model_name(s),
            s.images,
            s.unpruned_top1,
            s.gflops
        );
        let header: Vec<String> = methods.iter().map(Method::label).collect();
        let _ = writeln!(
            md,
            "| schedule | FLOPs reduction | {} |",
            header.join(" | ")
        );
        let _ = writeln!(md, "|---|---|{}", "---|".repeat(methods.len()));
        for (schedule, reduction, top1s) in &s.rows {
            let cells: Vec<String> = top1s.iter().map(|t| format!("{t:.2}")).collect();
            let _ = writeln!(
                md,
                "| {schedule} | {:.1}% | {} |",
                reduction * 100.0,
                cells.join(" | ")
            );
        }
        let _ = writeln!(md, "\n{}\n", summary(s, &methods));
    }
    md
}

/// At the first schedule with 40% FLOPs reduction or more: the best method and its drop, and
/// the score-order baseline's.
fn summary(s: &ModelStudy, methods: &[Method]) -> String {
    let Some((schedule, reduction, top1s)) = s.rows.iter().find(|r| r.1 >= 0.4) else {
        return "No schedule reached 40% FLOPs reduction.".into();
    };
    let (best, best_top1) = top1s
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or((0, f64::NAN), |(i, t)| (i, *t));
    let default = Method {
        align: Align::default(),
        importance: Importance::default(),
    };
    let at = |m: Method| {
        methods
            .iter()
            .position(|x| *x == m)
            .map_or(f64::NAN, |i| top1s[i])
    };
    let score = at(Method {
        align: Align::Score,
        importance: Importance::default(),
    });
    format!(
        "At `{schedule}` ({:.1}% fewer FLOPs): the default `{}` loses {:.2} points; the best \
         method here, `{}`, loses {:.2}; the score-order baseline loses {:.2}.",
        reduction * 100.0,
        default.label(),
        s.unpruned_top1 - at(default),
        methods[best].label(),
        s.unpruned_top1 - best_top1,
        s.unpruned_top1 - score
    )
}

/// One panel per model: top-1 against FLOPs reduction, a line per method, the unpruned top-1
/// dashed. Written as PNG.
pub fn plot(studies: &[ModelStudy], path: &Path) -> Result<()> {
    let panels: Vec<Panel> = studies
        .iter()
        .map(|s| Panel {
            title: model_name(s),
            x_desc: "FLOPs reduction (%)".into(),
            y_desc: "top-1 (%)".into(),
            reference: Some(("unpruned".into(), s.unpruned_top1)),
            lines: Method::all()
                .iter()
                .enumerate()
                .map(|(m, method)| {
                    let points = std::iter::once((0.0, s.unpruned_top1))
                        .chain(s.rows.iter().map(|r| (r.1 * 100.0, r.2[m])))
                        .collect();
                    (method.label(), points)
                })
                .collect(),
        })
        .collect();
    line_panels(&panels, path)
}
