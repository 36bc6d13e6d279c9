//! A device buffer on either backend; what tensors hold and kernels bind.

use crate::error::Error;

/// Clones share the allocation.
#[derive(Clone, Debug, PartialEq)]
pub enum Buffer {
    Wgpu(wgpu::Buffer),
    #[cfg(feature = "cuda")]
    Cuda(crate::runtime::cuda::DeviceBuffer),
}

impl Buffer {
    /// The wgpu buffer, for a host engine's own commands; `None` on the CUDA backend.
    pub fn wgpu(&self) -> Option<&wgpu::Buffer> {
        match self {
            Buffer::Wgpu(b) => Some(b),
            #[cfg(feature = "cuda")]
            Buffer::Cuda(_) => None,
        }
    }
}

/// A tensor of another context's backend passed to this one.
pub(crate) fn foreign_tensor() -> Error {
    Error::InvalidInput("a tensor from a context on another backend".into())
}
