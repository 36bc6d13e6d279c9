//! ssmgpu in a browser page: load a vision classifier from its two files' bytes, classify
//! pixels or an encoded image on the page's WebGPU device, and get the top classes, the logits,
//! which tokens each stage of a pruned pass kept, and timings. Errors reach JS as `Error`s
//! carrying the engine's message.
//!
//! Methods that wait on the GPU return Promises built from an `Rc` of the engine's state, so a
//! pending classification holds no borrow of the JS object (a `set_pruning` call meanwhile
//! takes effect from the next one).

use std::cell::RefCell;
use std::rc::Rc;

use image::{DynamicImage, RgbaImage};
use js_sys::Promise;
use ssmgpu::inspect::TokenGrid;
use ssmgpu::models::vision::Classifier;
use ssmgpu::models::ModelDir;
use ssmgpu::preprocess;
use ssmgpu::prune::{parse_name, Align, Importance, PruneSchedule, Pruning};
use ssmgpu::{Context, Error, Result};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

#[wasm_bindgen(start)]
fn start() {
    // Without a hook a panic surfaces as a bare "unreachable" trap.
    std::panic::set_hook(Box::new(|info| {
        web_sys::console::error_1(&JsValue::from_str(&info.to_string()))
    }));
}

/// A classifier on the page's GPU device.
#[wasm_bindgen]
pub struct Engine {
    shared: Rc<Shared>,
}

struct Shared {
    ctx: Context,
    classifier: Classifier,
    grid: TokenGrid,
    pruning: RefCell<Option<Pruning>>,
}

/// One image's result.
#[wasm_bindgen(getter_with_clone)]
pub struct Classification {
    /// Raw logits, one per class.
    pub logits: Vec<f32>,
    /// The top classes, best first, and their softmax probabilities.
    pub labels: Vec<String>,
    pub probabilities: Vec<f32>,
    /// Per stage (a run of layers on the same tokens): its first layer (1-indexed) and how
    /// many tokens it ran on, the class token included.
    pub stage_layers: Vec<u32>,
    pub stage_tokens: Vec<u32>,
    /// Per stage, the token grid row-major (`Engine.grid_rows` x `grid_cols`): 1 where the
    /// patch's token was kept, 0 where it was pruned.
    pub masks: Vec<u8>,
    /// Decoding and the eval transform on the CPU.
    pub preprocess_ms: f64,
    /// Upload, recording, GPU work and the readback of the logits and position maps.
    pub forward_ms: f64,
}

#[wasm_bindgen]
impl Engine {
    /// Create a WebGPU device and load a model folder's `config.json` (text) and
    /// `model.safetensors` (bytes); `name` labels the model in error messages.
    pub async fn load(
        name: String,
        config_json: String,
        weights: Vec<u8>,
    ) -> Result<Engine, JsError> {
        let ctx = Context::new().await?;
        let dir = ModelDir::from_bytes(&name, &config_json, weights)?;
        let classifier = Classifier::from_model_dir(&ctx, &dir)?;
        Ok(Engine {
            shared: Rc::new(Shared {
                grid: classifier.model.token_grid(),
                ctx,
                classifier,
                pruning: RefCell::new(None),
            }),
        })
    }

    /// The adapter the device runs on (browsers may not name it), and its backend.
    pub fn adapter(&self) -> String {
        match self.shared.ctx.adapter_info() {
            Some(i) if !i.name.is_empty() => format!("{} ({:?})", i.name, i.backend),
            Some(i) => format!("{:?}", i.backend),
            None => "?".into(),
        }
    }

    pub fn grid_rows(&self) -> usize {
        self.shared.grid.rows
    }

    pub fn grid_cols(&self) -> usize {
        self.shared.grid.cols
    }

    /// Number of layers, the range of pruning steps (`1..depth`).
    pub fn depth(&self) -> usize {
        self.shared.classifier.model.depth()
    }

    /// Token pruning for the next classifications: a schedule as the CLI takes it
    /// (`"2:0.5"`, `"1:0.8,2:0.8"`; empty: none), importance (`clipped`, `unclipped`, `l2`,
    /// `random`) and alignment (`score`, `carry`, `decay`).
    pub fn set_pruning(
        &self,
        schedule: &str,
        importance: &str,
        align: &str,
    ) -> Result<(), JsError> {
        let pruning = if schedule.trim().is_empty() {
            None
        } else {
            let schedule = PruneSchedule::parse(schedule)?;
            schedule.check_depth(self.depth())?;
            Some(Pruning {
                schedule,
                importance: parse_name("importance", Importance::NAMES, importance)?,
                align: parse_name("align", Align::NAMES, align)?,
                seed: 0,
            })
        };
        *self.shared.pruning.borrow_mut() = pruning;
        Ok(())
    }

    /// Classify RGBA pixels (an `ImageData`'s `data`, `width`, `height`; alpha is dropped);
    /// resolves to a [`Classification`] with the `top` best classes.
    pub fn classify_rgba(&self, rgba: Vec<u8>, width: u32, height: u32, top: usize) -> Promise {
        let shared = self.shared.clone();
        promise(async move {
            let start = now_ms();
            let image = RgbaImage::from_raw(width, height, rgba).ok_or_else(|| {
                Error::InvalidInput(format!("RGBA data is not {width}x{height} pixels"))
            })?;
            let pixels = shared
                .classifier
                .preprocess
                .apply(&DynamicImage::ImageRgba8(image))?;
            shared.classify(&pixels, top, now_ms() - start).await
        })
    }

    /// Classify an encoded image (PNG, JPEG, WebP or BMP bytes, e.g. a dropped file).
    pub fn classify_encoded(&self, bytes: Vec<u8>, top: usize) -> Promise {
        let shared = self.shared.clone();
        promise(async move {
            let start = now_ms();
            let image = preprocess::decode_image("the image", &bytes)?;
            let pixels = shared.classifier.preprocess.apply(&image)?;
            shared.classify(&pixels, top, now_ms() - start).await
        })
    }
}

impl Shared {
    async fn classify(
        &self,
        pixels: &[f32],
        top: usize,
        preprocess_ms: f64,
    ) -> Result<Classification> {
        let start = now_ms();
        let pruning = self.pruning.borrow().clone();
        let [c, h, w] = self.classifier.preprocess.output_shape();
        let input = self.ctx.upload_f32("pixel_values", &[1, c, h, w], pixels)?;
        let mut rec = self.ctx.recorder();
        let (logits, maps) =
            self.classifier
                .model
                .forward_with_token_maps(&mut rec, &input, pruning.as_ref())?;
        let mut wanted = vec![&logits];
        wanted.extend(&maps.positions);
        let mut values = rec.submit_and_read(&wanted).await?;
        let logits = values.remove(0);
        let forward_ms = now_ms() - start;

        let mut result = Classification {
            labels: Vec::new(),
            probabilities: Vec::new(),
            stage_layers: Vec::new(),
            stage_tokens: Vec::new(),
            masks: Vec::new(),
            preprocess_ms,
            forward_ms,
            logits,
        };
        for (label, p) in self.classifier.top(&result.logits, top) {
            result.labels.push(label);
            result.probabilities.push(p);
        }
        // Unpruned, the trace keeps no position maps: one stage on every token.
        let all: Vec<u32> = (0..(self.grid.rows * self.grid.cols
            + usize::from(self.grid.cls.is_some())) as u32)
            .collect();
        let per_layer: Vec<Vec<u32>> = if values.is_empty() {
            vec![all]
        } else {
            values
                .iter()
                .map(|v| v.iter().map(|x| x.to_bits()).collect())
                .collect()
        };
        for (layer, positions) in per_layer.iter().enumerate() {
            if layer > 0 && positions.len() == per_layer[layer - 1].len() {
                continue;
            }
            result.stage_layers.push(layer as u32 + 1);
            result.stage_tokens.push(positions.len() as u32);
            result
                .masks
                .extend(self.grid.kept_cells(positions).into_iter().map(u8::from));
        }
        Ok(result)
    }
}

/// A Promise of `work`'s [`Classification`], rejected with an `Error` carrying the message.
fn promise(work: impl std::future::Future<Output = Result<Classification>> + 'static) -> Promise {
    wasm_bindgen_futures::future_to_promise(async move {
        work.await
            .map(JsValue::from)
            .map_err(|e| JsError::new(&e.to_string()).into())
    })
}

/// Milliseconds from `performance.now()`, which windows and workers both have.
fn now_ms() -> f64 {
    js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str("performance"))
        .ok()
        .and_then(|p| p.dyn_into::<web_sys::Performance>().ok())
        .map_or_else(js_sys::Date::now, |p| p.now())
}
