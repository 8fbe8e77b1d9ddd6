//! `chain_sum`: a chain of additions and subtractions (`12 + 45 - 7 + 3`), as reasoning-gym's task
//! of that name; the answer is an integer, scored by [`crate::IntegerVerifier`].

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sluice_core::{Message, Prompt, Task, TaskSource};

use crate::error::{EnvsError, Result};
use crate::split::{split_of, Split};

/// Settings of the `chain_sum` source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChainSumConfig {
    /// Fewest terms.
    pub min_terms: u32,
    /// Most terms.
    pub max_terms: u32,
    /// Digits of each term, at most.
    pub max_digits: u32,
    /// Weight of the `format` part in the reward.
    pub format_weight: f32,
    /// Train or held-out tasks.
    pub split: Split,
    /// Seed of the draws.
    pub seed: u64,
}

impl Default for ChainSumConfig {
    fn default() -> Self {
        ChainSumConfig {
            min_terms: 2,
            max_terms: 5,
            max_digits: 2,
            format_weight: 0.1,
            split: Split::Train,
            seed: 0,
        }
    }
}

/// The `chain_sum` task generator.
pub struct ChainSum {
    cfg: ChainSumConfig,
    rng: StdRng,
    drawn: u64,
}

impl ChainSum {
    /// A generator; refuses bad settings.
    pub fn new(cfg: ChainSumConfig) -> Result<Self> {
        if cfg.min_terms < 2 || cfg.min_terms > cfg.max_terms || cfg.max_terms > 50 {
            return Err(EnvsError::Config(format!(
                "chain_sum.min_terms ({}) and max_terms ({}) must satisfy 2 <= min <= max <= 50",
                cfg.min_terms, cfg.max_terms
            )));
        }
        if cfg.max_digits == 0 || cfg.max_digits > 9 {
            return Err(EnvsError::Config(format!(
                "chain_sum.max_digits ({}) must be in 1..=9",
                cfg.max_digits
            )));
        }
        let rng = StdRng::seed_from_u64(cfg.seed);
        Ok(ChainSum { cfg, rng, drawn: 0 })
    }
}

impl TaskSource for ChainSum {
    fn name(&self) -> &str {
        "chain_sum"
    }

    fn next_task(&mut self) -> Option<Task> {
        let max = 10i64.pow(self.cfg.max_digits);
        loop {
            let n = self.rng.random_range(self.cfg.min_terms..=self.cfg.max_terms);
            let mut expr = String::new();
            let mut total = 0i64;
            for i in 0..n {
                let v = self.rng.random_range(0..max);
                if i == 0 {
                    total = v;
                    expr = v.to_string();
                } else if self.rng.random_bool(0.5) {
                    total += v;
                    expr.push_str(&format!(" + {v}"));
                } else {
                    total -= v;
                    expr.push_str(&format!(" - {v}"));
                }
            }
            if split_of(&expr) != self.cfg.split {
                continue;
            }
            self.drawn += 1;
            let text = format!("Compute {expr}. Put the final answer in \\boxed{{}}.");
            return Some(Task {
                id: format!("chain_sum-{}-{}", self.cfg.seed, self.drawn),
                source: "chain_sum".into(),
                prompt: Prompt::Chat(vec![Message::new("user", text)]),
                answer: total.into(),
                metadata: serde_json::json!({"expression": expr}),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arithmetic::IntegerVerifier;
    use sluice_core::Verifier;

    #[test]
    fn the_stored_answer_is_the_value_of_the_expression() {
        let mut s =
            ChainSum::new(ChainSumConfig { seed: 3, ..Default::default() }).unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..200 {
            let t = s.next_task().unwrap_or_else(|| panic!("a generator never runs out"));
            let expr = t.metadata["expression"].as_str().unwrap_or_default().to_string();
            // Re-evaluate the text independently of the generator's running total.
            let mut tokens = expr.split(' ');
            let mut v: i64 = tokens.next().and_then(|x| x.parse().ok()).unwrap_or(i64::MIN);
            while let (Some(op), Some(x)) = (tokens.next(), tokens.next()) {
                let x: i64 = x.parse().unwrap_or(i64::MIN);
                v = if op == "+" { v + x } else { v - x };
            }
            assert_eq!(t.answer.as_i64(), Some(v), "{expr}");
            let right = format!("\\boxed{{{v}}}");
            assert_eq!(IntegerVerifier { format_weight: 0.0 }.score(&t, &right).total, 1.0);
        }
        assert!(ChainSum::new(ChainSumConfig { min_terms: 1, ..Default::default() }).is_err());
    }
}
