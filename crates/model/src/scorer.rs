//! Per-token log-probs (and entropies) of completions given prompts — the learner's forward.
//!
//! The batch is laid out as the sampler lays it out (prompts left-padded to a common width `P`,
//! completions right-padded to `C`), so every completion starts at column `P` and the completion
//! logits are one slice of the hidden states: no gather over ragged offsets, and the `[.., vocab]`
//! projection is paid only for completion positions. On an autodiff backend the result is
//! differentiable with respect to the weights.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use crate::batch::forward_ctx;
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
}

/// One row to score.
#[derive(Debug, Clone, Copy)]
pub struct ScoreRow<'a> {
    /// Context tokens (not scored).
    pub prompt: &'a [u32],
    /// Tokens whose log-probs are returned.
    pub completion: &'a [u32],
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
    let p = rows.iter().map(|r| r.prompt.len()).max().unwrap_or(0);
    let c = rows.iter().map(|r| r.completion.len()).max().unwrap_or(0).max(1);
    let width = p + c;
    let mut tokens = Vec::with_capacity(b * width);
    let mut positions = Vec::with_capacity(b * width);
    let mut valid = Vec::with_capacity(b * width);
    let mut targets = Vec::with_capacity(b * c);
    let mut mask = Vec::with_capacity(b * c);
    for r in rows {
        let pad = p - r.prompt.len();
        let end = p + r.completion.len();
        tokens.extend(std::iter::repeat_n(0i64, pad));
        tokens.extend(r.prompt.iter().chain(r.completion).map(|&t| t as i64));
        tokens.extend(std::iter::repeat_n(0i64, width - end));
        positions.extend((0..width).map(|j| j.saturating_sub(pad)));
        valid.extend((0..width).map(|j| j >= pad && j < end));
        targets.extend((0..c).map(|j| r.completion.get(j).map_or(0, |&t| t as i64)));
        mask.extend((0..c).map(|j| if j < r.completion.len() { 1.0f32 } else { 0.0 }));
    }
    let device = model.device();
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(tokens, [b, width]), &device);
    let ctx = forward_ctx::<B>(cfg, b, width, 0, &positions, &valid, &device);
    let hidden = model.forward_hidden(tokens, &ctx, None);
    // The token at column P + j is predicted by the hidden state at column P + j - 1.
    let hidden = hidden.slice([0..b, p - 1..p - 1 + c]);
    let t = if temperature > 0.0 { temperature } else { 1.0 };
    let logits = model.logits(hidden) / t;
    let logp = log_softmax(logits, 2);
    let targets = Tensor::<B, 3, Int>::from_data(TensorData::new(targets, [b, c, 1]), &device);
    let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [b, c]), &device);
    let logprobs = logp.clone().gather(2, targets).reshape([b, c]) * mask.clone();
    let entropy = with_entropy.then(|| {
        let ent = (logp.clone().exp() * logp).sum_dim(2).neg().reshape([b, c]);
        ent * mask.clone()
    });
    Ok(Scores { logprobs, entropy, mask, lengths: rows.iter().map(|r| r.completion.len()).collect() })
}
