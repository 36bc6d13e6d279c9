//! The token grid overlay: a compute pass and a render pass of our own (`overlay.wgsl`) that
//! read the engine's tensors (the pixels the model saw, a layer's position map, a step's
//! scores) as storage buffers on the shared device and draw into a texture egui shows.
//! Nothing is read back; the texture is redrawn only when the layer or the inference changes.

use ssmgpu::inspect::TokenGrid;
use ssmgpu::Tensor;

/// Side of one panel in pixels: 28 pixels per cell of a 14 x 14 grid.
pub const PANEL: u32 = 392;
const FORMAT: wgpu::TextureFormat = wgpu::TextureFormat::Rgba8Unorm;
const NO_CLS: u32 = u32::MAX;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    cls: u32,
    tokens: u32,
    n_layer: u32,
    n_next: u32,
    has_scores: u32,
    all_kept: u32,
    channels: u32,
    height: u32,
    width: u32,
    panel: u32,
    mean: [f32; 4],
    std: [f32; 4],
}

/// What one view of the overlay is drawn from: all GPU tensors the engine already holds.
pub struct View<'a> {
    /// The preprocessed image `[1, C, H, W]` and the normalization it went through.
    pub pixels: &'a Tensor,
    pub mean: &'a [f32],
    pub std: &'a [f32],
    pub grid: TokenGrid,
    /// Original indices of the tokens the shown layer ran on; `None`: nothing was pruned.
    pub positions: Option<&'a Tensor>,
    /// The scores of the pruning step after the shown layer and the tokens it kept.
    pub step: Option<(&'a Tensor, &'a Tensor)>,
}

pub struct Overlay {
    view: wgpu::TextureView,
    pub texture_id: egui::TextureId,
    params: wgpu::Buffer,
    /// Per original token (state, score), then (min, max) score; grown on demand.
    cells: wgpu::Buffer,
    cells_pipeline: wgpu::ComputePipeline,
    draw_pipeline: wgpu::RenderPipeline,
}

impl Overlay {
    pub fn new(device: &wgpu::Device, renderer: &mut egui_wgpu::Renderer) -> Self {
        let texture = device.create_texture(&wgpu::TextureDescriptor {
            label: Some("demo.overlay"),
            size: wgpu::Extent3d {
                width: 2 * PANEL,
                height: PANEL,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: FORMAT,
            usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::TEXTURE_BINDING,
            view_formats: &[],
        });
        let view = texture.create_view(&Default::default());
        let texture_id = renderer.register_native_texture(device, &view, wgpu::FilterMode::Nearest);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("demo.overlay"),
            source: wgpu::ShaderSource::Wgsl(include_str!("overlay.wgsl").into()),
        });
        let cells_pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("demo.overlay.cells"),
            layout: None,
            module: &module,
            entry_point: Some("cells"),
            compilation_options: Default::default(),
            cache: None,
        });
        let draw_pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: Some("demo.overlay.draw"),
            layout: None,
            vertex: wgpu::VertexState {
                module: &module,
                entry_point: Some("vs"),
                compilation_options: Default::default(),
                buffers: &[],
            },
            primitive: Default::default(),
            depth_stencil: None,
            multisample: Default::default(),
            fragment: Some(wgpu::FragmentState {
                module: &module,
                entry_point: Some("fs"),
                compilation_options: Default::default(),
                targets: &[Some(FORMAT.into())],
            }),
            multiview_mask: None,
            cache: None,
        });
        let params = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("demo.overlay.params"),
            size: std::mem::size_of::<Params>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Overlay {
            view,
            texture_id,
            params,
            cells: cells_buffer(device, 0),
            cells_pipeline,
            draw_pipeline,
        }
    }

    /// Redraw the texture for `view`: one submission, nothing read back.
    pub fn draw(&mut self, device: &wgpu::Device, queue: &wgpu::Queue, view: &View) {
        let grid = view.grid;
        let tokens = grid.rows * grid.cols + usize::from(grid.cls.is_some());
        let needed = (tokens as u64 + 1) * 8;
        if self.cells.size() < needed {
            self.cells = cells_buffer(device, needed);
        }
        let shape = view.pixels.shape();
        let channel = |values: &[f32]| {
            let mut out = [0.0; 4];
            for (o, v) in out.iter_mut().zip(values) {
                *o = *v;
            }
            out
        };
        let len = |t: Option<&Tensor>| t.map_or(0, |t| t.numel() as u32);
        let params = Params {
            rows: grid.rows as u32,
            cols: grid.cols as u32,
            cls: grid.cls.map_or(NO_CLS, |c| c as u32),
            tokens: tokens as u32,
            n_layer: len(view.positions),
            n_next: len(view.step.map(|(_, next)| next)),
            has_scores: u32::from(view.step.is_some()),
            all_kept: u32::from(view.positions.is_none()),
            channels: shape[1] as u32,
            height: shape[2] as u32,
            width: shape[3] as u32,
            panel: PANEL,
            mean: channel(view.mean),
            std: channel(view.std),
        };
        queue.write_buffer(&self.params, 0, bytemuck::bytes_of(&params));
        // Absent inputs are bound to a buffer the shader never reads past its counts.
        let positions = wgpu_buffer(view.positions.unwrap_or(view.pixels));
        let (scores, next) = match view.step {
            Some((scores, next)) => (wgpu_buffer(scores), wgpu_buffer(next)),
            None => (positions, positions),
        };
        let bind = |pipeline_layout: wgpu::BindGroupLayout, entries: &[(u32, &wgpu::Buffer)]| {
            let entries: Vec<wgpu::BindGroupEntry> = entries
                .iter()
                .map(|(binding, buffer)| wgpu::BindGroupEntry {
                    binding: *binding,
                    resource: buffer.as_entire_binding(),
                })
                .collect();
            device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("demo.overlay"),
                layout: &pipeline_layout,
                entries: &entries,
            })
        };
        let cells_group = bind(
            self.cells_pipeline.get_bind_group_layout(0),
            &[
                (0, &self.params),
                (1, positions),
                (2, scores),
                (3, next),
                (4, &self.cells),
            ],
        );
        let draw_group = bind(
            self.draw_pipeline.get_bind_group_layout(0),
            &[
                (0, &self.params),
                (5, wgpu_buffer(view.pixels)),
                (6, &self.cells),
            ],
        );
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&self.cells_pipeline);
            pass.set_bind_group(0, &cells_group, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
        {
            let mut pass = encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
                label: Some("demo.overlay"),
                color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                    view: &self.view,
                    depth_slice: None,
                    resolve_target: None,
                    ops: wgpu::Operations {
                        load: wgpu::LoadOp::Clear(wgpu::Color::BLACK),
                        store: wgpu::StoreOp::Store,
                    },
                })],
                ..Default::default()
            });
            pass.set_pipeline(&self.draw_pipeline);
            pass.set_bind_group(0, &draw_group, &[]);
            pass.draw(0..3, 0..1);
        }
        queue.submit([encoder.finish()]);
    }
}

fn cells_buffer(device: &wgpu::Device, size: u64) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("demo.overlay.cells"),
        size: size.max(256),
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    })
}

/// The demo renders with the engine's own wgpu device, so every tensor is a wgpu buffer.
fn wgpu_buffer(t: &Tensor) -> &wgpu::Buffer {
    t.buffer()
        .wgpu()
        .expect("the demo's context is a wgpu context")
}
