//! Policy versions and staleness (`docs/design.md`, "Versions and staleness").
//!
//! # Design
//! *Constraints.* An asynchronous learner trains on samples drawn by older policies; too old and
//! the off-policy correction cannot save the update, and generating such samples wastes compute.
//! *Solution.* One integer, the version (learner batches whose update was applied, however many
//! optimizer epochs each took; initial weights are 0),
//! and one bound, `max_staleness`. A sample is admissible while `learner - behavior <= max_staleness`;
//! producers may start a group only while `started <= (v + max_staleness + 1) * groups_per_step`
//! (AReaL's rule), so nothing is generated that is bound to go stale. `max_staleness = 0` is
//! synchronous on-policy training through the same code. *Pros:* one knob with one meaning for
//! every role. *Cons:* staleness is counted in steps, not wall time.

use serde::{Deserialize, Serialize};

/// The number of learner batches whose update was applied to the policy (one version per batch,
/// whatever `learner.epochs` is); the initial weights are version 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PolicyVersion(pub u64);

impl PolicyVersion {
    /// How many versions `self` is behind `learner` (0 when not behind).
    pub fn lag_behind(self, learner: PolicyVersion) -> u64 {
        learner.0.saturating_sub(self.0)
    }
}

impl std::fmt::Display for PolicyVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// Whether a sample produced by `behavior` may train the policy at `learner`.
pub fn is_admissible(learner: PolicyVersion, behavior: PolicyVersion, max_staleness: u64) -> bool {
    behavior.lag_behind(learner) <= max_staleness
}

/// The most groups that may have been started while the learner is at `learner`:
/// `(v + max_staleness + 1) * groups_per_step`, saturating.
pub fn admission_limit(learner: PolicyVersion, max_staleness: u64, groups_per_step: u64) -> u64 {
    learner.0.saturating_add(max_staleness).saturating_add(1).saturating_mul(groups_per_step)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synchronous_training_admits_only_the_current_version() {
        assert!(is_admissible(PolicyVersion(5), PolicyVersion(5), 0));
        assert!(!is_admissible(PolicyVersion(5), PolicyVersion(4), 0));
    }

    #[test]
    fn staleness_bound_is_inclusive() {
        assert!(is_admissible(PolicyVersion(10), PolicyVersion(8), 2));
        assert!(!is_admissible(PolicyVersion(10), PolicyVersion(7), 2));
        // A sample from the future (a learner that restarted from an older checkpoint) is not stale.
        assert!(is_admissible(PolicyVersion(3), PolicyVersion(4), 0));
    }

    #[test]
    fn admission_limit_follows_the_areal_rule() {
        // v = 0, staleness 2, 4 groups per step: 12 groups may be started before the first step.
        assert_eq!(admission_limit(PolicyVersion(0), 2, 4), 12);
        assert_eq!(admission_limit(PolicyVersion(3), 0, 8), 32);
        assert_eq!(admission_limit(PolicyVersion(u64::MAX), 1, 2), u64::MAX);
    }
}
