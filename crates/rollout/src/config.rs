//! The rollout worker's settings: one typed tree, unknown keys rejected, [`RolloutConfig::check`]
//! naming the key that is wrong.

use serde::{Deserialize, Serialize};

use crate::curriculum::CurriculumConfig;
use crate::error::{Result, RolloutError};

/// How a rollout worker samples, besides the run's shared settings (`sluice_core::RlConfig`: the
/// group size, the temperature and the episode's token budget). Its defaults are the quickstart's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutConfig {
    /// Tasks generated together in one batch (each gives one group of `rl.group_size` rows).
    pub tasks_per_batch: usize,
    /// Nucleus sampling threshold (1 = off). With truncation the stored behaviour log-probs are
    /// those of the truncated, renormalised distribution the tokens were drawn from, so the
    /// learner's importance weights against the full policy stay unbiased.
    pub top_p: f32,
    /// Top-k sampling (0 = off); stored log-probs as for `top_p`.
    pub top_k: usize,
    /// Most tokens the model produces in one turn.
    pub max_new_tokens: usize,
    /// Most environment turns of a multi-turn episode.
    pub max_turns: u16,
    /// Swap in new weights between decoding steps, so running sequences continue under the new
    /// version (`token_versions` records the switch). When false, new weights are swapped in only
    /// between batches and every episode is sampled by one version.
    pub partial_rollout: bool,
    /// What a mid-generation swap does with the keys/values the old weights cached.
    pub swap_cache: SwapCache,
    /// Render prompts with the model's chat template (text prompts become one user message).
    pub chat_template: bool,
    /// Text that starts every response (e.g. `<think>`, or `<calc>` to open a tool call): tokenized
    /// once and appended to the prompt, so it is part of the prompt and never trained on.
    pub response_prefix: String,
    /// Limit of one environment call (reset, step, verifier), in seconds.
    pub env_timeout_s: f64,
    /// Task-source mixture: DUMP's UCB or fixed weights.
    pub curriculum: CurriculumConfig,
    /// Seed of sampling and of the curriculum's draws (mixed with the worker's name, so workers of
    /// one config sample differently; task sources take their own seeds).
    pub seed: u64,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            tasks_per_batch: 4,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: 48,
            max_turns: 4,
            partial_rollout: true,
            swap_cache: SwapCache::Recompute,
            chat_template: true,
            response_prefix: String::new(),
            env_timeout_s: 30.0,
            curriculum: CurriculumConfig::default(),
            seed: 0,
        }
    }
}

/// What a mid-generation weight swap does with the cached keys/values of the sequences in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SwapCache {
    /// Rebuild them under the new weights (one prefill of each running sequence, as AReaL and
    /// verl re-prefill an interrupted one): every later token is the new version's alone, and is
    /// labelled with it.
    #[default]
    Recompute,
    /// Keep them: no prefill, but each later token is computed by the new weights over keys and
    /// values of the old, a mix of both versions, so it is labelled with the version the episode's
    /// turn started under (the oldest it depends on: never fresher than it is).
    Keep,
}

impl RolloutConfig {
    /// Checks the values; the error names the key.
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(RolloutError::Config(m));
        let positive = [
            ("rollout.tasks_per_batch", self.tasks_per_batch),
            ("rollout.max_new_tokens", self.max_new_tokens),
            ("rollout.max_turns", self.max_turns as usize),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return bad(format!("{key} must be at least 1"));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("rollout.top_p {} must be in (0, 1]", self.top_p));
        }
        if !(self.env_timeout_s > 0.0 && self.env_timeout_s.is_finite()) {
            return bad(format!("rollout.env_timeout_s {} must be > 0", self.env_timeout_s));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_and_unknown_keys_name_the_key() {
        assert!(RolloutConfig::default().check().is_ok());
        let e = RolloutConfig { tasks_per_batch: 0, ..Default::default() }.check().unwrap_err().to_string();
        assert!(e.contains("rollout.tasks_per_batch"), "{e}");
        let e = RolloutConfig { top_p: 1.5, ..Default::default() }.check().unwrap_err().to_string();
        assert!(e.contains("rollout.top_p"), "{e}");
        let e = serde_json::from_str::<RolloutConfig>(r#"{"group_sise": 4}"#).unwrap_err().to_string();
        assert!(e.contains("group_sise"), "{e}");
    }
}
