//! Example: a user's own environment crate for sluice.
//!
//! Three pieces, each one trait of `sluice_core` (see `docs/environments.md`):
//! - [`Words`], a [`TaskSource`]: "reverse the word W" tasks, seeded.
//! - [`ReverseVerifier`], a [`Verifier`]: single-turn scoring with named reward parts.
//! - [`HotCold`], an [`Env`]: a multi-turn guessing game; each wrong guess gets an observation
//!   ("higher"/"lower") the model reads next turn; the episode ends on the right number or after
//!   the turn limit.
//!
//! `src/main.rs` serves [`HotCold`] with its tasks over zenoh (`sluice_envs::serve`), so rollout
//! workers on any host can use it as a remote environment; the tests roll both envs out with
//! sluice's rollout runner on a tiny model.

use sluice_core::{
    BoxFuture, Env, EnvError, Episode, Prompt, Reward, Started, StepResult, Task, TaskSource, Verifier,
};

const WORDS: [&str; 8] = ["river", "stone", "cloud", "amber", "tiger", "lemon", "piano", "sluice"];

/// "Reverse the word" tasks, cycling through a fixed list from a seed.
pub struct Words {
    next: u64,
}

impl Words {
    /// Tasks starting at `seed`.
    pub fn new(seed: u64) -> Self {
        Words { next: seed }
    }
}

impl TaskSource for Words {
    fn name(&self) -> &str {
        "reverse"
    }

    fn next_task(&mut self) -> Option<Task> {
        let i = self.next;
        self.next += 1;
        let word = WORDS[(i % WORDS.len() as u64) as usize];
        Some(Task {
            id: format!("reverse-{i}"),
            source: "reverse".into(),
            prompt: Prompt::Text(format!("Reverse the word {word}. Answer: ")),
            answer: word.chars().rev().collect::<String>().into(),
            metadata: serde_json::json!({ "word": word }),
        })
    }
}

/// 1 for the reversed word as the first word of the completion; part `exact` says so and
/// `prefix` gives partial credit for the letters right from the start.
pub struct ReverseVerifier;

impl Verifier for ReverseVerifier {
    fn score(&self, task: &Task, completion: &str) -> Reward {
        let want = task.answer.as_str().unwrap_or_default();
        let got = completion.split_whitespace().next().unwrap_or_default();
        let exact = (got == want) as u8 as f32;
        let prefix = got.chars().zip(want.chars()).take_while(|(a, b)| a == b).count() as f32
            / want.chars().count().max(1) as f32;
        Reward::new(exact + 0.1 * prefix).with_part("exact", exact).with_part("prefix", prefix)
    }
}

/// Guess a number in 1..=`max` in at most `turns` turns.
pub struct HotCold {
    /// Largest number.
    pub max: u32,
    /// Turns before the episode ends.
    pub turns: u32,
}

struct HotColdEpisode {
    secret: u32,
    turns_left: u32,
}

impl Env for HotCold {
    fn name(&self) -> &str {
        "hot_cold"
    }

    fn reset<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Started, EnvError>> {
        Box::pin(async move {
            let secret =
                task.answer.as_u64().filter(|&s| s >= 1 && s <= self.max as u64).ok_or_else(|| {
                    EnvError(format!("task {}: the answer must be a number in 1..={}", task.id, self.max))
                })?;
            let ep = HotColdEpisode { secret: secret as u32, turns_left: self.turns };
            Ok((Box::new(ep) as Box<dyn Episode>, String::new()))
        })
    }
}

impl Episode for HotColdEpisode {
    fn step<'a>(&'a mut self, action: &'a str) -> BoxFuture<'a, Result<StepResult, EnvError>> {
        Box::pin(async move {
            self.turns_left = self.turns_left.saturating_sub(1);
            let guess: Option<u32> = action.split(|c: char| !c.is_ascii_digit()).find_map(|w| w.parse().ok());
            let done = |reward: f32| StepResult {
                reward: Some(Reward::new(reward).with_part("found", reward)),
                done: true,
                ..Default::default()
            };
            match guess {
                Some(g) if g == self.secret => Ok(done(1.0)),
                _ if self.turns_left == 0 => Ok(done(0.0)),
                Some(g) => {
                    let hint = if g < self.secret { "higher" } else { "lower" };
                    Ok(StepResult { observation: Some(format!(" {hint}. ")), ..Default::default() })
                }
                None => Ok(StepResult { observation: Some(" a number? ".into()), ..Default::default() }),
            }
        })
    }
}

/// Tasks of [`HotCold`]: a secret number per task.
pub struct Secrets {
    next: u64,
    max: u32,
}

impl Secrets {
    /// Secrets in 1..=`max`.
    pub fn new(max: u32) -> Self {
        Secrets { next: 0, max }
    }
}

impl TaskSource for Secrets {
    fn name(&self) -> &str {
        "hot_cold"
    }

    fn next_task(&mut self) -> Option<Task> {
        self.next += 1;
        let secret = (self.next * 7919 % self.max as u64) + 1;
        Some(Task {
            id: format!("hot-cold-{}", self.next),
            source: "hot_cold".into(),
            prompt: Prompt::Text(format!("Guess my number from 1 to {}: ", self.max)),
            answer: secret.into(),
            metadata: serde_json::Value::Null,
        })
    }
}

#[cfg(test)]
mod tests {
    //! The example's environments rolled out by sluice's runner on a tiny random model.
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use super::*;
    use sluice_core::{Finish, RlConfig};
    use sluice_model::{Architecture, Cpu, Llama, ModelConfig, Tokenizer};
    use sluice_rollout::{FixedWeights, Job, Judge, RolloutConfig, Runner, Versioned};

    fn tiny(vocab: usize) -> Llama<Cpu> {
        let cfg = ModelConfig {
            architecture: Architecture::Llama,
            vocab_size: vocab,
            hidden_size: 16,
            intermediate_size: 32,
            num_layers: 1,
            num_heads: 2,
            num_kv_heads: 1,
            head_dim: 8,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            max_position_embeddings: 256,
            qkv_bias: false,
            tie_word_embeddings: false,
            bos_token_id: None,
            eos_token_ids: vec![],
        };
        Llama::random(&cfg, 1, &Default::default())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn both_example_envs_roll_out_into_valid_groups() {
        let tok = Tokenizer::char_level("abcdefghijklmnopqrstuvwxyz0123456789 .:?GRAhlow").unwrap();
        let cfg = RolloutConfig {
            tasks_per_batch: 2,
            max_new_tokens: 6,
            max_turns: 3,
            chat_template: false,
            ..Default::default()
        };
        let rl =
            RlConfig { group_size: 4, temperature: 1.0, max_completion_tokens: 64, ..RlConfig::default() };
        let mut runner = Runner::new("example", "w0", cfg, rl, tok.clone(), vec![1]).unwrap();
        let mut policy = Versioned { model: tiny(tok.vocab_size()), version: 0, epoch: 0 };
        let (mut words, mut secrets) = (Words::new(0), Secrets::new(20));
        let hot_cold = Judge::Env(Arc::new(HotCold { max: 20, turns: 3 }));
        let jobs = vec![
            Job {
                task: words.next_task().unwrap(),
                judge: Judge::Verifier(Arc::new(ReverseVerifier)),
                stop_strings: vec![],
            },
            Job { task: secrets.next_task().unwrap(), judge: hot_cold, stop_strings: vec![] },
        ];
        let groups = runner.run(&mut policy, &mut FixedWeights, &jobs).await.unwrap();
        for s in &groups[0].samples {
            assert!(matches!(s.finish, Finish::Stop | Finish::Length));
            assert!(s.reward_parts.contains_key("exact") && s.reward_parts.contains_key("prefix"));
        }
        for s in &groups[1].samples {
            // Three turns of at most 6 tokens unless the env ended it or the model stopped early.
            assert!(s.num_turns >= 1 && s.num_turns <= 3);
            assert!(matches!(s.finish, Finish::EnvDone | Finish::Length), "{:?}", s.finish);
            let env_tokens = s.loss_mask.iter().filter(|&&m| m == 0).count();
            assert_eq!(env_tokens > 0, s.num_turns > 1, "hints are environment tokens");
        }
        assert_eq!(runner.failures().snapshot(), (0, 0, 0));
    }
}
