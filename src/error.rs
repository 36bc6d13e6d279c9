//! One error type for the whole crate: every failure names what was wrong (file, tensor, limit).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("{path}: tensor `{name}` has dtype {dtype}, expected one of: {expected}")]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
        expected: &'static str,
    },
    #[error("{path}: cannot read the image: {message}")]
    Image { path: PathBuf, message: String },
    #[error("{path}: bad config: {message}")]
    Config { path: PathBuf, message: String },
    #[error("token id {id} at position {position} is outside the vocabulary (size {vocab})")]
    TokenOutOfRange {
        id: i64,
        position: usize,
        vocab: usize,
    },
    #[error("{what} holds non-finite values (NaN or infinity)")]
    NonFinite { what: String },
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error(
        "tensor `{name}` needs {bytes} bytes, over the device limit {limit_name} = {limit} bytes"
    )]
    TooLarge {
        name: String,
        bytes: u64,
        limit_name: &'static str,
        limit: u64,
    },
    #[error("no GPU adapter found{0}")]
    NoAdapter(String),
    #[error("could not create the GPU device: {0}")]
    RequestDevice(String),
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),
    #[error("GPU error: {0}")]
    Gpu(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// An error naming `what` (built only on failure) and the first NaN or infinite value, if any.
pub fn check_finite(what: impl FnOnce() -> String, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::NonFinite {
            what: format!("{} (element {i} is {})", what(), values[i]),
        }),
    }
}
