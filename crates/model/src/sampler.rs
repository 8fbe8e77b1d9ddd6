//! Batched generation with a KV cache.
//!
//! A [`Generator`] prefills a left-padded batch of prompts once (equal prompts, such as a GRPO
//! group's, once for all their rows), then decodes one token per row per [`Generator::step`].
//! Rows stop independently (stop token, stop string, length) and finished rows are dropped from
//! the cache so the batch only pays for live rows. The model is passed to every
//! step, so a caller may swap in new weights between steps (partial rollouts). The cache then
//! holds keys/values the earlier weights computed: [`Generator::recompute`] rebuilds it under the
//! new weights (one prefill of every live row's prompt and tokens so far), as AReaL's and verl's
//! interruptible generation re-prefill an interrupted sequence, so what follows is sampled by the
//! new version alone; without it the next tokens mix the two versions.
//!
//! Every sampled token comes with its log-prob under the distribution it was drawn from: the
//! temperature-scaled softmax `log softmax(logits / T)`, renormalised over what top-k/top-p kept
//! (without truncation, what the scorer recomputes). Greedy decoding (`temperature = 0`) reports
//! `log softmax(logits)`.
//! Each row has its own RNG seeded from `(seed, row)`, so a row's tokens do not depend on which
//! other rows share its batch.

use burn::prelude::*;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sluice_core::splitmix64;

use crate::batch::{equal_prompts, forward_ctx};
use crate::cache::KvCache;
use crate::error::{ModelError, Result};
use crate::llama::Llama;
use crate::tokenizer::Tokenizer;

/// Sampling parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy.
    pub temperature: f32,
    /// Nucleus sampling: smallest set of tokens whose probability reaches `top_p` (1 = off).
    pub top_p: f32,
    /// Only the `top_k` most likely tokens can be drawn (0 = off).
    pub top_k: usize,
    /// Most tokens generated per row.
    pub max_new_tokens: usize,
    /// A row stops after producing any of these (the stop token is kept in the output).
    pub stop_token_ids: Vec<u32>,
    /// A row stops once its decoded output contains any of these (the tokens are kept).
    pub stop_strings: Vec<String>,
    /// RNG seed; row `i` draws from a generator seeded by `(seed, i)`.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: 64,
            stop_token_ids: Vec::new(),
            stop_strings: Vec::new(),
            seed: 0,
        }
    }
}

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// A stop token or stop string.
    Stop,
    /// `max_new_tokens` reached.
    Length,
}

/// One row's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// Generated token ids (the stop token included).
    pub tokens: Vec<u32>,
    /// Log-prob of each generated token under the distribution it was drawn from: the
    /// temperature-scaled softmax, restricted to what top-k and top-p kept and renormalised over
    /// it (the behaviour policy importance weights need). Greedy (temperature 0): under the
    /// softmax at temperature 1.
    pub logprobs: Vec<f32>,
    /// Why it stopped.
    pub finish: FinishReason,
}

struct Row {
    prompt: Vec<u32>,
    pad: usize,
    out: Vec<u32>,
    logprobs: Vec<f32>,
    finish: Option<FinishReason>,
    rng: rand::rngs::StdRng,
}

/// An in-progress batched generation.
pub struct Generator<B: Backend> {
    params: SamplingParams,
    rows: Vec<Row>,
    /// Cache row -> row index, for the rows still decoding.
    live: Vec<usize>,
    cache: KvCache<B>,
    /// Logits of the next token for each live row, `[live, vocab]`, on the host.
    next_logits: Vec<f32>,
    vocab: usize,
    stop_decoder: Option<Tokenizer>,
}

impl<B: Backend> Generator<B> {
    /// Validates the request and prefills every prompt. `tokenizer` is needed only for stop strings.
    pub fn new(
        model: &Llama<B>,
        prompts: &[Vec<u32>],
        params: &SamplingParams,
        tokenizer: Option<&Tokenizer>,
    ) -> Result<Self> {
        let cfg = model.config();
        let vocab = cfg.vocab_size;
        if prompts.is_empty() {
            return Err(ModelError::InvalidRequest("no prompts".into()));
        }
        for (i, p) in prompts.iter().enumerate() {
            if p.is_empty() {
                return Err(ModelError::InvalidRequest(format!("prompt {i} is empty")));
            }
            if let Some(&t) = p.iter().find(|&&t| t as usize >= vocab) {
                return Err(ModelError::InvalidRequest(format!(
                    "prompt {i} has token {t} >= vocab size {vocab}"
                )));
            }
        }
        if !(params.temperature >= 0.0 && params.temperature.is_finite()) {
            return Err(ModelError::InvalidRequest(format!(
                "temperature {} must be >= 0",
                params.temperature
            )));
        }
        if !(params.top_p > 0.0 && params.top_p <= 1.0) {
            return Err(ModelError::InvalidRequest(format!("top_p {} must be in (0, 1]", params.top_p)));
        }
        if !params.stop_strings.is_empty() && tokenizer.is_none() {
            return Err(ModelError::InvalidRequest("stop strings need a tokenizer".into()));
        }
        let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let rows: Vec<Row> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| Row {
                prompt: p.clone(),
                pad: width - p.len(),
                out: Vec::new(),
                logprobs: Vec::new(),
                finish: (params.max_new_tokens == 0).then_some(FinishReason::Length),
                rng: rand::rngs::StdRng::seed_from_u64(splitmix64(params.seed ^ splitmix64(i as u64))),
            })
            .collect();
        let device = model.device();
        let b = prompts.len();
        let (hidden, cache, source) = prefill(model, &rows.iter().collect::<Vec<_>>(), width);
        let u = hidden.dims()[0];
        let last = hidden.slice([0..u, width - 1..width]);
        let mut next_logits = host_logits(model.logits(last));
        if u < b {
            next_logits =
                source.iter().flat_map(|&d| &next_logits[d * vocab..(d + 1) * vocab]).copied().collect();
        }
        let mut gen = Self {
            params: params.clone(),
            live: (0..b).collect(),
            rows,
            cache,
            next_logits,
            vocab,
            stop_decoder: tokenizer.cloned(),
        };
        gen.sample_and_prune(&device)?;
        Ok(gen)
    }

    /// Tokens generated so far by each row, in prompt order (a caller that swaps weights between
    /// steps learns from it which tokens each version produced).
    pub fn generated_lens(&self) -> Vec<usize> {
        self.rows.iter().map(|r| r.out.len()).collect()
    }

    /// True when every row has stopped.
    pub fn is_done(&self) -> bool {
        self.live.is_empty()
    }

    /// Feeds each live row its last token and samples the next one. A no-op when done.
    pub fn step(&mut self, model: &Llama<B>) -> Result<()> {
        if self.is_done() {
            return Ok(());
        }
        let device = model.device();
        let b = self.live.len();
        let past = self.cache.len();
        let mut tokens = Vec::with_capacity(b);
        let mut positions = Vec::with_capacity(b);
        let mut valid = Vec::with_capacity(b * (past + 1));
        for &r in &self.live {
            let row = &self.rows[r];
            tokens.push(*row.out.last().unwrap_or(&0) as i64);
            positions.push(row.prompt.len() + row.out.len() - 1);
            valid.extend((0..=past).map(|j| j >= row.pad));
        }
        let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(tokens, [b, 1]), &device);
        let ctx = forward_ctx::<B>(model.config(), b, 1, past, &positions, &valid, &device);
        let hidden = model.forward_hidden(tokens, &ctx, Some(&mut self.cache));
        self.next_logits = host_logits(model.logits(hidden));
        self.sample_and_prune(&device)
    }

    /// Rebuilds the key/value cache of every live row under `model`, as a generation under
    /// `model` alone would have built it from the same tokens: the padded prompts prefilled (equal
    /// prompts, a group's, once for all their rows), then every row's generated tokens but the
    /// last, which the next [`Generator::step`] feeds as usual. Called after new weights are
    /// swapped in. A no-op when done.
    pub fn recompute(&mut self, model: &Llama<B>) -> Result<()> {
        if self.is_done() {
            return Ok(());
        }
        let cfg = model.config();
        let device = model.device();
        let b = self.live.len();
        // The prefill's layout: every row padded on the left to one width.
        let width = {
            let r = &self.rows[self.live[0]];
            r.pad + r.prompt.len()
        };
        // Every live row has generated the same number of tokens (one per step).
        let fed = self.rows[self.live[0]].out.len().saturating_sub(1);
        if self.cache.len() != width + fed {
            return Err(ModelError::InvalidRequest(format!(
                "{} cached positions for a prefill of {width} and {fed} fed tokens",
                self.cache.len()
            )));
        }
        let live: Vec<&Row> = self.live.iter().map(|&r| &self.rows[r]).collect();
        let (_, mut cache, _) = prefill(model, &live, width);
        if fed > 0 {
            let (mut tokens, mut positions, mut valid) = (Vec::new(), Vec::new(), Vec::new());
            for &r in &self.live {
                let row = &self.rows[r];
                tokens.extend(row.out[..fed].iter().map(|&t| t as i64));
                positions.extend((0..fed).map(|j| row.prompt.len() + j));
                valid.extend((0..width + fed).map(|j| j >= row.pad));
            }
            let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(tokens, [b, fed]), &device);
            let ctx = forward_ctx::<B>(cfg, b, fed, width, &positions, &valid, &device);
            let _ = model.forward_hidden(tokens, &ctx, Some(&mut cache));
        }
        self.cache = cache;
        Ok(())
    }

    /// Runs until every row stops and returns the completions in prompt order.
    pub fn run(mut self, model: &Llama<B>) -> Result<Vec<Completion>> {
        while !self.is_done() {
            self.step(model)?;
        }
        Ok(self.finish())
    }

    /// The completions so far (rows still running are reported as `Length`).
    pub fn finish(self) -> Vec<Completion> {
        self.rows
            .into_iter()
            .map(|r| Completion {
                tokens: r.out,
                logprobs: r.logprobs,
                finish: r.finish.unwrap_or(FinishReason::Length),
            })
            .collect()
    }

    fn sample_and_prune(&mut self, device: &B::Device) -> Result<()> {
        let vocab = self.vocab;
        let mut keep = Vec::with_capacity(self.live.len());
        for (slot, &r) in self.live.iter().enumerate() {
            let row = &mut self.rows[r];
            if row.finish.is_some() {
                continue;
            }
            let logits = &self.next_logits[slot * vocab..(slot + 1) * vocab];
            let (tok, lp) = sample_token(logits, &self.params, &mut row.rng);
            row.out.push(tok);
            row.logprobs.push(lp);
            if self.params.stop_token_ids.contains(&tok) {
                row.finish = Some(FinishReason::Stop);
            } else if let Some(tk) = &self.stop_decoder {
                if !self.params.stop_strings.is_empty() {
                    let text = tk.decode(&row.out, false)?;
                    if self.params.stop_strings.iter().any(|s| text.contains(s.as_str())) {
                        row.finish = Some(FinishReason::Stop);
                    }
                }
            }
            if row.finish.is_none() && row.out.len() >= self.params.max_new_tokens {
                row.finish = Some(FinishReason::Length);
            }
            if row.finish.is_none() {
                keep.push(slot);
            }
        }
        if keep.len() != self.live.len() {
            if !keep.is_empty() {
                self.cache.retain_rows(&keep, device);
            }
            self.live = keep.iter().map(|&s| self.live[s]).collect();
        }
        Ok(())
    }
}

/// Prefills the prompts of `rows`, each padded on the left to `width`; equal prompts (a group's
/// samples) once, their cache rows then copied. Returns the hidden states of the distinct prompts,
/// `[distinct, width, hidden]`, the cache with one row per entry of `rows`, and which distinct
/// prompt each row has.
fn prefill<B: Backend>(
    model: &Llama<B>,
    rows: &[&Row],
    width: usize,
) -> (Tensor<B, 3>, KvCache<B>, Vec<usize>) {
    let (cfg, device) = (model.config(), model.device());
    let (source, distinct) = equal_prompts(&rows.iter().map(|r| r.prompt.as_slice()).collect::<Vec<_>>());
    let u = distinct.len();
    let mut tokens = Vec::with_capacity(u * width);
    let mut positions = Vec::with_capacity(u * width);
    let mut valid = Vec::with_capacity(u * width);
    for &i in &distinct {
        let row = rows[i];
        tokens.extend(std::iter::repeat_n(0i64, row.pad).chain(row.prompt.iter().map(|&t| t as i64)));
        positions.extend((0..width).map(|j| j.saturating_sub(row.pad)));
        valid.extend((0..width).map(|j| j >= row.pad));
    }
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(tokens, [u, width]), &device);
    let ctx = forward_ctx::<B>(cfg, u, width, 0, &positions, &valid, &device);
    let mut cache = KvCache::new(cfg.num_layers);
    let hidden = model.forward_hidden(tokens, &ctx, Some(&mut cache));
    if u < rows.len() {
        cache.retain_rows(&source, &device);
    }
    (hidden, cache, source)
}

fn host_logits<B: Backend>(logits: Tensor<B, 3>) -> Vec<f32> {
    crate::host::to_vec_f32(logits)
}

/// Draws one token; returns it with its log-prob under the distribution it was drawn from:
/// `log softmax(logits / T)` restricted to the tokens top-k and top-p kept, renormalised over them
/// (with neither, the full softmax). A learner correcting for the behaviour policy needs the
/// probability the token was actually drawn with; the untruncated one would bias every importance
/// weight by the mass the truncation removed.
///
/// One `exp` per vocabulary entry; the normaliser is summed in f64 (a sequential f32 sum over a
/// 50k vocabulary drifts by ~1e-5, which the sampler/scorer agreement would notice). Top-k/top-p
/// never sort the whole vocabulary: the candidate set grows geometrically until it holds the nucleus.
fn sample_token(logits: &[f32], p: &SamplingParams, rng: &mut impl Rng) -> (u32, f32) {
    let n = logits.len();
    let t = if p.temperature > 0.0 { p.temperature } else { 1.0 };
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let weights: Vec<f32> = logits.iter().map(|&v| ((v - max) / t).exp()).collect();
    let total: f64 = weights.iter().map(|&w| w as f64).sum();
    let log_total = total.ln();
    let logprob = |i: usize, log_norm: f64| (((logits[i] - max) / t) as f64 - log_norm) as f32;
    if p.temperature <= 0.0 {
        let best = logits
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) })
            .0;
        return (best as u32, logprob(best, log_total));
    }
    let (tok, log_norm) = if p.top_k == 0 && p.top_p >= 1.0 {
        // Inverse CDF over the full distribution.
        let u = rng.random::<f64>() * total;
        let mut acc = 0.0f64;
        let mut chosen = n - 1;
        for (i, &w) in weights.iter().enumerate() {
            acc += w as f64;
            if u < acc {
                chosen = i;
                break;
            }
        }
        (chosen, log_total)
    } else {
        let by_weight = |a: &usize, b: &usize| weights[*b].total_cmp(&weights[*a]).then(a.cmp(b));
        let mut idx: Vec<usize> = (0..n).collect();
        let limit = if p.top_k > 0 { p.top_k.min(n) } else { n };
        if limit < n {
            idx.select_nth_unstable_by(limit - 1, by_weight);
            idx.truncate(limit);
        }
        // The mass top-p is measured against: what top-k left.
        let pool: f64 = idx.iter().map(|&i| weights[i] as f64).sum();
        let target = p.top_p as f64 * pool;
        let mut k = limit.min(64);
        loop {
            if k < idx.len() {
                idx.select_nth_unstable_by(k - 1, by_weight);
            }
            let head: f64 = idx[..k].iter().map(|&i| weights[i] as f64).sum();
            if head >= target || k == idx.len() {
                break;
            }
            k = (k * 4).min(idx.len());
        }
        let top = &mut idx[..k];
        top.sort_unstable_by(by_weight);
        // Nucleus: the smallest prefix whose mass reaches top_p.
        let mut cut = k;
        let mut acc = 0.0f64;
        for (m, &i) in top.iter().enumerate() {
            acc += weights[i] as f64;
            if acc >= target {
                cut = m + 1;
                break;
            }
        }
        let kept: f64 = top[..cut].iter().map(|&i| weights[i] as f64).sum();
        let u = rng.random::<f64>() * kept;
        let mut acc = 0.0f64;
        let mut chosen = top[cut - 1];
        for &i in &top[..cut] {
            acc += weights[i] as f64;
            if u < acc {
                chosen = i;
                break;
            }
        }
        (chosen, kept.ln())
    };
    (tok as u32, logprob(tok, log_norm))
}

/// Generates completions for a batch of prompts (a [`Generator`] run to the end).
pub fn generate<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    tokenizer: Option<&Tokenizer>,
) -> Result<Vec<Completion>> {
    Generator::new(model, prompts, params, tokenizer)?.run(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_one_is_greedy_and_certain() {
        let logits = [0.0f32, 2.0, 1.0];
        let p = SamplingParams { temperature: 0.5, top_k: 1, ..Default::default() };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let (tok, lp) = sample_token(&logits, &p, &mut rng);
        assert_eq!(tok, 1);
        // The one token top-k keeps is drawn with probability 1.
        assert_eq!(lp, 0.0);
        // Greedy reports the softmax at temperature 1: 2 - ln(1 + e^2 + e^1).
        let greedy = SamplingParams { temperature: 0.0, ..Default::default() };
        let (tok, lp) = sample_token(&logits, &greedy, &mut rng);
        let expect = 2.0 - (1.0f32 + 2f32.exp() + 1f32.exp()).ln();
        assert!(tok == 1 && (lp - expect).abs() < 1e-6, "{lp} vs {expect}");
    }

    #[test]
    fn truncated_sampling_reports_the_probability_each_token_was_drawn_with() {
        // probabilities at T = 0.8 of [1.5, 1.0, 0.2, -1.0]: top-k 3 then top-p 0.9 of what is left.
        let logits = [1.5f32, 1.0, 0.2, -1.0];
        for p in [
            SamplingParams { temperature: 0.8, top_k: 3, ..Default::default() },
            SamplingParams { temperature: 0.8, top_p: 0.8, ..Default::default() },
            SamplingParams { temperature: 0.8, top_k: 3, top_p: 0.9, ..Default::default() },
        ] {
            let mut rng = rand::rngs::StdRng::seed_from_u64(5);
            let n = 20_000;
            let mut counts = [0usize; 4];
            let mut reported = [f32::NAN; 4];
            for _ in 0..n {
                let (tok, lp) = sample_token(&logits, &p, &mut rng);
                counts[tok as usize] += 1;
                reported[tok as usize] = lp;
            }
            let support: Vec<usize> = (0..4).filter(|&i| counts[i] > 0).collect();
            let mass: f32 = support.iter().map(|&i| reported[i].exp()).sum();
            assert!((mass - 1.0).abs() < 1e-5, "{p:?}: the reported probabilities sum to {mass}");
            for &i in &support {
                let got = counts[i] as f32 / n as f32;
                let want = reported[i].exp();
                assert!((got - want).abs() < 0.015, "{p:?}: token {i} drawn {got}, reported {want}");
            }
        }
    }

    #[test]
    fn top_p_restricts_support() {
        // probabilities ~ [0.665, 0.245, 0.090]: top_p 0.6 keeps only the first.
        let logits = [2.0f32, 1.0, 0.0];
        let p = SamplingParams { temperature: 1.0, top_p: 0.6, ..Default::default() };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200 {
            assert_eq!(sample_token(&logits, &p, &mut rng).0, 0);
        }
    }

    #[test]
    fn nucleus_larger_than_the_first_candidate_window() {
        // 1000 tokens with slowly falling logits: the 0.5 nucleus holds hundreds of tokens, so the
        // candidate window must grow past its first 64.
        let logits: Vec<f32> = (0..1000).map(|i| -(i as f32) * 0.001).collect();
        let w: Vec<f64> = logits.iter().map(|&l| (l as f64).exp()).collect();
        let total: f64 = w.iter().sum();
        let (mut acc, mut nucleus) = (0.0, 0);
        while acc < 0.5 * total {
            acc += w[nucleus];
            nucleus += 1;
        }
        let p = SamplingParams { temperature: 1.0, top_p: 0.5, ..Default::default() };
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..5000 {
            let (tok, _) = sample_token(&logits, &p, &mut rng);
            assert!((tok as usize) < nucleus, "token {tok} outside the {nucleus}-token nucleus");
            seen.insert(tok);
        }
        assert!(seen.len() > 300, "only {} distinct tokens drawn from a {nucleus}-token nucleus", seen.len());
    }

    #[test]
    fn full_sampling_matches_softmax_frequencies() {
        let logits = [1.0f32, 0.0, -1.0];
        let p = SamplingParams { temperature: 1.0, ..Default::default() };
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut counts = [0usize; 3];
        let n = 20_000;
        for _ in 0..n {
            counts[sample_token(&logits, &p, &mut rng).0 as usize] += 1;
        }
        let z: f32 = logits.iter().map(|v| v.exp()).sum();
        for i in 0..3 {
            let expect = logits[i].exp() / z;
            let got = counts[i] as f32 / n as f32;
            // 4 standard errors of a binomial proportion at n = 20000 is below 0.015.
            assert!((got - expect).abs() < 0.015, "token {i}: {got} vs {expect}");
        }
    }
}
