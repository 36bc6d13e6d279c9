//! The NVIDIA driver: CUDA driver API, NVRTC and cuBLAS through cudarc, whose libraries are
//! loaded at run time (building needs no CUDA toolkit). Kernels compile once per process and
//! `FLAGS` value, for the device's own architecture.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublas::{sys as cublas_sys, CudaBlas};
use cudarc::driver::{
    result as cu, sys as cu_sys, CudaContext, CudaEvent, CudaFunction, CudaModule, CudaStream,
    DeviceRepr, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use super::{Driver, GemmAt, Marker, Memory, ModuleKey, ModuleSource};
use crate::error::{Error, Result};
use crate::runtime::context::lock;

pub fn driver_present() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { cu_sys::is_culib_present() }
}

/// Compile a kernel file's CUDA C (includes expanded) with NVRTC for `arch` (`sm_90`), with
/// `FLAGS` = `flags`. Needs the NVRTC library only, no GPU.
pub fn nvrtc_compile(name: &str, source: &str, flags: u32, arch: &str) -> Result<()> {
    compile(name, source, flags, arch).map(|_| ())
}

fn compile(name: &str, source: &str, flags: u32, arch: &str) -> Result<Ptx> {
    // SAFETY: only tries to open the library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(Error::Gpu(
            "NVRTC (libnvrtc.so) is not installed; e.g. `pip install nvidia-cuda-nvrtc-cu12` \
             and add its lib folder to LD_LIBRARY_PATH"
                .into(),
        ));
    }
    let opts = cudarc::nvrtc::CompileOptions {
        options: vec![
            format!("--gpu-architecture={arch}"),
            format!("-DFLAGS={flags}u"),
        ],
        name: Some(format!("{name}.cu")),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(source, opts)
        .map_err(|e| Error::Gpu(format!("NVRTC: shaders/cuda/{name}.cu for {arch}: {e:?}")))
}

fn gpu_error(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Gpu(format!("CUDA: {what}: {e:?}"))
}

/// A kernel's parameter struct, passed by value: the driver copies as many bytes as the
/// kernel's parameter takes, from the start of this block.
#[repr(C, align(16))]
struct ParamBlock([u8; 256]);

// SAFETY: plain bytes, passed by pointer to the driver, which copies the parameter's size.
unsafe impl DeviceRepr for ParamBlock {}

/// A loaded kernel. CUDA function handles may be used from any thread.
struct Function(CudaFunction);
// SAFETY: the driver API allows launching one function from several threads.
unsafe impl Send for Function {}
unsafe impl Sync for Function {}

pub(super) struct Nvidia {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    name: String,
    total_memory: u64,
    arch: String,
    modules: Mutex<HashMap<ModuleKey, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(ModuleKey, &'static str), Arc<Function>>>,
    blas: CudaBlas,
}

struct DeviceMemory {
    ptr: cu_sys::CUdeviceptr,
    stream: Arc<CudaStream>,
    /// Allocated with `cuMemAllocAsync` (else `cuMemAlloc`), freed the same way.
    stream_ordered: bool,
}

impl Memory for DeviceMemory {
    fn address(&self) -> u64 {
        self.ptr
    }
}

impl Drop for DeviceMemory {
    fn drop(&mut self) {
        // Freed after the launches that use it: in stream order, or (cuMemFree) once the
        // device is idle. An error here (a lost device) leaves nothing to free.
        if self.stream.context().bind_to_thread().is_ok() {
            // SAFETY: allocated as `stream_ordered` says; this is the last owner.
            let _ = unsafe {
                if self.stream_ordered {
                    cu::free_async(self.ptr, self.stream.cu_stream())
                } else {
                    cu::free_sync(self.ptr)
                }
            };
        }
    }
}

impl Nvidia {
    pub fn new(allow_tf32: bool) -> Result<Self> {
        if !driver_present() {
            return Err(Error::NoAdapter(
                ": the CUDA driver library (libcuda) is not installed".into(),
            ));
        }
        // SAFETY: only try to open the libraries.
        let (nvrtc, cublas) = unsafe {
            (
                cudarc::nvrtc::sys::is_culib_present(),
                cublas_sys::is_culib_present(),
            )
        };
        if !nvrtc || !cublas {
            return Err(Error::NoAdapter(format!(
                ": the CUDA backend needs NVRTC and cuBLAS (found: nvrtc {nvrtc}, cublas {cublas}); \
                 add their folders to LD_LIBRARY_PATH"
            )));
        }
        let count = CudaContext::device_count().map_err(|e| gpu_error("counting devices", e))?;
        if count < 1 {
            return Err(Error::NoAdapter(": no CUDA device".into()));
        }
        let ctx = CudaContext::new(0).map_err(|e| gpu_error("creating a context", e))?;
        let stream = ctx.default_stream();
        let name = ctx.name().map_err(|e| gpu_error("device name", e))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| gpu_error("compute capability", e))?;
        let total_memory = ctx.total_mem().map_err(|e| gpu_error("memory size", e))? as u64;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| gpu_error("cuBLAS", e))?;
        if allow_tf32 {
            // SAFETY: a valid handle; the mode only changes how f32 gemms compute.
            unsafe {
                cublas_sys::cublasSetMathMode(
                    *blas.handle(),
                    cublas_sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH,
                )
            }
            .result()
            .map_err(|e| gpu_error("enabling TF32", e))?;
        }
        Ok(Nvidia {
            ctx,
            stream,
            name,
            total_memory,
            arch: format!("sm_{major}{minor}"),
            modules: Mutex::default(),
            functions: Mutex::default(),
            blas,
        })
    }

    fn function(&self, module: &ModuleSource, entry: &'static str) -> Result<Arc<Function>> {
        let key = (module.key(), entry);
        if let Some(f) = lock(&self.functions).get(&key) {
            return Ok(f.clone());
        }
        let loaded = self.module(module)?;
        let f = loaded.load_function(entry).map_err(|e| {
            gpu_error(
                &format!("shaders/cuda/{}.cu: kernel {entry}", module.name),
                e,
            )
        })?;
        let f = Arc::new(Function(f));
        lock(&self.functions).insert(key, f.clone());
        Ok(f)
    }

    /// The file compiled by NVRTC for this device, once per `FLAGS` value.
    fn module(&self, module: &ModuleSource) -> Result<Arc<CudaModule>> {
        let key = module.key();
        if let Some(m) = lock(&self.modules).get(&key) {
            return Ok(m.clone());
        }
        let ptx = compile(
            module.name,
            &module.file.source,
            module.flags.unwrap_or(0),
            &self.arch,
        )?;
        let loaded = self
            .ctx
            .load_module(ptx)
            .map_err(|e| gpu_error(&format!("loading shaders/cuda/{}.cu", module.name), e))?;
        lock(&self.modules).insert(key, loaded.clone());
        Ok(loaded)
    }
}

impl Driver for Nvidia {
    fn name(&self) -> String {
        format!("{} (CUDA)", self.name)
    }

    fn max_buffer_bytes(&self) -> u64 {
        self.total_memory
    }

    fn alloc(&self, bytes: u64) -> Result<Arc<dyn Memory>> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| gpu_error("binding", e))?;
        let stream_ordered = self.ctx.has_async_alloc();
        // SAFETY: a plain allocation (on our stream where the device has memory pools).
        let ptr = unsafe {
            if stream_ordered {
                cu::malloc_async(self.stream.cu_stream(), bytes as usize)
            } else {
                cu::malloc_sync(bytes as usize)
            }
        }
        .map_err(|e| gpu_error(&format!("allocating {bytes} bytes"), e))?;
        Ok(Arc::new(DeviceMemory {
            ptr,
            stream: self.stream.clone(),
            stream_ordered,
        }))
    }

    fn write(&self, dst: u64, data: &[u8]) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| gpu_error("binding", e))?;
        // SAFETY: `dst` holds at least data.len() bytes (the pool's size class); a pageable
        // source is staged before the call returns.
        unsafe { cu::memcpy_htod_async(dst, data, self.stream.cu_stream()) }
            .map_err(|e| gpu_error("upload", e))
    }

    fn read(&self, src: u64, out: &mut [u8]) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| gpu_error("binding", e))?;
        // SAFETY: `src` holds at least out.len() bytes; the stream is synchronised before
        // `out` is used.
        unsafe { cu::memcpy_dtoh_async(out, src, self.stream.cu_stream()) }
            .map_err(|e| gpu_error("readback", e))?;
        self.synchronize()
    }

    fn copy(&self, src: u64, dst: u64, bytes: u64) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| gpu_error("binding", e))?;
        // SAFETY: both hold at least `bytes`.
        unsafe { cu::memcpy_dtod_async(dst, src, bytes as usize, self.stream.cu_stream()) }
            .map_err(|e| gpu_error("copy", e))
    }

    fn launch(
        &self,
        module: &ModuleSource,
        entry: &'static str,
        grid: [u32; 3],
        block: u32,
        params: &[u8],
        buffers: &[u64],
    ) -> Result<()> {
        let f = self.function(module, entry)?;
        let mut block_params = ParamBlock([0; 256]);
        block_params
            .0
            .get_mut(..params.len())
            .ok_or_else(|| Error::Gpu(format!("{entry}: parameters over 256 bytes")))?
            .copy_from_slice(params);
        let mut launch = self.stream.launch_builder(&f.0);
        launch.arg(&block_params);
        for b in buffers {
            launch.arg(b);
        }
        let cfg = LaunchConfig {
            grid_dim: (grid[0], grid[1], grid[2]),
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the kernel's parameters are the launcher's params struct and one pointer
        // per buffer, in order (shaders/cuda/README.md); every buffer is live device memory.
        unsafe { launch.launch(cfg) }
            .map(|_| ())
            .map_err(|e| gpu_error(&format!("launching {entry}"), e))
    }

    fn gemm(&self, g: &GemmAt) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| gpu_error("binding", e))?;
        // Row-major y = x · wᵀ is column-major yᵀ = w · xᵀ, with w read transposed.
        let (alpha, beta) = (1f32, 0f32);
        let dim = |v: usize| {
            i32::try_from(v).map_err(|_| Error::Gpu(format!("gemm dimension {v} over i32")))
        };
        // SAFETY: the addresses hold the matrices the strides describe (checked by the op).
        unsafe {
            cudarc::cublas::result::sgemm(
                *self.blas.handle(),
                cublas_sys::cublasOperation_t::CUBLAS_OP_T,
                cublas_sys::cublasOperation_t::CUBLAS_OP_N,
                dim(g.n)?,
                dim(g.m)?,
                dim(g.k)?,
                &alpha,
                g.w as *const f32,
                dim(g.k)?,
                g.x as *const f32,
                dim(g.x_stride)?,
                &beta,
                g.y as *mut f32,
                dim(g.y_stride)?,
            )
        }
        .map_err(|e| gpu_error("cuBLAS sgemm", e))
    }

    fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| gpu_error("waiting for the GPU", e))
    }

    fn marker(&self) -> Result<Marker> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| gpu_error("binding", e))?;
        let event = self
            .stream
            .record_event(Some(cu_sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| gpu_error("event", e))?;
        Ok(Box::new(event))
    }

    fn elapsed_ms(&self, start: &(dyn Any + Send), end: &(dyn Any + Send)) -> Result<f64> {
        match (
            start.downcast_ref::<CudaEvent>(),
            end.downcast_ref::<CudaEvent>(),
        ) {
            (Some(a), Some(b)) => a
                .elapsed_ms(b)
                .map(f64::from)
                .map_err(|e| gpu_error("event timing", e)),
            _ => Err(Error::Gpu("markers of another driver".into())),
        }
    }
}
