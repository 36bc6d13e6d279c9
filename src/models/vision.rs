//! Image classifiers behind one interface, chosen by `model_type` in config.json: what the CLI,
//! the evaluation loop and embedding applications call.

use std::path::Path;

use crate::error::{check_finite, Error, Result};
use crate::models::plainmamba::PlainMamba;
use crate::models::vim::Vim;
use crate::models::{ModelDir, Trace};
use crate::preprocess::Preprocess;
use crate::prune::{PruneSchedule, Pruning};
use crate::runtime::{Context, Recorder, Tensor};

pub enum VisionModel {
    Vim(Box<Vim>),
    PlainMamba(Box<PlainMamba>),
}

/// A loaded classifier with the image transform its authors evaluate it with, and its labels.
pub struct Classifier {
    pub model: VisionModel,
    pub preprocess: Preprocess,
    /// Class names from config.json `labels`, else the class indices.
    pub labels: Vec<String>,
    /// Token pruning applied by [`Classifier::logits`] (none after `load`).
    pub pruning: Option<Pruning>,
}

impl Classifier {
    pub fn load(ctx: &Context, dir: &Path) -> Result<Self> {
        Self::from_model_dir(ctx, &ModelDir::open(dir)?)
    }

    /// [`Classifier::load`] on a model folder already read ([`ModelDir::from_bytes`]).
    pub fn from_model_dir(ctx: &Context, dir: &ModelDir) -> Result<Self> {
        let model_type = dir.config.get("model_type").and_then(|v| v.as_str());
        let model = match model_type {
            Some("vim") => VisionModel::Vim(Box::new(Vim::from_model_dir(ctx, dir)?)),
            Some("plainmamba") => {
                VisionModel::PlainMamba(Box::new(PlainMamba::from_model_dir(ctx, dir)?))
            }
            other => {
                return Err(dir.config_error(format!(
                    "model_type must be \"vim\" or \"plainmamba\", got {other:?}"
                )))
            }
        };
        let preprocess = Preprocess::from_config(&dir.config, &dir.config_path)?;
        let classes = model.num_classes();
        let labels = match dir.config.get("labels") {
            None => (0..classes).map(|i| i.to_string()).collect(),
            Some(v) => {
                let labels: Option<Vec<String>> = v
                    .as_array()
                    .map(|a| a.iter().map(|l| l.as_str().map(String::from)).collect())
                    .unwrap_or_default();
                match labels {
                    Some(l) if l.len() == classes => l,
                    _ => {
                        return Err(dir
                            .config_error(format!("`labels` must be a list of {classes} strings")))
                    }
                }
            }
        };
        let (channels, h, w) = model.input_shape();
        let [pc, ph, pw] = preprocess.output_shape();
        if (pc, ph, pw) != (channels, h, w) && matches!(model, VisionModel::Vim(_)) {
            return Err(dir.config_error(format!(
                "the preprocess makes [{pc}, {ph}, {pw}] images, the model takes [{channels}, {h}, {w}]"
            )));
        }
        Ok(Classifier {
            model,
            preprocess,
            labels,
            pruning: None,
        })
    }

    /// Logits `[batch, classes]` for preprocessed images `[batch, C, H, W]` (flat). A batch
    /// past the device's limits runs in chunks ([`in_chunks`]).
    pub async fn logits(&self, ctx: &Context, pixels: &[f32], batch: usize) -> Result<Vec<f32>> {
        let [c, h, w] = self.preprocess.output_shape();
        if batch == 0 || pixels.len() != batch * c * h * w {
            return Err(Error::InvalidInput(format!(
                "{} pixel values are not {batch} images of [{c}, {h}, {w}]",
                pixels.len()
            )));
        }
        let per_image = c * h * w;
        let mut out = in_chunks(batch, async |first, count| {
            let chunk = &pixels[first * per_image..(first + count) * per_image];
            let pixels = ctx.upload_f32("pixel_values", &[count, c, h, w], chunk)?;
            let mut rec = ctx.recorder();
            let logits = self
                .model
                .forward(&mut rec, &pixels, self.pruning.as_ref(), None)?;
            rec.submit_and_read(&[&logits]).await
        })
        .await?;
        let logits = out.remove(0);
        check_finite(|| "the logits".into(), &logits)?;
        Ok(logits)
    }
}

/// Run `pass(first, count)` over `batch` images in chunks and concatenate each of its outputs
/// (image-major) across them. The whole batch goes first; while a tensor of the pass is over a
/// device limit ([`Error::TooLarge`], raised while recording, before any GPU work) the chunk
/// is halved, and the rest of the batch runs in chunks of the size that fit.
pub async fn in_chunks(
    batch: usize,
    mut pass: impl AsyncFnMut(usize, usize) -> Result<Vec<Vec<f32>>>,
) -> Result<Vec<Vec<f32>>> {
    let mut outputs: Vec<Vec<f32>> = Vec::new();
    let (mut first, mut chunk) = (0, batch);
    while first < batch {
        let count = chunk.min(batch - first);
        match pass(first, count).await {
            Err(Error::TooLarge { .. }) if count > 1 => chunk = count.div_ceil(2),
            Err(e) => return Err(e),
            Ok(chunk_outputs) => {
                outputs.resize_with(chunk_outputs.len(), Vec::new);
                for (all, part) in outputs.iter_mut().zip(chunk_outputs) {
                    all.extend(part);
                }
                first += count;
            }
        }
    }
    Ok(outputs)
}

impl VisionModel {
    /// Record a forward pass over `pixels` `[batch, C, H, W]`, pruned when asked; returns
    /// logits `[batch, classes]`.
    pub fn forward(
        &self,
        rec: &mut Recorder,
        pixels: &Tensor,
        pruning: Option<&Pruning>,
        trace: Option<&mut Trace>,
    ) -> Result<Tensor> {
        let pruning = pruning.filter(|p| !p.schedule.steps().is_empty());
        match self {
            VisionModel::Vim(m) => m.forward_pruned(rec, pixels, pruning, trace),
            VisionModel::PlainMamba(m) => m.forward(rec, pixels, pruning, trace),
        }
    }

    /// `(channels, height, width)` of the images the model was made for.
    pub fn input_shape(&self) -> (usize, usize, usize) {
        match self {
            VisionModel::Vim(m) => (m.config.channels, m.config.img_size.0, m.config.img_size.1),
            VisionModel::PlainMamba(m) => {
                let (h, w) = m.image_size();
                (m.channels(), h, w)
            }
        }
    }

    pub fn num_classes(&self) -> usize {
        match self {
            VisionModel::Vim(m) => m.config.num_classes,
            VisionModel::PlainMamba(m) => m.num_classes(),
        }
    }

    /// Analytic FLOPs of one image at the model's input size, under a pruning schedule.
    pub fn flops(&self, schedule: Option<&PruneSchedule>) -> f64 {
        match self {
            VisionModel::Vim(m) => m.config.flops(schedule),
            VisionModel::PlainMamba(m) => {
                let (h, w) = m.image_size();
                m.flops(h, w, schedule)
            }
        }
    }
}
