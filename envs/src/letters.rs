//! `letters`: the smallest task that needs learning — the prompt names a letter (`say c:`) and
//! the answer is that letter. A tiny random model goes from chance (1 / alphabet size) to near 1
//! within a few dozen steps, so the end-to-end tests train it through every process and zenoh
//! link in CI time. Its split is by the prompt's content like every generator's, which for so few
//! distinct prompts means the held-out split asks for other letters than training does: use it to
//! check the machinery, not to measure generalisation.

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
    /// Seed of the draws.
    pub seed: u64,
}

impl Default for LettersConfig {
    fn default() -> Self {
        LettersConfig { alphabet: "abcdefgh".into(), split: Split::Train, seed: 0 }
    }
}

/// The `letters` task generator.
pub struct Letters {
    letters: Vec<char>,
    seed: u64,
    rng: StdRng,
    drawn: u64,
}

impl Letters {
    /// A generator over the letters of `cfg.alphabet` in `cfg.split`.
    pub fn new(cfg: LettersConfig) -> Result<Self> {
        let letters: Vec<char> =
            cfg.alphabet.chars().filter(|c| split_of(&prompt(*c)) == cfg.split).collect();
        if letters.is_empty() {
            return Err(EnvsError::Config(format!(
                "letters.alphabet {:?} has no letter in the {:?} split",
                cfg.alphabet, cfg.split
            )));
        }
        Ok(Letters { letters, seed: cfg.seed, rng: StdRng::seed_from_u64(cfg.seed), drawn: 0 })
    }
}

fn prompt(c: char) -> String {
    format!("say {c}:")
}

impl TaskSource for Letters {
    fn name(&self) -> &str {
        "letters"
    }

    fn next_task(&mut self) -> Option<Task> {
        let c = self.letters[self.rng.random_range(0..self.letters.len())];
        self.drawn += 1;
        Some(Task {
            id: format!("letters-{}-{}", self.seed, self.drawn),
            source: "letters".into(),
            prompt: Prompt::Text(prompt(c)),
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
        assert!(train.letters.iter().all(|c| !held.letters.contains(c)));
        assert_eq!(train.letters.len() + held.letters.len(), 26);
        let task = train.next_task().unwrap_or_else(|| panic!("endless"));
        let want = task.answer.as_str().unwrap_or_default().to_string();
        assert_eq!(LettersVerifier.score(&task, &format!(" {want}x")).total, 1.0);
        assert_eq!(LettersVerifier.score(&task, &format!("x{want}")).total, 0.0);
        assert_eq!(LettersVerifier.score(&task, "").total, 0.0);
    }
}
