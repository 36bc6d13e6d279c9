//! The Mamba-1 causal language model (mamba_ssm `MambaLMHeadModel` / transformers
//! `MambaForCausalLM`), loaded from either checkpoint layout.

use std::path::Path;

use crate::error::Result;
use crate::models::lm::{Backbone, CausalLm, MixerOut};
pub use crate::models::lm::{ForwardOutput, Logits, MambaCache};
use crate::models::ModelDir;
use crate::ops::conv1d::{conv1d_silu, conv1d_silu_both, CONV_WIDTH};
use crate::ops::matmul::{matmul, matmul_grouped};
use crate::ops::scan::{pack_ssm_params, selective_scan, Delta, ScanArgs, Ungated, MAX_STATE};
use crate::ops::Carry;
use crate::runtime::{Context, MatView, Recorder, Tensor};

#[derive(Clone, Debug, PartialEq)]
pub struct MambaConfig {
    pub d_model: usize,
    pub n_layer: usize,
    /// Rows of the embedding (state-spaces' vocabulary is padded to a multiple).
    pub vocab_size: usize,
    pub d_inner: usize,
    pub d_state: usize,
    pub dt_rank: usize,
    pub eps: f32,
    /// Bias on in_proj and out_proj (`use_bias` / `ssm_cfg.bias`).
    pub proj_bias: bool,
    pub conv_bias: bool,
    pub tie_embeddings: bool,
    pub eos_token_id: Option<u32>,
}

impl MambaConfig {
    /// Reads transformers' keys (`hidden_size`, ...) or state-spaces' (`d_model`, `ssm_cfg`, ...).
    pub fn from_model_dir(dir: &ModelDir) -> Result<Self> {
        let hf = dir.config.get("hidden_size").is_some();
        let mut cfg = if hf {
            let d_model = dir.usize_field(&["hidden_size"], None)?;
            let expand = dir.usize_field(&["expand"], Some(2))?;
            MambaConfig {
                d_model,
                n_layer: dir.usize_field(&["num_hidden_layers"], None)?,
                vocab_size: dir.usize_field(&["vocab_size"], None)?,
                d_inner: dir.usize_field(&["intermediate_size"], Some(expand * d_model))?,
                d_state: dir.usize_field(&["state_size"], Some(16))?,
                dt_rank: dir.dt_rank_field("time_step_rank", d_model)?,
                eps: dir.f64_field(&["layer_norm_epsilon"], 1e-5)? as f32,
                proj_bias: dir.bool_field(&["use_bias"], false)?,
                conv_bias: dir.bool_field(&["use_conv_bias"], true)?,
                tie_embeddings: dir.bool_field(&["tie_word_embeddings"], true)?,
                eos_token_id: None, // below, checked against the vocabulary
            }
        } else {
            if let Some(layer) = dir
                .config
                .pointer("/ssm_cfg/layer")
                .and_then(|v| v.as_str())
            {
                if layer != "Mamba1" {
                    return Err(dir.config_error(format!("ssm_cfg.layer `{layer}` is not Mamba-1")));
                }
            }
            if !dir.bool_field(&["rms_norm"], true)? {
                return Err(dir.config_error("only rms_norm = true is supported"));
            }
            let d_model = dir.usize_field(&["d_model"], None)?;
            let vocab = dir.usize_field(&["vocab_size"], None)?;
            let pad = dir
                .usize_field(&["pad_vocab_size_multiple"], Some(8))?
                .max(1);
            let expand = dir.usize_field(&["ssm_cfg.expand"], Some(2))?;
            if dir.usize_field(&["ssm_cfg.d_conv"], Some(CONV_WIDTH))? != CONV_WIDTH {
                return Err(dir.config_error(format!("only d_conv = {CONV_WIDTH} is supported")));
            }
            MambaConfig {
                d_model,
                n_layer: dir.usize_field(&["n_layer"], None)?,
                vocab_size: vocab.next_multiple_of(pad),
                d_inner: expand * d_model,
                d_state: dir.usize_field(&["ssm_cfg.d_state"], Some(16))?,
                dt_rank: dir.dt_rank_field("ssm_cfg.dt_rank", d_model)?,
                eps: dir.f64_field(&["norm_epsilon"], 1e-5)? as f32,
                proj_bias: dir.bool_field(&["ssm_cfg.bias"], false)?,
                conv_bias: dir.bool_field(&["ssm_cfg.conv_bias"], true)?,
                tie_embeddings: dir.bool_field(&["tie_embeddings"], true)?,
                eos_token_id: None, // below, checked against the vocabulary
            }
        };
        cfg.eos_token_id = dir.eos_token_id(cfg.vocab_size)?;
        if hf && dir.usize_field(&["conv_kernel"], Some(CONV_WIDTH))? != CONV_WIDTH {
            return Err(dir.config_error(format!("only conv_kernel = {CONV_WIDTH} is supported")));
        }
        if cfg.d_state == 0 || cfg.d_state > MAX_STATE {
            return Err(dir.config_error(format!(
                "state size {} is not supported (1..={MAX_STATE})",
                cfg.d_state
            )));
        }
        if [
            cfg.d_model,
            cfg.n_layer,
            cfg.vocab_size,
            cfg.d_inner,
            cfg.dt_rank,
        ]
        .contains(&0)
        {
            return Err(dir.config_error("model sizes must be positive"));
        }
        Ok(cfg)
    }
}

struct MambaLayer {
    in_proj: Tensor,
    in_proj_bias: Option<Tensor>,
    ssm: SsmBranch,
    out_proj: Tensor,
    out_proj_bias: Option<Tensor>,
}

/// Sizes of one selective-SSM branch: E (d_inner), N (d_state), R (dt_rank).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SsmDims {
    pub d_inner: usize,
    pub d_state: usize,
    pub dt_rank: usize,
}

/// The selective-SSM part of a Mamba mixer: conv1d -> x_proj -> dt_proj -> selective scan,
/// gated by z, in one direction (Mamba) or two (Vim's bidirectional mixer, whose backward
/// direction has the `_b` parameters: `conv1d_b`, `x_proj_b`, `dt_proj_b`, `A_b_log`, `D_b`).
pub(crate) struct SsmBranch {
    dims: SsmDims,
    /// `[directions, E, 4]` and `[directions, E]`, and x_proj `[directions, R + 2N, E]`: the
    /// directions' convs run as one dispatch, and so do their x_projs.
    conv_weight: Tensor,
    conv_bias: Tensor,
    x_proj: Tensor,
    directions: Vec<Direction>,
}

/// One direction's dt projection and scan parameters.
struct Direction {
    dt_proj: Tensor,
    /// `[A = -exp(A_log) | D | dt_proj.bias]`, the scan's per-channel parameters.
    ssm: Tensor,
}

/// How [`SsmBranch::forward`] runs.
#[derive(Clone, Copy)]
pub(crate) struct BranchOptions<'a> {
    /// Conv window and SSM state carried across calls (one direction only).
    pub carry: (Carry<'a>, Carry<'a>),
    /// Also store the ungated scan output (for pruning scores), summed over the directions.
    pub ungated: Option<Ungated<'a>>,
    /// Original token positions, for the scan's decay over pruned positions.
    pub gap_positions: Option<&'a Tensor>,
}

impl Default for BranchOptions<'_> {
    fn default() -> Self {
        BranchOptions {
            carry: (Carry::None, Carry::None),
            ungated: None,
            gap_positions: None,
        }
    }
}

/// What a branch computed; `conv` (`[directions · B·L, E]`) is kept for tracing.
pub(crate) struct BranchOutput {
    pub conv: Tensor,
    pub y: Tensor,
}

impl SsmBranch {
    /// `mixer` is the key prefix (`...mixer.`); one direction per suffix ("" forward, "_b"
    /// backward).
    pub(crate) fn load(
        ctx: &Context,
        dir: &ModelDir,
        mixer: &str,
        suffixes: &[&str],
        dims: SsmDims,
        conv_bias: bool,
    ) -> Result<Self> {
        let SsmDims {
            d_inner: e,
            d_state: n,
            dt_rank: r,
        } = dims;
        let w = &dir.weights;
        let key = |name: &str| format!("{mixer}{name}");
        let (mut conv_w, mut conv_b, mut x_proj) = (Vec::new(), Vec::new(), Vec::new());
        let mut directions = Vec::with_capacity(suffixes.len());
        for suffix in suffixes {
            let a: Vec<f32> = w
                .f32_shaped(&key(&format!("A{suffix}_log")), &[e, n])?
                .iter()
                .map(|v| -v.exp())
                .collect();
            let d_skip = w.f32_shaped(&key(&format!("D{suffix}")), &[e])?;
            let dt_bias = w.f32_shaped(&key(&format!("dt_proj{suffix}.bias")), &[e])?;
            conv_w.extend(
                w.f32_shaped(&key(&format!("conv1d{suffix}.weight")), &[e, 1, CONV_WIDTH])?,
            );
            if conv_bias {
                conv_b.extend(w.f32_shaped(&key(&format!("conv1d{suffix}.bias")), &[e])?);
            } else {
                conv_b.extend(std::iter::repeat_n(0.0, e));
            }
            x_proj.extend(w.f32_shaped(&key(&format!("x_proj{suffix}.weight")), &[r + 2 * n, e])?);
            directions.push(Direction {
                dt_proj: dir.upload(ctx, &key(&format!("dt_proj{suffix}.weight")), &[e, r])?,
                ssm: ctx.upload_f32(
                    &key(&format!("A{suffix}_log")),
                    &[a.len() + 2 * e],
                    &pack_ssm_params(&a, Some(&d_skip), Some(&dt_bias), e),
                )?,
            });
        }
        let k = suffixes.len();
        Ok(SsmBranch {
            dims,
            conv_weight: ctx.upload_f32(&key("conv1d.weight"), &[k, e, CONV_WIDTH], &conv_w)?,
            conv_bias: ctx.upload_f32(&key("conv1d.bias"), &[k, e], &conv_b)?,
            x_proj: ctx.upload_f32(&key("x_proj.weight"), &[k, r + 2 * n, e], &x_proj)?,
            directions,
        })
    }

    /// `x`, `z` `[B·L, E]` -> `y = Σ_directions (scan(u) + D·u) · silu(z)` `[B·L, E]`,
    /// `u = silu(conv(x))`, the second direction walking the tokens back to front.
    pub(crate) fn forward(
        &self,
        rec: &mut Recorder,
        x: MatView,
        z: MatView,
        batch: usize,
        options: BranchOptions,
    ) -> Result<BranchOutput> {
        let BranchOptions {
            carry: (conv_carry, ssm_carry),
            ungated,
            gap_positions,
        } = options;
        let SsmDims {
            d_inner: e,
            d_state: n,
            dt_rank: r,
        } = self.dims;
        let (w, b) = (&self.conv_weight, &self.conv_bias);
        let u = match self.directions.len() {
            1 => conv1d_silu(rec, x, batch, w, b, conv_carry, false, gap_positions)?,
            _ => conv1d_silu_both(rec, x, batch, w, b, gap_positions)?,
        }; // [directions · B·L, E]
        let q = matmul_grouped(rec, "x_proj", u.mat(), &self.x_proj, self.directions.len())?; // [directions · B·L, R + 2N] = [dt | B | C]
        let mut y: Option<Tensor> = None;
        for (i, d) in self.directions.iter().enumerate() {
            // Direction i's rows of u and columns of q.
            let u_dir = MatView {
                offset: i * x.rows * e,
                rows: x.rows,
                ..u.mat()
            }; // [B·L, E]
            let q_cols = |first: usize, cols: usize| MatView {
                offset: i * x.rows * (r + 2 * n) + first,
                rows: x.rows,
                ..q.cols(first, cols)
            };
            let out = selective_scan(
                rec,
                ScanArgs {
                    u: u_dir,
                    // dt_proj (its bias in the scan): [B·L, R] · [E, R]ᵀ
                    delta: Delta::Projected {
                        q: q_cols(0, r),
                        weight: &d.dt_proj,
                    },
                    b: q_cols(r, n),
                    c: q_cols(r + n, n),
                    params: &d.ssm,
                    z: Some(z),
                    batch,
                    softplus: true,
                    reverse: i == 1,
                    state: ssm_carry,
                    // The later directions add onto the first's output and scores.
                    accumulate: y.as_ref(),
                    ungated: ungated.map(|u| Ungated { add: i > 0, ..u }),
                    gap_positions,
                },
            )?; // [B·L, E]
            y.get_or_insert(out);
        }
        Ok(BranchOutput {
            conv: u,
            y: y.ok_or_else(|| crate::Error::Gpu("an SSM branch without directions".into()))?,
        })
    }
}

pub struct MambaLm {
    pub config: MambaConfig,
    backbone: Backbone,
    layers: Vec<MambaLayer>,
}

impl MambaLm {
    pub fn load(ctx: &Context, dir: &Path) -> Result<Self> {
        let dir = ModelDir::open(dir)?;
        let config = MambaConfig::from_model_dir(&dir)?;
        Self::from_model_dir(ctx, &dir, config)
    }

    pub fn from_model_dir(ctx: &Context, dir: &ModelDir, config: MambaConfig) -> Result<Self> {
        let c = &config;
        let (d, e, n, r) = (c.d_model, c.d_inner, c.d_state, c.dt_rank);
        let backbone = Backbone::load(
            ctx,
            dir,
            c.n_layer,
            c.vocab_size,
            d,
            c.eps,
            c.tie_embeddings,
        )?;
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let m = format!("backbone.layers.{i}.mixer.");
            let bias = |name: &str, len: usize, present: bool| -> Result<Option<Tensor>> {
                present
                    .then(|| dir.upload(ctx, &format!("{m}{name}"), &[len]))
                    .transpose()
            };
            let dims = SsmDims {
                d_inner: e,
                d_state: n,
                dt_rank: r,
            };
            layers.push(MambaLayer {
                in_proj: dir.upload(ctx, &format!("{m}in_proj.weight"), &[2 * e, d])?,
                in_proj_bias: bias("in_proj.bias", 2 * e, c.proj_bias)?,
                ssm: SsmBranch::load(ctx, dir, &m, &[""], dims, c.conv_bias)?,
                out_proj: dir.upload(ctx, &format!("{m}out_proj.weight"), &[d, e])?,
                out_proj_bias: bias("out_proj.bias", d, c.proj_bias)?,
            });
        }
        Ok(MambaLm {
            config,
            backbone,
            layers,
        })
    }
}

impl CausalLm for MambaLm {
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn new_cache(&self, ctx: &Context, batch: usize) -> Result<MambaCache> {
        let (e, n) = (self.config.d_inner, self.config.d_state);
        MambaCache::zeros(
            ctx,
            self.config.n_layer,
            &[batch, e, CONV_WIDTH],
            &[batch, e, n],
        )
    }

    fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    /// One Mamba block's mixer (mamba_ssm `Mamba.forward`), `x` `[B·L, D]` -> `[B·L, D]`, and
    /// with `want_y` the scan output before the gate `[B·L, E]`.
    fn mixer(
        &self,
        rec: &mut Recorder,
        i: usize,
        x: &Tensor,
        batch: usize,
        carry: (Carry, Carry),
        want_y: bool,
    ) -> Result<MixerOut> {
        let l = &self.layers[i];
        let e = self.config.d_inner;
        let xz = matmul(rec, "in_proj", x.mat(), &l.in_proj, l.in_proj_bias.as_ref())?; // [B·L, 2E] = [x | z]
        let ssm_y = want_y
            .then(|| rec.alloc("ssm_y", &[x.numel() / self.config.d_model, e]))
            .transpose()?;
        let y = l
            .ssm
            .forward(
                rec,
                xz.cols(0, e),
                xz.cols(e, e),
                batch,
                BranchOptions {
                    carry,
                    ungated: ssm_y.as_ref().map(|tensor| Ungated {
                        tensor,
                        clip: false,
                        add: false,
                    }),
                    ..Default::default()
                },
            )?
            .y; // [B·L, E]
        let hidden = matmul(
            rec,
            "out_proj",
            y.mat(),
            &l.out_proj,
            l.out_proj_bias.as_ref(),
        )?; // [B·L, D]
        Ok(MixerOut { hidden, ssm_y })
    }
}
