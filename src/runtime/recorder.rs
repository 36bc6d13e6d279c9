//! Records a batch of dispatches (a whole forward pass) and submits it once, with readback of
//! only the tensors the caller names. On wgpu the dispatches go into one command encoder; on
//! CUDA they are launched on the context's stream as they come, and submit waits for them.

use crate::error::{Error, Result};
use crate::runtime::buffer::{foreign_tensor, Buffer};
use crate::runtime::context::{Context, Kernel, WgpuDevice};
use crate::runtime::tensor::{DType, Tensor};

/// Largest workgroup count in one grid dimension (WebGPU's guaranteed minimum).
const MAX_GROUPS_X: u32 = 65535;

pub struct Recorder {
    ctx: Context,
    commands: Commands,
    dispatches: usize,
}

enum Commands {
    Wgpu {
        encoder: Encoder,
        scope: wgpu::ErrorScopeGuard,
        profile: Option<Profile>,
    },
    #[cfg(feature = "cuda")]
    Cuda(crate::runtime::cuda::Launches),
}

/// The command encoder and the compute pass that dispatches go into: one pass holds them all
/// until something else needs the encoder (a copy, a host's commands, submission), as a pass
/// per dispatch cost lavapipe about 15 µs each (3 ms of a Vim-Ti forward pass).
struct Encoder {
    /// Boxed: a pass is ~500 bytes, and the recorder is moved by value. Declared first, so
    /// that an unsubmitted recorder ends its pass before dropping the encoder.
    pass: Option<Box<wgpu::ComputePass<'static>>>,
    encoder: wgpu::CommandEncoder,
    /// Two timestamps around all the recorded work (see [`Recorder::time_gpu`]): the first
    /// pass writes the start; submission adds an empty pass that writes the end.
    timer: Option<PassTimer>,
}

struct PassTimer {
    queries: wgpu::QuerySet,
    started: bool,
}

impl Encoder {
    /// The encoder, with the open pass ended.
    fn commands(&mut self) -> &mut wgpu::CommandEncoder {
        self.pass = None;
        &mut self.encoder
    }

    /// The open pass, or a new one.
    fn pass(&mut self) -> &mut wgpu::ComputePass<'static> {
        let encoder = &mut self.encoder;
        let timer = &mut self.timer;
        self.pass.get_or_insert_with(|| {
            let first = timer
                .as_mut()
                .is_some_and(|t| !std::mem::replace(&mut t.started, true));
            let timestamp_writes =
                timer
                    .as_ref()
                    .filter(|_| first)
                    .map(|t| wgpu::ComputePassTimestampWrites {
                        query_set: &t.queries,
                        beginning_of_pass_write_index: Some(0),
                        end_of_pass_write_index: None,
                    });
            Box::new(
                encoder
                    .begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("ssmgpu.dispatches"),
                        timestamp_writes,
                    })
                    .forget_lifetime(),
            )
        })
    }

    /// End the timed span (after everything recorded so far) and resolve both stamps into
    /// `ticks` (u32 `[4]`, two u64s). Returns false when the span was never started.
    fn end_timer(&mut self, device: &wgpu::Device, ticks: &wgpu::Buffer) -> bool {
        let Some(timer) = self.timer.take().filter(|t| t.started) else {
            return false;
        };
        let encoder = self.commands();
        // An empty pass whose end stamp is written once all earlier work is done.
        drop(encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("ssmgpu.timer_end"),
            timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                query_set: &timer.queries,
                beginning_of_pass_write_index: None,
                end_of_pass_write_index: Some(1),
            }),
        }));
        let resolved = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("ssmgpu.timer.resolve"),
            size: 16,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        encoder.resolve_query_set(&timer.queries, 0..2, &resolved, 0);
        encoder.copy_buffer_to_buffer(&resolved, 0, ticks, 0, 16);
        true
    }

    fn finish(mut self) -> wgpu::CommandEncoder {
        self.pass = None;
        self.encoder
    }
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
        let commands = match ctx.wgpu() {
            Some(w) => Commands::Wgpu {
                scope: w.device.push_error_scope(wgpu::ErrorFilter::Validation),
                encoder: Encoder {
                    pass: None,
                    timer: None,
                    encoder: w
                        .device
                        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                            label: Some("ssmgpu.forward"),
                        }),
                },
                profile: None,
            },
            #[cfg(feature = "cuda")]
            None => Commands::Cuda(crate::runtime::cuda::Launches::default()),
            #[cfg(not(feature = "cuda"))]
            None => unreachable!("a context without the cuda feature is a wgpu context"),
        };
        Recorder {
            ctx,
            commands,
            dispatches: 0,
        }
    }

    /// Time every dispatch recorded from now on (the first 2048) with GPU timestamps (CUDA:
    /// events); read the times with [`Recorder::submit_profiled`]. wgpu needs
    /// `TIMESTAMP_QUERY`.
    pub fn profile(&mut self) -> Result<()> {
        match &mut self.commands {
            Commands::Wgpu { profile, .. } => {
                let queries = timestamps(&self.ctx, "ssmgpu.profile", 2 * MAX_PROFILED as u32)?;
                *profile = Some(Profile {
                    queries,
                    kernels: Vec::new(),
                });
                Ok(())
            }
            #[cfg(feature = "cuda")]
            Commands::Cuda(launches) => {
                launches.profile();
                Ok(())
            }
        }
    }

    /// Time all the work recorded from now on, as one span of GPU time (CUDA: the sum of its
    /// launches' times); read it with [`Recorder::submit_timed`]. Unlike [`Recorder::profile`]
    /// this leaves the dispatches in one pass, so the span is what an untimed pass costs.
    /// wgpu needs `TIMESTAMP_QUERY`.
    pub fn time_gpu(&mut self) -> Result<()> {
        match &mut self.commands {
            Commands::Wgpu { encoder, .. } => {
                let queries = timestamps(&self.ctx, "ssmgpu.timer", 2)?;
                // Work already in the open pass would fall outside the span.
                encoder.commands();
                encoder.timer = Some(PassTimer {
                    queries,
                    started: false,
                });
                Ok(())
            }
            #[cfg(feature = "cuda")]
            Commands::Cuda(launches) => {
                launches.profile();
                Ok(())
            }
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
        buffers: &[&Buffer],
        groups: [u32; 3],
    ) {
        self.dispatches += 1;
        match &mut self.commands {
            Commands::Wgpu {
                encoder, profile, ..
            } => record_wgpu(
                &self.ctx,
                encoder,
                profile.as_mut(),
                kernel,
                bytemuck::bytes_of(params),
                buffers,
                groups,
            ),
            #[cfg(feature = "cuda")]
            Commands::Cuda(launches) => {
                let device = cuda_of(&self.ctx);
                launches.launch(device, kernel, bytemuck::bytes_of(params), buffers, groups);
            }
        }
    }

    /// `y[:, first_col..][..n] = x · wᵀ` on cuBLAS, for the matmul op on the CUDA backend:
    /// `x` `[m, k]` from element `x_offset` with row stride `x_stride`, `w` `[n, k]`, `y` rows
    /// `y_stride` apart. Returns false on wgpu, where the matmul is a kernel.
    #[cfg(feature = "cuda")]
    pub(crate) fn cublas_gemm(&mut self, gemm: crate::runtime::cuda::Gemm) -> bool {
        match &mut self.commands {
            Commands::Wgpu { .. } => false,
            Commands::Cuda(launches) => {
                let device = cuda_of(&self.ctx);
                launches.gemm(device, gemm);
                self.dispatches += 1;
                true
            }
        }
    }

    /// The command encoder the forward pass is recorded into, for a host's own commands
    /// (timestamp queries, copies) that must run in order with it, in the same submission.
    /// `None` on the CUDA backend.
    pub fn encoder(&mut self) -> Option<&mut wgpu::CommandEncoder> {
        match &mut self.commands {
            Commands::Wgpu { encoder, .. } => Some(encoder.commands()),
            #[cfg(feature = "cuda")]
            Commands::Cuda(_) => None,
        }
    }

    /// A snapshot of `src` as it is at this point of the recorded work.
    pub fn snapshot(&mut self, name: &str, src: &Tensor) -> Result<Tensor> {
        let dst = self.ctx.alloc(name, src.shape(), src.dtype())?;
        match (&mut self.commands, src.buffer(), dst.buffer()) {
            (Commands::Wgpu { encoder, .. }, Buffer::Wgpu(s), Buffer::Wgpu(d)) => encoder
                .commands()
                .copy_buffer_to_buffer(s, 0, d, 0, src.size_bytes()),
            #[cfg(feature = "cuda")]
            (Commands::Cuda(launches), Buffer::Cuda(s), Buffer::Cuda(d)) => {
                let device = cuda_of(&self.ctx);
                launches.copy(device, s, d, src.size_bytes());
            }
            #[cfg(feature = "cuda")]
            _ => return Err(foreign_tensor()),
        }
        Ok(dst)
    }

    /// Submit everything recorded, and report any validation error it raised.
    pub async fn submit(self) -> Result<()> {
        self.submit_and_read(&[]).await.map(|_| ())
    }

    /// Submit, then read back the named tensors as f32 (u32 tensors are returned bit-cast).
    pub async fn submit_and_read(self, tensors: &[&Tensor]) -> Result<Vec<Vec<f32>>> {
        self.ctx.check_alive()?;
        let Recorder { ctx, commands, .. } = self;
        match commands {
            Commands::Wgpu { encoder, scope, .. } => {
                submit_wgpu(&ctx, wgpu_of(&ctx), encoder.finish(), scope, tensors).await
            }
            #[cfg(feature = "cuda")]
            Commands::Cuda(launches) => {
                let device = cuda_of(&ctx);
                launches.finish(device)?;
                read_cuda(device, tensors)
            }
        }
    }

    /// Submit a recording timed with [`Recorder::time_gpu`], then read back the named tensors;
    /// also returns the GPU milliseconds of the timed span (0 when nothing was recorded).
    pub async fn submit_timed(mut self, tensors: &[&Tensor]) -> Result<(Vec<Vec<f32>>, f64)> {
        match &mut self.commands {
            Commands::Wgpu { encoder, .. } => {
                let w = wgpu_of(&self.ctx);
                let ticks = self.ctx.alloc("timer", &[4], DType::U32)?;
                let ticks_buffer = ticks.buffer().wgpu().ok_or_else(foreign_tensor)?;
                if encoder.timer.is_none() {
                    return Err(not_timed());
                }
                let started = encoder.end_timer(&w.device, ticks_buffer);
                let period_ns = w.queue.get_timestamp_period() as f64;
                let mut all: Vec<&Tensor> = tensors.to_vec();
                all.push(&ticks);
                let mut out = self.submit_and_read(&all).await?;
                let words = out.pop().unwrap_or_default();
                let stamp = |i: usize| {
                    words[2 * i].to_bits() as u64 | (words[2 * i + 1].to_bits() as u64) << 32
                };
                let ms = if started {
                    stamp(1).saturating_sub(stamp(0)) as f64 * period_ns * 1e-6
                } else {
                    0.0
                };
                Ok((out, ms))
            }
            #[cfg(feature = "cuda")]
            Commands::Cuda(launches) => {
                let launches = std::mem::take(launches);
                let device = cuda_of(&self.ctx);
                let times = launches.finish_profiled(device)?.ok_or_else(not_timed)?;
                let out = read_cuda(device, tensors)?;
                Ok((out, times.iter().map(|(_, ms)| ms).sum()))
            }
        }
    }

    /// Submit a profiled recording ([`Recorder::profile`]); returns the GPU milliseconds of
    /// each timed dispatch with its kernel file, in order.
    pub async fn submit_profiled(mut self) -> Result<Vec<(&'static str, f64)>> {
        let profile = match &mut self.commands {
            Commands::Wgpu { profile, .. } => profile.take(),
            #[cfg(feature = "cuda")]
            Commands::Cuda(_) => None,
        };
        match (self.commands, profile) {
            (Commands::Wgpu { .. }, None) => Err(not_profiled()),
            (Commands::Wgpu { encoder, scope, .. }, Some(profile)) => {
                let rec = Recorder {
                    commands: Commands::Wgpu {
                        encoder,
                        scope,
                        profile: None,
                    },
                    ..self
                };
                rec.submit_wgpu_profiled(profile).await
            }
            #[cfg(feature = "cuda")]
            (Commands::Cuda(launches), _) => {
                let device = cuda_of(&self.ctx);
                launches.finish_profiled(device)?.ok_or_else(not_profiled)
            }
        }
    }

    async fn submit_wgpu_profiled(mut self, profile: Profile) -> Result<Vec<(&'static str, f64)>> {
        let n = profile.kernels.len();
        if n == 0 {
            self.submit().await?;
            return Ok(Vec::new());
        }
        let w = wgpu_of(&self.ctx);
        let resolved = w.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("ssmgpu.profile.resolve"),
            size: 16 * n as u64,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let period_ns = w.queue.get_timestamp_period() as f64;
        // Read back through a tensor: each u64 timestamp as two u32 words.
        let ticks = self.ctx.alloc("profile", &[4 * n], DType::U32)?;
        let ticks_buffer = ticks.buffer().wgpu().ok_or_else(foreign_tensor)?;
        let encoder = self.encoder().expect("a wgpu recorder has an encoder");
        encoder.resolve_query_set(&profile.queries, 0..2 * n as u32, &resolved, 0);
        encoder.copy_buffer_to_buffer(&resolved, 0, ticks_buffer, 0, 16 * n as u64);
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

/// A set of `count` timestamp queries, where the device has them.
fn timestamps(ctx: &Context, label: &str, count: u32) -> Result<wgpu::QuerySet> {
    let w = wgpu_of(ctx);
    if !w
        .device
        .features()
        .contains(wgpu::Features::TIMESTAMP_QUERY)
    {
        return Err(Error::Gpu(
            "timing needs timestamp queries, which this device lacks".into(),
        ));
    }
    Ok(w.device.create_query_set(&wgpu::QuerySetDescriptor {
        label: Some(label),
        ty: wgpu::QueryType::Timestamp,
        count,
    }))
}

fn wgpu_of(ctx: &Context) -> &WgpuDevice {
    ctx.wgpu().expect("a wgpu recorder has a wgpu context")
}

#[cfg(feature = "cuda")]
fn cuda_of(ctx: &Context) -> &crate::runtime::cuda::CudaDevice {
    ctx.cuda().expect("a CUDA recorder has a CUDA context")
}

#[cfg(feature = "cuda")]
fn read_cuda(
    device: &crate::runtime::cuda::CudaDevice,
    tensors: &[&Tensor],
) -> Result<Vec<Vec<f32>>> {
    tensors
        .iter()
        .map(|t| match t.buffer() {
            Buffer::Cuda(b) => device.read_f32(b, t.numel()),
            Buffer::Wgpu(_) => Err(foreign_tensor()),
        })
        .collect()
}

fn not_timed() -> Error {
    Error::InvalidInput("submit_timed: the recording was not timed (time_gpu)".into())
}

fn not_profiled() -> Error {
    Error::InvalidInput("submit_profiled: the recording was not profiled".into())
}

fn record_wgpu(
    ctx: &Context,
    encoder: &mut Encoder,
    profile: Option<&mut Profile>,
    kernel: &Kernel,
    params: &[u8],
    buffers: &[&Buffer],
    groups: [u32; 3],
) {
    let w = wgpu_of(ctx);
    let pipeline = w.pipeline(kernel);
    let uniform = w.uniform(params);
    let mut entries = vec![wgpu::BindGroupEntry {
        binding: 0,
        resource: uniform.as_entire_binding(),
    }];
    // An op binds `dummy_rw` for each absent output, but WebGPU (unlike native wgpu)
    // refuses two writable bindings of one buffer in a dispatch: repeats get its twins.
    let inner = &ctx.inner;
    let mut twins = inner.dummy_rw_twins.iter();
    let mut seen_rw = false;
    for (i, &b) in buffers.iter().enumerate() {
        let b = if b != &inner.dummy_rw || !std::mem::replace(&mut seen_rw, true) {
            b
        } else {
            twins.next().unwrap_or(b)
        };
        // Every tensor of a wgpu context is a wgpu buffer.
        let Some(b) = b.wgpu() else {
            continue;
        };
        entries.push(wgpu::BindGroupEntry {
            binding: i as u32 + 1,
            resource: b.as_entire_binding(),
        });
    }
    let bind_group = w.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(kernel.entry),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    });
    let dispatch = |pass: &mut wgpu::ComputePass| {
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
    };
    match profile.filter(|p| p.kernels.len() < MAX_PROFILED) {
        // A timed dispatch is a pass of its own, with timestamps at its ends.
        Some(p) => {
            let at = 2 * p.kernels.len() as u32;
            p.kernels.push(kernel.name);
            let timestamp_writes = wgpu::ComputePassTimestampWrites {
                query_set: &p.queries,
                beginning_of_pass_write_index: Some(at),
                end_of_pass_write_index: Some(at + 1),
            };
            dispatch(
                &mut encoder
                    .commands()
                    .begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(kernel.entry),
                        timestamp_writes: Some(timestamp_writes),
                    }),
            );
        }
        None => dispatch(encoder.pass()),
    }
}

async fn submit_wgpu(
    ctx: &Context,
    w: &WgpuDevice,
    mut encoder: wgpu::CommandEncoder,
    scope: wgpu::ErrorScopeGuard,
    tensors: &[&Tensor],
) -> Result<Vec<Vec<f32>>> {
    let mut staging: Vec<(wgpu::Buffer, u64)> = Vec::with_capacity(tensors.len());
    for t in tensors {
        let src = t.buffer().wgpu().ok_or_else(foreign_tensor)?;
        let size = t.size_bytes().max(4).next_multiple_of(4);
        let b = w.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("ssmgpu.readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if t.size_bytes() > 0 {
            encoder.copy_buffer_to_buffer(src, 0, &b, 0, t.size_bytes());
        }
        staging.push((b, t.size_bytes()));
    }
    w.queue.submit([encoder.finish()]);
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
    w.device
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
