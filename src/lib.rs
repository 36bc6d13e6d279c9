//! ssmgpu: state space model inference on any GPU through WebGPU (wgpu).
//!
//! Layers: [`runtime`] (device, tensors, pipeline cache, buffer pool, recorder), [`ops`] (one
//! WGSL kernel each, with a CPU reference), [`models`] (models as plain code over ops) and
//! [`loader`] (safetensors checkpoints).

pub mod assets;
#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
pub mod error;
#[cfg(not(target_arch = "wasm32"))]
pub mod eval;
pub mod inspect;
pub mod lm_eval;
#[cfg(not(target_arch = "wasm32"))]
pub mod lm_study;
pub mod loader;
pub mod models;
pub mod ops;
#[cfg(not(target_arch = "wasm32"))]
pub mod plot;
pub mod preprocess;
pub mod prune;
pub mod runtime;
#[cfg(not(target_arch = "wasm32"))]
pub mod study;

pub use error::{Error, Result};
pub use runtime::{Backend, Context, ContextOptions, Recorder, Tensor};
