//! `letters`: the smallest task that needs learning — the prompt names a letter (`say c:`) and
//! the answer is that letter. A tiny random model goes from chance (1 / alphabet size) to near 1
//! within a few dozen steps, so the end-to-end tests train it through every process and zenoh
//! link in CI time. Its split is by the prompt's content like every generator's, which for so few
//! distinct prompts means the held-out split asks for other letters than training does.
//!
//! With `distractor = true` the prompt names two letters and the answer is the first (`say cf:`
//! asks for `c`): the alphabet's pairs are split, so the held-out prompts are new pairs of letters
//! training asks for, and a model that learned to answer with the first letter, rather than to
//! memorise prompts, scores on them: a held-out measure a tiny model can pass.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sluice_core::{Prompt, Reward, Task, TaskSource, Verifier};

use crate::answer::graded;
use crate::error::{EnvsError, Result};
use crate::split::{split_of, Split};

/// Settings of the `letters` source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LettersConfig {
    /// The letters asked for (every character must be in the tokenizer's vocabulary).
    pub alphabet: String,
    /// Train or held-out letters.
    pub split: Split,
    /// Name a second letter after the one asked for (`say cf:` asks for `c`).
    pub distractor: bool,
    /// Seed of the draws.
    pub seed: u64,
}

impl Default for LettersConfig {
    fn default() -> Self {
        LettersConfig { alphabet: "abcdefgh".into(), split: Split::Train, distractor: false, seed: 0 }
    }
}

/// The `letters` task generator.
pub struct Letters {
    /// Each prompt of the split with its answer.
    prompts: Vec<(String, char)>,
    seed: u64,
    rng: StdRng,
    drawn: u64,
}

impl Letters {
    /// A generator over the prompts of `cfg.alphabet` in `cfg.split`.
    pub fn new(cfg: LettersConfig) -> Result<Self> {
        let letters: Vec<char> = cfg.alphabet.chars().collect();
        let all: Vec<(String, char)> = if cfg.distractor {
            letters.iter().flat_map(|&c| letters.iter().map(move |&d| (format!("say {c}{d}:"), c))).collect()
        } else {
            letters.iter().map(|&c| (format!("say {c}:"), c)).collect()
        };
        let prompts: Vec<(String, char)> =
            all.into_iter().filter(|(p, _)| split_of(p) == cfg.split).collect();
        if prompts.is_empty() {
            return Err(EnvsError::Config(format!(
                "letters.alphabet {:?} has no prompt in the {:?} split",
                cfg.alphabet, cfg.split
            )));
        }
        Ok(Letters { prompts, seed: cfg.seed, rng: StdRng::seed_from_u64(cfg.seed), drawn: 0 })
    }
}

impl TaskSource for Letters {
    fn name(&self) -> &str {
        "letters"
    }

    fn next_task(&mut self) -> Option<Task> {
        let (prompt, c) = self.prompts[self.rng.random_range(0..self.prompts.len())].clone();
        self.drawn += 1;
        Some(Task {
            id: format!("letters-{}-{}", self.seed, self.drawn),
            source: "letters".into(),
            prompt: Prompt::Text(prompt),
            answer: c.to_string().into(),
            metadata: serde_json::Value::Null,
        })
    }
}

/// Correct when the completion's first non-blank character is the letter asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct LettersVerifier;

impl Verifier for LettersVerifier {
    fn score(&self, task: &Task, completion: &str) -> Reward {
        let want = task.answer.as_str().unwrap_or_default();
        let first = completion.trim_start().chars().next().map(String::from).unwrap_or_default();
        graded(!first.is_empty(), !want.is_empty() && first == want, 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_letter_decides_and_the_splits_are_disjoint() {
        let cfg = LettersConfig { alphabet: "abcdefghijklmnopqrstuvwxyz".into(), ..Default::default() };
        let mut train = Letters::new(cfg.clone()).unwrap_or_else(|e| panic!("{e}"));
        let held =
            Letters::new(LettersConfig { split: Split::HeldOut, ..cfg }).unwrap_or_else(|e| panic!("{e}"));
        assert!(train.prompts.iter().all(|p| !held.prompts.contains(p)));
        assert_eq!(train.prompts.len() + held.prompts.len(), 26);
        let task = train.next_task().unwrap_or_else(|| panic!("endless"));
        let want = task.answer.as_str().unwrap_or_default().to_string();
        assert_eq!(LettersVerifier.score(&task, &format!(" {want}x")).total, 1.0);
        assert_eq!(LettersVerifier.score(&task, &format!("x{want}")).total, 0.0);
        assert_eq!(LettersVerifier.score(&task, "").total, 0.0);
    }

    #[test]
    fn with_a_distractor_held_out_prompts_are_new_pairs_of_trained_letters() {
        let cfg = LettersConfig { distractor: true, ..Default::default() };
        let train = Letters::new(cfg.clone()).unwrap_or_else(|e| panic!("{e}"));
        let held =
            Letters::new(LettersConfig { split: Split::HeldOut, ..cfg }).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(train.prompts.len() + held.prompts.len(), 64);
        assert!(!held.prompts.is_empty() && train.prompts.iter().all(|p| !held.prompts.contains(p)));
        for (_, c) in &held.prompts {
            assert!(train.prompts.iter().any(|(_, t)| t == c), "{c} is asked for in training too");
        }
    }
}
