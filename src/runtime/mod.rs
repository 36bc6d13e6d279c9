//! The runtime: device context, tensors on pooled buffers, and the recorder that batches a
//! forward pass into one submission.

mod context;
pub mod pool;
mod recorder;
mod tensor;

pub use context::{list_adapters, Context, ContextOptions, Kernel};
pub use recorder::{grid, Recorder};
pub use tensor::{DType, MatView, RowShards, Tensor};
