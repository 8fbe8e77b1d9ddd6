//! The settings every role of a run must agree on, stated once (`[rl]` in the run config).
//!
//! # Design
//! *Constraints.* The rollout workers sample groups of `group_size` at `temperature` within a
//! budget of `max_completion_tokens`; the learner scores them at the same temperature, normalises
//! Dr. GRPO's loss by the same budget, and takes `groups_per_step` of them per step; the replay
//! admits producers and evicts data by `max_staleness` and `groups_per_step`; the workers' weight
//! gate holds them back by `max_staleness`. A setting that two roles hold in two places can
//! disagree, and did: two defaults for one temperature made a config refuse to load depending on
//! how it was written. *Solution.* One type, [`RlConfig`], owned by the run config and handed to
//! each role; each setting has one default (here) and one check ([`RlConfig::check`]). Roles read
//! it and never copy it into settings of their own. *Cons:* a role's constructor takes two
//! settings values (its own section and this one) instead of one.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The settings of a run that more than one role must agree on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RlConfig {
    /// Completions sampled per prompt (G); every group the learner trains on has exactly this
    /// many.
    pub group_size: usize,
    /// Groups per learner step; also the unit of the replay's admission rule.
    pub groups_per_step: usize,
    /// How many policy versions a sample may lag the learner (`docs/design.md`, "Versions and
    /// staleness"). 0 is synchronous on-policy training through the same code.
    pub max_staleness: u64,
    /// The sampling temperature: workers sample at it and the learner scores at it.
    pub temperature: f32,
    /// The generation budget: most completion tokens (model and environment) of one episode.
    /// Workers stop an episode there; Dr. GRPO's loss (`seq-mean-token-sum-norm`) divides each
    /// sequence's token sum by it, a constant, so the step size does not vary with the batch.
    pub max_completion_tokens: usize,
}

impl Default for RlConfig {
    /// The quickstart's: 4 groups of 8 per step, at most 2 versions stale, temperature 0.7,
    /// 48 completion tokens.
    fn default() -> Self {
        RlConfig {
            group_size: 8,
            groups_per_step: 4,
            max_staleness: 2,
            temperature: 0.7,
            max_completion_tokens: 48,
        }
    }
}

impl RlConfig {
    /// Checks every value for training; the error names the key (`rl.KEY`).
    pub fn check(&self) -> Result<()> {
        let bad = |key: &'static str, reason: String| Err(Error::Setting { key, reason });
        if self.group_size < 2 {
            return bad(
                "rl.group_size",
                format!("{} must be >= 2 (a group needs a baseline)", self.group_size),
            );
        }
        if self.group_size > u16::MAX as usize {
            return bad("rl.group_size", format!("{} is above {}", self.group_size, u16::MAX));
        }
        if self.groups_per_step == 0 {
            return bad("rl.groups_per_step", "must be >= 1".into());
        }
        if self.max_completion_tokens == 0 {
            return bad("rl.max_completion_tokens", "must be >= 1".into());
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad(
                "rl.temperature",
                format!(
                    "{} must be > 0 for training (0, greedy, is for `sluice eval`: greedy log-probs are \
                     not a sampling distribution)",
                    self.temperature
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bad_value_is_named_by_its_key() {
        assert!(RlConfig::default().check().is_ok());
        let cases = [
            (RlConfig { group_size: 1, ..Default::default() }, "rl.group_size"),
            (RlConfig { group_size: 70_000, ..Default::default() }, "rl.group_size"),
            (RlConfig { groups_per_step: 0, ..Default::default() }, "rl.groups_per_step"),
            (RlConfig { max_completion_tokens: 0, ..Default::default() }, "rl.max_completion_tokens"),
            (RlConfig { temperature: 0.0, ..Default::default() }, "rl.temperature"),
            (RlConfig { temperature: f32::NAN, ..Default::default() }, "rl.temperature"),
        ];
        for (cfg, key) in cases {
            match cfg.check() {
                Err(e) => assert!(e.to_string().contains(key), "{e}"),
                Ok(()) => panic!("{cfg:?} accepted"),
            }
        }
    }
}
