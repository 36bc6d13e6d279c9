//! What a host shows about a classification beside the logits: the top classes, the token
//! grid and, after a pruned forward pass, where every token came from (the position maps and
//! scores the trace keeps on the GPU). `classify --dump-masks` and the desktop demo read them.

use crate::error::Result;
use crate::models::vision::{Classifier, VisionModel};
use crate::models::Trace;
use crate::prune::Pruning;
use crate::runtime::{Recorder, Tensor};

/// Where every token of a pruned forward pass came from, left on the GPU by the trace: what
/// `classify --dump-masks` writes and the demo draws its token grid from.
pub struct TokenMaps {
    /// Per layer: the original index of every token it ran on (u32 `[B, N_layer]`); empty
    /// when nothing was pruned (every layer ran on all tokens).
    pub positions: Vec<Tensor>,
    /// Per layer: the importance scores (`[B, N_layer]`, in the order of `positions`) of the
    /// pruning step after it, if one follows.
    pub scores: Vec<Option<Tensor>>,
}

impl TokenMaps {
    /// The `layers.{i}.positions` and `layers.{i}.scores` entries of a trace.
    pub fn from_trace(trace: &Trace) -> Self {
        let layer_of = |name: &str, suffix: &str| -> Option<usize> {
            name.strip_prefix("layers.")?
                .strip_suffix(suffix)?
                .parse()
                .ok()
        };
        let mut positions = Vec::new();
        let mut scores = Vec::new();
        for (name, tensor) in trace {
            if let Some(i) = layer_of(name, ".positions") {
                positions.push((i, tensor.clone()));
            } else if let Some(i) = layer_of(name, ".scores") {
                scores.push((i, tensor.clone()));
            }
        }
        positions.sort_by_key(|(i, _)| *i);
        let scores = (0..positions.len())
            .map(|i| scores.iter().find(|(l, _)| *l == i).map(|(_, t)| t.clone()))
            .collect();
        TokenMaps {
            positions: positions.into_iter().map(|(_, t)| t).collect(),
            scores,
        }
    }
}

/// The tokens of one image: a `rows x cols` patch grid in row-major order, with a class token
/// inserted at original index `cls` (Vim) or none (PlainMamba).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenGrid {
    pub rows: usize,
    pub cols: usize,
    pub cls: Option<usize>,
}

impl TokenGrid {
    /// Which grid cells (row-major) are among `positions`, the original indices of the tokens
    /// a layer ran on (one image's row of a [`TokenMaps::positions`] entry); the class token
    /// has no cell. Indices outside the grid are ignored.
    pub fn kept_cells(&self, positions: &[u32]) -> Vec<bool> {
        let mut kept = vec![false; self.rows * self.cols];
        for &p in positions {
            let p = p as usize;
            let cell = match self.cls {
                Some(cls) if p == cls => continue,
                Some(cls) if p > cls => p - 1,
                _ => p,
            };
            if let Some(k) = kept.get_mut(cell) {
                *k = true;
            }
        }
        kept
    }
}

impl Classifier {
    /// The `k` most probable classes of one image's logits, with their softmax probabilities.
    pub fn top(&self, logits: &[f32], k: usize) -> Vec<(String, f32)> {
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let exps: Vec<f32> = logits.iter().map(|v| (v - max).exp()).collect();
        let sum: f32 = exps.iter().sum();
        let mut order: Vec<usize> = (0..logits.len().min(self.labels.len())).collect();
        order.sort_by(|&a, &b| exps[b].total_cmp(&exps[a]));
        order
            .into_iter()
            .take(k)
            .map(|i| (self.labels[i].clone(), exps[i] / sum))
            .collect()
    }
}

impl VisionModel {
    /// [`VisionModel::forward`] with a trace, returning the logits and the token maps.
    pub fn forward_with_token_maps(
        &self,
        rec: &mut Recorder,
        pixels: &Tensor,
        pruning: Option<&Pruning>,
    ) -> Result<(Tensor, TokenMaps)> {
        let mut trace = Vec::new();
        let logits = self.forward(rec, pixels, pruning, Some(&mut trace))?;
        Ok((logits, TokenMaps::from_trace(&trace)))
    }

    /// Number of layers (blocks).
    pub fn depth(&self) -> usize {
        match self {
            VisionModel::Vim(m) => m.config.depth,
            VisionModel::PlainMamba(m) => m.config.num_layers,
        }
    }

    /// The token grid at the model's input size.
    pub fn token_grid(&self) -> TokenGrid {
        match self {
            VisionModel::Vim(m) => {
                let (rows, cols) = m.config.grid();
                let cls = m.config.cls_position();
                TokenGrid {
                    rows,
                    cols,
                    cls: Some(cls),
                }
            }
            VisionModel::PlainMamba(m) => {
                let (h, w) = m.image_size();
                let (rows, cols) = m.config.grid(h, w);
                TokenGrid {
                    rows,
                    cols,
                    cls: None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TokenGrid;

    #[test]
    fn kept_cells_skip_the_class_token() {
        let grid = TokenGrid {
            rows: 2,
            cols: 2,
            cls: Some(2),
        };
        // Tokens 0, 1 | cls | 3, 4 -> cells 0, 1, 2, 3.
        assert_eq!(grid.kept_cells(&[0, 2, 4]), [true, false, false, true]);
        assert_eq!(grid.kept_cells(&[0, 1, 2, 3, 4]), [true; 4]);
        let plain = TokenGrid { cls: None, ..grid };
        assert_eq!(plain.kept_cells(&[2, 9]), [false, false, true, false]);
    }
}
