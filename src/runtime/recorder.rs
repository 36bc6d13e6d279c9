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
    profile: Option<Profile>,
}

/// Timestamps around every dispatch, when profiling (see [`Recorder::profile`]).
struct Profile {
    queries: wgpu::QuerySet,
    /// The kernel file of each timed dispatch, in order.
    kernels: Vec<&'static str>,
}

/// Query sets hold at most 4096 queries: two per dispatch.
const MAX_PROFILED: usize = 2048;

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
            profile: None,
        }
    }

    /// Time every dispatch recorded from now on (the first 2048) with GPU timestamps; read the
    /// times with [`Recorder::submit_profiled`]. Needs `TIMESTAMP_QUERY`.
    pub fn profile(&mut self) -> Result<()> {
        if !self
            .ctx
            .device()
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
        {
            return Err(Error::Gpu(
                "profiling needs timestamp queries, which this device lacks".into(),
            ));
        }
        let queries = self
            .ctx
            .device()
            .create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("ssmgpu.profile"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * MAX_PROFILED as u32,
            });
        self.profile = Some(Profile {
            queries,
            kernels: Vec::new(),
        });
        Ok(())
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
        // An op binds `dummy_rw` for each absent output, but WebGPU (unlike native wgpu)
        // refuses two writable bindings of one buffer in a dispatch: repeats get its twins.
        let inner = &self.ctx.inner;
        let mut twins = inner.dummy_rw_twins.iter();
        let mut seen_rw = false;
        for (i, &b) in buffers.iter().enumerate() {
            let b = if b != &inner.dummy_rw || !std::mem::replace(&mut seen_rw, true) {
                b
            } else {
                twins.next().unwrap_or(b)
            };
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: b.as_entire_binding(),
            });
        }
        let bind_group = self
            .ctx
            .device()
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(kernel.entry),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            });
        let timestamp_writes = self
            .profile
            .as_mut()
            .filter(|p| p.kernels.len() < MAX_PROFILED)
            .map(|p| {
                let at = 2 * p.kernels.len() as u32;
                p.kernels.push(kernel.name);
                wgpu::ComputePassTimestampWrites {
                    query_set: &p.queries,
                    beginning_of_pass_write_index: Some(at),
                    end_of_pass_write_index: Some(at + 1),
                }
            });
        let mut pass = self
            .encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(kernel.entry),
                timestamp_writes,
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

    /// Submit a profiled recording ([`Recorder::profile`]); returns the GPU milliseconds of
    /// each timed dispatch with its kernel file, in order.
    pub async fn submit_profiled(mut self) -> Result<Vec<(&'static str, f64)>> {
        let Some(profile) = self.profile.take() else {
            return Err(Error::InvalidInput(
                "submit_profiled: the recording was not profiled".into(),
            ));
        };
        let n = profile.kernels.len();
        if n == 0 {
            self.submit().await?;
            return Ok(Vec::new());
        }
        let resolved = self.ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("ssmgpu.profile.resolve"),
            size: 16 * n as u64,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        self.encoder
            .resolve_query_set(&profile.queries, 0..2 * n as u32, &resolved, 0);
        // Read back through a tensor: each u64 timestamp as two u32 words.
        let ticks = self.ctx.alloc("profile", &[4 * n], DType::U32)?;
        self.encoder
            .copy_buffer_to_buffer(&resolved, 0, ticks.buffer(), 0, 16 * n as u64);
        let period_ns = self.ctx.queue().get_timestamp_period() as f64;
        let words = self.submit_and_read(&[&ticks]).await?.remove(0);
        let stamp = |i: usize| {
            let (lo, hi) = (
                words[2 * i].to_bits() as u64,
                words[2 * i + 1].to_bits() as u64,
            );
            lo | hi << 32
        };
        Ok(profile
            .kernels
            .iter()
            .enumerate()
            .map(|(i, &k)| {
                let ticks = stamp(2 * i + 1).saturating_sub(stamp(2 * i));
                (k, ticks as f64 * period_ns * 1e-6)
            })
            .collect())
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
