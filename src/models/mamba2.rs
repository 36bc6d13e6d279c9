//! The Mamba-2 causal language model (transformers `Mamba2ForCausalLM`, mamba_ssm
//! `MambaLMHeadModel` with `ssm_cfg.layer = "Mamba2"`). The backbone (embedding, pre-norm
//! residual blocks, final norm, head), `run` and `generate` are shared with Mamba-1
//! ([`crate::models::lm`]); only the mixer differs.

use std::path::Path;

use serde_json::Value;

use crate::error::Result;
use crate::models::lm::{Backbone, CausalLm, MambaCache, MixerOut};
use crate::models::ModelDir;
use crate::ops::conv1d::{conv1d_silu, CONV_WIDTH};
use crate::ops::gated_rmsnorm::gated_rmsnorm;
use crate::ops::matmul::matmul;
use crate::ops::ssd_scan::{pack_ssd_params, ssd_chunked, ssd_recurrent, SsdArgs};
use crate::ops::Carry;
use crate::runtime::{Context, Recorder, Tensor};

#[derive(Clone, Debug, PartialEq)]
pub struct Mamba2Config {
    /// D
    pub d_model: usize,
    pub n_layer: usize,
    /// Rows of the embedding (state-spaces' vocabulary is padded to a multiple).
    pub vocab_size: usize,
    /// E = H · P
    pub d_inner: usize,
    /// N
    pub d_state: usize,
    /// H
    pub n_heads: usize,
    /// P
    pub head_dim: usize,
    /// G: B and C are shared by the H / G heads of a group.
    pub n_groups: usize,
    /// Groups of the gated RMSNorm (E / norm_groups channels each).
    pub norm_groups: usize,
    /// Chunk length of the chunked scan (prefill).
    pub chunk_size: usize,
    pub eps: f32,
    /// dt is clamped to this range after softplus (`time_step_limit` / `dt_limit`).
    pub dt_limit: (f32, f32),
    /// Bias on in_proj and out_proj (`use_bias` / `ssm_cfg.bias`).
    pub proj_bias: bool,
    pub conv_bias: bool,
    pub tie_embeddings: bool,
    pub eos_token_id: Option<u32>,
}

impl Mamba2Config {
    /// Conv channels: x, B and C go through the conv together, `E + 2·G·N`.
    pub fn conv_dim(&self) -> usize {
        self.d_inner + 2 * self.n_groups * self.d_state
    }

    /// in_proj rows: `[z (E) | x (E) | B (G·N) | C (G·N) | dt (H)]`.
    pub fn in_proj_dim(&self) -> usize {
        self.d_inner + self.conv_dim() + self.n_heads
    }

    /// Reads transformers' keys (`hidden_size`, `num_heads`, `head_dim`, `n_groups`, ...) or
    /// state-spaces' (`d_model`, `ssm_cfg.headdim`, `ssm_cfg.ngroups`, ...).
    pub fn from_model_dir(dir: &ModelDir) -> Result<Self> {
        let mut cfg = if dir.config.get("hidden_size").is_some() {
            let d_model = dir.usize_field(&["hidden_size"], None)?;
            let d_inner = dir.usize_field(&["expand"], Some(2))? * d_model;
            let head_dim = dir.usize_field(&["head_dim"], Some(64))?;
            let n_groups = dir.usize_field(&["n_groups"], Some(1))?;
            if dir.usize_field(&["conv_kernel"], Some(CONV_WIDTH))? != CONV_WIDTH {
                return Err(
                    dir.config_error(format!("only conv_kernel = {CONV_WIDTH} is supported"))
                );
            }
            Mamba2Config {
                d_model,
                n_layer: dir.usize_field(&["num_hidden_layers"], None)?,
                vocab_size: dir.usize_field(&["vocab_size"], None)?,
                d_inner,
                d_state: dir.usize_field(&["state_size"], Some(128))?,
                n_heads: dir.usize_field(&["num_heads"], Some(d_inner / head_dim.max(1)))?,
                head_dim,
                n_groups,
                // transformers' MambaRMSNormGated normalises over groups of E / n_groups.
                norm_groups: n_groups,
                chunk_size: dir.usize_field(&["chunk_size"], Some(256))?,
                eps: dir.f64_field(&["layer_norm_epsilon"], 1e-5)? as f32,
                dt_limit: dt_limit(dir, "time_step_limit")?,
                proj_bias: dir.bool_field(&["use_bias"], false)?,
                conv_bias: dir.bool_field(&["use_conv_bias"], true)?,
                tie_embeddings: dir.bool_field(&["tie_word_embeddings"], true)?,
                eos_token_id: None, // below, checked against the vocabulary
            }
        } else {
            for (key, want) in [
                ("ssm_cfg.rmsnorm", true),
                ("ssm_cfg.norm_before_gate", false),
                ("ssm_cfg.D_has_hdim", false),
                ("rms_norm", true),
            ] {
                if dir.bool_field(&[key], want)? != want {
                    return Err(dir.config_error(format!("only {key} = {want} is supported")));
                }
            }
            if dir.usize_field(&["d_intermediate"], Some(0))? != 0 {
                return Err(dir.config_error("MLP blocks (d_intermediate > 0) are not supported"));
            }
            if dir.usize_field(&["ssm_cfg.d_conv"], Some(CONV_WIDTH))? != CONV_WIDTH {
                return Err(dir.config_error(format!("only d_conv = {CONV_WIDTH} is supported")));
            }
            let d_model = dir.usize_field(&["d_model"], None)?;
            let d_inner = dir.usize_field(&["ssm_cfg.expand"], Some(2))? * d_model;
            let head_dim = dir.usize_field(&["ssm_cfg.headdim"], Some(64))?;
            let n_groups = dir.usize_field(&["ssm_cfg.ngroups"], Some(1))?;
            let pad = dir
                .usize_field(&["pad_vocab_size_multiple"], Some(8))?
                .max(1);
            Mamba2Config {
                d_model,
                n_layer: dir.usize_field(&["n_layer"], None)?,
                vocab_size: dir
                    .usize_field(&["vocab_size"], None)?
                    .next_multiple_of(pad),
                d_inner,
                d_state: dir.usize_field(&["ssm_cfg.d_state"], Some(128))?,
                n_heads: d_inner / head_dim.max(1),
                head_dim,
                n_groups,
                // mamba_ssm's RMSNormGated: group_size = d_ssm / ngroups.
                norm_groups: n_groups,
                chunk_size: dir.usize_field(&["ssm_cfg.chunk_size"], Some(256))?,
                eps: dir.f64_field(&["norm_epsilon"], 1e-5)? as f32,
                dt_limit: dt_limit(dir, "ssm_cfg.dt_limit")?,
                proj_bias: dir.bool_field(&["ssm_cfg.bias"], false)?,
                conv_bias: dir.bool_field(&["ssm_cfg.conv_bias"], true)?,
                tie_embeddings: dir.bool_field(&["tie_embeddings"], true)?,
                eos_token_id: None, // below, checked against the vocabulary
            }
        };
        cfg.eos_token_id = dir.eos_token_id(cfg.vocab_size)?;
        let c = &cfg;
        if [
            c.d_model,
            c.n_layer,
            c.vocab_size,
            c.d_state,
            c.n_heads,
            c.head_dim,
            c.n_groups,
            c.chunk_size,
        ]
        .contains(&0)
        {
            return Err(dir.config_error("model sizes must be positive"));
        }
        if c.n_heads * c.head_dim != c.d_inner {
            return Err(dir.config_error(format!(
                "{} heads of {} channels do not make d_inner = expand * hidden size = {}",
                c.n_heads, c.head_dim, c.d_inner
            )));
        }
        if !c.n_heads.is_multiple_of(c.n_groups) {
            return Err(dir.config_error(format!(
                "{} heads do not split into {} groups",
                c.n_heads, c.n_groups
            )));
        }
        Ok(cfg)
    }
}

/// `[min, max]` of dt, default `[0, inf]`. Each bound is a number or, as transformers writes
/// non-finite floats, `{"__float__": "Infinity"}`.
fn dt_limit(dir: &ModelDir, key: &str) -> Result<(f32, f32)> {
    let (outer, inner) = key.split_once('.').unwrap_or((key, ""));
    let value = match dir.config.get(outer) {
        Some(v) if !inner.is_empty() => v.get(inner),
        v => v,
    };
    let bad = || dir.config_error(format!("`{key}` must be [min, max], got {value:?}"));
    let bound = |v: &Value| -> Option<f32> {
        match v {
            Value::Number(n) => n.as_f64().map(|v| v as f32),
            Value::Object(o) => match o.get("__float__")?.as_str()?.to_ascii_lowercase().as_str() {
                "infinity" | "inf" => Some(f32::INFINITY),
                "-infinity" | "-inf" => Some(f32::NEG_INFINITY),
                _ => None,
            },
            _ => None,
        }
    };
    match value {
        None | Some(Value::Null) => Ok((0.0, f32::INFINITY)),
        Some(Value::Array(v)) => match v.as_slice() {
            [lo, hi] => {
                let (lo, hi) = (bound(lo).ok_or_else(bad)?, bound(hi).ok_or_else(bad)?);
                if lo > hi {
                    return Err(bad());
                }
                Ok((lo, hi))
            }
            _ => Err(bad()),
        },
        Some(_) => Err(bad()),
    }
}

struct Mamba2Layer {
    in_proj: Tensor,              // [E + (E + 2GN) + H, D]
    in_proj_bias: Option<Tensor>, // [E + (E + 2GN) + H]
    conv_weight: Tensor,          // [E + 2GN, 4]
    conv_bias: Tensor,            // [E + 2GN]
    ssd: Tensor,                  // [A = -exp(A_log) | D | dt_bias], 3 x [H]
    norm: Tensor,                 // [E]
    out_proj: Tensor,             // [D, E]
    out_proj_bias: Option<Tensor>,
}

pub struct Mamba2Lm {
    pub config: Mamba2Config,
    backbone: Backbone,
    layers: Vec<Mamba2Layer>,
}

impl Mamba2Lm {
    pub fn load(ctx: &Context, dir: &Path) -> Result<Self> {
        let dir = ModelDir::open(dir)?;
        let config = Mamba2Config::from_model_dir(&dir)?;
        Self::from_model_dir(ctx, &dir, config)
    }

    pub fn from_model_dir(ctx: &Context, dir: &ModelDir, config: Mamba2Config) -> Result<Self> {
        let c = &config;
        let (d, e, h, conv, proj) = (
            c.d_model,
            c.d_inner,
            c.n_heads,
            c.conv_dim(),
            c.in_proj_dim(),
        );
        let backbone = Backbone::load(
            ctx,
            dir,
            c.n_layer,
            c.vocab_size,
            d,
            c.eps,
            c.tie_embeddings,
        )?;
        let w = &dir.weights;
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let m = format!("backbone.layers.{i}.mixer.");
            let key = |name: &str| format!("{m}{name}");
            let bias = |name: &str, len: usize, present: bool| -> Result<Option<Tensor>> {
                present
                    .then(|| dir.upload(ctx, &key(name), &[len]))
                    .transpose()
            };
            let a: Vec<f32> = w
                .f32_shaped(&key("A_log"), &[h])?
                .iter()
                .map(|v| -v.exp())
                .collect();
            let params = pack_ssd_params(
                &a,
                &w.f32_shaped(&key("D"), &[h])?,
                &w.f32_shaped(&key("dt_bias"), &[h])?,
            );
            let conv_w = w.f32_shaped(&key("conv1d.weight"), &[conv, 1, CONV_WIDTH])?;
            let conv_b = if c.conv_bias {
                w.f32_shaped(&key("conv1d.bias"), &[conv])?
            } else {
                vec![0.0; conv]
            };
            layers.push(Mamba2Layer {
                in_proj: dir.upload(ctx, &key("in_proj.weight"), &[proj, d])?,
                in_proj_bias: bias("in_proj.bias", proj, c.proj_bias)?,
                conv_weight: ctx.upload_f32(&key("conv1d.weight"), &[conv, CONV_WIDTH], &conv_w)?,
                conv_bias: ctx.upload_f32(&key("conv1d.bias"), &[conv], &conv_b)?,
                ssd: ctx.upload_f32(&key("A_log"), &[params.len()], &params)?,
                norm: dir.upload(ctx, &key("norm.weight"), &[e])?,
                out_proj: dir.upload(ctx, &key("out_proj.weight"), &[d, e])?,
                out_proj_bias: bias("out_proj.bias", d, c.proj_bias)?,
            });
        }
        Ok(Mamba2Lm {
            config,
            backbone,
            layers,
        })
    }
}

impl CausalLm for Mamba2Lm {
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    /// Conv windows `[batch, E + 2GN, 4]` and SSM states `[batch, H, P, N]` per layer.
    fn new_cache(&self, ctx: &Context, batch: usize) -> Result<MambaCache> {
        let c = &self.config;
        MambaCache::zeros(
            ctx,
            c.n_layer,
            &[batch, c.conv_dim(), CONV_WIDTH],
            &[batch, c.n_heads, c.head_dim, c.d_state],
        )
    }

    fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    /// One Mamba-2 mixer (transformers `Mamba2Mixer.torch_forward`), `u` `[B·L, D]` -> `[B·L, D]`,
    /// and with `want_y` the SSD output before the gated norm `[B·L, E]`.
    fn mixer(
        &self,
        rec: &mut Recorder,
        i: usize,
        u: &Tensor,
        batch: usize,
        (conv_carry, ssm_carry): (Carry, Carry),
        want_y: bool,
    ) -> Result<MixerOut> {
        let l = &self.layers[i];
        let c = &self.config;
        let (e, gn, h) = (c.d_inner, c.n_groups * c.d_state, c.n_heads);
        let len = u.numel() / c.d_model / batch;
        // [B·L, E + (E + 2GN) + H] = [z | x | B | C | dt]
        let zxbcdt = matmul(rec, "in_proj", u.mat(), &l.in_proj, l.in_proj_bias.as_ref())?;
        let z = zxbcdt.cols(0, e); // [B·L, E]
        let dt = zxbcdt.cols(e + c.conv_dim(), h); // [B·L, H]
                                                   // xBC = silu(causal_conv(x | B | C))   [B·L, E + 2GN]
        let xbc = conv1d_silu(
            rec,
            zxbcdt.cols(e, c.conv_dim()),
            batch,
            &l.conv_weight,
            &l.conv_bias,
            conv_carry,
            false,
            None,
        )?;
        let args = SsdArgs {
            x: xbc.cols(0, e),       // [B·L, H·P]
            b: xbc.cols(e, gn),      // [B·L, G·N]
            c: xbc.cols(e + gn, gn), // [B·L, G·N]
            dt,
            params: &l.ssd,
            heads: h,
            groups: c.n_groups,
            batch,
            chunk: c.chunk_size,
            dt_limit: c.dt_limit,
            state: ssm_carry,
        };
        // y[t] = S[t] C[t] + D x[t],  S[t] = exp(dt A) S[t-1] + dt x[t] B[t]^T   [B·L, E]
        let y = if len == 1 {
            ssd_recurrent(rec, args)?
        } else {
            ssd_chunked(rec, args)?
        };
        // rmsnorm_group(y * silu(z)) * norm.weight   [B·L, E]
        let g = gated_rmsnorm(rec, &y, z, &l.norm, c.norm_groups, c.eps)?;
        let hidden = matmul(
            rec,
            "out_proj",
            g.mat(),
            &l.out_proj,
            l.out_proj_bias.as_ref(),
        )?; // [B·L, D]
        Ok(MixerOut {
            hidden,
            ssm_y: want_y.then_some(y),
        })
    }
}
