//! The runtime: device context, tensors on pooled buffers, and the recorder that batches a
//! forward pass into one submission.

mod buffer;
mod context;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod pool;
mod recorder;
mod tensor;

pub use buffer::Buffer;
pub use context::{list_adapters, Backend, Context, ContextOptions, Kernel};
pub use recorder::{grid, Recorder};
pub use tensor::{DType, MatView, RowShards, Tensor};
