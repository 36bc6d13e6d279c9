//! The demo's state and its egui UI: controls on the left; the token grid, the prediction and
//! the timings in the middle. Every change re-runs inference at once (the models are small).

use std::fmt::Display;
use std::path::{Path, PathBuf};

use egui::{Color32, ComboBox, ProgressBar, RichText, Sense, Slider, TextEdit, Vec2};
use image::{DynamicImage, GrayImage};
use ssmgpu::prune::{parse_name, Align, Importance, PruneSchedule};
use ssmgpu::{assets, preprocess, Context};

use crate::overlay::{Overlay, View, PANEL};
use crate::session::{self, GpuTimer, Inference, Model, Settings, Timing};
use crate::Args;

/// The top-5 bars' colour (distinct from the theme; the screenshot test looks for it).
pub const BAR: Color32 = Color32::from_rgb(255, 140, 0);
const ERROR: Color32 = Color32::from_rgb(255, 110, 110);
const LEFT_WIDTH: f32 = 330.0;
const MESSAGES: usize = 4;

pub struct Demo {
    ctx: Context,
    timer: Option<GpuTimer>,
    overlay: Overlay,
    overlay_dirty: bool,
    model: Option<Model>,
    model_path: String,
    image: Option<DynamicImage>,
    image_name: String,
    image_path: String,
    samples: Vec<PathBuf>,
    canvas: Canvas,
    settings: Settings,
    /// The schedule box's text, applied to `settings` when the box is left.
    schedule_text: String,
    /// The simple schedule controls: one keep ratio after each ticked layer.
    keep_ratio: f64,
    prune_after: Vec<bool>,
    /// 0-indexed layer the grid shows.
    layer: usize,
    inference: Option<Inference>,
    timing: Option<Timing>,
    messages: Vec<String>,
}

impl Demo {
    /// Load what the command line names; anything wrong becomes a message in the window.
    pub fn new(ctx: Context, overlay: Overlay, args: &Args) -> Self {
        let timer = GpuTimer::new(ctx.device().expect("the demo's context is a wgpu context"));
        let mut demo = Demo {
            ctx,
            timer,
            overlay,
            overlay_dirty: true,
            model: None,
            model_path: String::new(),
            image: None,
            image_name: String::new(),
            image_path: String::new(),
            samples: Vec::new(),
            canvas: Canvas::new(),
            settings: Settings {
                schedule: args.prune.clone(),
                importance: Importance::default(),
                align: Align::default(),
            },
            schedule_text: args.prune.clone(),
            keep_ratio: 0.7,
            prune_after: Vec::new(),
            layer: 0,
            inference: None,
            timing: None,
            messages: Vec::new(),
        };
        match parse_name("importance", Importance::NAMES, &args.importance) {
            Ok(v) => demo.settings.importance = v,
            Err(e) => demo.report("--importance", e),
        }
        match parse_name("alignment", Align::NAMES, &args.align) {
            Ok(v) => demo.settings.align = v,
            Err(e) => demo.report("--align", e),
        }
        match assets::mnist_samples() {
            Ok(s) => demo.samples = s,
            Err(e) => demo.report("shipped samples", e),
        }
        let model = args
            .model
            .clone()
            .unwrap_or_else(|| assets::path(assets::VIM_MNIST));
        demo.load_model(&model);
        match args.image.clone().or_else(|| demo.samples.first().cloned()) {
            Some(image) => demo.open_image(&image),
            None => demo.report("image", "no image given and no shipped samples found"),
        }
        demo
    }

    fn report(&mut self, what: &str, e: impl Display) {
        let message = format!("{what}: {e}");
        log::error!("{message}");
        self.messages.push(message);
        let excess = self.messages.len().saturating_sub(MESSAGES);
        self.messages.drain(..excess);
    }

    fn load_model(&mut self, dir: &Path) {
        self.model_path = dir.display().to_string();
        match Model::load(&self.ctx, dir) {
            Ok(model) => {
                log::info!("loaded {}", dir.display());
                self.prune_after = vec![false; model.depth.saturating_sub(1)];
                // The old model's result must not be drawn on the new model's grid.
                self.inference = None;
                self.model = Some(model);
                self.sync_controls();
                self.rerun(true);
            }
            Err(e) => self.report("model", e),
        }
    }

    fn open_image(&mut self, path: &Path) {
        self.image_path = path.display().to_string();
        match preprocess::load_image(path) {
            Ok(image) => {
                self.image = Some(image);
                self.image_name = path
                    .file_name()
                    .map_or_else(|| self.image_path.clone(), |n| n.to_string_lossy().into());
                self.rerun(false);
            }
            Err(e) => self.report("image", e),
        }
    }

    /// Run the current image through the current model; with `new_settings` (model or
    /// pruning), also time unpruned and pruned passes (the times do not depend on the image).
    fn rerun(&mut self, new_settings: bool) {
        let (Some(model), Some(image)) = (&self.model, &self.image) else {
            return;
        };
        let mut problems: Vec<(&str, ssmgpu::Error)> = Vec::new();
        let pruning = self.settings.pruning().unwrap_or_else(|e| {
            problems.push(("pruning", e));
            None
        });
        // New settings (or the first run): time them and pick the layer to show.
        let fresh = new_settings || self.inference.is_none();
        match session::infer(&self.ctx, model, image, pruning.as_ref()) {
            Ok((inference, refused)) => {
                let ran_pruned = refused.is_none();
                if let Some(e) = refused {
                    problems.push(("pruning refused, showing the unpruned model", e));
                }
                if fresh {
                    let pruning = pruning.as_ref().filter(|_| ran_pruned);
                    let timer = self.timer.as_ref();
                    match session::time(&self.ctx, timer, model, &inference.pixels, pruning) {
                        Ok(t) => {
                            log::info!(
                                "forward pass: {:.2} ms unpruned, {:?} ms pruned ({})",
                                t.unpruned_ms,
                                t.pruned_ms,
                                t.clock
                            );
                            self.timing = Some(t);
                        }
                        Err(e) => problems.push(("timing", e)),
                    }
                }
                if fresh {
                    // Show the last layer a pruning step follows,
                    // where the grid has kept, dropped and earlier pruned tokens and scores.
                    let steps = inference.schedule.as_ref().map(|s| s.steps().to_vec());
                    self.layer = match steps.as_deref().and_then(<[_]>::last) {
                        Some(step) => step.after_layer - 1,
                        None => model.depth - 1,
                    };
                }
                self.inference = Some(inference);
                self.overlay_dirty = true;
            }
            Err(e) => problems.push(("inference", e)),
        }
        for (what, e) in problems {
            self.report(what, e);
        }
    }

    /// The simple controls from the schedule text (its first ratio, its layers).
    fn sync_controls(&mut self) {
        let Ok(schedule) = PruneSchedule::parse(&self.settings.schedule) else {
            return;
        };
        self.prune_after.iter_mut().for_each(|b| *b = false);
        for step in schedule.steps() {
            if let Some(b) = self.prune_after.get_mut(step.after_layer - 1) {
                *b = true;
            }
        }
        if let Some(step) = schedule.steps().first() {
            self.keep_ratio = step.keep_ratio;
        }
    }

    /// The schedule text from the simple controls.
    fn compose_schedule(&mut self) {
        let steps: Vec<String> = self
            .prune_after
            .iter()
            .enumerate()
            .filter(|(_, on)| **on)
            // Rounded: the slider's steps are not exact in binary.
            .map(|(i, _)| format!("{}:{}", i + 1, (self.keep_ratio * 100.0).round() / 100.0))
            .collect();
        self.settings.schedule = steps.join(",");
        self.schedule_text = self.settings.schedule.clone();
    }

    /// Redraw the grid texture if the inference or the shown layer changed.
    pub fn draw_overlay(&mut self, device: &wgpu::Device, queue: &wgpu::Queue) {
        let (Some(model), Some(inference)) = (&self.model, &self.inference) else {
            return;
        };
        if !self.overlay_dirty {
            return;
        }
        self.overlay_dirty = false;
        let maps = &inference.maps;
        let layer = self.layer.min(maps.positions.len().saturating_sub(1));
        let step = maps
            .scores
            .get(layer)
            .and_then(Option::as_ref)
            .zip(maps.positions.get(layer + 1));
        let pre = &model.classifier.preprocess;
        self.overlay.draw(
            device,
            queue,
            &View {
                pixels: &inference.pixels,
                mean: pre.mean(),
                std: pre.std(),
                grid: model.grid,
                positions: maps.positions.get(layer),
                step,
            },
        );
    }

    pub fn ui(&mut self, ui: &mut egui::Ui) {
        let dropped: Vec<PathBuf> = ui.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .collect()
        });
        if let Some(path) = dropped.first() {
            self.messages.clear();
            // A dropped folder is taken as a model, a file as an image.
            if path.is_dir() {
                self.load_model(path);
            } else {
                self.open_image(path);
            }
        }
        egui::Panel::left("controls")
            .exact_size(LEFT_WIDTH)
            .resizable(false)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| self.controls(ui));
            });
        egui::CentralPanel::default().show(ui, |ui| self.results(ui));
    }

    fn controls(&mut self, ui: &mut egui::Ui) {
        ui.heading("ssmgpu: token pruning, live");
        ui.label(format!("Adapter: {}", self.ctx.device_name()));
        ui.separator();

        ui.strong("Model");
        ui.horizontal(|ui| {
            for (name, dir) in [
                ("vim-mnist", assets::VIM_MNIST),
                ("plainmamba-mnist", assets::PLAINMAMBA_MNIST),
            ] {
                let dir = assets::path(dir);
                let current = self.model.as_ref().is_some_and(|m| m.dir == dir);
                if ui.selectable_label(current, name).clicked() && !current {
                    self.messages.clear();
                    self.load_model(&dir);
                }
            }
        });
        ui.horizontal(|ui| {
            let edit = ui.add(TextEdit::singleline(&mut self.model_path).desired_width(230.0));
            let enter = edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            if ui.button("Load").clicked() || enter {
                self.messages.clear();
                let dir = PathBuf::from(self.model_path.trim());
                self.load_model(&dir);
            }
        });
        ui.separator();

        ui.strong("Image");
        ui.horizontal_wrapped(|ui| {
            let samples = self.samples.clone();
            for path in &samples {
                let stem = path
                    .file_stem()
                    .map(|s| s.to_string_lossy())
                    .unwrap_or_default();
                // digit7_1401 -> 7
                let label = stem.strip_prefix("digit").and_then(|s| s.split('_').next());
                if ui.button(label.unwrap_or(&stem)).clicked() {
                    self.messages.clear();
                    self.open_image(path);
                }
            }
        });
        ui.horizontal(|ui| {
            let edit = ui.add(TextEdit::singleline(&mut self.image_path).desired_width(230.0));
            let enter = edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            if ui.button("Open").clicked() || enter {
                self.messages.clear();
                let path = PathBuf::from(self.image_path.trim());
                self.open_image(&path);
            }
        });
        ui.label("or drop an image file (or a model folder) on the window");
        ui.separator();

        ui.strong("Draw a digit");
        ui.horizontal(|ui| {
            if self.canvas.ui(ui) {
                self.image = Some(self.canvas.image());
                self.image_name = "your drawing".into();
                self.rerun(false);
            }
            if ui.button("Clear").clicked() {
                self.canvas.clear();
            }
        });
        ui.separator();

        ui.strong("Pruning");
        let before = self.settings.clone();
        let depth = self.prune_after.len() + 1;
        let ratio = self.keep_ratio;
        ui.add(
            Slider::new(&mut self.keep_ratio, 0.1..=1.0)
                .step_by(0.05)
                .text("keep ratio"),
        );
        // Not `changed()`: snapping to a step can move the value by an ulp without a touch.
        let mut simple_changed = (self.keep_ratio - ratio).abs() > 1e-6;
        if self.model.is_some() {
            ui.horizontal_wrapped(|ui| {
                ui.label("after layer");
                for (i, on) in self.prune_after.iter_mut().enumerate() {
                    simple_changed |= ui.checkbox(on, format!("{}", i + 1)).changed();
                }
                ui.label(format!("(of {depth})"));
            });
        }
        if simple_changed {
            self.compose_schedule();
        }
        ui.horizontal(|ui| {
            ui.label("schedule");
            let edit = ui.add(
                TextEdit::singleline(&mut self.schedule_text)
                    .hint_text("none")
                    .desired_width(180.0),
            );
            // Applied when left (Enter or a click elsewhere), not on every key.
            if edit.lost_focus() {
                self.settings.schedule = self.schedule_text.trim().to_string();
                self.sync_controls();
            }
        });
        let importance = self.settings.importance;
        ComboBox::from_label("importance")
            .selected_text(name_of(Importance::NAMES, importance))
            .show_ui(ui, |ui| {
                for (name, value) in Importance::NAMES {
                    ui.selectable_value(&mut self.settings.importance, *value, *name);
                }
            });
        ComboBox::from_label("align")
            .selected_text(name_of(Align::NAMES, self.settings.align))
            .show_ui(ui, |ui| {
                for (name, value) in Align::NAMES {
                    ui.selectable_value(&mut self.settings.align, *value, *name);
                }
            });
        if self.settings != before {
            self.messages.clear();
            self.rerun(true);
        }
    }

    fn results(&mut self, ui: &mut egui::Ui) {
        let Some(model) = &self.model else {
            ui.heading("No model loaded");
            self.show_messages(ui);
            return;
        };
        let depth = model.depth;
        let total = model.grid.rows * model.grid.cols + usize::from(model.grid.cls.is_some());
        ui.horizontal(|ui| {
            let mut shown = self.layer + 1;
            let changed = ui
                .add(Slider::new(&mut shown, 1..=depth).text("layer"))
                .changed();
            if changed {
                self.layer = shown - 1;
                self.overlay_dirty = true;
            }
            if let Some(inference) = &self.inference {
                let ran_on = inference
                    .maps
                    .positions
                    .get(self.layer)
                    .map_or(total, |p| p.numel());
                ui.label(format!("layer {shown} runs on {ran_on} of {total} tokens"));
            }
        });
        ui.label(format!("{}  ·  {}", model.dir.display(), self.image_name));
        let size = Vec2::new(2.0 * PANEL as f32, PANEL as f32);
        ui.image((self.overlay.texture_id, size));
        legend(ui);
        ui.separator();

        if let Some(inference) = &self.inference {
            ui.strong("Prediction");
            for (label, p) in &inference.top5 {
                ui.horizontal(|ui| {
                    let label: String = label.chars().take(24).collect();
                    ui.add_sized(
                        [90.0, 18.0],
                        egui::Label::new(RichText::new(label).monospace()),
                    );
                    ui.add(ProgressBar::new(*p).desired_width(360.0).fill(BAR));
                    ui.label(format!("{:.1}%", p * 100.0));
                });
            }
            let flops = |s: Option<&PruneSchedule>| model.classifier.model.flops(s);
            let reduction = 1.0 - flops(inference.schedule.as_ref()) / flops(None);
            let schedule = inference
                .schedule
                .as_ref()
                .map_or("none".to_string(), |s| s.to_string());
            ui.label(format!(
                "Schedule {schedule}: {:.1}% fewer FLOPs ({:.4} of {:.4} GFLOPs per image)",
                reduction * 100.0,
                flops(inference.schedule.as_ref()) / 1e9,
                flops(None) / 1e9
            ));
        }
        if let Some(t) = &self.timing {
            let pruned = t
                .pruned_ms
                .map_or("not pruned".to_string(), |ms| format!("{ms:.2} ms pruned"));
            ui.label(format!(
                "Forward pass: {:.2} ms unpruned, {pruned} ({}, median of {})",
                t.unpruned_ms,
                t.clock,
                session::TIMED_RUNS
            ));
        }
        self.show_messages(ui);
    }

    fn show_messages(&self, ui: &mut egui::Ui) {
        for m in &self.messages {
            ui.colored_label(ERROR, m);
        }
    }
}

fn name_of<T: PartialEq>(names: &[(&'static str, T)], value: T) -> &'static str {
    names
        .iter()
        .find(|(_, v)| *v == value)
        .map_or("?", |(n, _)| n)
}

/// What the overlay's colours mean (the shader's colours, as 8-bit).
fn legend(ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        for (colour, text) in [
            (Color32::from_rgb(38, 217, 77), "kept (grid)"),
            (Color32::from_rgb(217, 31, 31), "pruned earlier"),
            (
                Color32::from_rgb(242, 191, 26),
                "dropped by the step after this layer",
            ),
            (
                Color32::from_rgb(26, 140, 230),
                "score: dark low, white high",
            ),
        ] {
            let (rect, _) = ui.allocate_exact_size(Vec2::splat(12.0), Sense::hover());
            ui.painter().rect_filled(rect, 2.0, colour);
            ui.label(text);
        }
    });
}

/// A square to draw a digit on, white on black like MNIST, at 4x MNIST's resolution (the
/// model's preprocess scales it down).
struct Canvas {
    pixels: Vec<u8>,
    texture: Option<egui::TextureHandle>,
    last: Option<egui::Pos2>,
    dirty: bool,
}

const CANVAS_SIDE: usize = 112;
const CANVAS_SHOWN: f32 = 196.0;
const BRUSH_RADIUS: f32 = 5.5;

impl Canvas {
    fn new() -> Self {
        Canvas {
            pixels: vec![0; CANVAS_SIDE * CANVAS_SIDE],
            texture: None,
            last: None,
            dirty: true,
        }
    }

    fn clear(&mut self) {
        self.pixels.fill(0);
        self.dirty = true;
    }

    fn image(&self) -> DynamicImage {
        let side = CANVAS_SIDE as u32;
        let gray = GrayImage::from_raw(side, side, self.pixels.clone())
            .expect("the canvas holds side x side pixels");
        DynamicImage::ImageLuma8(gray)
    }

    /// Soft round brush: full inside the radius, fading over one pixel.
    fn stamp(&mut self, at: egui::Pos2) {
        let r = BRUSH_RADIUS;
        let (x0, x1) = (
            (at.x - r - 1.0).floor() as i64,
            (at.x + r + 1.0).ceil() as i64,
        );
        let (y0, y1) = (
            (at.y - r - 1.0).floor() as i64,
            (at.y + r + 1.0).ceil() as i64,
        );
        let side = CANVAS_SIDE as i64;
        for y in y0.max(0)..=y1.min(side - 1) {
            for x in x0.max(0)..=x1.min(side - 1) {
                let d = egui::pos2(x as f32 + 0.5, y as f32 + 0.5).distance(at);
                let v = ((r + 0.5 - d).clamp(0.0, 1.0) * 255.0) as u8;
                let p = &mut self.pixels[(y * side + x) as usize];
                *p = (*p).max(v);
            }
        }
    }

    /// Show the canvas and paint where the mouse drags; true when the drawing changed.
    fn ui(&mut self, ui: &mut egui::Ui) -> bool {
        let (rect, response) =
            ui.allocate_exact_size(Vec2::splat(CANVAS_SHOWN), Sense::click_and_drag());
        let mut changed = false;
        match response.interact_pointer_pos() {
            Some(pos) if response.is_pointer_button_down_on() => {
                let to =
                    egui::pos2(0.0, 0.0) + (pos - rect.min) * (CANVAS_SIDE as f32 / CANVAS_SHOWN);
                let from = self.last.unwrap_or(to);
                // Stamps a brush radius apart at most, so fast strokes stay connected.
                let steps = (from.distance(to) / (BRUSH_RADIUS * 0.5)).ceil().max(1.0) as usize;
                for i in 0..=steps {
                    self.stamp(from.lerp(to, i as f32 / steps as f32));
                }
                self.last = Some(to);
                changed = true;
            }
            _ => self.last = None,
        }
        if changed || self.dirty {
            let image = egui::ColorImage::from_gray([CANVAS_SIDE, CANVAS_SIDE], &self.pixels);
            match &mut self.texture {
                Some(t) => t.set(image, egui::TextureOptions::LINEAR),
                None => {
                    self.texture = Some(ui.ctx().load_texture(
                        "canvas",
                        image,
                        egui::TextureOptions::LINEAR,
                    ));
                }
            }
            self.dirty = false;
        }
        if let Some(t) = &self.texture {
            let uv = egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0));
            ui.painter().image(t.id(), rect, uv, Color32::WHITE);
        }
        ui.painter().rect_stroke(
            rect,
            0.0,
            egui::Stroke::new(1.0, Color32::GRAY),
            egui::StrokeKind::Outside,
        );
        changed
    }
}
