//! Top-1 accuracy of a classifier on a labelled image set: what `ssmgpu eval` reports and the
//! pruning study sweeps.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::loader::SafetensorsFile;
use crate::models::vision::Classifier;
use crate::preprocess;
use crate::runtime::Context;

/// Grayscale images with labels, as `assets/data/mnist/test.safetensors` holds them:
/// `images` u8 `[N, H, W]` and `labels` `[N]`.
pub struct LabelledImages {
    pub path: PathBuf,
    /// `[N, H, W]`, row-major.
    pub pixels: Vec<u8>,
    pub labels: Vec<usize>,
    pub height: usize,
    pub width: usize,
}

impl LabelledImages {
    pub fn load(path: &Path) -> Result<Self> {
        let set = SafetensorsFile::open(path)?;
        let (shape, images) = set.ints("images")?;
        let (_, labels) = set.ints("labels")?;
        let bad = |what: String| Error::InvalidInput(format!("{}: {what}", path.display()));
        let [n, height, width] = shape[..] else {
            return Err(bad(format!("`images` must be [N, H, W], got {shape:?}")));
        };
        if labels.len() != n || n == 0 {
            return Err(bad(format!("{n} images and {} labels", labels.len())));
        }
        let labels = labels
            .iter()
            .map(|&l| usize::try_from(l).map_err(|_| bad(format!("negative label {l}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(LabelledImages {
            path: path.to_path_buf(),
            pixels: images.iter().map(|&v| v.clamp(0, 255) as u8).collect(),
            labels,
            height,
            width,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Accuracy {
    pub images: usize,
    pub correct: usize,
    /// Percent.
    pub top1: f64,
    /// Seconds in forward passes (upload and readback included), and in all.
    pub forward_secs: f64,
    pub total_secs: f64,
}

/// Classify the first `limit` images (all without) in batches of `batch` with the
/// classifier's preprocessing and pruning.
pub fn accuracy(
    ctx: &Context,
    classifier: &Classifier,
    set: &LabelledImages,
    batch: usize,
    limit: Option<usize>,
) -> Result<Accuracy> {
    if batch == 0 {
        return Err(Error::InvalidInput(
            "the batch size must be positive".into(),
        ));
    }
    let n = limit.map_or(set.len(), |l| l.min(set.len()));
    if n == 0 {
        return Err(Error::InvalidInput("limit 0: no images to evaluate".into()));
    }
    let (h, w) = (set.height, set.width);
    let classes = classifier.labels.len();
    // A label the model cannot output would count as a miss, silently.
    if let Some((i, l)) = set.labels[..n]
        .iter()
        .enumerate()
        .find(|(_, &l)| l >= classes)
    {
        return Err(Error::InvalidInput(format!(
            "{}: `labels`[{i}] is {l}, outside the model's {classes} classes",
            set.path.display()
        )));
    }
    let (mut correct, mut forward_secs) = (0, 0.0);
    let start = Instant::now();
    for first in (0..n).step_by(batch) {
        let count = batch.min(n - first);
        let images = (first..first + count)
            .map(|i| {
                let image = &set.pixels[i * h * w..][..h * w];
                classifier
                    .preprocess
                    .apply_gray_u8(image, h as u32, w as u32)
            })
            .collect::<Result<Vec<_>>>()?;
        let pixels = preprocess::batch(&images)?;
        let t = Instant::now();
        let logits = pollster::block_on(classifier.logits(ctx, &pixels, count))?;
        forward_secs += t.elapsed().as_secs_f64();
        for (row, &label) in logits.chunks(classes).zip(&set.labels[first..]) {
            let best = (0..classes).max_by(|&a, &b| row[a].total_cmp(&row[b]));
            correct += usize::from(best == Some(label));
        }
    }
    Ok(Accuracy {
        images: n,
        correct,
        top1: 100.0 * correct as f64 / n as f64,
        forward_secs,
        total_secs: start.elapsed().as_secs_f64(),
    })
}
