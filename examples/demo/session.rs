//! The engine side of the demo: a model, one image, the pruning settings, and an inference per
//! change, all through the `Context` that shares the window's device.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use image::DynamicImage;
use ssmgpu::inspect::{TokenGrid, TokenMaps};
use ssmgpu::models::vision::Classifier;
use ssmgpu::prune::{Align, Importance, PruneSchedule, Pruning};
use ssmgpu::{Context, Error, Recorder, Result, Tensor};

/// Forward passes timed per setting (after one warm-up); the median is shown.
pub const TIMED_RUNS: usize = 5;

pub struct Model {
    pub dir: PathBuf,
    pub classifier: Classifier,
    pub grid: TokenGrid,
    pub depth: usize,
}

impl Model {
    pub fn load(ctx: &Context, dir: &Path) -> Result<Self> {
        let classifier = Classifier::load(ctx, dir)?;
        Ok(Model {
            dir: dir.to_path_buf(),
            grid: classifier.model.token_grid(),
            depth: classifier.model.depth(),
            classifier,
        })
    }
}

/// The pruning controls: a schedule spec as the CLI takes it, importance and alignment.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub schedule: String,
    pub importance: Importance,
    pub align: Align,
}

impl Settings {
    /// `None` for an empty spec (the unpruned model).
    pub fn pruning(&self) -> Result<Option<Pruning>> {
        if self.schedule.trim().is_empty() {
            return Ok(None);
        }
        Ok(Some(Pruning {
            schedule: PruneSchedule::parse(&self.schedule)?,
            importance: self.importance,
            align: self.align,
            seed: 0,
        }))
    }
}

/// One forward pass over the current image, its result left on the GPU for the overlay.
pub struct Inference {
    /// The preprocessed image `[1, C, H, W]` the model ran on.
    pub pixels: Tensor,
    pub maps: TokenMaps,
    pub top5: Vec<(String, f32)>,
    /// The schedule it ran with (`None`: unpruned).
    pub schedule: Option<PruneSchedule>,
}

/// Milliseconds per forward pass, unpruned and pruned, and how they were measured.
pub struct Timing {
    pub unpruned_ms: f64,
    pub pruned_ms: Option<f64>,
    pub clock: &'static str,
}

/// Run `image` through `model`, pruned as `pruning` says. The pruned pass can be refused
/// (e.g. PlainMamba before its pruning lands): then the error comes back beside the unpruned
/// result, so the window still has something to show.
pub fn infer(
    ctx: &Context,
    model: &Model,
    image: &DynamicImage,
    pruning: Option<&Pruning>,
) -> Result<(Inference, Option<Error>)> {
    let pre = &model.classifier.preprocess;
    let [c, h, w] = pre.output_shape();
    let pixels = ctx.upload_f32("pixel_values", &[1, c, h, w], &pre.apply(image)?)?;
    let run = |pruning: Option<&Pruning>| -> Result<Inference> {
        let mut rec = ctx.recorder();
        let (logits, maps) = model
            .classifier
            .model
            .forward_with_token_maps(&mut rec, &pixels, pruning)?;
        // Only the logits come back; the maps stay on the GPU for the overlay.
        let logits = rec.submit_and_read_blocking(&[&logits])?.remove(0);
        Ok(Inference {
            pixels: pixels.clone(),
            maps,
            top5: model.classifier.top(&logits, 5),
            schedule: pruning.map(|p| p.schedule.clone()),
        })
    };
    match pruning {
        None => Ok((run(None)?, None)),
        Some(p) => match run(Some(p)) {
            Ok(result) => Ok((result, None)),
            Err(refused) => Ok((run(None)?, Some(refused))),
        },
    }
}

/// GPU time of a forward pass from timestamp queries written before and after it in the
/// same submission.
pub struct GpuTimer {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
}

impl GpuTimer {
    /// `None` where the device has no timestamp queries.
    pub fn new(device: &wgpu::Device) -> Option<Self> {
        if !device.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            return None;
        }
        let buffer = |label, usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 16,
                usage,
                mapped_at_creation: false,
            })
        };
        Some(GpuTimer {
            queries: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("demo.timer"),
                ty: wgpu::QueryType::Timestamp,
                count: 3,
            }),
            resolve: buffer(
                "demo.timer.resolve",
                wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            ),
            readback: buffer(
                "demo.timer.readback",
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
        })
    }

    /// An empty compute pass that writes timestamp `index` at its start (0) or end (1).
    ///
    /// The start pass also writes the spare timestamp 2: lavapipe, once the device has
    /// rendered, writes a timestamp only at its next flush, which the next timestamp write
    /// does; without one right after it, the start would be stamped after the forward pass.
    fn stamp(&self, rec: &mut Recorder, index: u32) {
        let (begin, end) = if index == 0 {
            (Some(0), Some(2))
        } else {
            (None, Some(1))
        };
        rec.encoder()
            .expect("the demo's context is a wgpu context")
            .begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("demo.timer"),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &self.queries,
                    beginning_of_pass_write_index: begin,
                    end_of_pass_write_index: end,
                }),
            });
    }

    fn time(&self, ctx: &Context, record: impl Fn(&mut Recorder) -> Result<Tensor>) -> Result<f64> {
        let mut rec = ctx.recorder();
        self.stamp(&mut rec, 0);
        let out = record(&mut rec)?;
        self.stamp(&mut rec, 1);
        let encoder = rec.encoder().expect("the demo's context is a wgpu context");
        encoder.resolve_query_set(&self.queries, 0..2, &self.resolve, 0);
        encoder.copy_buffer_to_buffer(&self.resolve, 0, &self.readback, 0, 16);
        rec.submit_blocking()?;
        drop(out);
        let (tx, rx) = mpsc::channel();
        self.readback
            .slice(..)
            .map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
        let gpu = |e: String| Error::Gpu(format!("reading timestamps: {e}"));
        ctx.device()
            .expect("the demo's context is a wgpu context")
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| gpu(e.to_string()))?;
        rx.recv()
            .map_err(|e| gpu(e.to_string()))?
            .map_err(|e| gpu(e.to_string()))?;
        let ticks: [u64; 2] = {
            let view = self
                .readback
                .slice(..)
                .get_mapped_range()
                .map_err(|e| gpu(format!("{e:?}")))?;
            bytemuck::pod_read_unaligned(&view[..16])
        };
        self.readback.unmap();
        let ns = ticks[1].saturating_sub(ticks[0]) as f64
            * f64::from(
                ctx.queue()
                    .expect("the demo's context is a wgpu context")
                    .get_timestamp_period(),
            );
        Ok(ns / 1e6)
    }
}

/// Median ms per forward pass of `model` on `pixels`, unpruned and (when given) pruned.
pub fn time(
    ctx: &Context,
    timer: Option<&GpuTimer>,
    model: &Model,
    pixels: &Tensor,
    pruning: Option<&Pruning>,
) -> Result<Timing> {
    let median = |pruning: Option<&Pruning>| -> Result<f64> {
        let forward =
            |rec: &mut Recorder| model.classifier.model.forward(rec, pixels, pruning, None);
        let mut ms = Vec::with_capacity(TIMED_RUNS);
        for run in 0..=TIMED_RUNS {
            let t = match timer {
                Some(timer) => timer.time(ctx, forward)?,
                None => {
                    let mut rec = ctx.recorder();
                    let out = forward(&mut rec)?;
                    let start = Instant::now();
                    // Waits for the GPU on native targets.
                    rec.submit_blocking()?;
                    drop(out);
                    start.elapsed().as_secs_f64() * 1e3
                }
            };
            if run > 0 {
                ms.push(t);
            }
        }
        ms.sort_by(f64::total_cmp);
        Ok(ms[ms.len() / 2])
    };
    Ok(Timing {
        unpruned_ms: median(None)?,
        pruned_ms: pruning.map(|p| median(Some(p))).transpose()?,
        clock: if timer.is_some() {
            "GPU timestamps"
        } else {
            "wall clock"
        },
    })
}
