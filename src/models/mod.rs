//! Models as plain code over ops. A model folder holds `config.json` and `model.safetensors`.

pub mod lm;
pub mod mamba;
pub mod mamba2;
pub mod plainmamba;
pub mod vim;
pub mod vision;

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::loader::SafetensorsFile;
use crate::runtime::{Context, RowShards, Tensor};

/// Largest config.json read (configs are kilobytes; ImageNet's label list tens of them).
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Largest integer a config size may be: kernels index with u32, and a product of two such
/// sizes cannot wrap a u64 (a wrapped `expand * d_model` would fail as another tensor's shape).
pub const MAX_CONFIG_INT: u64 = u32::MAX as u64;

/// A model folder: its parsed `config.json` and its weights.
pub struct ModelDir {
    pub config_path: PathBuf,
    pub config: Value,
    pub weights: SafetensorsFile,
}

impl ModelDir {
    pub fn open(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        let bytes = crate::loader::read_regular_file(&config_path, MAX_CONFIG_BYTES)?;
        let text = String::from_utf8(bytes).map_err(|e| Error::Config {
            path: config_path.clone(),
            message: e.to_string(),
        })?;
        let config = parse_config(&config_path, &text)?;
        let weights = SafetensorsFile::open(dir.join("model.safetensors"))?;
        Ok(ModelDir {
            config_path,
            config,
            weights,
        })
    }

    /// A model folder's two files already in memory (fetched by a browser page); `label`
    /// stands for the folder in errors.
    pub fn from_bytes(label: &str, config_json: &str, weights: Vec<u8>) -> Result<Self> {
        let dir = Path::new(label);
        let config_path = dir.join("config.json");
        let config = parse_config(&config_path, config_json)?;
        let weights = SafetensorsFile::from_bytes(dir.join("model.safetensors"), weights)?;
        Ok(ModelDir {
            config_path,
            config,
            weights,
        })
    }

    pub fn config_error(&self, message: impl Into<String>) -> Error {
        Error::Config {
            path: self.config_path.clone(),
            message: message.into(),
        }
    }

    /// An integer config field (the first of `keys` present), or `default`.
    pub fn usize_field(&self, keys: &[&str], default: Option<usize>) -> Result<usize> {
        for key in keys {
            if let Some(v) = lookup(&self.config, key) {
                return self.int(key, v);
            }
        }
        default.ok_or_else(|| self.config_error(format!("missing `{}`", keys.join("` or `"))))
    }

    /// A float config field. Norm epsilons (keys ending in `eps` or `epsilon`) must be
    /// positive: a negative one turns the norms' output into NaN.
    pub fn f64_field(&self, keys: &[&str], default: f64) -> Result<f64> {
        for key in keys {
            if let Some(v) = lookup(&self.config, key) {
                let x = v.as_f64().ok_or_else(|| {
                    self.config_error(format!("`{key}` must be a number, got {v}"))
                })?;
                let is_eps = key.ends_with("eps") || key.ends_with("epsilon");
                // The smallest positive f32: what the kernels receive must not round to 0.
                // (JSON numbers are never NaN, so a plain comparison is complete.)
                if is_eps && x < f64::from(f32::from_bits(1)) {
                    return Err(self.config_error(format!(
                        "`{key}` is a norm epsilon and must be positive, got {v}"
                    )));
                }
                return Ok(x);
            }
        }
        Ok(default)
    }

    pub fn bool_field(&self, keys: &[&str], default: bool) -> Result<bool> {
        for key in keys {
            if let Some(v) = lookup(&self.config, key) {
                return v.as_bool().ok_or_else(|| {
                    self.config_error(format!("`{key}` must be true or false, got {v}"))
                });
            }
        }
        Ok(default)
    }

    /// mamba_ssm's `dt_rank`: an integer, or `"auto"` / absent / null for `ceil(d_model / 16)`.
    pub fn dt_rank_field(&self, key: &str, d_model: usize) -> Result<usize> {
        match lookup(&self.config, key) {
            Some(v) if v.as_str() != Some("auto") => self.usize_field(&[key], None),
            _ => Ok(d_model.div_ceil(16)),
        }
    }

    /// `eos_token_id`: one integer below `vocab`, or absent / null / a list (none: a list of
    /// stop ids is not supported, so generation runs to its token limit).
    pub fn eos_token_id(&self, vocab: usize) -> Result<Option<u32>> {
        match self.config.get("eos_token_id") {
            None | Some(Value::Null) | Some(Value::Array(_)) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(id) if id < vocab as u64 => Ok(Some(id as u32)),
                _ => Err(self.config_error(format!(
                    "`eos_token_id` must be a token id below the vocabulary size {vocab}, got {v}"
                ))),
            },
        }
    }

    /// `v`, the value of `key`, as a size in `0..=MAX_CONFIG_INT`.
    fn int(&self, key: &str, v: &Value) -> Result<usize> {
        v.as_u64()
            .filter(|&n| n <= MAX_CONFIG_INT)
            .map(|n| n as usize)
            .ok_or_else(|| {
                self.config_error(format!(
                    "`{key}` must be an integer in 0..={MAX_CONFIG_INT}, got {v}"
                ))
            })
    }

    /// An image size: an integer (square) or `[height, width]`, each side in
    /// `1..=preprocess::MAX_SIDE` (so that token counts and pixel counts cannot wrap).
    pub fn size_field(&self, key: &str, default: usize) -> Result<(usize, usize)> {
        let max = crate::preprocess::MAX_SIDE as u64;
        let bad = || {
            self.config_error(format!(
                "`{key}` must be an integer in 1..={max} or [height, width] of them"
            ))
        };
        let side = |v: &Value| {
            v.as_u64()
                .filter(|n| (1..=max).contains(n))
                .map(|n| n as usize)
                .ok_or_else(bad)
        };
        match lookup(&self.config, key) {
            None => Ok((default, default)),
            Some(Value::Array(v)) => match v.as_slice() {
                [h, w] => Ok((side(h)?, side(w)?)),
                _ => Err(bad()),
            },
            Some(v) => side(v).map(|n| (n, n)),
        }
    }

    /// Upload a float tensor after checking its shape.
    pub fn upload(&self, ctx: &Context, name: &str, shape: &[usize]) -> Result<Tensor> {
        let data = self.weights.f32_shaped(name, shape)?;
        ctx.upload_f32(name, shape, &data)
    }

    /// A `[rows, cols]` tensor as [`RowShards`] that each fit one binding (vocabulary tables).
    pub fn upload_rows(
        &self,
        ctx: &Context,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<RowShards> {
        let data = self.weights.f32_shaped(name, &[rows, cols])?;
        ctx.upload_row_shards(name, rows, cols, &data)
    }
}

/// config.json's text as a JSON object; `path` names it in errors.
fn parse_config(path: &Path, text: &str) -> Result<Value> {
    let bad = |message: String| Error::Config {
        path: path.to_path_buf(),
        message,
    };
    let config: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    if !config.is_object() {
        return Err(bad("expected a JSON object".into()));
    }
    Ok(config)
}

/// Named intermediates of a forward pass, recorded when asked for. Names follow the golden
/// outputs (`layers.{i}.hidden`, `final_norm_out`, ...); tensors are token-major `[B·L, ...]`.
pub type Trace = Vec<(String, Tensor)>;

/// Add `tensor` to the trace, when one is being recorded.
pub(crate) fn record(trace: &mut Option<&mut Trace>, name: &str, tensor: &Tensor) {
    if let Some(trace) = trace {
        trace.push((name.to_string(), tensor.clone()));
    }
}

/// `key` at the top level, or `a.b` one level down (state-spaces' `ssm_cfg.d_state`).
fn lookup<'a>(config: &'a Value, key: &str) -> Option<&'a Value> {
    match key.split_once('.') {
        Some((outer, inner)) => config.get(outer)?.get(inner),
        None => config.get(key),
    }
    .filter(|v| !v.is_null())
}
