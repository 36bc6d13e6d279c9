//! PlainMamba (ChenhongyiYang/PlainMamba, mmcls `ImageClassifier` with the `PlainMamba`
//! backbone, `CustomAveragePooling` neck and `LinearClsHead`) as the authors' code computes it:
//! a conv patch embedding, absolute position embedding, `x + PlainMamba2D(LN(x))` layers (some
//! followed by a depthwise conv), a final LayerNorm, mean pooling and a linear head.
//!
//! Tensors are token-major: `[B·L, D]` with the `L = H/16 · W/16` tokens in raster order;
//! after token pruning `[B·N, D]`, each image's `N` kept tokens with their cells in a
//! position map.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::models::{record, ModelDir, Trace};
use crate::ops::activation::Activation;
use crate::ops::dwconv2d::{dwconv2d, pack_dwconv_weight, KeptCells};
use crate::ops::im2col::{im2col, ConvGeometry, Layout};
use crate::ops::kept_grid::{kept_grid, KeptGrid, Walk};
use crate::ops::layernorm::{layernorm, layernorm_mean};
use crate::ops::matmul::{matmul, matmul_with, Epilogue};
use crate::ops::scan::{pack_ssm_params, Ungated, MAX_STATE};
use crate::ops::tokens::embed_tokens;
use crate::ops::zigzag_scan::{pack_direction_bs, zigzag_scan, ScanOrders, ZigzagArgs, DIRECTIONS};
use crate::prune::{Align, PruneSchedule, Pruning, TokenStreams};
use crate::runtime::{Context, DType, Recorder, Tensor};

/// Channels of the patch embedding's conv stem (fixed in `ConvPatchEmbed`).
pub const STEM_CHANNELS: usize = 64;
/// `nn.BatchNorm2d`'s default.
const BN_EPS: f64 = 1e-5;

#[derive(Clone, Debug, PartialEq)]
pub struct PlainMambaConfig {
    /// (height, width) the position embedding was made for; other sizes get it resized.
    pub img_size: (usize, usize),
    pub in_channels: usize,
    pub patch_size: usize,
    pub embed_dims: usize,
    pub num_layers: usize,
    /// 3x3 conv-BN-ReLU blocks after the stem.
    pub num_convs_patch_embed: usize,
    /// Layers followed by depthwise conv 3x3 -> BN -> GELU.
    pub layers_with_dwconv: Vec<usize>,
    pub d_inner: usize,
    pub d_state: usize,
    pub dt_rank: usize,
    /// The mixer's depthwise conv kernel (odd).
    pub conv_size: usize,
    pub conv_bias: bool,
    /// in_proj / out_proj biases (`bias`).
    pub proj_bias: bool,
    /// Each layer's LayerNorm.
    pub layer_norm_eps: f32,
    /// The final LayerNorm (`ln1`).
    pub final_norm_eps: f32,
    pub num_classes: usize,
}

impl PlainMambaConfig {
    /// Reads the authors' constructor arguments as flat keys (an `arch` preset must be given
    /// expanded); missing ones take the authors' defaults, except `bias`, which defaults to
    /// true as in every released arch. Settings the engine does not implement are refused by
    /// name.
    pub fn from_model_dir(dir: &ModelDir) -> Result<Self> {
        let unsupported = [
            ("use_rms_norm", false),
            ("with_pos_embed", true),
            ("final_norm", true),
        ];
        for (key, wanted) in unsupported {
            if dir.bool_field(&[key], wanted)? != wanted {
                return Err(dir.config_error(format!("only `{key}` = {wanted} is supported")));
            }
        }
        if dir.config.get("arch").is_some_and(|v| !v.is_null()) {
            return Err(dir.config_error("give the arch's settings as flat keys, not `arch`"));
        }
        let embed_dims = dir.usize_field(&["embed_dims"], Some(192))?;
        let num_layers = dir.usize_field(&["num_layers"], Some(20))?;
        let layers_with_dwconv = match dir.config.get("layers_with_dwconv") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(v)) => v
                .iter()
                .map(|i| i.as_u64().map(|i| i as usize).filter(|&i| i < num_layers))
                .collect::<Option<Vec<usize>>>()
                .ok_or_else(|| {
                    dir.config_error(format!(
                        "`layers_with_dwconv` must list layer indices below {num_layers}"
                    ))
                })?,
            Some(v) => {
                return Err(
                    dir.config_error(format!("`layers_with_dwconv` must be a list, got {v}"))
                )
            }
        };
        let dt_rank = dir.dt_rank_field("dt_rank", embed_dims)?;
        let config = PlainMambaConfig {
            img_size: dir.size_field("img_size", 224)?,
            in_channels: dir.usize_field(&["in_channels"], Some(3))?,
            patch_size: dir.usize_field(&["patch_size"], Some(16))?,
            embed_dims,
            num_layers,
            num_convs_patch_embed: dir.usize_field(&["num_convs_patch_embed"], Some(1))?,
            layers_with_dwconv,
            d_inner: dir.usize_field(&["expand"], Some(2))? * embed_dims,
            d_state: dir.usize_field(&["d_state"], Some(16))?,
            dt_rank,
            conv_size: dir.usize_field(&["conv_size"], Some(7))?,
            conv_bias: dir.bool_field(&["conv_bias"], true)?,
            proj_bias: dir.bool_field(&["bias"], true)?,
            layer_norm_eps: dir.f64_field(&["layer_norm_eps"], 1e-5)? as f32,
            final_norm_eps: dir.f64_field(&["final_norm_eps"], 1e-6)? as f32,
            num_classes: dir.usize_field(&["num_classes"], Some(1000))?,
        };
        let c = &config;
        if c.d_state == 0 || c.d_state > MAX_STATE {
            return Err(dir.config_error(format!(
                "d_state {} is not supported (1..={MAX_STATE})",
                c.d_state
            )));
        }
        if c.conv_size.is_multiple_of(2) {
            return Err(dir.config_error(format!("conv_size {} must be odd", c.conv_size)));
        }
        // The stem halves the image and the projection (kernel = stride = patch / 2) does the rest.
        if c.patch_size < 2 || c.patch_size % 2 == 1 {
            return Err(dir.config_error(format!(
                "patch_size {} must be even and positive",
                c.patch_size
            )));
        }
        let (h, w) = c.img_size;
        if [
            c.embed_dims,
            c.num_layers,
            c.d_inner,
            c.dt_rank,
            c.in_channels,
            c.num_classes,
        ]
        .contains(&0)
            || h % c.patch_size != 0
            || w % c.patch_size != 0
            || h == 0
            || w == 0
        {
            return Err(dir.config_error(
                "model sizes must be positive and img_size a multiple of patch_size",
            ));
        }
        Ok(config)
    }

    /// The token grid of an `h x w` image.
    pub fn grid(&self, h: usize, w: usize) -> (usize, usize) {
        (h / self.patch_size, w / self.patch_size)
    }

    fn stem_geometry(&self) -> ConvGeometry {
        ConvGeometry {
            kernel: (7, 7),
            stride: (2, 2),
            padding: (3, 3),
        }
    }

    fn projection_geometry(&self) -> ConvGeometry {
        ConvGeometry::patches(self.patch_size / 2, self.patch_size / 2)
    }
}

/// A bias-free conv followed by eval-mode BatchNorm, folded at load into one conv with bias.
struct ConvBn {
    weight: Tensor,
    bias: Tensor,
}

impl ConvBn {
    /// `conv` and `bn` are key prefixes; the weight is checked against PyTorch's `shape`
    /// (`[out, in, kh, kw]`). A dense conv is uploaded as an im2col matmul's `[out, in·kh·kw]`,
    /// a depthwise one as [`dwconv2d`]'s `[kh, kw, out]` (a dense conv may have one input
    /// channel too: a grayscale stem).
    fn load(
        ctx: &Context,
        dir: &ModelDir,
        (conv, bn): (&str, &str),
        shape: [usize; 4],
        depthwise: bool,
    ) -> Result<Self> {
        let w = &dir.weights;
        let [out, cin, kh, kw] = shape;
        let weight = w.f32_shaped(&format!("{conv}weight"), &shape)?;
        let [gamma, beta, mean, var] = ["weight", "bias", "running_mean", "running_var"]
            .map(|name| w.f32_shaped(&format!("{bn}{name}"), &[out]));
        let (gamma, beta, mean, var) = (gamma?, beta?, mean?, var?);
        // BN(conv(x)) = conv(x)·s + (β - μ·s), s = γ / √(σ² + ε), per output channel.
        let scale: Vec<f64> = gamma
            .iter()
            .zip(&var)
            .map(|(&g, &v)| g as f64 / (v as f64 + BN_EPS).sqrt())
            .collect();
        let per_out = weight.len() / out;
        let folded: Vec<f32> = weight
            .iter()
            .enumerate()
            .map(|(i, &v)| (v as f64 * scale[i / per_out]) as f32)
            .collect();
        let bias: Vec<f32> = (0..out)
            .map(|o| (beta[o] as f64 - mean[o] as f64 * scale[o]) as f32)
            .collect();
        let name = format!("{conv}weight");
        let weight = if depthwise {
            ctx.upload_f32(&name, &[kh, kw, out], &pack_dwconv_weight(&folded, out))?
        } else {
            ctx.upload_f32(&name, &[out, cin * kh * kw], &folded)?
        };
        Ok(ConvBn {
            weight,
            bias: ctx.upload_f32(&format!("{bn}bias"), &[out], &bias)?,
        })
    }
}

struct PlainMambaLayer {
    norm_weight: Tensor,
    norm_bias: Tensor,
    in_proj: Tensor,
    in_proj_bias: Option<Tensor>,
    /// Depthwise, `[k, k, E]`.
    conv_weight: Tensor,
    conv_bias: Option<Tensor>,
    x_proj: Tensor,
    dt_proj: Tensor,
    dt_proj_bias: Tensor,
    /// `[A = -exp(A_log) | D | dt_proj.bias]`: the scan adds the dt bias a second time.
    ssm: Tensor,
    /// `direction_Bs` padded for the scan.
    direction_bs: Tensor,
    out_proj: Tensor,
    out_proj_bias: Option<Tensor>,
    /// Depthwise 3x3 conv + BN after the residual add (`layers_with_dwconv`).
    dw: Option<ConvBn>,
}

/// What depends on the token grid: the resized position embedding and the scan tables.
#[derive(Clone)]
struct GridTensors {
    /// `[L, D]`
    pos_embed: Tensor,
    /// [`ScanOrders::table`], u32 `[12 L]`.
    scan_orders: Tensor,
}

/// The tokens a layer runs on: the whole grid, or after pruning each image's kept tokens.
struct LayerTokens<'a> {
    /// Where the kept tokens sit (none: every cell, in raster order).
    cells: Option<KeptCells<'a>>,
    /// The scans' [`ScanOrders::table`]: the grid's, or each image's over its kept tokens.
    scans: &'a Tensor,
    /// Decay the scan states over pruned tokens (`--align decay`).
    decay: bool,
    /// Where the scans also store their summed ungated output, for importance scores.
    ungated: Option<Ungated<'a>>,
}

pub struct PlainMamba {
    pub config: PlainMambaConfig,
    stem: ConvBn,
    convs: Vec<ConvBn>,
    projection: Tensor,
    projection_bias: Tensor,
    /// `[gh·gw, D]` for the config's grid, on the host for resizing.
    pos_embed: Vec<f32>,
    layers: Vec<PlainMambaLayer>,
    ln1_weight: Tensor,
    ln1_bias: Tensor,
    head: Tensor,
    head_bias: Tensor,
    grids: Mutex<HashMap<(usize, usize), GridTensors>>,
}

impl PlainMamba {
    pub fn from_model_dir(ctx: &Context, dir: &ModelDir) -> Result<Self> {
        let config = PlainMambaConfig::from_model_dir(dir)?;
        let c = &config;
        let (d, e, n, r, k) = (c.embed_dims, c.d_inner, c.d_state, c.dt_rank, c.conv_size);
        let (s, cin) = (STEM_CHANNELS, c.in_channels);
        let w = &dir.weights;
        let optional = |name: &str, shape: &[usize], present: bool| -> Result<Option<Tensor>> {
            present.then(|| dir.upload(ctx, name, shape)).transpose()
        };
        let pe = "backbone.patch_embed.";
        let stem = ConvBn::load(
            ctx,
            dir,
            (&format!("{pe}stem.0."), &format!("{pe}stem.1.")),
            [s, cin, 7, 7],
            false,
        )?;
        let convs = (0..c.num_convs_patch_embed)
            .map(|j| {
                let (conv, bn) = (
                    format!("{pe}convs.{}.", 3 * j),
                    format!("{pe}convs.{}.", 3 * j + 1),
                );
                ConvBn::load(ctx, dir, (&conv, &bn), [s, s, 3, 3], false)
            })
            .collect::<Result<Vec<_>>>()?;
        let half = c.patch_size / 2;
        let projection = w.f32_shaped(&format!("{pe}projection.weight"), &[d, s, half, half])?;
        let (gh, gw) = c.grid(c.img_size.0, c.img_size.1);
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("backbone.layers.{i}.");
            let m = format!("{p}mamba.");
            let a: Vec<f32> = w
                .f32_shaped(&format!("{m}A_log"), &[e, n])?
                .iter()
                .map(|v| -v.exp())
                .collect();
            let d_skip = w.f32_shaped(&format!("{m}D"), &[e])?;
            let dt_bias = w.f32_shaped(&format!("{m}dt_proj.bias"), &[e])?;
            let direction_bs = w.f32_shaped(&format!("{m}direction_Bs"), &[DIRECTIONS, n])?;
            let conv_weight = w.f32_shaped(&format!("{m}conv2d.weight"), &[e, 1, k, k])?;
            let dw = c
                .layers_with_dwconv
                .contains(&i)
                .then(|| {
                    let (conv, bn) = (format!("{p}dw.0."), format!("{p}dw.1."));
                    ConvBn::load(ctx, dir, (&conv, &bn), [d, 1, 3, 3], true)
                })
                .transpose()?;
            layers.push(PlainMambaLayer {
                norm_weight: dir.upload(ctx, &format!("{p}norm.weight"), &[d])?,
                norm_bias: dir.upload(ctx, &format!("{p}norm.bias"), &[d])?,
                in_proj: dir.upload(ctx, &format!("{m}in_proj.weight"), &[2 * e, d])?,
                in_proj_bias: optional(&format!("{m}in_proj.bias"), &[2 * e], c.proj_bias)?,
                conv_weight: ctx.upload_f32(
                    &format!("{m}conv2d.weight"),
                    &[k, k, e],
                    &pack_dwconv_weight(&conv_weight, e),
                )?,
                conv_bias: optional(&format!("{m}conv2d.bias"), &[e], c.conv_bias)?,
                x_proj: dir.upload(ctx, &format!("{m}x_proj.weight"), &[r + 2 * n, e])?,
                dt_proj: dir.upload(ctx, &format!("{m}dt_proj.weight"), &[e, r])?,
                dt_proj_bias: ctx.upload_f32(&format!("{m}dt_proj.bias"), &[e], &dt_bias)?,
                ssm: ctx.upload_f32(
                    &format!("{m}A_log"),
                    &[a.len() + 2 * e],
                    &pack_ssm_params(&a, Some(&d_skip), Some(&dt_bias), e),
                )?,
                direction_bs: ctx.upload_f32(
                    &format!("{m}direction_Bs"),
                    &[DIRECTIONS, MAX_STATE],
                    &pack_direction_bs(&direction_bs, n),
                )?,
                out_proj: dir.upload(ctx, &format!("{m}out_proj.weight"), &[d, e])?,
                out_proj_bias: optional(&format!("{m}out_proj.bias"), &[d], c.proj_bias)?,
                dw,
            });
        }
        Ok(PlainMamba {
            stem,
            convs,
            projection: ctx.upload_f32(
                &format!("{pe}projection.weight"),
                &[d, s * half * half],
                &projection,
            )?,
            projection_bias: dir.upload(ctx, &format!("{pe}projection.bias"), &[d])?,
            pos_embed: w.f32_shaped("backbone.pos_embed", &[1, gh * gw, d])?,
            layers,
            ln1_weight: dir.upload(ctx, "backbone.ln1.weight", &[d])?,
            ln1_bias: dir.upload(ctx, "backbone.ln1.bias", &[d])?,
            head: dir.upload(ctx, "head.fc.weight", &[c.num_classes, d])?,
            head_bias: dir.upload(ctx, "head.fc.bias", &[c.num_classes])?,
            grids: Mutex::new(HashMap::new()),
            config,
        })
    }

    /// Input channels.
    pub fn channels(&self) -> usize {
        self.config.in_channels
    }

    /// The (height, width) the model was trained at; other multiples of the patch size work too.
    pub fn image_size(&self) -> (usize, usize) {
        self.config.img_size
    }

    pub fn num_classes(&self) -> usize {
        self.config.num_classes
    }

    /// Flops of one `h x w` image under a pruning schedule: 2 × the multiply-adds of every
    /// convolution and linear layer (stem, patch convs, projection, in/x/dt/out projections,
    /// depthwise convs, head) and of the 2-D scan, which counts 3 per direction, token, channel
    /// and state (exp argument, state update, C dot; the exp itself is not counted), 1 per
    /// direction, token and channel for `D·u`, and 1 per token and channel for the sum and
    /// gate. Norms, activations, bias adds, pooling and the pruning steps are not counted.
    pub fn flops(&self, h: usize, w: usize, schedule: Option<&PruneSchedule>) -> f64 {
        let c = &self.config;
        let (h2, w2) = c.stem_geometry().output_size(h, w);
        let (gh, gw) = c.grid(h, w);
        let [d, e, n, r, k, s, l] = [
            c.embed_dims,
            c.d_inner,
            c.d_state,
            c.dt_rank,
            c.conv_size,
            STEM_CHANNELS,
            gh * gw,
        ]
        .map(|v| v as f64);
        let half = (c.patch_size / 2) as f64;
        let patch_embed = h2 as f64 * w2 as f64 * s * (c.in_channels as f64 * 49.0)
            + c.num_convs_patch_embed as f64 * h2 as f64 * w2 as f64 * s * s * 9.0
            + l * d * s * half * half;
        let scan = 4.0 * (3.0 * e * n + e) + e;
        let per_token = d * 2.0 * e + e * k * k + e * (r + 2.0 * n) + r * e + scan + e * d;
        let counts =
            schedule
                .cloned()
                .unwrap_or_default()
                .token_counts(gh * gw, c.num_layers, false);
        let layers: f64 = counts
            .iter()
            .enumerate()
            .map(|(i, &tokens)| {
                let dw = if c.layers_with_dwconv.contains(&i) {
                    d * 9.0
                } else {
                    0.0
                };
                tokens as f64 * (per_token + dw)
            })
            .sum();
        2.0 * (patch_embed + layers + d * c.num_classes as f64)
    }

    /// The pixel tensor the model takes: f32 `[batch, channels, H, W]`, H and W positive
    /// multiples of the patch size. Returns (batch, H, W).
    pub fn check_pixels(&self, pixels: &Tensor) -> Result<(usize, usize, usize)> {
        let c = &self.config;
        let p = c.patch_size;
        let shape = pixels.shape();
        let [batch, channels, h, w] = *shape else {
            return Err(Error::InvalidInput(format!(
                "pixel_values has shape {shape:?}; PlainMamba takes [batch, {}, H, W]",
                c.in_channels
            )));
        };
        if pixels.dtype() != DType::F32 {
            return Err(Error::InvalidInput(format!(
                "pixel_values has dtype {:?}, expected F32",
                pixels.dtype()
            )));
        }
        if channels != c.in_channels {
            return Err(Error::InvalidInput(format!(
                "pixel_values has shape {shape:?}: {channels} channel(s), this PlainMamba takes {}",
                c.in_channels
            )));
        }
        if batch == 0 {
            return Err(Error::InvalidInput(format!(
                "pixel_values has shape {shape:?}: an empty batch"
            )));
        }
        if h == 0 || w == 0 || h % p != 0 || w % p != 0 {
            return Err(Error::InvalidInput(format!(
                "pixel_values is {h}x{w}; height and width must be positive multiples of the \
                 patch size {p}"
            )));
        }
        Ok((batch, h, w))
    }

    /// Record a forward pass over `pixels` `[batch, C, H, W]`, pruned when asked (the
    /// tokens keep their original order but with `Align::Score`, and every later layer runs
    /// on the kept ones: the scans over each image's kept cells, the 2-D convs reading pruned
    /// cells as zero); returns logits `[batch, classes]`. With a trace, records
    /// `patch_embed_out`, `embed_tokens`, `layers.{i}.mamba_out`, `layers.{i}.out`,
    /// `final_norm_out` (each `[B·N, D]`), `head_input` (`[B, D]`) and, when pruning,
    /// `layers.{i}.positions` (the cells layer i runs on, u32 `[B, N]`) and `layers.{i}.scores`
    /// (the scores of the step after layer i, `[B, N]`).
    pub fn forward(
        &self,
        rec: &mut Recorder,
        pixels: &Tensor,
        pruning: Option<&Pruning>,
        mut trace: Option<&mut Trace>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (batch, h, w) = self.check_pixels(pixels)?;
        let grid = c.grid(h, w);
        let tables = self.grid_tensors(rec.context(), grid)?;
        let patches = self.patch_embed(rec, pixels, (batch, h, w))?; // [B·L, D]
        let mut x = embed_tokens(rec, &patches, batch, None, Some(&tables.pos_embed))?; // + pos_embed
        record(&mut trace, "patch_embed_out", &patches);
        record(&mut trace, "embed_tokens", &x);
        let mut len = grid.0 * grid.1;
        let mut positions = pruning
            .map(|p| p.begin(rec, c.num_layers, batch, len))
            .transpose()?;
        // The kept tokens' cells and scans, from the first pruning step on.
        let mut kept: Option<KeptGrid> = None;
        for (i, layer) in self.layers.iter().enumerate() {
            if let Some(positions) = &positions {
                record(&mut trace, &format!("layers.{i}.positions"), positions);
            }
            let clip = pruning.and_then(|p| p.scan_scores(i));
            let ungated = match clip {
                Some(_) => Some(rec.alloc("ungated", &[batch * len, c.d_inner])?),
                None => None,
            };
            let cells = kept
                .as_ref()
                .zip(positions.as_ref())
                .map(|(k, positions)| KeptCells {
                    positions,
                    slots: &k.slots,
                });
            let tokens = LayerTokens {
                cells,
                scans: kept.as_ref().map_or(&tables.scan_orders, |k| &k.tables),
                decay: cells.is_some() && pruning.is_some_and(|p| p.align == Align::Decay),
                ungated: clip.zip(ungated.as_ref()).map(|(clip, tensor)| Ungated {
                    tensor,
                    clip,
                    add: false,
                }),
            };
            let normed = layernorm(
                rec,
                &x,
                &layer.norm_weight,
                &layer.norm_bias,
                c.layer_norm_eps,
            )?; // LN(x) [B·N, D]
            x = self.mixer(
                rec,
                layer,
                &normed,
                &x,
                (batch, grid),
                &tokens,
                &mut trace,
                i,
            )?; // x + PlainMamba2D(LN(x))
            if let Some(dw) = &layer.dw {
                // GELU(BN(DWConv3x3(x))) on the sum, with no skip around it.
                x = dwconv2d(
                    rec,
                    x.mat(),
                    (batch, grid.0, grid.1),
                    tokens.cells,
                    &dw.weight,
                    Some(&dw.bias),
                    Activation::Gelu,
                )?;
            }
            record(&mut trace, &format!("layers.{i}.out"), &x);
            let (Some(pruning), Some(current)) = (pruning, positions.take()) else {
                continue;
            };
            let streams = TokenStreams {
                hidden: x,
                residual: None,
                positions: current,
                len,
                scores: None,
            };
            let next = pruning.after_layer(rec, i, streams, ungated.as_ref(), batch, false)?;
            if let Some(scores) = &next.scores {
                record(&mut trace, &format!("layers.{i}.scores"), scores);
            }
            if next.len != len {
                let walk = match pruning.align {
                    Align::Score => Walk::Sequence,
                    Align::Carry | Align::Decay => Walk::Grid,
                };
                kept = Some(kept_grid(
                    rec,
                    &next.positions,
                    grid,
                    &tables.scan_orders,
                    walk,
                )?);
            }
            (x, len, positions) = (next.hidden, next.len, Some(next.positions));
        }
        // ln1, then the neck's mean over the tokens: [B·N, D], [B, D]
        let (normed, pooled) = layernorm_mean(
            rec,
            &x,
            batch,
            &self.ln1_weight,
            &self.ln1_bias,
            c.final_norm_eps,
        )?;
        record(&mut trace, "final_norm_out", &normed);
        record(&mut trace, "head_input", &pooled);
        matmul(
            rec,
            "logits",
            pooled.mat(),
            &self.head,
            Some(&self.head_bias),
        ) // [B, classes]
    }

    /// ConvPatchEmbed: ReLU(BN(Conv7x7/2)) -> n × ReLU(BN(Conv3x3)) -> Conv(p/2)/(p/2), each conv
    /// as im2col + matmul on channels-last activations. Returns `[B·L, D]`, raster order.
    fn patch_embed(
        &self,
        rec: &mut Recorder,
        pixels: &Tensor,
        (batch, h, w): (usize, usize, usize),
    ) -> Result<Tensor> {
        let c = &self.config;
        let conv_bn_relu = |rec: &mut Recorder, cols: &Tensor, conv: &ConvBn| {
            let epilogue = Epilogue {
                bias: Some(&conv.bias),
                activation: Activation::Relu,
                residual: None,
            };
            matmul_with(rec, "patch_embed.conv", cols.mat(), &conv.weight, epilogue)
        };
        let stem = c.stem_geometry();
        let (h2, w2) = stem.output_size(h, w);
        let cols = im2col(
            rec,
            pixels,
            Layout::Nchw,
            (batch, c.in_channels, h, w),
            stem,
        )?; // [B·H/2·W/2, C·49]
        let mut x = conv_bn_relu(rec, &cols, &self.stem)?; // [B·H/2·W/2, 64]
        let dims = (batch, STEM_CHANNELS, h2, w2);
        let same3 = ConvGeometry {
            kernel: (3, 3),
            stride: (1, 1),
            padding: (1, 1),
        };
        for conv in &self.convs {
            let cols = im2col(rec, &x, Layout::Nhwc, dims, same3)?; // [B·H/2·W/2, 64·9]
            x = conv_bn_relu(rec, &cols, conv)?; // [B·H/2·W/2, 64]
        }
        let cols = im2col(rec, &x, Layout::Nhwc, dims, c.projection_geometry())?; // [B·L, 64·(p/2)²]
        matmul(
            rec,
            "patch_embed",
            cols.mat(),
            &self.projection,
            Some(&self.projection_bias),
        )
    }

    /// `residual + PlainMamba2D(x)`, `x` = LN(residual) `[B·N, D]`. The residual add is fused
    /// into out_proj; when tracing, out_proj also runs alone for `layers.{i}.mamba_out`.
    #[allow(clippy::too_many_arguments)] // the layer's inputs and where to trace
    fn mixer(
        &self,
        rec: &mut Recorder,
        l: &PlainMambaLayer,
        x: &Tensor,
        residual: &Tensor,
        (batch, (gh, gw)): (usize, (usize, usize)),
        tokens: &LayerTokens,
        trace: &mut Option<&mut Trace>,
        i: usize,
    ) -> Result<Tensor> {
        let (e, n, r) = (
            self.config.d_inner,
            self.config.d_state,
            self.config.dt_rank,
        );
        let xz = matmul(rec, "in_proj", x.mat(), &l.in_proj, l.in_proj_bias.as_ref())?; // [B·N, 2E] = [x | z]
        let u = dwconv2d(
            rec,
            xz.cols(0, e),
            (batch, gh, gw),
            tokens.cells,
            &l.conv_weight,
            l.conv_bias.as_ref(),
            Activation::Silu,
        )?; // SiLU(DWConv(x)) [B·N, E]
        let q = matmul(rec, "x_proj", u.mat(), &l.x_proj, None)?; // [B·N, R + 2N] = [dt | B | C]
        let dt = matmul(
            rec,
            "dt_proj",
            q.cols(0, r),
            &l.dt_proj,
            Some(&l.dt_proj_bias),
        )?; // [B·N, E], bias included (the scan adds it again)
        let y = zigzag_scan(
            rec,
            ZigzagArgs {
                u: u.mat(),
                delta: dt.mat(),
                b: q.cols(r, n),
                c: q.cols(r + n, n),
                params: &l.ssm,
                direction_bs: &l.direction_bs,
                orders: tokens.scans,
                z: xz.cols(e, e),
                batch,
                decay: tokens.decay,
                ungated: tokens.ungated,
            },
        )?; // (Σ_k scan_k) · silu(z) [B·N, E]
        if trace.is_some() {
            let out = matmul(
                rec,
                "out_proj",
                y.mat(),
                &l.out_proj,
                l.out_proj_bias.as_ref(),
            )?;
            record(trace, &format!("layers.{i}.mamba_out"), &out);
        }
        let epilogue = Epilogue {
            bias: l.out_proj_bias.as_ref(),
            residual: Some(residual),
            ..Epilogue::default()
        };
        matmul_with(rec, "out_proj", y.mat(), &l.out_proj, epilogue) // residual + out_proj(y) [B·N, D]
    }

    /// The position embedding and scan tables of a token grid, made on first use.
    fn grid_tensors(&self, ctx: &Context, (gh, gw): (usize, usize)) -> Result<GridTensors> {
        let mut grids = self.grids.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = grids.get(&(gh, gw)) {
            return Ok(g.clone());
        }
        let c = &self.config;
        let d = c.embed_dims;
        let pos = resize_pos_embed(
            &self.pos_embed,
            c.grid(c.img_size.0, c.img_size.1),
            (gh, gw),
            d,
        );
        let tables = ScanOrders::new(gh, gw).table();
        let g = GridTensors {
            pos_embed: ctx.upload_f32("pos_embed", &[gh * gw, d], &pos)?,
            scan_orders: ctx.upload_u32("scan_orders", &[tables.len()], &tables)?,
        };
        grids.insert((gh, gw), g.clone());
        Ok(g)
    }
}

/// mmcls's `resize_pos_embed` (no extra tokens): a `[sh·sw, C]` channels-last grid resized to
/// `[dh·dw, C]` by PyTorch's `F.interpolate(mode="bicubic", align_corners=False)`: source
/// coordinate `(i + 0.5)·in/out - 0.5`, Keys' cubic with A = -0.75 over 4x4 taps, indices
/// clamped at the borders. The same grid is returned unchanged.
pub fn resize_pos_embed(
    src: &[f32],
    (sh, sw): (usize, usize),
    (dh, dw): (usize, usize),
    channels: usize,
) -> Vec<f32> {
    if (sh, sw) == (dh, dw) {
        return src.to_vec();
    }
    // (first tap, 4 weights) along one axis for each output index.
    let taps = |input: usize, output: usize| -> Vec<(isize, [f64; 4])> {
        const A: f64 = -0.75;
        let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0; // |x| <= 1
        let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A; // 1 < |x| < 2
        let scale = input as f64 / output as f64;
        (0..output)
            .map(|i| {
                let real = (i as f64 + 0.5) * scale - 0.5;
                let floor = real.floor();
                let t = real - floor;
                (
                    floor as isize - 1,
                    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)],
                )
            })
            .collect()
    };
    let clamp = |i: isize, n: usize| i.clamp(0, n as isize - 1) as usize;
    let (rows, cols) = (taps(sh, dh), taps(sw, dw));
    let mut out = Vec::with_capacity(dh * dw * channels);
    for (y0, wy) in &rows {
        for (x0, wx) in &cols {
            for ch in 0..channels {
                let mut acc = 0.0;
                for (a, wa) in wy.iter().enumerate() {
                    let yy = clamp(y0 + a as isize, sh);
                    for (b, wb) in wx.iter().enumerate() {
                        let xx = clamp(x0 + b as isize, sw);
                        acc += wa * wb * src[(yy * sw + xx) * channels + ch] as f64;
                    }
                }
                out.push(acc as f32);
            }
        }
    }
    out
}
