//! The host driver: the host's C++ compiler (`$CXX`, else g++) builds each kernel file against
//! `shaders/cuda/host.h` into a shared library, cached on disk by the hash of what it was built
//! from; "device" memory is host memory. Launches run to completion before they return.

use std::alloc::Layout;
use std::any::Any;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{Driver, GemmAt, Marker, Memory, ModuleKey, ModuleSource};
use crate::error::{Error, Result};
use crate::runtime::context::lock;

const HOST_H: &str = include_str!("../../../shaders/cuda/host.h");

/// Aligned like a CUDA allocation, so vector loads line up.
const ALIGN: usize = 256;

type LaunchFn = unsafe extern "C" fn(
    grid: *const u32,
    block: *const u32,
    params: *const std::ffi::c_void,
    buffers: *const u64,
) -> i32;

pub(super) struct Host {
    compiler: String,
    cache: PathBuf,
    libraries: Mutex<HashMap<ModuleKey, Arc<libloading::Library>>>,
}

struct HostMemory {
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: a plain heap block; kernels and copies write it only during calls into this driver,
// which the pool orders as it orders GPU work.
unsafe impl Send for HostMemory {}
unsafe impl Sync for HostMemory {}

impl Memory for HostMemory {
    fn address(&self) -> u64 {
        self.ptr as u64
    }
}

impl Drop for HostMemory {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout by `Host::alloc`.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

impl Host {
    pub fn new() -> Result<Self> {
        let compiler = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
        let runs = std::process::Command::new(&compiler)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !runs {
            return Err(Error::NoAdapter(format!(
                ": the cuda-host backend needs a C++ compiler (`{compiler}`; set CXX)"
            )));
        }
        let cache = std::env::temp_dir().join("ssmgpu-cuda-host");
        std::fs::create_dir_all(&cache).map_err(|e| Error::io(&cache, e))?;
        Ok(Host {
            compiler,
            cache,
            libraries: Mutex::default(),
        })
    }

    fn library(&self, module: &ModuleSource) -> Result<Arc<libloading::Library>> {
        let key = module.key();
        if let Some(lib) = lock(&self.libraries).get(&key) {
            return Ok(lib.clone());
        }
        let mut source = module.file.source.clone();
        // Sorted: the text (and so the cache's hash) must not depend on the map's order.
        let mut entries: Vec<&String> = module.file.blocks.keys().collect();
        entries.sort();
        for entry in entries {
            source.push_str(&format!("\nSSMGPU_HOST_ENTRY({entry})"));
        }
        source.push('\n');
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (&source, module.flags, HOST_H, &self.compiler).hash(&mut hasher);
        let stem = format!("{}-{:016x}", module.name, hasher.finish());
        let library = self.cache.join(format!("{stem}.so"));
        {
            // One compile at a time in this process (over every context): threads wanting the
            // same file wait for the first one's library instead of building it again.
            static COMPILING: Mutex<()> = Mutex::new(());
            let _compiling = lock(&COMPILING);
            if !library.exists() {
                self.compile(module, &stem, &source, &library)?;
            }
        }
        // SAFETY: a library built above from our kernels; loading runs no initialisers of
        // consequence.
        let lib = unsafe { libloading::Library::new(&library) }
            .map_err(|e| Error::Gpu(format!("loading {}: {e}", library.display())))?;
        let lib = Arc::new(lib);
        lock(&self.libraries).insert(key, lib.clone());
        Ok(lib)
    }

    fn compile(
        &self,
        module: &ModuleSource,
        stem: &str,
        source: &str,
        library: &std::path::Path,
    ) -> Result<()> {
        let write = |path: PathBuf, text: &str| {
            std::fs::write(&path, text)
                .map_err(|e| Error::io(&path, e))
                .map(|_| path)
        };
        let header = write(self.cache.join(format!("{stem}.h")), HOST_H)?;
        let cu = write(self.cache.join(format!("{stem}.cu")), source)?;
        // Built under a name of this process, then renamed: processes compiling the same
        // file at once never load a half-written library.
        let partial = self.cache.join(format!("{stem}.{}.so", std::process::id()));
        let out = std::process::Command::new(&self.compiler)
            .args([
                "-std=c++20",
                "-O2",
                "-shared",
                "-fPIC",
                "-Wl,-Bsymbolic",
                "-w",
                "-include",
            ])
            .arg(&header)
            .arg(format!("-DFLAGS={}u", module.flags.unwrap_or(0)))
            .args(["-x", "c++"])
            .arg(&cu)
            .arg("-o")
            .arg(&partial)
            .output()
            .map_err(|e| Error::io(&self.compiler, e))?;
        if !out.status.success() {
            return Err(Error::Gpu(format!(
                "compiling shaders/cuda/{}.cu for the host: {}",
                module.name,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        std::fs::rename(&partial, library).map_err(|e| Error::io(library, e))?;
        for path in [header, cu] {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }
}

impl Driver for Host {
    fn name(&self) -> String {
        format!("host CPU ({}-compiled CUDA kernels)", self.compiler)
    }

    fn max_buffer_bytes(&self) -> u64 {
        1 << 40
    }

    fn alloc(&self, bytes: u64) -> Result<Arc<dyn Memory>> {
        let layout = Layout::from_size_align(bytes.max(1) as usize, ALIGN)
            .map_err(|e| Error::Gpu(format!("allocating {bytes} bytes: {e}")))?;
        // SAFETY: a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(Error::Gpu(format!("out of host memory for {bytes} bytes")));
        }
        Ok(Arc::new(HostMemory { ptr, layout }))
    }

    fn write(&self, dst: u64, data: &[u8]) -> Result<()> {
        // SAFETY: `dst` is an allocation of at least data.len() bytes (the pool's size class).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst as *mut u8, data.len()) };
        Ok(())
    }

    fn read(&self, src: u64, out: &mut [u8]) -> Result<()> {
        // SAFETY: `src` holds at least out.len() bytes.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    fn copy(&self, src: u64, dst: u64, bytes: u64) -> Result<()> {
        // SAFETY: both hold at least `bytes`; distinct allocations.
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes as usize) };
        Ok(())
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
        let lib = self.library(module)?;
        let symbol = format!("ssmgpu_launch_{entry}");
        // SAFETY: SSMGPU_HOST_ENTRY defines every launch symbol with this signature.
        let launch = unsafe { lib.get::<LaunchFn>(symbol.as_bytes()) }
            .map_err(|e| Error::Gpu(format!("shaders/cuda/{}.cu: {symbol}: {e}", module.name)))?;
        let block = [block, 1, 1];
        // SAFETY: the kernel reads its params struct from `params` (the launcher's struct,
        // the same layout) and one pointer per buffer, in order.
        let rc = unsafe {
            launch(
                grid.as_ptr(),
                block.as_ptr(),
                params.as_ptr().cast(),
                buffers.as_ptr(),
            )
        };
        match rc {
            0 => Ok(()),
            _ => Err(Error::Gpu(format!(
                "{entry}: the host could not run blocks of {} threads",
                block[0]
            ))),
        }
    }

    fn gemm(&self, g: &GemmAt) -> Result<()> {
        let (x, w, y) = (g.x as *const f32, g.w as *const f32, g.y as *mut f32);
        for r in 0..g.m {
            for c in 0..g.n {
                let mut acc = 0f32;
                for i in 0..g.k {
                    // SAFETY: within the matrices the strides describe (checked by the op).
                    acc += unsafe { *x.add(r * g.x_stride + i) * *w.add(c * g.k + i) };
                }
                // SAFETY: as above.
                unsafe { *y.add(r * g.y_stride + c) = acc };
            }
        }
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn marker(&self) -> Result<Marker> {
        Ok(Box::new(Instant::now()))
    }

    fn elapsed_ms(&self, start: &(dyn Any + Send), end: &(dyn Any + Send)) -> Result<f64> {
        match (
            start.downcast_ref::<Instant>(),
            end.downcast_ref::<Instant>(),
        ) {
            (Some(a), Some(b)) => Ok(b.duration_since(*a).as_secs_f64() * 1e3),
            _ => Err(Error::Gpu("markers of another driver".into())),
        }
    }
}
