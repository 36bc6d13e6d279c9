//! The GPU context: a device and queue (our own, or a host engine's), the pipeline cache and
//! the buffer pool. Cheap to clone; every clone shares the same caches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::runtime::buffer::Buffer;
use crate::runtime::pool::BufferPool;
use crate::runtime::tensor::{DType, RowShards, Tensor};
use crate::runtime::Recorder;

/// One compute entry point of one WGSL file; `name` keys the pipeline cache.
///
/// A file may hold variants between `// #if <feature>`, `// #else` and `// #endif` lines, which
/// nest; the features are `subgroups` and `int64` (64-bit integers). The module is compiled
/// with the branches its kernel's features select, so a device never sees builtins or types
/// it lacks.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    pub name: &'static str,
    pub source: &'static str,
    pub entry: &'static str,
    pub subgroups: bool,
    pub int64: bool,
    /// The value of the file's `override FLAGS: u32`, for a kernel that declares one: options
    /// fixed when the pipeline is created cost no branches in its loops (one pipeline per value).
    pub flags: Option<u32>,
    /// The CUDA C twin of the WGSL file (`shaders/cuda/<name>.cu`), same entry point.
    #[cfg(feature = "cuda")]
    pub cuda: &'static str,
}

impl Kernel {
    /// A whole WGSL file, no entry point picked and no features: for tools and tests that read
    /// a variant's source (`Kernel::file(..).with_subgroups(true).wgsl()`).
    pub fn file(name: &'static str, source: &'static str) -> Self {
        Kernel {
            name,
            source,
            entry: "",
            subgroups: false,
            int64: false,
            flags: None,
            #[cfg(feature = "cuda")]
            cuda: "",
        }
    }

    pub fn with_subgroups(self, subgroups: bool) -> Self {
        Kernel { subgroups, ..self }
    }

    pub fn with_int64(self, int64: bool) -> Self {
        Kernel { int64, ..self }
    }

    pub fn with_flags(self, flags: u32) -> Self {
        Kernel {
            flags: Some(flags),
            ..self
        }
    }

    /// The WGSL this kernel compiles: its variant of the file, with `// #include <name>` lines
    /// replaced by `shaders/include/<name>.wgsl` (WGSL has no includes; code that several
    /// kernels share lives there once).
    pub fn wgsl(&self) -> String {
        // (naga takes subgroup builtins without WGSL's `enable subgroups;`, which it rejects;
        // wgpu checks the device feature instead.)
        let mut out = String::new();
        // Whether the current branch of each enclosing `#if` block is selected.
        let mut taken: Vec<bool> = Vec::new();
        let source = expand_includes(self.source, SHADER_INCLUDES, "shaders/include/*.wgsl");
        for line in source.lines() {
            let trimmed = line.trim();
            if let Some(feature) = trimmed.strip_prefix("// #if ") {
                taken.push(self.has(feature));
            } else if trimmed == "// #else" {
                if let Some(top) = taken.last_mut() {
                    *top = !*top;
                }
            } else if trimmed == "// #endif" {
                taken.pop();
            } else if taken.iter().all(|&t| t) {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    fn has(&self, feature: &str) -> bool {
        match feature {
            "subgroups" => self.subgroups,
            "int64" => self.int64,
            // The sources are compiled in: an unknown feature is a build mistake.
            _ => panic!(
                "{}.wgsl: unknown feature `{feature}` in `// #if`",
                self.name
            ),
        }
    }
}

/// The shared WGSL snippets kernels pull in with `// #include <name>`.
const SHADER_INCLUDES: &[(&str, &str)] = &[
    (
        "activation",
        include_str!("../../shaders/include/activation.wgsl"),
    ),
    (
        "packed8",
        include_str!("../../shaders/include/packed8.wgsl"),
    ),
    (
        "ssm_inputs",
        include_str!("../../shaders/include/ssm_inputs.wgsl"),
    ),
    (
        "row_score",
        include_str!("../../shaders/include/row_score.wgsl"),
    ),
];

/// `source` with each `// #include <name>` line replaced by that snippet of `includes`.
pub(crate) fn expand_includes(
    source: &str,
    includes: &[(&str, &'static str)],
    folder: &str,
) -> String {
    source
        .lines()
        .map(|line| match line.trim().strip_prefix("// #include ") {
            Some(name) => includes
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, text)| *text)
                // The sources are compiled in: a missing snippet is a build mistake.
                .unwrap_or_else(|| panic!("`{name}` is not among the includes of {folder}")),
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Which backend runs the kernels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// CUDA where this build has it and a CUDA device answers, else wgpu.
    #[default]
    Auto,
    /// WebGPU through wgpu: Vulkan, Metal, DX12, GL or the browser.
    Wgpu,
    /// NVIDIA GPUs through the CUDA driver, NVRTC and cuBLAS (cargo feature `cuda`).
    Cuda,
    /// The CUDA kernels compiled by the host's C++ compiler and run on CPU threads (cargo
    /// feature `cuda`): checks them where no GPU is; orders of magnitude slower.
    CudaHost,
}

impl std::str::FromStr for Backend {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Backend::Auto),
            "wgpu" => Ok(Backend::Wgpu),
            "cuda" => Ok(Backend::Cuda),
            "cuda-host" => Ok(Backend::CudaHost),
            _ => Err(Error::InvalidInput(format!(
                "backend `{s}`: expected wgpu, cuda, cuda-host or auto"
            ))),
        }
    }
}

/// How to pick a device when the engine creates its own. `Default` honours the `WGPU_BACKEND`
/// and `WGPU_ADAPTER_NAME` environment variables.
#[derive(Clone, Debug, Default)]
pub struct ContextOptions {
    pub backend: Backend,
    /// wgpu backends to consider (e.g. `wgpu::Backends::VULKAN`); `None`: `WGPU_BACKEND` or all.
    pub backends: Option<wgpu::Backends>,
    /// Case-insensitive substring of the adapter name; `None`: `WGPU_ADAPTER_NAME` or the default.
    pub adapter_name: Option<String>,
    /// Use the portable kernels even where the device has subgroups (for tests and
    /// comparisons; also set by the environment variable `SSMGPU_NO_SUBGROUPS=1`).
    pub disable_subgroups: bool,
    /// Use the kernels without 64-bit integers even where the device has them (for tests and
    /// comparisons; also set by `SSMGPU_NO_INT64=1`).
    pub disable_int64: bool,
    /// Bind at most this many bytes per storage binding, below the device's own limit: runs
    /// a large GPU as a browser's WebGPU (128 MiB by default) would, for tests and comparisons.
    pub max_binding_bytes: Option<u64>,
    /// CUDA: let cuBLAS run f32 matmuls in TF32 on tensor cores (10-bit mantissa products).
    pub allow_tf32: bool,
}

/// A pipeline per kernel file, entry point, variant and `FLAGS` value.
type PipelineKey = (&'static str, &'static str, bool, bool, Option<u32>);

pub(crate) struct Inner {
    pub gpu: Gpu,
    pub limits: wgpu::Limits,
    /// Subgroup kernels are used: the device has subgroups of at least 8 invocations.
    pub subgroups: bool,
    /// Kernels with a 64-bit integer variant use it (wide loads; see `shaders/matmul.wgsl`).
    pub int64: bool,
    pub pool: Arc<Mutex<BufferPool>>,
    lost: Arc<Mutex<Option<String>>>,
    /// Tiny buffers bound where a kernel's optional input (read-only) or carried state
    /// (read-write) is absent; two, because one buffer cannot be both in one dispatch.
    pub dummy: Buffer,
    pub dummy_rw: Buffer,
    /// Stand-ins for `dummy_rw` where one dispatch binds it more than once (see
    /// `Recorder::dispatch`).
    pub dummy_rw_twins: [Buffer; 2],
}

/// The device behind a context.
pub(crate) enum Gpu {
    Wgpu(Box<WgpuDevice>),
    #[cfg(feature = "cuda")]
    Cuda(crate::runtime::cuda::CudaDevice),
}

pub(crate) struct WgpuDevice {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter_info: Option<wgpu::AdapterInfo>,
    pipelines: Mutex<HashMap<PipelineKey, wgpu::ComputePipeline>>,
    /// Uniform buffers keyed by their bytes: the same shapes reuse the same parameter buffers.
    uniforms: Mutex<HashMap<Vec<u8>, wgpu::Buffer>>,
}

#[derive(Clone)]
pub struct Context {
    pub(crate) inner: Arc<Inner>,
}

/// An environment switch such as `SSMGPU_NO_SUBGROUPS=1`: set, non-empty and not "0".
fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Lock a mutex, recovering from poisoning: the protected caches stay valid after a panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

const STORAGE_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

impl Context {
    /// Create a device on the default backend ([`Backend::Auto`]), environment variables
    /// honoured.
    pub async fn new() -> Result<Self> {
        Self::with_options(ContextOptions::default()).await
    }

    pub async fn with_options(options: ContextOptions) -> Result<Self> {
        let mut ctx = match options.backend {
            Backend::Wgpu => Self::new_wgpu(&options).await?,
            Backend::Cuda | Backend::CudaHost => Self::new_cuda(&options)?,
            Backend::Auto => Self::new_auto(&options).await?,
        };
        let inner = Arc::get_mut(&mut ctx.inner).expect("not shared yet");
        if options.disable_subgroups {
            inner.subgroups = false;
        }
        if options.disable_int64 {
            inner.int64 = false;
        }
        if let Some(bytes) = options.max_binding_bytes {
            let limit = &mut inner.limits.max_storage_buffer_binding_size;
            *limit = (*limit).min(bytes);
        }
        Ok(ctx)
    }

    async fn new_auto(options: &ContextOptions) -> Result<Self> {
        #[cfg(feature = "cuda")]
        if crate::runtime::cuda::driver_present() {
            match Self::new_cuda(&ContextOptions {
                backend: Backend::Cuda,
                ..options.clone()
            }) {
                Ok(ctx) => return Ok(ctx),
                Err(e) => log::info!("no CUDA device ({e}); using wgpu"),
            }
        }
        Self::new_wgpu(options).await
    }

    #[cfg(feature = "cuda")]
    fn new_cuda(options: &ContextOptions) -> Result<Self> {
        let device = match options.backend {
            Backend::CudaHost => crate::runtime::cuda::CudaDevice::host()?,
            _ => crate::runtime::cuda::CudaDevice::nvidia(options.allow_tf32)?,
        };
        let limits = wgpu::Limits {
            max_storage_buffer_binding_size: device.max_buffer_bytes(),
            max_buffer_size: device.max_buffer_bytes(),
            ..wgpu::Limits::default()
        };
        let dummy = || device.alloc(16).map(Buffer::Cuda);
        let (dummy, dummy_rw, twins) = (dummy()?, dummy()?, [dummy()?, dummy()?]);
        Ok(Self::build(
            Gpu::Cuda(device),
            limits,
            false,
            false,
            dummy,
            dummy_rw,
            twins,
        ))
    }

    #[cfg(not(feature = "cuda"))]
    fn new_cuda(options: &ContextOptions) -> Result<Self> {
        Err(Error::NoAdapter(format!(
            ": the {:?} backend needs a build with the cargo feature `cuda`",
            options.backend
        )))
    }

    async fn new_wgpu(options: &ContextOptions) -> Result<Self> {
        let adapter = select_adapter(options).await?;
        let info = adapter.get_info();
        let (device, queue) = adapter
            .request_device(&Self::device_descriptor(&adapter))
            .await
            .map_err(|e| {
                Error::RequestDevice(format!("{} ({:?}): {e}", info.name, info.backend))
            })?;
        let ctx = Self::build_wgpu(device, queue, Some(info));
        let lost = ctx.inner.lost.clone();
        if let Some(device) = ctx.device() {
            device.set_device_lost_callback(move |reason, message| {
                *lock(&lost) = Some(format!("{reason:?}: {message}"));
            });
        }
        Ok(ctx)
    }

    /// The device the engine asks of `adapter`: the adapter's real limits (model tensors need
    /// its full `max_storage_buffer_binding_size`) and the optional features the kernels and
    /// timing use where the adapter has them (subgroups, 64-bit integers, f16, timestamp queries). A host that
    /// creates the device for [`Context::from_device`] requests this, plus what it needs itself.
    pub fn device_descriptor(adapter: &wgpu::Adapter) -> wgpu::DeviceDescriptor<'static> {
        let wanted = wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::SHADER_F16
            | wgpu::Features::SUBGROUP
            | wgpu::Features::SHADER_INT64;
        wgpu::DeviceDescriptor {
            label: Some("ssmgpu"),
            required_features: adapter.features() & wanted,
            required_limits: adapter.limits(),
            ..Default::default()
        }
    }

    /// Run on a device a host application (a game or graphics engine) already owns. The engine
    /// leaves the host's error and device-lost handlers alone.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        Self::build_wgpu(device, queue, None)
    }

    /// Blocking [`Context::new`] for native callers.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking() -> Result<Self> {
        pollster::block_on(Self::new())
    }

    /// Blocking [`Context::with_options`] for native callers.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_options_blocking(options: ContextOptions) -> Result<Self> {
        pollster::block_on(Self::with_options(options))
    }

    fn build_wgpu(
        device: wgpu::Device,
        queue: wgpu::Queue,
        adapter_info: Option<wgpu::AdapterInfo>,
    ) -> Self {
        let limits = device.limits();
        let subgroups = device.features().contains(wgpu::Features::SUBGROUP)
            && device.adapter_info().subgroup_min_size >= 8
            && !env_flag("SSMGPU_NO_SUBGROUPS");
        let int64 = device.features().contains(wgpu::Features::SHADER_INT64)
            && !env_flag("SSMGPU_NO_INT64");
        let dummy_buffer = |label| {
            Buffer::Wgpu(device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                // One element of the widest array a kernel binds (vec4<u64>).
                size: 32,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            }))
        };
        let dummy = dummy_buffer("ssmgpu.dummy");
        let dummy_rw = dummy_buffer("ssmgpu.dummy_rw");
        let twins = [
            dummy_buffer("ssmgpu.dummy_rw"),
            dummy_buffer("ssmgpu.dummy_rw"),
        ];
        let gpu = Gpu::Wgpu(Box::new(WgpuDevice {
            device,
            queue,
            adapter_info,
            pipelines: Mutex::new(HashMap::new()),
            uniforms: Mutex::new(HashMap::new()),
        }));
        Self::build(gpu, limits, subgroups, int64, dummy, dummy_rw, twins)
    }

    fn build(
        gpu: Gpu,
        limits: wgpu::Limits,
        subgroups: bool,
        int64: bool,
        dummy: Buffer,
        dummy_rw: Buffer,
        dummy_rw_twins: [Buffer; 2],
    ) -> Self {
        Context {
            inner: Arc::new(Inner {
                gpu,
                limits,
                subgroups,
                int64,
                pool: Arc::new(Mutex::new(BufferPool::default())),
                lost: Arc::new(Mutex::new(None)),
                dummy,
                dummy_rw,
                dummy_rw_twins,
            }),
        }
    }

    /// The wgpu device, for a host's own commands; `None` on the CUDA backend.
    pub fn device(&self) -> Option<&wgpu::Device> {
        self.wgpu().map(|w| &w.device)
    }

    /// The wgpu queue; `None` on the CUDA backend.
    pub fn queue(&self) -> Option<&wgpu::Queue> {
        self.wgpu().map(|w| &w.queue)
    }

    pub(crate) fn wgpu(&self) -> Option<&WgpuDevice> {
        match &self.inner.gpu {
            Gpu::Wgpu(w) => Some(w),
            #[cfg(feature = "cuda")]
            Gpu::Cuda(_) => None,
        }
    }

    #[cfg(feature = "cuda")]
    pub(crate) fn cuda(&self) -> Option<&crate::runtime::cuda::CudaDevice> {
        match &self.inner.gpu {
            Gpu::Cuda(c) => Some(c),
            Gpu::Wgpu(_) => None,
        }
    }

    /// The backend this context runs on (never [`Backend::Auto`]).
    pub fn backend(&self) -> Backend {
        match &self.inner.gpu {
            Gpu::Wgpu(_) => Backend::Wgpu,
            #[cfg(feature = "cuda")]
            Gpu::Cuda(c) if c.is_host() => Backend::CudaHost,
            #[cfg(feature = "cuda")]
            Gpu::Cuda(_) => Backend::Cuda,
        }
    }

    /// The device's name and backend, for reports: "NVIDIA H100 (CUDA)", "llvmpipe (Vulkan)".
    pub fn device_name(&self) -> String {
        match &self.inner.gpu {
            Gpu::Wgpu(w) => {
                let info = w
                    .adapter_info
                    .clone()
                    .unwrap_or_else(|| w.device.adapter_info());
                format!("{} ({:?})", info.name, info.backend)
            }
            #[cfg(feature = "cuda")]
            Gpu::Cuda(c) => c.name(),
        }
    }

    /// Whether [`Recorder::profile`] can time dispatches on this device.
    pub fn can_profile(&self) -> bool {
        self.wgpu().is_none_or(|w| {
            w.device
                .features()
                .contains(wgpu::Features::TIMESTAMP_QUERY)
        })
    }

    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }

    /// The adapter, when the engine created a wgpu device itself.
    pub fn adapter_info(&self) -> Option<&wgpu::AdapterInfo> {
        self.wgpu().and_then(|w| w.adapter_info.as_ref())
    }

    /// Bytes currently held by pooled buffers (live and free) and the peak of live bytes.
    pub fn memory_stats(&self) -> crate::runtime::pool::PoolStats {
        lock(&self.inner.pool).stats()
    }

    /// Start a new peak of [`Context::memory_stats`] from the bytes live now.
    pub fn reset_peak_memory(&self) {
        lock(&self.inner.pool).reset_peak();
    }

    pub(crate) fn check_alive(&self) -> Result<()> {
        match lock(&self.inner.lost).as_ref() {
            Some(why) => Err(Error::DeviceLost(why.clone())),
            None => Ok(()),
        }
    }

    /// Refuse a buffer the device cannot bind, naming the tensor and the limit.
    pub(crate) fn check_size(&self, name: &str, bytes: u64) -> Result<()> {
        let l = &self.inner.limits;
        let checks = [
            (
                "max_storage_buffer_binding_size",
                l.max_storage_buffer_binding_size,
            ),
            ("max_buffer_size", l.max_buffer_size),
        ];
        for (limit_name, limit) in checks {
            if bytes > limit {
                return Err(Error::TooLarge {
                    name: name.to_string(),
                    bytes,
                    limit_name,
                    limit,
                });
            }
        }
        Ok(())
    }

    /// An uninitialised tensor from the pool.
    pub fn alloc(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let bytes = (shape.iter().product::<usize>() * dtype.size()) as u64;
        self.check_size(name, bytes)?;
        let buffer = BufferPool::acquire(&self.inner.pool, bytes, |size| {
            Ok(match &self.inner.gpu {
                Gpu::Wgpu(w) => Buffer::Wgpu(w.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("ssmgpu.tensor"),
                    size,
                    usage: STORAGE_USAGE,
                    mapped_at_creation: false,
                })),
                #[cfg(feature = "cuda")]
                Gpu::Cuda(c) => Buffer::Cuda(c.alloc(size)?),
            })
        })?;
        Ok(Tensor::new(buffer, shape.to_vec(), dtype))
    }

    /// Upload host data into a fresh buffer, written at creation: never through
    /// `queue.write_buffer`, whose copy would run before commands already recorded.
    pub fn upload<T: bytemuck::Pod>(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        data: &[T],
    ) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        let bytes = bytemuck::cast_slice::<T, u8>(data);
        if bytes.len() != numel * dtype.size() {
            return Err(Error::InvalidInput(format!(
                "`{name}`: {} bytes of data for shape {shape:?} of {dtype:?}",
                bytes.len()
            )));
        }
        self.check_size(name, bytes.len() as u64)?;
        let buffer = BufferPool::create_init(&self.inner.pool, bytes, |size, data| {
            Ok(match &self.inner.gpu {
                Gpu::Wgpu(w) => Buffer::Wgpu(mapped_buffer(
                    &w.device,
                    "ssmgpu.upload",
                    size,
                    STORAGE_USAGE,
                    data,
                )),
                #[cfg(feature = "cuda")]
                Gpu::Cuda(c) => {
                    let b = c.alloc(size)?;
                    c.write(&b, data)?;
                    Buffer::Cuda(b)
                }
            })
        })?;
        Ok(Tensor::new(buffer, shape.to_vec(), dtype))
    }
    pub fn upload_f32(&self, name: &str, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        self.upload(name, shape, DType::F32, data)
    }

    /// Upload a `[rows, cols]` f32 matrix as [`RowShards`] that each fit one storage binding.
    pub fn upload_row_shards(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        data: &[f32],
    ) -> Result<RowShards> {
        let row_bytes = (cols * DType::F32.size()) as u64;
        let per_shard =
            (self.inner.limits.max_storage_buffer_binding_size / row_bytes.max(1)) as usize;
        if per_shard == 0 || data.len() != rows * cols {
            // One row over the limit, or data of the wrong length: upload names what is wrong.
            return self
                .upload_f32(name, &[rows, cols], data)
                .map(|t| RowShards::new(vec![t], rows, rows, cols));
        }
        let shards = data
            .chunks(per_shard * cols)
            .map(|chunk| self.upload_f32(name, &[chunk.len() / cols, cols], chunk))
            .collect::<Result<_>>()?;
        Ok(RowShards::new(shards, per_shard, rows, cols))
    }

    pub fn upload_u32(&self, name: &str, shape: &[usize], data: &[u32]) -> Result<Tensor> {
        self.upload(name, shape, DType::U32, data)
    }

    /// Start recording a batch of GPU work, submitted once by [`Recorder::submit`].
    pub fn recorder(&self) -> Recorder {
        Recorder::new(self.clone())
    }

    /// Read tensors back (one submission, one staging buffer each).
    pub async fn read(&self, tensors: &[&Tensor]) -> Result<Vec<Vec<f32>>> {
        self.recorder().submit_and_read(tensors).await
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_blocking(&self, tensors: &[&Tensor]) -> Result<Vec<Vec<f32>>> {
        pollster::block_on(self.read(tensors))
    }

    /// Whether kernels with a subgroup variant use it on this device.
    pub fn uses_subgroups(&self) -> bool {
        self.inner.subgroups
    }

    /// Whether kernels with a 64-bit integer variant use it on this device.
    pub fn uses_int64(&self) -> bool {
        self.inner.int64
    }
}

impl WgpuDevice {
    pub(crate) fn pipeline(&self, kernel: &Kernel) -> wgpu::ComputePipeline {
        let key = (
            kernel.name,
            kernel.entry,
            kernel.subgroups,
            kernel.int64,
            kernel.flags,
        );
        let mut cache = lock(&self.pipelines);
        if let Some(p) = cache.get(&key) {
            return p.clone();
        }
        let device = &self.device;
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(kernel.name),
            source: wgpu::ShaderSource::Wgsl(kernel.wgsl().into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(kernel.entry),
            layout: None,
            module: &module,
            entry_point: Some(kernel.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &kernel
                    .flags
                    .map(|f| vec![("FLAGS", f as f64)])
                    .unwrap_or_default(),
                ..Default::default()
            },
            cache: None,
        });
        cache.insert(key, pipeline.clone());
        pipeline
    }

    pub(crate) fn uniform(&self, bytes: &[u8]) -> wgpu::Buffer {
        let mut cache = lock(&self.uniforms);
        if let Some(b) = cache.get(bytes) {
            return b.clone();
        }
        // Shapes are few in practice; a runaway cache (many distinct lengths) is simply reset.
        if cache.len() > 8192 {
            cache.clear();
        }
        let size = (bytes.len().max(16) as u64).next_multiple_of(16);
        let buffer = mapped_buffer(
            &self.device,
            "ssmgpu.params",
            size,
            wgpu::BufferUsages::UNIFORM,
            bytes,
        );
        cache.insert(bytes.to_vec(), buffer.clone());
        buffer
    }
}

/// A buffer of `size` bytes starting with `data`, written while mapped at creation.
fn mapped_buffer(
    device: &wgpu::Device,
    label: &str,
    size: u64,
    usage: wgpu::BufferUsages,
    data: &[u8],
) -> wgpu::Buffer {
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size,
        usage,
        mapped_at_creation: true,
    });
    buffer
        .slice(..)
        .get_mapped_range_mut()
        .expect("a buffer mapped at creation is mapped")
        .slice(..data.len())
        .copy_from_slice(data);
    buffer.unmap();
    buffer
}

async fn select_adapter(options: &ContextOptions) -> Result<wgpu::Adapter> {
    let explicit = options.backends.or_else(wgpu::Backends::from_env);
    // Without an explicit choice, the primary backends (Vulkan, Metal, DX12, browser WebGPU)
    // are tried before GL, which is slower for compute and probes the display on Linux.
    let attempts = match explicit {
        Some(b) => vec![b],
        None => vec![wgpu::Backends::PRIMARY, wgpu::Backends::SECONDARY],
    };
    let mut failures = Vec::new();
    for backends in attempts {
        match adapter_on(options, backends).await {
            Ok(adapter) => return Ok(adapter),
            Err(reason) => failures.push(reason),
        }
    }
    Err(Error::NoAdapter(format!(": {}", failures.join("; "))))
}

/// The adapter on `backends`, or why there is none.
async fn adapter_on(
    options: &ContextOptions,
    backends: wgpu::Backends,
) -> Result<wgpu::Adapter, String> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    let instance = wgpu::Instance::new(desc);
    let wanted_name = options
        .adapter_name
        .clone()
        .or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok())
        .filter(|s| !s.is_empty());
    match wanted_name {
        Some(name) => {
            let needle = name.to_lowercase();
            let adapters = instance.enumerate_adapters(backends).await;
            let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
            adapters
                .into_iter()
                .find(|a| a.get_info().name.to_lowercase().contains(&needle))
                .ok_or_else(|| {
                    format!("none whose name contains `{name}` on {backends:?} (found: {names:?})")
                })
        }
        None => instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::from_env()
                    .unwrap_or(wgpu::PowerPreference::HighPerformance),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("{backends:?}: {e}")),
    }
}

/// Every adapter the instance can see, for `ssmgpu info`.
pub async fn list_adapters() -> Vec<(wgpu::AdapterInfo, wgpu::Features, wgpu::Limits)> {
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    let instance = wgpu::Instance::new(desc);
    instance
        .enumerate_adapters(backends)
        .await
        .into_iter()
        .map(|a| (a.get_info(), a.features(), a.limits()))
        .collect()
}
