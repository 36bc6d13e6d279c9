//! Safetensors files: checked once when opened (header, offsets, file length), then read by
//! name with shape checks. Every error names the file and the tensor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, Metadata, SafeTensors};

use crate::error::{check_finite, Error, Result};

enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

pub struct SafetensorsFile {
    path: PathBuf,
    bytes: Bytes,
    data_start: usize,
    metadata: Metadata,
}

impl SafetensorsFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: the map is read-only and private to this struct; a file truncated under us
        // while mapped is the one case memory maps cannot defend against.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        Self::from_bytes_inner(path, Bytes::Mapped(map))
    }

    /// From bytes already in memory (fetched by a browser page, embedded in a binary).
    pub fn from_bytes(label: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        Self::from_bytes_inner(label.into(), Bytes::Owned(bytes))
    }

    fn from_bytes_inner(path: PathBuf, bytes: Bytes) -> Result<Self> {
        let bad = |e: safetensors::SafeTensorError| Error::Safetensors {
            path: path.clone(),
            message: e.to_string(),
        };
        // `deserialize` checks the header against the file length; `read_metadata` keeps it.
        SafeTensors::deserialize(&bytes).map_err(bad)?;
        let (header_len, metadata) = SafeTensors::read_metadata(&bytes).map_err(bad)?;
        Ok(SafetensorsFile {
            data_start: 8 + header_len,
            path,
            bytes,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.metadata.tensors().into_keys().collect();
        names.sort();
        names
    }

    pub fn contains(&self, name: &str) -> bool {
        self.metadata.info(name).is_some()
    }

    /// The file's `__metadata__` strings.
    pub fn metadata(&self) -> HashMap<String, String> {
        self.metadata.metadata().clone().unwrap_or_default()
    }

    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.info(name)?.shape.clone())
    }

    fn info(&self, name: &str) -> Result<&safetensors::tensor::TensorInfo> {
        self.metadata
            .info(name)
            .ok_or_else(|| Error::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
            })
    }

    fn raw(&self, name: &str) -> Result<(Dtype, Vec<usize>, &[u8])> {
        let info = self.info(name)?;
        let (start, end) = info.data_offsets;
        let data = &self.bytes[self.data_start + start..self.data_start + end];
        Ok((info.dtype, info.shape.clone(), data))
    }

    fn check_shape(&self, name: &str, got: &[usize], expected: &[usize]) -> Result<()> {
        if got != expected {
            return Err(Error::ShapeMismatch {
                path: self.path.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
                got: got.to_vec(),
            });
        }
        Ok(())
    }

    /// A float tensor (F32, F16 or BF16) as f32, with its shape checked when `expected` is given.
    pub fn f32(&self, name: &str, expected: Option<&[usize]>) -> Result<(Vec<usize>, Vec<f32>)> {
        let (dtype, shape, data) = self.raw(name)?;
        let values: Vec<f32> = match dtype {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::UnsupportedDtype {
                    path: self.path.clone(),
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                    expected: "F32, F16, BF16",
                })
            }
        };
        if let Some(expected) = expected {
            self.check_shape(name, &shape, expected)?;
        }
        // A NaN or infinite weight or pixel turns every output it reaches into NaN.
        check_finite(
            || format!("{}: tensor `{name}`", self.path.display()),
            &values,
        )?;
        Ok((shape, values))
    }

    /// A float tensor that must have exactly this shape.
    pub fn f32_shaped(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        Ok(self.f32(name, Some(expected))?.1)
    }

    /// An integer tensor (I64, I32 or U8) as i64.
    pub fn ints(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let (dtype, shape, data) = self.raw(name)?;
        let values = match dtype {
            Dtype::I64 => data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("chunk of 8")))
                .collect(),
            Dtype::I32 => data
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
            Dtype::U8 => data.iter().map(|&v| v as i64).collect(),
            other => {
                return Err(Error::UnsupportedDtype {
                    path: self.path.clone(),
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                    expected: "I64, I32, U8",
                })
            }
        };
        Ok((shape, values))
    }
}

/// f32 tensors (name, shape, values) as the bytes of a safetensors file.
pub fn serialize_f32(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<Vec<u8>> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, values)| {
            let view = safetensors::tensor::TensorView::new(
                Dtype::F32,
                shape.clone(),
                bytemuck::cast_slice(values),
            )
            .map_err(|e| Error::InvalidInput(format!("tensor `{name}`: {e}")))?;
            Ok((name.clone(), view))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, None).map_err(|e| Error::InvalidInput(e.to_string()))
}

/// Write f32 tensors (name, shape, values) to a safetensors file.
pub fn write_f32(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<()> {
    let bytes = serialize_f32(tensors)?;
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}
