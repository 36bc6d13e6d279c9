//! The files shipped in `assets/`: found relative to the working directory, else to the
//! source tree the crate was built from, so `cargo run` and the examples work from anywhere in
//! the checkout.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The default vision model (the CLI's and the demo's).
pub const VIM_MNIST: &str = "assets/models/vim-mnist";
pub const PLAINMAMBA_MNIST: &str = "assets/models/plainmamba-mnist";
/// The MNIST test split (`test.safetensors`).
pub const MNIST_TEST: &str = "assets/data/mnist";
/// One PNG per digit.
pub const MNIST_SAMPLES: &str = "assets/samples/mnist";

/// A shipped file or folder.
pub fn path(relative: &str) -> PathBuf {
    let here = PathBuf::from(relative);
    if here.exists() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The sample digits, in name order (digit 0 first).
pub fn mnist_samples() -> Result<Vec<PathBuf>> {
    let dir = path(MNIST_SAMPLES);
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    found.sort();
    Ok(found)
}
