//! What single operations cost on the device, in f32 FMAs measured in the same run:
//! `cargo run --release --example device_costs`.
//!
//! On a CPU driver (lavapipe) a storage-buffer load is a loop over the SIMD lanes, so a kernel's
//! speed is set by how many FMAs it does per load, not by the FMA ceiling alone. Last, what a
//! dispatch costs beyond its work, in microseconds. docs/performance.md reads the kernels'
//! limits from this table.

use std::time::Instant;

use ssmgpu::runtime::{Context, Kernel};
use wgpu::util::DeviceExt;

const SOURCE: &str = include_str!("../bench/device_costs.wgsl");
/// Iterations per invocation (the shader's ITERS) and workgroups per dispatch.
const ITERS: f64 = 1024.0;
const GROUPS: u32 = 256;
const INVOCATIONS: f64 = GROUPS as f64 * 64.0;

/// (entry, what one iteration does, operations per iteration, the binding it reads besides
/// the output)
const KERNELS: &[(&str, &str, f64, Option<u32>)] = &[
    ("fma_throughput", "f32 FMA", 48.0, None),
    ("exp2_throughput", "f32 exp2", 32.0, None),
    (
        "storage_vec4",
        "vec4 storage load, per-invocation address",
        1.0,
        Some(1),
    ),
    (
        "storage_vec4_same_address",
        "vec4 storage load, one address per workgroup",
        1.0,
        Some(1),
    ),
    (
        "storage_vec4_u64",
        "vec4<u64> storage load (8 floats), unpacked",
        1.0,
        Some(5),
    ),
    ("storage_f32", "f32 storage load", 1.0, Some(2)),
    ("workgroup_vec4", "vec4 workgroup-memory load", 1.0, None),
    (
        "uniform_vec4",
        "vec4 uniform-buffer load, computed index",
        1.0,
        Some(3),
    ),
    ("texture_vec4", "rgba32float textureLoad", 1.0, Some(4)),
    (
        "subgroup_broadcast_vec4",
        "vec4 subgroup shuffle from a constant lane",
        1.0,
        None,
    ),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ctx = Context::new_blocking()?;
    let (Some(device), Some(queue)) = (ctx.device(), ctx.queue()) else {
        return Err("device_costs needs a wgpu device".into());
    };
    println!("{}", ctx.device_name());
    let (subgroups, int64) = (ctx.uses_subgroups(), ctx.uses_int64());
    // The file's variant for this device, as the engine's kernels are picked.
    let source = Kernel::file("device_costs", SOURCE)
        .with_subgroups(subgroups)
        .with_int64(int64)
        .wgsl();
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("device_costs"),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let values: Vec<f32> = (0..4 << 20).map(|i| (i % 97) as f32 * 0.01).collect();
    let buffer = |usage| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(&values),
            usage,
        })
    };
    let out = buffer(wgpu::BufferUsages::STORAGE);
    let data = buffer(wgpu::BufferUsages::STORAGE);
    let table = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: None,
        contents: bytemuck::cast_slice(&values[..16384]),
        usage: wgpu::BufferUsages::UNIFORM,
    });
    let image = device.create_texture_with_data(
        queue,
        &wgpu::TextureDescriptor {
            label: None,
            size: wgpu::Extent3d {
                width: 1024,
                height: 1024,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba32Float,
            usage: wgpu::TextureUsages::TEXTURE_BINDING,
            view_formats: &[],
        },
        wgpu::util::TextureDataOrder::LayerMajor,
        bytemuck::cast_slice(&values),
    );
    let view = image.create_view(&Default::default());
    let resources = [
        out.as_entire_binding(),
        data.as_entire_binding(),
        data.as_entire_binding(),
        table.as_entire_binding(),
        wgpu::BindingResource::TextureView(&view),
        data.as_entire_binding(),
    ];

    println!("{:<48} {:>10} {:>14}", "operation", "G/s", "cost in FMAs");
    let mut fma_rate = None;
    for &(entry, what, per_iteration, reads) in KERNELS {
        if (entry.starts_with("subgroup") && !subgroups) || (entry.ends_with("u64") && !int64) {
            continue;
        }
        // The layout derived from the entry holds only the bindings it uses.
        let bindings: Vec<_> = std::iter::once(0)
            .chain(reads)
            .map(|binding| wgpu::BindGroupEntry {
                binding,
                resource: resources[binding as usize].clone(),
            })
            .collect();
        let kernel = Entry::new(device, &module, entry, &bindings);
        let seconds = kernel.seconds_per_dispatch(device, queue, GROUPS, 3, 3)?;
        let rate = INVOCATIONS * ITERS * per_iteration / seconds;
        let fma = *fma_rate.get_or_insert(rate);
        println!("{what:<48} {:>10.2} {:>14.1}", rate / 1e9, fma / rate);
    }
    dispatch_overhead(device, queue, &module, &out)
}

/// What a dispatch costs beyond its work: a one-workgroup dispatch of a one-store kernel, all
/// in one compute pass, or each in a pass of its own (the engine records one pass; profiling,
/// with timestamps around each dispatch, a pass each).
fn dispatch_overhead(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    module: &wgpu::ShaderModule,
    out: &wgpu::Buffer,
) -> Result<(), Box<dyn std::error::Error>> {
    const DISPATCHES: u32 = 500;
    let bindings = [wgpu::BindGroupEntry {
        binding: 0,
        resource: out.as_entire_binding(),
    }];
    let kernel = Entry::new(device, module, "empty_dispatch", &bindings);
    println!();
    for (what, per_pass) in [
        ("dispatch, all in one pass", DISPATCHES),
        ("dispatch, a pass each", 1),
    ] {
        let seconds = kernel.seconds_per_dispatch(device, queue, 1, DISPATCHES, per_pass)?;
        println!("{what:<48} {:>10.1} us", seconds * 1e6);
    }
    Ok(())
}

/// An entry point of the file with its bindings.
struct Entry {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
}

impl Entry {
    fn new(
        device: &wgpu::Device,
        module: &wgpu::ShaderModule,
        entry: &str,
        bindings: &[wgpu::BindGroupEntry],
    ) -> Self {
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        });
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: bindings,
        });
        Entry {
            pipeline,
            bind_group,
        }
    }

    /// Seconds per dispatch of `groups` workgroups, over `dispatches` of them recorded
    /// `per_pass` to a compute pass: the best of five submissions after a warm-up, the
    /// fastest being the one least disturbed by other work.
    fn seconds_per_dispatch(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        groups: u32,
        dispatches: u32,
        per_pass: u32,
    ) -> Result<f64, wgpu::PollError> {
        let run = || {
            let mut encoder = device.create_command_encoder(&Default::default());
            for _ in 0..dispatches / per_pass {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(&self.pipeline);
                pass.set_bind_group(0, &self.bind_group, &[]);
                for _ in 0..per_pass {
                    pass.dispatch_workgroups(groups, 1, 1);
                }
            }
            let start = Instant::now();
            queue.submit([encoder.finish()]);
            device.poll(wgpu::PollType::wait_indefinitely())?;
            Ok(start.elapsed().as_secs_f64() / dispatches as f64)
        };
        run()?;
        (0..5).try_fold(f64::MAX, |best, _| run().map(|t| best.min(t)))
    }
}
