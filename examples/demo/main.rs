//! Desktop demo: watch a vision SSM prune its tokens, live.
//!
//! `cargo run --release --example demo -- [IMAGE] [--model DIR] [--prune SPEC] [--align ..]
//! [--importance ..] [--screenshot FILE.png]`
//!
//! This is also the worked example of embedding the engine in a graphics application: the
//! window's wgpu device is the engine's device. We create it as any wgpu app would (asking for
//! what `Context::device_descriptor` says the engine needs), render egui with it, and hand a
//! clone to `Context::from_device`. The token-grid overlay is drawn by our own shaders reading
//! the engine's tensors (position maps, scores, pixels) as storage buffers on that device; only
//! the top-5 probabilities are read back.

mod overlay;
mod session;
mod ui;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use egui_wgpu::ScreenDescriptor;
use ssmgpu::Context;
use winit::application::ApplicationHandler;
use winit::event::WindowEvent;
use winit::event_loop::{ActiveEventLoop, EventLoop};
use winit::window::{Window, WindowId};

/// Watch a vision SSM (Vim, PlainMamba) prune its tokens, live.
#[derive(Parser)]
pub struct Args {
    /// Image to classify (PNG, JPEG, WebP, BMP); default: the first shipped MNIST sample.
    image: Option<PathBuf>,
    /// Model folder; default: the shipped vim-mnist.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Pruning schedule `LAYER:KEEP_RATIO,...` or a preset; empty for none. The default is
    /// the best of docs/pruning.md's schedules for vim-mnist at about a third fewer FLOPs.
    #[arg(long, default_value = "1:0.7,2:0.7")]
    prune: String,
    /// Token importance: clipped, unclipped, l2, random.
    #[arg(long, default_value = "clipped")]
    importance: String,
    /// Kept tokens: decay, carry or score.
    #[arg(long, default_value = "decay")]
    align: String,
    /// Render the first complete frame to this PNG file and exit.
    #[arg(long)]
    screenshot: Option<PathBuf>,
}

/// Window size in logical pixels: the controls plus two grid panels side by side.
const WINDOW: (f64, f64) = (1190.0, 800.0);
/// Frames rendered before the screenshot: egui lays out a new window over its first frames.
const SCREENSHOT_FRAME: u64 = 3;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let event_loop = match EventLoop::new() {
        Ok(l) => l,
        Err(e) => {
            log::error!("cannot open a window (no display?): {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut app = App {
        args,
        gpu: None,
        failed: false,
    };
    if let Err(e) = event_loop.run_app(&mut app) {
        log::error!("event loop: {e}");
        return ExitCode::FAILURE;
    }
    if app.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

struct App {
    args: Args,
    gpu: Option<Gpu>,
    failed: bool,
}

/// The window, its surface and device, egui, and the demo on top.
struct Gpu {
    window: Arc<Window>,
    surface: wgpu::Surface<'static>,
    config: wgpu::SurfaceConfiguration,
    device: wgpu::Device,
    queue: wgpu::Queue,
    egui: egui_winit::State,
    renderer: egui_wgpu::Renderer,
    demo: ui::Demo,
    frames: u64,
}

type Failure = Box<dyn std::error::Error>;

impl Gpu {
    fn new(event_loop: &ActiveEventLoop, args: &Args) -> Result<Self, Failure> {
        let attributes = Window::default_attributes()
            .with_title("ssmgpu demo: token pruning")
            .with_inner_size(winit::dpi::LogicalSize::new(WINDOW.0, WINDOW.1));
        let window = Arc::new(event_loop.create_window(attributes)?);
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_with_display_handle_from_env(
                Box::new(event_loop.owned_display_handle()),
            ));
        let surface = instance.create_surface(window.clone())?;
        let adapter = pollster::block_on(wgpu::util::initialize_adapter_from_env_or_default(
            &instance,
            Some(&surface),
        ))
        .map_err(|e| format!("no GPU adapter can draw to this window: {e}"))?;
        // One device for both: the engine's requirements (its limits and optional features)
        // are all this window needs too.
        let (device, queue) =
            pollster::block_on(adapter.request_device(&Context::device_descriptor(&adapter)))?;
        let info = adapter.get_info();
        log::info!("adapter: {} ({:?})", info.name, info.backend);
        let caps = surface.get_capabilities(&adapter);
        // egui blends in gamma space and prefers a non-sRGB target.
        let format = caps
            .formats
            .iter()
            .copied()
            .find(|f| !f.is_srgb())
            .or(caps.formats.first().copied())
            .ok_or("the window surface offers no format on this adapter")?;
        let size = window.inner_size();
        let mut config = surface
            .get_default_config(&adapter, size.width.max(1), size.height.max(1))
            .ok_or("the window surface is not supported by this adapter")?;
        config.format = format;
        surface.configure(&device, &config);
        let egui_ctx = egui::Context::default();
        let egui = egui_winit::State::new(
            egui_ctx,
            egui::ViewportId::ROOT,
            event_loop,
            Some(window.scale_factor() as f32),
            window.theme(),
            Some(device.limits().max_texture_dimension_2d as usize),
        );
        let mut renderer = egui_wgpu::Renderer::new(&device, format, Default::default());
        // The engine on the window's device: clones share the device and queue.
        let ctx = Context::from_device(device.clone(), queue.clone());
        let overlay = overlay::Overlay::new(&device, &mut renderer);
        let demo = ui::Demo::new(ctx, overlay, args);
        Ok(Gpu {
            window,
            surface,
            config,
            device,
            queue,
            egui,
            renderer,
            demo,
            frames: 0,
        })
    }

    fn resize(&mut self, width: u32, height: u32) {
        self.config.width = width.max(1);
        self.config.height = height.max(1);
        self.surface.configure(&self.device, &self.config);
    }

    /// Run the UI, draw the overlay if it changed, render, and with `screenshot` also render
    /// into a texture and save it. Returns whether the screenshot was taken.
    fn frame(&mut self, screenshot: Option<&Path>) -> Result<bool, Failure> {
        let input = self.egui.take_egui_input(&self.window);
        let egui_ctx = self.egui.egui_ctx().clone();
        let output = egui_ctx.run_ui(input, |ui| self.demo.ui(ui));
        self.demo.draw_overlay(&self.device, &self.queue);
        self.egui
            .handle_platform_output(&self.window, output.platform_output);
        let jobs = egui_ctx.tessellate(output.shapes, output.pixels_per_point);
        let screen = ScreenDescriptor {
            size_in_pixels: [self.config.width, self.config.height],
            pixels_per_point: output.pixels_per_point,
        };
        let mut textures = output.textures_delta;
        for (id, deltas) in textures.set.drain() {
            for delta in &deltas {
                self.renderer
                    .update_texture(&self.device, &self.queue, id, delta);
            }
        }
        let frame = match self.surface.get_current_texture() {
            wgpu::CurrentSurfaceTexture::Success(t)
            | wgpu::CurrentSurfaceTexture::Suboptimal(t) => t,
            wgpu::CurrentSurfaceTexture::Outdated | wgpu::CurrentSurfaceTexture::Lost => {
                self.surface.configure(&self.device, &self.config);
                self.window.request_redraw();
                return Ok(false);
            }
            other => {
                log::warn!("skipping a frame: {other:?}");
                self.window.request_redraw();
                return Ok(false);
            }
        };
        let mut encoder = self.device.create_command_encoder(&Default::default());
        let mut commands =
            self.renderer
                .update_buffers(&self.device, &self.queue, &mut encoder, &jobs, &screen);
        let target = frame.texture.create_view(&Default::default());
        self.paint(&mut encoder, &target, &jobs, &screen);
        self.frames += 1;
        let capture = match screenshot {
            Some(_) if self.frames >= SCREENSHOT_FRAME => {
                Some(Capture::record(self, &mut encoder, &jobs, &screen))
            }
            _ => None,
        };
        commands.push(encoder.finish());
        self.queue.submit(commands);
        self.queue.present(frame);
        for id in textures.free.drain() {
            self.renderer.free_texture(&id);
        }
        let repaint_now = output
            .viewport_output
            .get(&egui::ViewportId::ROOT)
            .is_some_and(|v| v.repaint_delay.is_zero());
        if repaint_now || screenshot.is_some() {
            self.window.request_redraw();
        }
        match (capture, screenshot) {
            (Some(capture), Some(path)) => {
                capture.save(&self.device, path)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn paint(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        target: &wgpu::TextureView,
        jobs: &[egui::ClippedPrimitive],
        screen: &ScreenDescriptor,
    ) {
        let mut pass = encoder
            .begin_render_pass(&wgpu::RenderPassDescriptor {
                label: Some("demo.egui"),
                color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                    view: target,
                    depth_slice: None,
                    resolve_target: None,
                    ops: wgpu::Operations {
                        load: wgpu::LoadOp::Clear(wgpu::Color::BLACK),
                        store: wgpu::StoreOp::Store,
                    },
                })],
                ..Default::default()
            })
            .forget_lifetime();
        self.renderer.render(&mut pass, jobs, screen);
    }
}

/// A frame rendered again into a texture we can copy from (a surface texture may not allow
/// copies), copied into a buffer to map.
struct Capture {
    buffer: wgpu::Buffer,
    width: u32,
    height: u32,
    row_bytes: u32,
    bgra: bool,
}

impl Capture {
    fn record(
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        jobs: &[egui::ClippedPrimitive],
        screen: &ScreenDescriptor,
    ) -> Self {
        let (width, height) = (gpu.config.width, gpu.config.height);
        let size = wgpu::Extent3d {
            width,
            height,
            depth_or_array_layers: 1,
        };
        let texture = gpu.device.create_texture(&wgpu::TextureDescriptor {
            label: Some("demo.screenshot"),
            size,
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: gpu.config.format,
            usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC,
            view_formats: &[],
        });
        gpu.paint(
            encoder,
            &texture.create_view(&Default::default()),
            jobs,
            screen,
        );
        let row_bytes = (width * 4).next_multiple_of(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT);
        let buffer = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("demo.screenshot"),
            size: u64::from(row_bytes) * u64::from(height),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        encoder.copy_texture_to_buffer(
            texture.as_image_copy(),
            wgpu::TexelCopyBufferInfo {
                buffer: &buffer,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(row_bytes),
                    rows_per_image: None,
                },
            },
            size,
        );
        let bgra = matches!(
            gpu.config.format,
            wgpu::TextureFormat::Bgra8Unorm | wgpu::TextureFormat::Bgra8UnormSrgb
        );
        Capture {
            buffer,
            width,
            height,
            row_bytes,
            bgra,
        }
    }

    fn save(self, device: &wgpu::Device, path: &Path) -> Result<(), Failure> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.buffer
            .slice(..)
            .map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
        device.poll(wgpu::PollType::wait_indefinitely())?;
        rx.recv()??;
        let mut rgba = Vec::with_capacity((self.width * self.height * 4) as usize);
        {
            let view = self
                .buffer
                .slice(..)
                .get_mapped_range()
                .map_err(|e| format!("reading the screenshot: {e:?}"))?;
            for row in view.chunks(self.row_bytes as usize) {
                rgba.extend_from_slice(&row[..(self.width * 4) as usize]);
            }
        }
        if self.bgra {
            rgba.chunks_mut(4).for_each(|px| px.swap(0, 2));
        }
        let image = image::RgbaImage::from_raw(self.width, self.height, rgba)
            .ok_or("screenshot buffer of the wrong size")?;
        image.save_with_format(path, image::ImageFormat::Png)?;
        log::info!("screenshot written to {}", path.display());
        Ok(())
    }
}

impl ApplicationHandler for App {
    fn resumed(&mut self, event_loop: &ActiveEventLoop) {
        if self.gpu.is_some() {
            return;
        }
        match Gpu::new(event_loop, &self.args) {
            Ok(gpu) => {
                gpu.window.request_redraw();
                self.gpu = Some(gpu);
            }
            Err(e) => {
                log::error!("{e}");
                self.failed = true;
                event_loop.exit();
            }
        }
    }

    fn window_event(&mut self, event_loop: &ActiveEventLoop, _: WindowId, event: WindowEvent) {
        let Some(gpu) = &mut self.gpu else {
            return;
        };
        let response = gpu.egui.on_window_event(&gpu.window, &event);
        match event {
            WindowEvent::CloseRequested => event_loop.exit(),
            WindowEvent::Resized(size) => {
                gpu.resize(size.width, size.height);
                gpu.window.request_redraw();
            }
            WindowEvent::RedrawRequested => match gpu.frame(self.args.screenshot.as_deref()) {
                Ok(true) => event_loop.exit(),
                Ok(false) => {}
                Err(e) => {
                    log::error!("{e}");
                    self.failed = true;
                    event_loop.exit();
                }
            },
            _ if response.repaint => gpu.window.request_redraw(),
            _ => {}
        }
    }
}
