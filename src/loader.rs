//! Safetensors files: checked once when opened (header, offsets, file length), then read by
//! name with shape checks. Every error names the file and the tensor. Files are read, not
//! mapped, and only when regular.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, Metadata, SafeTensors};

use crate::error::{check_finite, Error, Result};

/// Largest safetensors header read: the JSON of a checkpoint with tens of thousands of tensors
/// is a few MiB; a larger one is refused before it is read.
pub const MAX_HEADER_BYTES: u64 = 16 << 20;

pub struct SafetensorsFile {
    path: PathBuf,
    bytes: Vec<u8>,
    data_start: usize,
    metadata: Metadata,
}

impl SafetensorsFile {
    /// Read the file into memory (a map would turn a file truncated under the process, by a
    /// tool rewriting it in place, into SIGBUS; a read sees the bytes or an error), after
    /// checking that it is a regular file and that its header is under [`MAX_HEADER_BYTES`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let mut file = open_regular(&path)?;
        let mut len = [0u8; 8];
        if file.read_exact(&mut len).is_ok() && u64::from_le_bytes(len) > MAX_HEADER_BYTES {
            return Err(Error::Safetensors {
                path,
                message: format!(
                    "header of {} bytes, over the {MAX_HEADER_BYTES} bytes accepted",
                    u64::from_le_bytes(len)
                ),
            });
        }
        let mut bytes = Vec::new();
        file.rewind()
            .and_then(|()| file.read_to_end(&mut bytes))
            .map_err(|e| Error::io(&path, e))?;
        Self::from_bytes(path, bytes)
    }

    /// From bytes already in memory (fetched by a browser page, embedded in a binary).
    pub fn from_bytes(label: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        let path = label.into();
        let bad = |message: String| Error::Safetensors {
            path: path.clone(),
            message,
        };
        check_offsets(&bytes).map_err(bad)?;
        // `deserialize` checks the header against the file length; `read_metadata` keeps it.
        SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
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
        Ok((shape, values))
    }

    /// [`SafetensorsFile::f32`] for a model's inputs: NaN or infinite values are an error
    /// naming the tensor (one turns every output it reaches into NaN). Reference outputs may
    /// hold them, so the plain reader does not refuse them.
    pub fn f32_finite(
        &self,
        name: &str,
        expected: Option<&[usize]>,
    ) -> Result<(Vec<usize>, Vec<f32>)> {
        let (shape, values) = self.f32(name, expected)?;
        check_finite(
            || format!("{}: tensor `{name}`", self.path.display()),
            &values,
        )?;
        Ok((shape, values))
    }

    /// A float tensor of a model's weights: exactly this shape, finite values.
    pub fn f32_shaped(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        Ok(self.f32_finite(name, Some(expected))?.1)
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

/// The tensor whose data runs past the end of the file, named (the safetensors crate reports
/// the first offset gap it meets, often at another tensor, or no name at all). A header that
/// does not parse is left to the crate's own message.
fn check_offsets(bytes: &[u8]) -> std::result::Result<(), String> {
    let Some(len) = bytes.get(..8) else {
        return Ok(());
    };
    let header_len = u64::from_le_bytes(len.try_into().expect("8 bytes"));
    let Some(header) = usize::try_from(header_len)
        .ok()
        .and_then(|n| bytes.get(8..8usize.checked_add(n)?))
    else {
        return Ok(());
    };
    let Ok(serde_json::Value::Object(tensors)) = serde_json::from_slice(header) else {
        return Ok(());
    };
    let data = (bytes.len() - 8 - header.len()) as u64;
    let end = |v: &serde_json::Value| v.pointer("/data_offsets/1").and_then(|e| e.as_u64());
    let past = tensors
        .iter()
        .filter_map(|(name, v)| Some((name, end(v)?)))
        .filter(|&(_, e)| e > data)
        .min_by_key(|&(_, e)| e);
    match past {
        Some((name, e)) => Err(format!(
            "tensor `{name}` ends at data byte {e}, past the file's {data} data bytes (truncated?)"
        )),
        None => Ok(()),
    }
}

/// Open `path` for reading only when it is a regular file: a FIFO would block forever, a
/// device never end, a directory fail obscurely.
pub fn open_regular(path: &Path) -> Result<std::fs::File> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        let kind = if meta.is_dir() {
            "a directory"
        } else {
            "a FIFO, device or socket"
        };
        return Err(Error::io(
            path,
            std::io::Error::other(format!("not a regular file ({kind})")),
        ));
    }
    std::fs::File::open(path).map_err(|e| Error::io(path, e))
}

/// The bytes of a regular file of at most `max_bytes` (checked before reading).
pub fn read_regular_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    let mut file = open_regular(path)?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len > max_bytes {
        return Err(Error::io(
            path,
            std::io::Error::other(format!("{len} bytes, over the {max_bytes} accepted")),
        ));
    }
    let mut bytes = Vec::new();
    // `take`: a file grown since the check is still read only up to the cap.
    (&mut file)
        .take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > max_bytes {
        return Err(Error::io(
            path,
            std::io::Error::other(format!("over the {max_bytes} bytes accepted")),
        ));
    }
    Ok(bytes)
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
