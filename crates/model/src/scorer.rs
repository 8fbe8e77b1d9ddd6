//! Per-token log-probs (and entropies) of completions given prompts — the learner's forward.
//!
//! Each row's sequence (prompt, then completion) is packed whole into rows of one to four times
//! the longest sequence ([`crate::batch::pack`]), with its own positions and a block-diagonal
//! causal mask, so an RL batch whose completions run from a few tokens to the generation limit
//! computes its real tokens rather than `rows x (longest prompt + longest completion)`; rows with
//! the same prompt (a group's samples) share one copy of it, so its tokens are computed once, and
//! a completion's last token, predicted but never read, is not an input at all. Only the hidden
//! states that predict completion tokens go through the `[.., vocab]` projection (one per real
//! token, not per cell of the `[batch, C]` result, `C` the longest completion). On an autodiff
//! backend the result is differentiable with respect to the weights.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use crate::batch::{key_cost, pack, pack_cost, packed_ctx};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::llama::Llama;

/// Log-probs of a batch of completions.
#[derive(Debug, Clone)]
pub struct Scores<B: Backend> {
    /// `log softmax(logits / T)` at each completion token, `[batch, C]`; 0 past a row's end.
    pub logprobs: Tensor<B, 2>,
    /// Entropy of the temperature-scaled next-token distribution, `[batch, C]`, when asked for.
    pub entropy: Option<Tensor<B, 2>>,
    /// 1.0 where the column is a real completion token, `[batch, C]`.
    pub mask: Tensor<B, 2>,
    /// Completion lengths.
    pub lengths: Vec<usize>,
    /// Positions the forward computed: the packed rows times their width.
    pub positions: usize,
}

/// One row to score.
#[derive(Debug, Clone, Copy)]
pub struct ScoreRow<'a> {
    /// Context tokens (not scored).
    pub prompt: &'a [u32],
    /// Tokens whose log-probs are returned.
    pub completion: &'a [u32],
}

impl ScoreRow<'_> {
    /// Its completion tokens that are inputs of the forward: all but the last, which is predicted
    /// but never read.
    pub fn completion_inputs(&self) -> usize {
        self.completion.len().saturating_sub(1)
    }
}

/// What [`score`]'s forward over `rows` costs for `cfg`'s model, in positions of projections
/// ([`pack_cost`]), so a caller can plan batches by the scorer's own layout.
pub fn packing_cost(cfg: &ModelConfig, rows: &[ScoreRow<'_>]) -> f64 {
    let (prompts, inputs) = pack_inputs(rows);
    pack_cost(&prompts, &inputs, key_cost(cfg))
}

/// What [`pack`] lays out for `rows`: each prompt and its completion inputs.
fn pack_inputs<'a>(rows: &[ScoreRow<'a>]) -> (Vec<&'a [u32]>, Vec<usize>) {
    rows.iter().map(|r| (r.prompt, r.completion_inputs())).unzip()
}

/// Scores completions under the model at a sampling temperature (`<= 0` means 1).
pub fn score<B: Backend>(
    model: &Llama<B>,
    rows: &[ScoreRow<'_>],
    temperature: f32,
    with_entropy: bool,
) -> Result<Scores<B>> {
    let cfg = model.config();
    let vocab = cfg.vocab_size;
    if rows.is_empty() {
        return Err(ModelError::InvalidRequest("nothing to score".into()));
    }
    for (i, r) in rows.iter().enumerate() {
        if r.prompt.is_empty() {
            return Err(ModelError::InvalidRequest(format!("row {i}: empty prompt")));
        }
        if let Some(&t) = r.prompt.iter().chain(r.completion).find(|&&t| t as usize >= vocab) {
            return Err(ModelError::InvalidRequest(format!("row {i}: token {t} >= vocab size {vocab}")));
        }
    }
    let b = rows.len();
    let c = rows.iter().map(|r| r.completion.len()).max().unwrap_or(0).max(1);
    let lens: Vec<usize> = rows.iter().map(|r| r.completion.len()).collect();
    let (prompts, inputs) = pack_inputs(rows);
    let packing = pack(&prompts, &inputs, key_cost(cfg));
    let (n, w) = (packing.rows, packing.width);
    let mut tokens = vec![0i64; n * w];
    let mut positions = vec![0usize; n * w];
    // For each completion token, in row order: the packed column whose hidden state predicts it,
    // i.e. the one just before it (the prompt's last for the first token). Only these go through
    // the `[.., vocab]` projection; one more entry (column 0, masked) stands for every cell of
    // the `[batch, C]` output past a row's end.
    let real: usize = lens.iter().sum();
    let mut at = Vec::with_capacity(real + 1);
    let mut targets = Vec::with_capacity(real + 1);
    let mut cell_of = Vec::with_capacity(b * c);
    let mut mask = Vec::with_capacity(b * c);
    for ((r, slot), &input) in rows.iter().zip(&packing.slots).zip(&inputs) {
        let (prompt, completion) = (slot.row * w + slot.prompt, slot.row * w + slot.completion);
        // A shared prompt is written once per sequence that shares it: the same tokens each time.
        for (k, &t) in r.prompt.iter().enumerate() {
            tokens[prompt + k] = t as i64;
            positions[prompt + k] = k;
        }
        for (k, &t) in r.completion[..input].iter().enumerate() {
            tokens[completion + k] = t as i64;
            positions[completion + k] = r.prompt.len() + k;
        }
        for (j, &t) in r.completion.iter().enumerate() {
            cell_of.push(at.len() as i64);
            at.push(if j == 0 { prompt + r.prompt.len() - 1 } else { completion + j - 1 } as i64);
            targets.push(t as i64);
        }
        cell_of.extend(std::iter::repeat_n(real as i64, c - r.completion.len()));
        mask.extend((0..c).map(|j| if j < r.completion.len() { 1.0f32 } else { 0.0 }));
    }
    at.push(0);
    targets.push(0);
    let device = model.device();
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(tokens, [n, w]), &device);
    let ctx = packed_ctx::<B>(cfg, n, w, &positions, &packing.cells, &device);
    let hidden = model.forward_hidden(tokens, &ctx, None).reshape([n * w, cfg.hidden_size]);
    let at = Tensor::<B, 1, Int>::from_data(TensorData::new(at, [real + 1]), &device);
    let hidden = hidden.select(0, at).reshape([1, real + 1, cfg.hidden_size]);
    let t = if temperature > 0.0 { temperature } else { 1.0 };
    let logits = model.logits(hidden) / t;
    let logp = log_softmax(logits, 2);
    let targets = Tensor::<B, 3, Int>::from_data(TensorData::new(targets, [1, real + 1, 1]), &device);
    let cell_of = Tensor::<B, 1, Int>::from_data(TensorData::new(cell_of, [b * c]), &device);
    let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [b, c]), &device);
    let to_cells =
        |per_token: Tensor<B, 1>| per_token.select(0, cell_of.clone()).reshape([b, c]) * mask.clone();
    let logprobs = to_cells(logp.clone().gather(2, targets).reshape([real + 1]));
    let entropy =
        with_entropy.then(|| to_cells((logp.clone().exp() * logp).sum_dim(2).neg().reshape([real + 1])));
    Ok(Scores { logprobs, entropy, mask, lengths: lens, positions: packing.positions() })
}
