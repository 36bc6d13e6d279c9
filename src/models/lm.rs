//! What the causal language models (Mamba-1, Mamba-2) share: the backbone around their mixers
//! (embedding, pre-norm residual blocks with an f32 residual stream, final norm, tied or
//! separate head), token-id checks, the recurrent cache, `run` and greedy `generate`, and
//! [`LanguageModel`], the one place that picks the model from config.json.

use std::path::Path;

use crate::error::{check_finite, Error, Result};
use crate::models::mamba::{MambaConfig, MambaLm};
use crate::models::mamba2::{Mamba2Config, Mamba2Lm};
use crate::models::ModelDir;
use crate::ops::argmax::argmax;
use crate::ops::embedding::embedding;
use crate::ops::matmul::matmul_into_columns;
use crate::ops::rmsnorm::add_rmsnorm;
use crate::ops::Carry;
use crate::prune::reduce::Reduction;
use crate::runtime::{Context, MatView, Recorder, RowShards, Tensor};

/// Which logits a forward pass computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    All,
    /// Only each sequence's last token (prefill for generation).
    Last,
    None,
}

pub struct ForwardOutput {
    /// `[batch * len, vocab]` or `[batch, vocab]` for [`Logits::Last`].
    pub logits: Option<Tensor>,
    /// transformers' `hidden_states` as transformers 5 returns them (golden data): index i is
    /// the residual stream after layer i, and index n_layer is after the final norm.
    pub hidden_states: Vec<Tensor>,
    /// With a reduction: u32 `[batch, len']`, the input position of each output token (a
    /// merged token sits at the position of the token it was merged into).
    pub positions: Option<Tensor>,
}

/// A mixer's output `[B·L, D]` and, when asked, its SSM output before the gate `[B·L, E]`.
pub struct MixerOut {
    pub hidden: Tensor,
    pub ssm_y: Option<Tensor>,
}

/// Per-layer recurrent state for generation: the conv windows `[batch, channels, 4]` and the
/// SSM states (Mamba-1 `[batch, E, N]`, Mamba-2 `[batch, heads, headdim, N]`).
pub struct MambaCache {
    pub(crate) conv: Vec<Tensor>,
    pub(crate) ssm: Vec<Tensor>,
}

impl MambaCache {
    /// Zero states for `layers` layers.
    pub fn zeros(
        ctx: &Context,
        layers: usize,
        conv_shape: &[usize],
        ssm_shape: &[usize],
    ) -> Result<Self> {
        let zeros = |name: &str, shape: &[usize]| {
            ctx.upload_f32(name, shape, &vec![0.0; shape.iter().product()])
        };
        Ok(MambaCache {
            conv: (0..layers)
                .map(|_| zeros("conv_state", conv_shape))
                .collect::<Result<_>>()?,
            ssm: (0..layers)
                .map(|_| zeros("ssm_state", ssm_shape))
                .collect::<Result<_>>()?,
        })
    }

    /// Layer `i`'s (conv, ssm) carries: `continued` false starts from zero and stores the final
    /// state (prefill), true continues it (decode step).
    pub(crate) fn carry(&self, i: usize, continued: bool) -> (Carry<'_>, Carry<'_>) {
        if continued {
            (
                Carry::Continue(&self.conv[i]),
                Carry::Continue(&self.ssm[i]),
            )
        } else {
            (Carry::Capture(&self.conv[i]), Carry::Capture(&self.ssm[i]))
        }
    }
}

/// Embedding, per-layer pre-norms, final norm and head: everything of a Mamba LM but the
/// mixers (mamba_ssm `MixerModel` + `lm_head`, transformers `Mamba{,2}ForCausalLM`).
pub struct Backbone {
    embedding: RowShards,       // [V, D]
    lm_head: Option<RowShards>, // [V, D], None when tied to the embedding
    norms: Vec<Tensor>,         // per layer [D]
    norm_f: Tensor,             // [D]
    d_model: usize,
    eps: f32,
}

impl Backbone {
    /// The embedding is `backbone.embeddings.weight` (transformers) or
    /// `backbone.embedding.weight` (state-spaces).
    pub(crate) fn load(
        ctx: &Context,
        dir: &ModelDir,
        n_layer: usize,
        vocab_size: usize,
        d_model: usize,
        eps: f32,
        tie_embeddings: bool,
    ) -> Result<Self> {
        let w = &dir.weights;
        let embedding_name = ["backbone.embeddings.weight", "backbone.embedding.weight"]
            .into_iter()
            .find(|n| w.contains(n))
            .ok_or_else(|| Error::MissingTensor {
                path: w.path().to_path_buf(),
                name: "backbone.embeddings.weight (or backbone.embedding.weight)".into(),
            })?;
        let embedding = dir.upload_rows(ctx, embedding_name, vocab_size, d_model)?;
        let lm_head = if tie_embeddings {
            None
        } else {
            Some(dir.upload_rows(ctx, "lm_head.weight", vocab_size, d_model)?)
        };
        let norms = (0..n_layer)
            .map(|i| dir.upload(ctx, &format!("backbone.layers.{i}.norm.weight"), &[d_model]))
            .collect::<Result<_>>()?;
        let norm_f = dir.upload(ctx, "backbone.norm_f.weight", &[d_model])?;
        Ok(Backbone {
            embedding,
            lm_head,
            norms,
            norm_f,
            d_model,
            eps,
        })
    }

    /// Record a forward pass over `ids` (u32 `[batch * len]`): per layer i,
    /// `residual += hidden; hidden = mixer(i, rmsnorm_i(residual))`, then the final norm and
    /// the head. `mixer(rec, i, x, want_ssm_y)` maps `[B·L, D]` to `[B·L, D]`. With a
    /// reduction, both streams shrink after its layers and later layers run on fewer tokens.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &self,
        rec: &mut Recorder,
        ids: &Tensor,
        batch: usize,
        logits: Logits,
        hidden_states: bool,
        reduction: Option<&Reduction>,
        mut mixer: impl FnMut(&mut Recorder, usize, &Tensor, bool) -> Result<MixerOut>,
    ) -> Result<ForwardOutput> {
        let (d, eps) = (self.d_model, self.eps);
        let mut len = ids.numel() / batch;
        let mut residual = embedding(rec, ids, &self.embedding)?; // [B·L, D]
        let mut positions = reduction
            .map(|_| {
                let iota: Vec<u32> = (0..batch).flat_map(|_| 0..len as u32).collect();
                rec.context().upload_u32("positions", &[batch, len], &iota)
            })
            .transpose()?;
        let mut states = Vec::new();
        let mut hidden: Option<Tensor> = None;
        for (i, norm) in self.norms.iter().enumerate() {
            let x = add_rmsnorm(rec, &residual, hidden.as_ref(), norm, eps)?; // residual += hidden; [B·L, D]
            if hidden_states && i > 0 {
                states.push(rec.snapshot(&format!("hidden_states.{}", i - 1), &residual)?);
            }
            let want_y = reduction.is_some_and(|r| r.wants_ssm_output(i));
            let out = mixer(rec, i, &x, want_y)?; // [B·L, D]
            hidden = Some(out.hidden);
            if let (Some(r), Some(pos), Some(h)) = (reduction, positions.as_ref(), hidden.as_ref())
            {
                let reduced =
                    r.after_layer(rec, i, batch, h, &residual, out.ssm_y.as_ref(), pos)?;
                if let Some(reduced) = reduced {
                    len = reduced.positions.numel() / batch;
                    residual = reduced.residual;
                    hidden = Some(reduced.hidden);
                    positions = Some(reduced.positions);
                }
            }
        }
        let normed = add_rmsnorm(rec, &residual, hidden.as_ref(), &self.norm_f, eps)?; // [B·L, D]
        if hidden_states {
            states.push(residual.clone());
            states.push(normed.clone());
        }
        let rows = match logits {
            Logits::All => Some(normed.mat()),
            // Each sequence's last row.
            Logits::Last => Some(MatView {
                tensor: &normed,
                rows: batch,
                cols: d,
                offset: (len - 1) * d,
                stride: len * d,
            }),
            Logits::None => None,
        };
        let logits = rows.map(|x| self.head(rec, x)).transpose()?;
        Ok(ForwardOutput {
            logits,
            hidden_states: states,
            positions,
        })
    }
}

impl Backbone {
    /// Logits `[rows, V]` of `x` `[rows, D]`, one matmul per shard of the head.
    fn head(&self, rec: &mut Recorder, x: MatView) -> Result<Tensor> {
        let head = self.lm_head.as_ref().unwrap_or(&self.embedding); // [V, D]
        let logits = rec.alloc("logits", &[x.rows, head.rows()])?;
        for (first_row, shard) in head.shards() {
            matmul_into_columns(rec, x, shard, &logits, first_row);
        }
        Ok(logits)
    }
}

/// A causal LM: a [`Backbone`] around one mixer per layer. `forward`, `run`, `generate` and
/// `run_reduced` are written once here for every such model.
// Only this crate implements the trait and nothing needs its futures to be `Send`.
#[allow(async_fn_in_trait)]
pub trait CausalLm {
    fn vocab_size(&self) -> usize;

    fn new_cache(&self, ctx: &Context, batch: usize) -> Result<MambaCache>;

    /// The embedding, residual stream, final norm and head around the mixers.
    fn backbone(&self) -> &Backbone;

    /// Layer `i`'s mixer, `x` `[B·L, D]` -> `[B·L, D]`, and with `want_y` the SSM output
    /// before the gate `[B·L, E]` (the reduction's importance).
    fn mixer(
        &self,
        rec: &mut Recorder,
        i: usize,
        x: &Tensor,
        batch: usize,
        carry: (Carry, Carry),
        want_y: bool,
    ) -> Result<MixerOut>;

    /// Record a forward pass over `ids` (u32 `[batch * len]`). With a cache, `continue_cache`
    /// false starts from zero state (prefill) and true continues it (decode); both leave the
    /// final state in the cache. A reduction shortens the sequence after its layers.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        rec: &mut Recorder,
        ids: &Tensor,
        batch: usize,
        logits: Logits,
        hidden_states: bool,
        cache: Option<(&MambaCache, bool)>,
        reduction: Option<&Reduction>,
    ) -> Result<ForwardOutput> {
        self.backbone().forward(
            rec,
            ids,
            batch,
            logits,
            hidden_states,
            reduction,
            |rec, i, x, want_y| {
                let carry = cache.map_or((Carry::None, Carry::None), |(c, cont)| c.carry(i, cont));
                self.mixer(rec, i, x, batch, carry, want_y)
            },
        )
    }

    /// Logits `[batch, len, vocab]` (flat) and, when asked, the hidden states (flat each).
    async fn run(
        &self,
        ctx: &Context,
        ids: &[i64],
        batch: usize,
        hidden_states: bool,
    ) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        if batch == 0 || !ids.len().is_multiple_of(batch) {
            return Err(Error::InvalidInput(format!(
                "{} token ids do not split into {batch} sequences",
                ids.len()
            )));
        }
        let ids = check_ids(ids, self.vocab_size())?;
        let ids = ctx.upload_u32("input_ids", &[ids.len()], &ids)?;
        let mut rec = ctx.recorder();
        let out = self.forward(
            &mut rec,
            &ids,
            batch,
            Logits::All,
            hidden_states,
            None,
            None,
        )?;
        let logits = out.logits.expect("requested");
        let mut wanted = vec![&logits];
        wanted.extend(out.hidden_states.iter());
        let mut data = rec.submit_and_read(&wanted).await?;
        check_finite(|| "the logits".into(), &data[0])?;
        for (i, h) in data[1..].iter().enumerate() {
            check_finite(|| format!("hidden_states.{i}"), h)?;
        }
        let logits = data.remove(0);
        Ok((logits, data))
    }

    /// Logits of one sequence under a reduction: `[len', vocab]` (flat) and the input position of
    /// each of the `len'` outputs.
    async fn run_reduced(
        &self,
        ctx: &Context,
        ids: &[i64],
        reduction: &Reduction,
    ) -> Result<(Vec<f32>, Vec<u32>)> {
        let ids = check_ids(ids, self.vocab_size())?;
        let ids = ctx.upload_u32("input_ids", &[ids.len()], &ids)?;
        let mut rec = ctx.recorder();
        let out = self.forward(&mut rec, &ids, 1, Logits::All, false, None, Some(reduction))?;
        let (logits, positions) = (
            out.logits.expect("requested"),
            out.positions.expect("reduced"),
        );
        let mut data = rec.submit_and_read(&[&logits, &positions]).await?;
        check_finite(|| "the logits".into(), &data[0])?;
        let positions = data.remove(1).iter().map(|v| v.to_bits()).collect();
        Ok((data.remove(0), positions))
    }

    /// Greedy decoding: one prefill over the prompt, then one recurrent step per new token (the
    /// prefix is never re-run). Each step feeds the GPU's argmax straight back as the next input
    /// and reads back only that id (the argmax returns none for a row with NaN or an infinity,
    /// an error here); the id goes to `on_token` before the next step runs. Stops early at
    /// `eos`, or at the first error of `on_token`. A reduction shortens the prefill; the state
    /// it leaves is what decoding continues from. Holds no generated ids.
    async fn generate_each(
        &self,
        ctx: &Context,
        prompt: &[i64],
        max_new_tokens: usize,
        eos: Option<u32>,
        reduction: Option<&Reduction>,
        mut on_token: impl FnMut(u32) -> Result<()>,
    ) -> Result<()> {
        let prompt = check_ids(prompt, self.vocab_size())?;
        let cache = self.new_cache(ctx, 1)?;
        let mut input = ctx.upload_u32("prompt_ids", &[prompt.len()], &prompt)?;
        for step in 0..max_new_tokens {
            let mut rec = ctx.recorder();
            let out = self.forward(
                &mut rec,
                &input,
                1,
                Logits::Last,
                false,
                Some((&cache, step > 0)),
                reduction.filter(|_| step == 0),
            )?;
            let logits = out.logits.expect("requested");
            let next = argmax(&mut rec, &logits)?;
            // The GPU argmax checks the row's finiteness as it reduces it: NO_INDEX (never the
            // next input) for a row with NaN or an infinity, or none above -3e38.
            let id = rec.submit_and_read(&[&next]).await?[0][0].to_bits();
            if id as usize >= self.vocab_size() {
                return Err(Error::NonFinite {
                    what: format!("the logits of new token {step}"),
                });
            }
            on_token(id)?;
            if Some(id) == eos {
                break;
            }
            input = next;
        }
        Ok(())
    }

    /// [`CausalLm::generate_each`], collecting the new ids; at most [`MAX_HELD_TOKENS`].
    async fn generate(
        &self,
        ctx: &Context,
        prompt: &[i64],
        max_new_tokens: usize,
        eos: Option<u32>,
        reduction: Option<&Reduction>,
    ) -> Result<Vec<u32>> {
        check_held_tokens(max_new_tokens)?;
        let mut generated = Vec::new();
        self.generate_each(ctx, prompt, max_new_tokens, eos, reduction, |id| {
            generated.push(id);
            Ok(())
        })
        .await?;
        Ok(generated)
    }
}

/// New token ids that [`CausalLm::generate`] holds in memory at most (64 MiB of ids); the
/// streaming [`CausalLm::generate_each`] holds none.
pub const MAX_HELD_TOKENS: usize = 1 << 24;

/// Refuse to collect more than [`MAX_HELD_TOKENS`] ids, before anything runs.
pub fn check_held_tokens(max_new_tokens: usize) -> Result<()> {
    if max_new_tokens > MAX_HELD_TOKENS {
        return Err(Error::InvalidInput(format!(
            "max_new_tokens {max_new_tokens} is over the {MAX_HELD_TOKENS} new ids held in \
             memory (stream them instead: generate_each, or the CLI without --json)"
        )));
    }
    Ok(())
}

/// A reduction's layers must be layers of a model `depth` deep, the last excluded (its output
/// is the head's input). Checked here without `layer + 1`, which wraps for `usize::MAX`.
pub fn check_reduction_depth(r: &Reduction, depth: usize) -> Result<()> {
    match r.layers().iter().find(|&&l| l >= depth.saturating_sub(1)) {
        Some(&l) => Err(Error::InvalidInput(format!(
            "reduction after layer {l}: the model has {depth} layers (0..={}), and the last \
             cannot be reduced after",
            depth.saturating_sub(1)
        ))),
        None => Ok(()),
    }
}

/// Check token ids against the vocabulary and convert them for upload.
pub fn check_ids(ids: &[i64], vocab: usize) -> Result<Vec<u32>> {
    if ids.is_empty() {
        return Err(Error::InvalidInput("no tokens".into()));
    }
    ids.iter()
        .enumerate()
        .map(|(position, &id)| {
            if id < 0 || id as usize >= vocab {
                Err(Error::TokenOutOfRange {
                    id,
                    position,
                    vocab,
                })
            } else {
                Ok(id as u32)
            }
        })
        .collect()
}

/// A language model folder of either kind, picked by config.json: `model_type` `mamba2` (or
/// state-spaces' `ssm_cfg.layer` `Mamba2`) is Mamba-2; `mamba` or none is Mamba-1.
pub enum LanguageModel {
    Mamba(MambaLm),
    Mamba2(Mamba2Lm),
}

impl LanguageModel {
    pub fn load(ctx: &Context, dir: &Path) -> Result<Self> {
        Self::from_model_dir(ctx, &ModelDir::open(dir)?)
    }

    pub fn from_model_dir(ctx: &Context, dir: &ModelDir) -> Result<Self> {
        let model_type = dir.config.get("model_type").and_then(|v| v.as_str());
        let layer = dir
            .config
            .pointer("/ssm_cfg/layer")
            .and_then(|v| v.as_str());
        match (model_type, layer) {
            (Some("mamba2"), _) | (None, Some("Mamba2")) => {
                let config = Mamba2Config::from_model_dir(dir)?;
                Ok(Self::Mamba2(Mamba2Lm::from_model_dir(ctx, dir, config)?))
            }
            (Some("mamba") | None, _) => {
                let config = MambaConfig::from_model_dir(dir)?;
                Ok(Self::Mamba(MambaLm::from_model_dir(ctx, dir, config)?))
            }
            (Some(other), _) => Err(dir.config_error(format!(
                "model_type `{other}` is not a language model this engine runs (mamba, mamba2)"
            ))),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Mamba(m) => m.config.vocab_size,
            Self::Mamba2(m) => m.config.vocab_size,
        }
    }

    pub fn d_model(&self) -> usize {
        match self {
            Self::Mamba(m) => m.config.d_model,
            Self::Mamba2(m) => m.config.d_model,
        }
    }

    pub fn n_layer(&self) -> usize {
        match self {
            Self::Mamba(m) => m.config.n_layer,
            Self::Mamba2(m) => m.config.n_layer,
        }
    }

    /// See [`CausalLm::run_reduced`]; the reduction's layers must exist in this model.
    pub async fn run_reduced(
        &self,
        ctx: &Context,
        ids: &[i64],
        reduction: &Reduction,
    ) -> Result<(Vec<f32>, Vec<u32>)> {
        check_reduction_depth(reduction, self.n_layer())?;
        match self {
            Self::Mamba(m) => m.run_reduced(ctx, ids, reduction).await,
            Self::Mamba2(m) => m.run_reduced(ctx, ids, reduction).await,
        }
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        match self {
            Self::Mamba(m) => m.config.eos_token_id,
            Self::Mamba2(m) => m.config.eos_token_id,
        }
    }

    /// Record the prefill of one sequence of `ids` (u32 `[len]`), reduced when asked: the last
    /// token's logits `[1, V]`.
    pub fn record_prefill(
        &self,
        rec: &mut Recorder,
        ids: &Tensor,
        reduction: Option<&Reduction>,
    ) -> Result<Tensor> {
        if let Some(r) = reduction {
            check_reduction_depth(r, self.n_layer())?;
        }
        let out = match self {
            Self::Mamba(m) => m.forward(rec, ids, 1, Logits::Last, false, None, reduction),
            Self::Mamba2(m) => m.forward(rec, ids, 1, Logits::Last, false, None, reduction),
        }?;
        Ok(out.logits.expect("requested"))
    }

    /// See [`CausalLm::run`].
    pub async fn run(
        &self,
        ctx: &Context,
        ids: &[i64],
        batch: usize,
        hidden_states: bool,
    ) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        match self {
            Self::Mamba(m) => m.run(ctx, ids, batch, hidden_states).await,
            Self::Mamba2(m) => m.run(ctx, ids, batch, hidden_states).await,
        }
    }

    /// See [`CausalLm::generate`].
    pub async fn generate(
        &self,
        ctx: &Context,
        prompt: &[i64],
        max_new_tokens: usize,
        eos: Option<u32>,
        reduction: Option<&Reduction>,
    ) -> Result<Vec<u32>> {
        if let Some(r) = reduction {
            check_reduction_depth(r, self.n_layer())?;
        }
        match self {
            Self::Mamba(m) => {
                m.generate(ctx, prompt, max_new_tokens, eos, reduction)
                    .await
            }
            Self::Mamba2(m) => {
                m.generate(ctx, prompt, max_new_tokens, eos, reduction)
                    .await
            }
        }
    }

    /// See [`CausalLm::generate_each`].
    pub async fn generate_each(
        &self,
        ctx: &Context,
        prompt: &[i64],
        max_new_tokens: usize,
        eos: Option<u32>,
        reduction: Option<&Reduction>,
        on_token: impl FnMut(u32) -> Result<()>,
    ) -> Result<()> {
        if let Some(r) = reduction {
            check_reduction_depth(r, self.n_layer())?;
        }
        match self {
            Self::Mamba(m) => {
                m.generate_each(ctx, prompt, max_new_tokens, eos, reduction, on_token)
                    .await
            }
            Self::Mamba2(m) => {
                m.generate_each(ctx, prompt, max_new_tokens, eos, reduction, on_token)
                    .await
            }
        }
    }
}
