//! Records a batch of dispatches (a whole forward pass) into one command encoder; submitted
//! once, with readback of only the tensors the caller names.

use crate::error::{Error, Result};
use crate::runtime::context::{Context, Kernel};
use crate::runtime::tensor::{DType, Tensor};

/// Largest workgroup count in one grid dimension (WebGPU's guaranteed minimum).
const MAX_GROUPS_X: u32 = 65535;

pub struct Recorder {
    ctx: Context,
    encoder: wgpu::CommandEncoder,
    scope: wgpu::ErrorScopeGuard,
    dispatches: usize,
}

/// Spread `groups` workgroups over x and y; kernels rebuild the linear index as
/// `wg.x + wg.y * num_wg.x` and skip the overshoot.
pub fn grid(groups: u32) -> [u32; 3] {
    if groups <= MAX_GROUPS_X {
        [groups.max(1), 1, 1]
    } else {
        [MAX_GROUPS_X, groups.div_ceil(MAX_GROUPS_X), 1]
    }
}

impl Recorder {
    pub(crate) fn new(ctx: Context) -> Self {
        let scope = ctx.device().push_error_scope(wgpu::ErrorFilter::Validation);
        let encoder = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("ssmgpu.forward"),
            });
        Recorder {
            ctx,
            encoder,
            scope,
            dispatches: 0,
        }
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Number of dispatches recorded so far (fusion keeps this small: each costs ~25 µs on
    /// software Vulkan).
    pub fn dispatch_count(&self) -> usize {
        self.dispatches
    }

    pub fn alloc(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.ctx.alloc(name, shape, DType::F32)
    }

    /// Record one dispatch: binding 0 is the uniform `params`, bindings 1.. the buffers in order.
    pub(crate) fn dispatch<P: bytemuck::Pod>(
        &mut self,
        kernel: &Kernel,
        params: &P,
        buffers: &[&wgpu::Buffer],
        groups: [u32; 3],
    ) {
        let pipeline = self.ctx.pipeline(kernel);
        let uniform = self.ctx.uniform(bytemuck::bytes_of(params));
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        entries.extend(
            buffers
                .iter()
                .enumerate()
                .map(|(i, b)| wgpu::BindGroupEntry {
                    binding: i as u32 + 1,
                    resource: b.as_entire_binding(),
                }),
        );
        let bind_group = self
            .ctx
            .device()
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(kernel.entry),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            });
        let mut pass = self
            .encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(kernel.entry),
                timestamp_writes: None,
            });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        self.dispatches += 1;
    }

    /// The command encoder the forward pass is recorded into, for a host's own commands
    /// (timestamp queries, copies) that must run in order with it, in the same submission.
    pub fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        &mut self.encoder
    }

    /// A snapshot of `src` as it is at this point of the recorded work.
    pub fn snapshot(&mut self, name: &str, src: &Tensor) -> Result<Tensor> {
        let dst = self.ctx.alloc(name, src.shape(), src.dtype())?;
        self.encoder
            .copy_buffer_to_buffer(src.buffer(), 0, dst.buffer(), 0, src.size_bytes());
        Ok(dst)
    }

    /// Submit everything recorded, and report any validation error it raised.
    pub async fn submit(self) -> Result<()> {
        self.submit_and_read(&[]).await.map(|_| ())
    }

    /// Submit, then read back the named tensors as f32 (u32 tensors are returned bit-cast).
    pub async fn submit_and_read(mut self, tensors: &[&Tensor]) -> Result<Vec<Vec<f32>>> {
        self.ctx.check_alive()?;
        let staging: Vec<(wgpu::Buffer, u64)> = tensors
            .iter()
            .map(|t| {
                let size = t.size_bytes().max(4).next_multiple_of(4);
                let b = self.ctx.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some("ssmgpu.readback"),
                    size,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                if t.size_bytes() > 0 {
                    self.encoder
                        .copy_buffer_to_buffer(t.buffer(), 0, &b, 0, t.size_bytes());
                }
                (b, t.size_bytes())
            })
            .collect();
        let Recorder {
            ctx,
            encoder,
            scope,
            ..
        } = self;
        ctx.queue().submit([encoder.finish()]);
        if let Some(err) = scope.pop().await {
            return Err(Error::Gpu(err.to_string()));
        }
        let mut receivers = Vec::with_capacity(staging.len());
        for (buffer, _) in &staging {
            let (tx, rx) = futures_channel::oneshot::channel();
            buffer.slice(..).map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
            receivers.push(rx);
        }
        #[cfg(not(target_arch = "wasm32"))]
        ctx.device()
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        let mut out = Vec::with_capacity(staging.len());
        for ((buffer, bytes), rx) in staging.iter().zip(receivers) {
            rx.await
                .map_err(|_| Error::Gpu("readback was cancelled".into()))?
                .map_err(|e| Error::Gpu(format!("mapping a readback buffer: {e}")))?;
            {
                let view = buffer
                    .slice(..)
                    .get_mapped_range()
                    .map_err(|e| Error::Gpu(format!("reading a mapped buffer: {e:?}")))?;
                out.push(bytemuck::cast_slice::<u8, f32>(&view[..*bytes as usize]).to_vec());
            }
            buffer.unmap();
        }
        ctx.check_alive()?;
        Ok(out)
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn submit_blocking(self) -> Result<()> {
        pollster::block_on(self.submit())
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn submit_and_read_blocking(self, tensors: &[&Tensor]) -> Result<Vec<Vec<f32>>> {
        pollster::block_on(self.submit_and_read(tensors))
    }
}
