//! The CUDA backend (cargo feature `cuda`): the same op launchers drive it through
//! [`crate::runtime::Recorder::dispatch`], which launches each kernel's CUDA C twin
//! (`shaders/cuda/<file>.cu`, same entry point, same grid) instead of its WGSL. Two drivers run
//! those kernels: an NVIDIA GPU (CUDA driver, NVRTC and cuBLAS, all loaded at run time), and
//! the host, whose C++ compiler builds them against `shaders/cuda/host.h` to run on the CPU,
//! so that machines without a GPU check them.

mod host;
mod nvidia;

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::runtime::buffer::Buffer;
use crate::runtime::context::{expand_includes, lock, Kernel};

pub use nvidia::nvrtc_compile;

/// Whether the CUDA driver library can be loaded (an NVIDIA driver is installed).
pub fn driver_present() -> bool {
    nvidia::driver_present()
}

/// A kernel file's CUDA C as the drivers compile it: `// #include` lines expanded.
pub fn expanded_source(source: &str) -> String {
    expand_includes(source, CUDA_INCLUDES, "shaders/cuda/include")
}

/// Device memory: an allocation's address, freed when the last clone goes.
#[derive(Clone)]
pub struct DeviceBuffer {
    memory: Arc<dyn Memory>,
}

pub(crate) trait Memory: Send + Sync {
    /// The device address (on the host driver, a host pointer).
    fn address(&self) -> u64;
}

impl DeviceBuffer {
    fn address(&self) -> u64 {
        self.memory.address()
    }
}

impl PartialEq for DeviceBuffer {
    fn eq(&self, other: &Self) -> bool {
        self.address() == other.address()
    }
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuffer({:#x})", self.address())
    }
}

/// A kernel file's CUDA C with its includes expanded, and its entries' block sizes; parsed once
/// per device.
pub(crate) struct KernelFile {
    pub source: String,
    pub blocks: HashMap<String, u32>,
}

/// One compiled unit: a kernel file for one `FLAGS` value.
pub(crate) struct ModuleSource<'a> {
    pub name: &'static str,
    pub flags: Option<u32>,
    pub file: &'a KernelFile,
}

/// What the drivers cache a compiled file by: its name and `FLAGS`.
pub(crate) type ModuleKey = (&'static str, Option<u32>);

/// A point in the launch order, for timing ([`Driver::elapsed_ms`]).
pub(crate) type Marker = Box<dyn Any + Send>;

impl ModuleSource<'_> {
    pub fn key(&self) -> ModuleKey {
        (self.name, self.flags)
    }
}

/// The matmul cuBLAS runs for the matmul op: `y[r, y_offset + c] = Σ_k x[r, k] · w[c, k]`
/// with `x` `[m, k]` from element `x_offset`, rows `x_stride` apart, `w` `[n, k]` dense from
/// element `w_offset`, and `y` rows `y_stride` apart.
pub(crate) struct Gemm<'a> {
    pub x: &'a Buffer,
    pub x_offset: usize,
    pub x_stride: usize,
    pub w: &'a Buffer,
    pub w_offset: usize,
    pub y: &'a Buffer,
    pub y_offset: usize,
    pub y_stride: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

/// The same gemm on device addresses (f32 elements already applied to them).
pub(crate) struct GemmAt {
    pub x: u64,
    pub x_stride: usize,
    pub w: u64,
    pub y: u64,
    pub y_stride: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

/// What runs the kernels: an NVIDIA GPU or the host.
pub(crate) trait Driver: Send + Sync {
    fn name(&self) -> String;
    fn max_buffer_bytes(&self) -> u64;
    fn alloc(&self, bytes: u64) -> Result<Arc<dyn Memory>>;
    /// Copy host bytes to `dst`, in order with the launches before it.
    fn write(&self, dst: u64, data: &[u8]) -> Result<()>;
    /// Wait for every launch so far, then copy `out.len()` bytes from `src`.
    fn read(&self, src: u64, out: &mut [u8]) -> Result<()>;
    fn copy(&self, src: u64, dst: u64, bytes: u64) -> Result<()>;
    /// Launch `entry` of `module` (compiled on first use) over `grid` blocks of `block`
    /// threads, with the parameter struct's bytes and the buffers' addresses.
    fn launch(
        &self,
        module: &ModuleSource,
        entry: &'static str,
        grid: [u32; 3],
        block: u32,
        params: &[u8],
        buffers: &[u64],
    ) -> Result<()>;
    fn gemm(&self, gemm: &GemmAt) -> Result<()>;
    /// Wait for every launch so far.
    fn synchronize(&self) -> Result<()>;
    fn marker(&self) -> Result<Marker>;
    fn elapsed_ms(&self, start: &(dyn Any + Send), end: &(dyn Any + Send)) -> Result<f64>;
}

pub struct CudaDevice {
    driver: Box<dyn Driver>,
    host: bool,
    sources: Mutex<HashMap<&'static str, Arc<KernelFile>>>,
}

/// The CUDA C snippets kernels pull in with `// #include <name>`.
const CUDA_INCLUDES: &[(&str, &str)] = &[
    (
        "activation",
        include_str!("../../../shaders/cuda/include/activation.cuh"),
    ),
    (
        "ssm_inputs",
        include_str!("../../../shaders/cuda/include/ssm_inputs.cuh"),
    ),
    (
        "chunked_scan",
        include_str!("../../../shaders/cuda/include/chunked_scan.cuh"),
    ),
    (
        "row_score",
        include_str!("../../../shaders/cuda/include/row_score.cuh"),
    ),
];

/// `__global__ void [__launch_bounds__(N)] name(` of `source`, in order.
pub fn entry_points(source: &str) -> Vec<(String, Option<u32>)> {
    source
        .split("__global__")
        .skip(1)
        .filter_map(|rest| {
            let rest = rest.trim_start().strip_prefix("void")?.trim_start();
            let (block, rest) = match rest.strip_prefix("__launch_bounds__(") {
                Some(r) => {
                    let (n, r) = r.split_once(')')?;
                    (n.trim().parse().ok(), r.trim_start())
                }
                None => (None, rest),
            };
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty()).then_some((name, block))
        })
        .collect()
}

impl CudaDevice {
    /// The first NVIDIA GPU; `allow_tf32` lets cuBLAS use TF32 tensor cores.
    pub fn nvidia(allow_tf32: bool) -> Result<Self> {
        Ok(CudaDevice {
            driver: Box::new(nvidia::Nvidia::new(allow_tf32)?),
            host: false,
            sources: Mutex::default(),
        })
    }

    /// The host's C++ compiler and CPU threads.
    pub fn host() -> Result<Self> {
        Ok(CudaDevice {
            driver: Box::new(host::Host::new()?),
            host: true,
            sources: Mutex::default(),
        })
    }

    pub fn is_host(&self) -> bool {
        self.host
    }

    pub fn name(&self) -> String {
        self.driver.name()
    }

    pub fn max_buffer_bytes(&self) -> u64 {
        self.driver.max_buffer_bytes()
    }

    pub fn alloc(&self, bytes: u64) -> Result<DeviceBuffer> {
        Ok(DeviceBuffer {
            memory: self.driver.alloc(bytes)?,
        })
    }

    pub fn write(&self, dst: &DeviceBuffer, data: &[u8]) -> Result<()> {
        self.driver.write(dst.address(), data)
    }

    /// The first `numel` f32 (or bit-cast u32) values of `src`, after every launch so far.
    pub fn read_f32(&self, src: &DeviceBuffer, numel: usize) -> Result<Vec<f32>> {
        let mut out = vec![0f32; numel];
        self.driver
            .read(src.address(), bytemuck::cast_slice_mut(&mut out))?;
        Ok(out)
    }

    fn source(&self, kernel: &Kernel) -> Arc<KernelFile> {
        lock(&self.sources)
            .entry(kernel.name)
            .or_insert_with(|| {
                let source = expanded_source(kernel.cuda);
                let blocks = entry_points(&source)
                    .into_iter()
                    .filter_map(|(name, block)| Some((name, block?)))
                    .collect();
                Arc::new(KernelFile { source, blocks })
            })
            .clone()
    }

    fn launch(
        &self,
        kernel: &Kernel,
        params: &[u8],
        buffers: &[&Buffer],
        groups: [u32; 3],
    ) -> Result<()> {
        let file = self.source(kernel);
        let block = *file.blocks.get(kernel.entry).ok_or_else(|| {
            Error::Gpu(format!(
                "shaders/cuda/{}.cu has no `__global__ void __launch_bounds__(N) {}`",
                kernel.name, kernel.entry
            ))
        })?;
        let addresses = buffers
            .iter()
            .map(|b| address(b, 0))
            .collect::<Result<Vec<_>>>()?;
        let module = ModuleSource {
            name: kernel.name,
            flags: kernel.flags,
            file: &file,
        };
        self.driver
            .launch(&module, kernel.entry, groups, block, params, &addresses)
    }
}

/// The device address of f32 element `offset` of `buffer`.
fn address(buffer: &Buffer, offset: usize) -> Result<u64> {
    match buffer {
        Buffer::Cuda(b) => Ok(b.address() + 4 * offset as u64),
        Buffer::Wgpu(_) => Err(crate::runtime::buffer::foreign_tensor()),
    }
}

/// A recorder's launches on the CUDA backend: they run as they are recorded; the first error
/// is kept for submit, as wgpu reports validation errors there.
#[derive(Default)]
pub(crate) struct Launches {
    error: Option<Error>,
    /// When profiling: each launch's kernel file and markers around it.
    timed: Option<Vec<(&'static str, [Marker; 2])>>,
}

impl Launches {
    pub fn profile(&mut self) {
        self.timed = Some(Vec::new());
    }

    fn run(&mut self, device: &CudaDevice, name: &'static str, f: impl FnOnce() -> Result<()>) {
        if self.error.is_some() {
            return;
        }
        let result = match &mut self.timed {
            Some(timed) => device.driver.marker().and_then(|start| {
                f()?;
                timed.push((name, [start, device.driver.marker()?]));
                Ok(())
            }),
            None => f(),
        };
        if let Err(e) = result {
            self.error = Some(e);
        }
    }

    pub fn launch(
        &mut self,
        device: &CudaDevice,
        kernel: &Kernel,
        params: &[u8],
        buffers: &[&Buffer],
        groups: [u32; 3],
    ) {
        self.run(device, kernel.name, || {
            device.launch(kernel, params, buffers, groups)
        });
    }

    pub fn gemm(&mut self, device: &CudaDevice, g: Gemm) {
        self.run(device, "matmul", || {
            let at = GemmAt {
                x: address(g.x, g.x_offset)?,
                x_stride: g.x_stride,
                w: address(g.w, g.w_offset)?,
                y: address(g.y, g.y_offset)?,
                y_stride: g.y_stride,
                m: g.m,
                n: g.n,
                k: g.k,
            };
            device.driver.gemm(&at)
        });
    }

    pub fn copy(
        &mut self,
        device: &CudaDevice,
        src: &DeviceBuffer,
        dst: &DeviceBuffer,
        bytes: u64,
    ) {
        self.run(device, "copy", || {
            device.driver.copy(src.address(), dst.address(), bytes)
        });
    }

    /// Wait for every launch; the first error any of them raised.
    pub fn finish(self, device: &CudaDevice) -> Result<()> {
        if let Some(e) = self.error {
            return Err(e);
        }
        device.driver.synchronize()
    }

    /// [`Launches::finish`], then each timed launch's milliseconds; `None` when not profiled.
    pub fn finish_profiled(
        mut self,
        device: &CudaDevice,
    ) -> Result<Option<Vec<(&'static str, f64)>>> {
        let timed = self.timed.take();
        self.finish(device)?;
        timed
            .map(|t| {
                t.iter()
                    .map(|(name, [a, b])| Ok((*name, device.driver.elapsed_ms(&**a, &**b)?)))
                    .collect()
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::entry_points;

    #[test]
    fn entry_points_with_block_sizes() {
        let src = "struct P { unsigned n; };\n\
            extern \"C\" __global__ void __launch_bounds__(64) first(const P p, float* x) {}\n\
            extern \"C\" __global__ void second(const P p) {}\n";
        assert_eq!(
            entry_points(src),
            [
                ("first".to_string(), Some(64)),
                ("second".to_string(), None)
            ]
        );
    }
}
