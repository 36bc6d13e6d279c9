//! Vision Mamba (hustvl/Vim, `vim/models_mamba.py::VisionMamba`) as the authors' code computes
//! it for the released Ti/S/B configs: patch embedding, class token in the middle, absolute
//! position embedding, fused add + RMSNorm blocks around the bidirectional "v2" mixer, and the
//! class token's feature into the head.

use crate::error::{Error, Result};
use crate::models::mamba::{BranchOptions, SsmBranch, SsmDims};
use crate::models::{record, ModelDir, Trace};
use crate::ops::conv1d::CONV_WIDTH;
use crate::ops::im2col::{im2col, ConvGeometry, Layout};
use crate::ops::matmul::matmul;
use crate::ops::rmsnorm::add_rmsnorm;
use crate::ops::scan::{Ungated, MAX_STATE};
use crate::ops::tokens::embed_tokens;
use crate::prune::{Align, PruneSchedule, Pruning, TokenStreams};
use crate::runtime::{Context, MatView, Recorder, Tensor};

#[derive(Clone, Debug, PartialEq)]
pub struct VimConfig {
    /// (height, width) the position embedding was made for; inputs must have this size.
    pub img_size: (usize, usize),
    pub channels: usize,
    pub patch_size: usize,
    pub stride: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_classes: usize,
    pub ssm: SsmDims,
    pub eps: f32,
    /// `if_divide_out`: average the two directions instead of summing them.
    pub divide_out: bool,
    /// in_proj / out_proj biases (the mixer's `bias`, false in every released config).
    pub proj_bias: bool,
    pub conv_bias: bool,
    /// `if_abs_pos_embed`.
    pub pos_embed: bool,
}

impl VimConfig {
    /// Reads the authors' `VisionMamba` constructor arguments; settings the engine does not
    /// implement (rope, LayerNorm blocks, no class token, ...) are refused by name.
    pub fn from_model_dir(dir: &ModelDir) -> Result<Self> {
        let embed_dim = dir.usize_field(&["embed_dim"], Some(192))?;
        let patch_size = dir.usize_field(&["patch_size"], Some(16))?;
        let expand = dir.usize_field(&["expand"], Some(2))?;
        let required = [
            ("rms_norm", true),
            ("if_cls_token", true),
            ("use_middle_cls_token", true),
            ("if_rope", false),
            ("if_rope_residual", false),
            ("if_bidirectional", false),
            ("use_double_cls_token", false),
        ];
        for (key, wanted) in required {
            let default = if key == "rms_norm" { true } else { wanted };
            if dir.bool_field(&[key], default)? != wanted {
                return Err(dir.config_error(format!("only `{key}` = {wanted} is supported")));
            }
        }
        match dir.config.get("bimamba_type").and_then(|v| v.as_str()) {
            Some("v2") => {}
            other => {
                return Err(dir.config_error(format!(
                    "only bimamba_type \"v2\" is supported, got {other:?}"
                )))
            }
        }
        if dir.usize_field(&["d_conv"], Some(CONV_WIDTH))? != CONV_WIDTH {
            return Err(dir.config_error(format!("only d_conv = {CONV_WIDTH} is supported")));
        }
        let d_state = dir.usize_field(&["d_state"], Some(16))?;
        if d_state == 0 || d_state > MAX_STATE {
            return Err(dir.config_error(format!(
                "d_state {d_state} is not supported (1..={MAX_STATE})"
            )));
        }
        let dt_rank = dir.dt_rank_field("dt_rank", embed_dim)?;
        let config = VimConfig {
            img_size: dir.size_field("img_size", 224)?,
            channels: dir.usize_field(&["channels"], Some(3))?,
            patch_size,
            stride: dir.usize_field(&["stride"], Some(patch_size))?,
            embed_dim,
            depth: dir.usize_field(&["depth"], Some(24))?,
            num_classes: dir.usize_field(&["num_classes"], Some(1000))?,
            ssm: SsmDims {
                d_inner: expand * embed_dim,
                d_state,
                dt_rank,
            },
            eps: dir.f64_field(&["norm_epsilon"], 1e-5)? as f32,
            divide_out: dir.bool_field(&["if_divide_out"], true)?,
            proj_bias: dir.bool_field(&["bias"], false)?,
            conv_bias: dir.bool_field(&["conv_bias"], true)?,
            pos_embed: dir.bool_field(&["if_abs_pos_embed"], true)?,
        };
        let (h, w) = config.img_size;
        if [
            embed_dim,
            patch_size,
            config.stride,
            config.channels,
            dt_rank,
        ]
        .contains(&0)
            || config.depth == 0
            || config.num_classes == 0
            || h < patch_size
            || w < patch_size
        {
            return Err(dir.config_error("model sizes must be positive and fit the image"));
        }
        Ok(config)
    }

    pub fn grid(&self) -> (usize, usize) {
        self.patch_geometry()
            .output_size(self.img_size.0, self.img_size.1)
    }

    pub fn num_patches(&self) -> usize {
        let (gh, gw) = self.grid();
        gh * gw
    }

    /// Tokens per image: the patches and the class token.
    pub fn seq_len(&self) -> usize {
        self.num_patches() + 1
    }

    /// Where the class token sits (`M // 2`), and the feature the head reads.
    pub fn cls_position(&self) -> usize {
        self.num_patches() / 2
    }

    fn patch_geometry(&self) -> ConvGeometry {
        ConvGeometry::patches(self.patch_size, self.stride)
    }

    /// Multiply-adds x 2 of the matmuls and convs, plus the scans' state updates (about 6
    /// flops per state element and step: exp argument, exp, two fmas, the C dot), per image,
    /// with the token counts a pruning schedule leaves each layer.
    pub fn flops(&self, schedule: Option<&PruneSchedule>) -> f64 {
        let (d, m) = (self.embed_dim as f64, self.num_patches() as f64);
        let tokens: f64 = match schedule {
            Some(s) => s
                .token_counts(self.seq_len(), self.depth, true)
                .iter()
                .map(|&n| n as f64)
                .sum(),
            None => (self.depth * self.seq_len()) as f64,
        };
        let SsmDims {
            d_inner: e,
            d_state: n,
            dt_rank: r,
        } = self.ssm;
        let (e, n, r) = (e as f64, n as f64, r as f64);
        let patch_in = (self.channels * self.patch_size * self.patch_size) as f64;
        let per_direction =
            e * CONV_WIDTH as f64 + e * (r + 2.0 * n) + r * e + e * n * 3.0 + e * 2.0;
        let per_token = d * 2.0 * e + 2.0 * per_direction + e * d;
        2.0 * (m * patch_in * d + tokens * per_token + d * self.num_classes as f64)
    }
}

struct VimLayer {
    norm: Tensor,
    in_proj: Tensor,
    in_proj_bias: Option<Tensor>,
    /// The forward and the backward direction.
    ssm: SsmBranch,
    /// Halved at load when `if_divide_out` (exact in f32), so the sum of the directions
    /// comes out averaged.
    out_proj: Tensor,
    out_proj_bias: Option<Tensor>,
}

pub struct Vim {
    pub config: VimConfig,
    patch_weight: Tensor,
    patch_bias: Tensor,
    cls_token: Tensor,
    pos_embed: Option<Tensor>,
    layers: Vec<VimLayer>,
    norm_f: Tensor,
    head: Tensor,
    head_bias: Tensor,
}

impl Vim {
    pub fn from_model_dir(ctx: &Context, dir: &ModelDir) -> Result<Self> {
        let config = VimConfig::from_model_dir(dir)?;
        let c = &config;
        let (d, e) = (c.embed_dim, c.ssm.d_inner);
        let patch_in = c.channels * c.patch_size * c.patch_size;
        let w = &dir.weights;
        let patch = w.f32_shaped(
            "patch_embed.proj.weight",
            &[d, c.channels, c.patch_size, c.patch_size],
        )?;
        let optional = |name: &str, shape: &[usize], present: bool| -> Result<Option<Tensor>> {
            present.then(|| dir.upload(ctx, name, shape)).transpose()
        };
        let mut layers = Vec::with_capacity(c.depth);
        for i in 0..c.depth {
            let m = format!("layers.{i}.mixer.");
            let out_name = format!("{m}out_proj.weight");
            let scale = if c.divide_out { 0.5 } else { 1.0 };
            let out_proj: Vec<f32> = w
                .f32_shaped(&out_name, &[d, e])?
                .iter()
                .map(|v| v * scale)
                .collect();
            layers.push(VimLayer {
                norm: dir.upload(ctx, &format!("layers.{i}.norm.weight"), &[d])?,
                in_proj: dir.upload(ctx, &format!("{m}in_proj.weight"), &[2 * e, d])?,
                in_proj_bias: optional(&format!("{m}in_proj.bias"), &[2 * e], c.proj_bias)?,
                ssm: SsmBranch::load(ctx, dir, &m, &["", "_b"], c.ssm, c.conv_bias)?,
                out_proj: ctx.upload_f32(&out_name, &[d, e], &out_proj)?,
                out_proj_bias: optional(&format!("{m}out_proj.bias"), &[d], c.proj_bias)?,
            });
        }
        Ok(Vim {
            patch_weight: ctx.upload_f32("patch_embed.proj.weight", &[d, patch_in], &patch)?,
            patch_bias: dir.upload(ctx, "patch_embed.proj.bias", &[d])?,
            cls_token: dir.upload(ctx, "cls_token", &[1, 1, d])?,
            pos_embed: optional("pos_embed", &[1, c.seq_len(), d], c.pos_embed)?,
            layers,
            norm_f: dir.upload(ctx, "norm_f.weight", &[d])?,
            head: dir.upload(ctx, "head.weight", &[c.num_classes, d])?,
            head_bias: dir.upload(ctx, "head.bias", &[c.num_classes])?,
            config,
        })
    }

    /// The pixel tensor the model takes: `[batch, channels, H, W]` at its `img_size`.
    pub fn check_pixels(&self, shape: &[usize]) -> Result<usize> {
        let c = &self.config;
        let (h, w) = c.img_size;
        match *shape {
            [batch, ch, hh, ww] if batch > 0 && ch == c.channels && (hh, ww) == (h, w) => Ok(batch),
            _ => Err(Error::InvalidInput(format!(
                "pixel_values has shape {shape:?}; this Vim takes [batch, {}, {h}, {w}]",
                c.channels
            ))),
        }
    }

    /// Record a forward pass over `pixels` `[batch, C, H, W]`; returns logits `[batch, classes]`.
    pub fn forward(
        &self,
        rec: &mut Recorder,
        pixels: &Tensor,
        trace: Option<&mut Trace>,
    ) -> Result<Tensor> {
        self.forward_pruned(rec, pixels, None, trace)
    }

    /// [`Self::forward`] with token pruning: after the layers the schedule names, the tokens
    /// are scored, the kept ones gathered from both streams, and later layers run on fewer.
    /// The trace then also records `layers.{i}.positions` (u32 `[B, N]`, original index of
    /// every token a layer ran on) and, after a pruning step, `layers.{i}.scores` (`[B, N]`, the
    /// importance of the tokens layer i ran on).
    pub fn forward_pruned(
        &self,
        rec: &mut Recorder,
        pixels: &Tensor,
        pruning: Option<&Pruning>,
        mut trace: Option<&mut Trace>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let batch = self.check_pixels(pixels.shape())?;
        let (h, w) = c.img_size;
        let d = c.embed_dim;
        let patches = im2col(
            rec,
            pixels,
            Layout::Nchw,
            (batch, c.channels, h, w),
            c.patch_geometry(),
        )?; // [B·M, C·p·p]
        let x = matmul(
            rec,
            "patch_embed",
            patches.mat(),
            &self.patch_weight,
            Some(&self.patch_bias),
        )?; // [B·M, D]
        let cls = (&self.cls_token, c.cls_position());
        let mut residual = embed_tokens(rec, &x, batch, Some(cls), self.pos_embed.as_ref())?; // [B·L, D]
        if trace.is_some() {
            record(&mut trace, "patch_embed_out", &x);
            record(
                &mut trace,
                "embed_tokens",
                &rec.snapshot("embed_tokens", &residual)?,
            );
        }
        let mut len = c.seq_len();
        let mut positions = pruning
            .map(|p| p.begin(rec, c.depth, batch, len))
            .transpose()?;
        let mut hidden: Option<Tensor> = None;
        for (i, layer) in self.layers.iter().enumerate() {
            // residual += hidden; x = RMSNorm(residual)            [B·N, D]
            let x = add_rmsnorm(rec, &residual, hidden.as_ref(), &layer.norm, c.eps)?;
            if trace.is_some() {
                record(
                    &mut trace,
                    &format!("layers.{i}.residual"),
                    &rec.snapshot("residual", &residual)?,
                );
                record(&mut trace, &format!("layers.{i}.mixer_in"), &x);
                if let Some(positions) = &positions {
                    record(&mut trace, &format!("layers.{i}.positions"), positions);
                }
            }
            let clip = pruning.and_then(|p| p.scan_scores(i));
            let ungated = match clip {
                Some(_) => Some(rec.alloc("ungated", &[batch * len, c.ssm.d_inner])?),
                None => None,
            };
            let scores = clip.zip(ungated.as_ref());
            // Decay over pruned positions once some are pruned.
            let gaps = positions
                .as_ref()
                .filter(|_| len < c.seq_len() && pruning.is_some_and(|p| p.align == Align::Decay));
            let out = self.mixer(rec, layer, &x, batch, (scores, gaps), &mut trace, i)?; // [B·N, D]
            record(&mut trace, &format!("layers.{i}.hidden"), &out);
            match (pruning, positions.take()) {
                (Some(p), Some(pos)) => {
                    let streams = TokenStreams {
                        hidden: out,
                        residual: Some(residual),
                        positions: pos,
                        len,
                        scores: None,
                    };
                    let kept = p.after_layer(rec, i, streams, ungated.as_ref(), batch, true)?;
                    if let Some(scores) = &kept.scores {
                        record(&mut trace, &format!("layers.{i}.scores"), scores);
                    }
                    residual = kept
                        .residual
                        .ok_or_else(|| Error::Gpu("pruning dropped the residual stream".into()))?;
                    len = kept.len;
                    hidden = Some(kept.hidden);
                    positions = Some(kept.positions);
                }
                _ => hidden = Some(out),
            }
        }
        let normed = add_rmsnorm(rec, &residual, hidden.as_ref(), &self.norm_f, c.eps)?; // [B·N, D]
        let cls_rows = MatView {
            tensor: &normed,
            rows: batch,
            cols: d,
            offset: (len - 1) / 2 * d,
            stride: len * d,
        }; // [B, D], the class token of each image, kept in the middle by pruning
        let logits = matmul(rec, "logits", cls_rows, &self.head, Some(&self.head_bias))?; // [B, classes]
        record(&mut trace, "final_norm_out", &normed);
        Ok(logits)
    }

    /// The bidirectional "v2" mixer: shared in_proj and out_proj, one SSM branch per direction.
    /// out = out_proj((y_f + flip(y_b(flip(x), flip(z)))) / 2); the backward direction walks the
    /// tokens in reverse and adds into y_f, so nothing is flipped in memory.
    /// With `scores` (clip, tensor), the scans also store their ungated outputs there, summed
    /// over the two directions at original positions (pruning importance); with `gaps` (the
    /// position map) they decay the state over pruned positions.
    #[allow(clippy::too_many_arguments)] // the trace and layer index are for tracing only
    fn mixer(
        &self,
        rec: &mut Recorder,
        layer: &VimLayer,
        x: &Tensor,
        batch: usize,
        (scores, gaps): (Option<(bool, &Tensor)>, Option<&Tensor>),
        trace: &mut Option<&mut Trace>,
        i: usize,
    ) -> Result<Tensor> {
        let e = self.config.ssm.d_inner;
        let xz = matmul(
            rec,
            "in_proj",
            x.mat(),
            &layer.in_proj,
            layer.in_proj_bias.as_ref(),
        )?; // [B·L, 2E] = [x | z]
        let options = BranchOptions {
            ungated: scores.map(|(clip, tensor)| Ungated {
                tensor,
                clip,
                add: false,
            }),
            gap_positions: gaps,
            ..Default::default()
        };
        let ssm = layer
            .ssm
            .forward(rec, xz.cols(0, e), xz.cols(e, e), batch, options)?; // y_f + y_b [B·L, E]
        if trace.is_some() {
            record(trace, &format!("layers.{i}.xz"), &xz);
            record(trace, &format!("layers.{i}.conv_out"), &ssm.conv); // [2·B·L, E]
            record(trace, &format!("layers.{i}.y_sum"), &ssm.y);
        }
        matmul(
            rec,
            "out_proj",
            ssm.y.mat(),
            &layer.out_proj,
            layer.out_proj_bias.as_ref(),
        ) // [B·L, D]
    }
}
