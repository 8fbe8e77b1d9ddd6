//! Policy versions and staleness (`docs/design.md`, "Versions and staleness").
//!
//! # Design
//! *Constraints.* An asynchronous learner trains on samples drawn by older policies; too old and
//! the off-policy correction cannot save the update, and generating such samples wastes compute.
//! *Solution.* One integer, the version (learner batches whose update was applied, however many
//! optimizer epochs each took; initial weights are 0), named with the run epoch of the learner start
//! that made it ([`PolicyId`]), and one bound, `max_staleness`. A sample is admissible while it is on
//! the learner's [`Lineage`] and `learner - behavior <= max_staleness`; producers may start a group
//! only while `started <= (v + max_staleness + 1) * groups_per_step` (AReaL's rule), so nothing is
//! generated that is bound to go stale. `max_staleness = 0` is synchronous on-policy training
//! through the same code. A learner resumed from a checkpoint behind the versions it had published
//! starts a new epoch, and what the versions past its checkpoint sampled is orphaned: never trained
//! on. *Pros:* one knob with one meaning for every role; a resume cannot pass data off as fresh.
//! *Cons:* staleness is counted in steps, not wall time.

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

/// The most groups that may have been started while the learner is at `learner`:
/// `(v + max_staleness + 1) * groups_per_step`, saturating.
pub fn admission_limit(learner: PolicyVersion, max_staleness: u64, groups_per_step: u64) -> u64 {
    learner.0.saturating_add(max_staleness).saturating_add(1).saturating_mul(groups_per_step)
}

/// A version of the policy wherever it is: the learner start (run epoch) that published it and
/// its version there. Ordered by epoch, then version: a learner that resumed from an older
/// checkpoint starts a newer epoch, so its weights are newer than anything published before, whatever
/// their version number. Epoch 0 is the initial weights (version 0, on every lineage) and
/// whatever a run wrote before versions had epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct PolicyId {
    /// The learner start that made it.
    pub epoch: u64,
    /// Its version in that start.
    pub version: u64,
}

impl PolicyId {
    /// Version `version` of epoch `epoch`.
    pub fn new(epoch: u64, version: u64) -> Self {
        PolicyId { epoch, version }
    }
}

impl std::fmt::Display for PolicyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (epoch {})", self.version, self.epoch)
    }
}

/// The history of the learner's current weights (`docs/design.md`, "Versions and staleness"):
/// its epoch and version, and the earlier epochs it descends from, each with the last version of it
/// that is an ancestor.
///
/// A learner that resumes from a checkpoint of epoch `e` at version `v` starts epoch `e' > e`
/// with `(e, v)` appended to the checkpoint's ancestry; what epoch `e` published after `v` is
/// *orphaned*: no update of the new lineage ever saw it, so data it sampled has no true distance
/// to the learner and is never trained on. Versions count updates along a lineage, so an ancestor's
/// distance is the difference of version numbers.
///
/// ```
/// use sluice_core::{Lineage, PolicyId};
///
/// // Epoch 1 published versions 0..=8, then crashed; epoch 2 resumed from its checkpoint at 5.
/// let learner = Lineage::start(1).at(5).fork(2).at(7);
/// assert_eq!(learner.distance(PolicyId::new(1, 4)), Some(3));
/// assert_eq!(learner.distance(PolicyId::new(1, 6)), None, "orphaned by the resume");
/// assert_eq!(learner.distance(PolicyId::new(2, 6)), Some(1));
/// assert_eq!(learner.distance(PolicyId::new(0, 0)), Some(7), "the initial weights");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Lineage {
    /// The current epoch.
    pub epoch: u64,
    /// The current version.
    pub version: u64,
    /// Earlier epochs, oldest first: (epoch, its last version on this lineage).
    #[serde(default)]
    pub ancestry: Vec<(u64, u64)>,
}

impl Lineage {
    /// A learner that starts epoch `epoch` from the initial weights.
    pub fn start(epoch: u64) -> Self {
        Lineage { epoch, version: 0, ancestry: Vec::new() }
    }

    /// The same lineage at version `version`.
    pub fn at(mut self, version: u64) -> Self {
        self.version = version;
        self
    }

    /// A learner resumed from this lineage's current weights as epoch `epoch`.
    pub fn fork(&self, epoch: u64) -> Self {
        let mut ancestry = self.ancestry.clone();
        ancestry.push((self.epoch, self.version));
        Lineage { epoch, version: self.version, ancestry }
    }

    /// The current weights.
    pub fn now(&self) -> PolicyId {
        PolicyId::new(self.epoch, self.version)
    }

    /// How many versions `behavior` is behind the current weights along this lineage; None when it
    /// is not on it (orphaned by a resume). A version of the current epoch or of a later one (that
    /// the holder of this lineage has not heard of yet) is never behind.
    pub fn distance(&self, behavior: PolicyId) -> Option<u64> {
        if behavior.epoch > self.epoch {
            return Some(0);
        }
        if behavior.epoch == self.epoch || behavior == PolicyId::default() {
            return Some(self.version.saturating_sub(behavior.version));
        }
        let &(_, until) = self.ancestry.iter().find(|(e, _)| *e == behavior.epoch)?;
        (behavior.version <= until).then(|| self.version.saturating_sub(behavior.version))
    }

    /// Whether data sampled by `behavior` may train the policy now: on this lineage and at most
    /// `max_staleness` versions behind (the one statement of the rule).
    pub fn admits(&self, behavior: PolicyId, max_staleness: u64) -> bool {
        self.distance(behavior).is_some_and(|d| d <= max_staleness)
    }

    /// Whether `behavior` is of an earlier epoch and not an ancestor: sampled by weights a resume
    /// threw away.
    pub fn orphans(&self, behavior: PolicyId) -> bool {
        self.distance(behavior).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synchronous_training_admits_only_the_current_version() {
        let at = |v| Lineage::start(1).at(v);
        assert!(at(5).admits(PolicyId::new(1, 5), 0));
        assert!(!at(5).admits(PolicyId::new(1, 4), 0));
    }

    #[test]
    fn staleness_bound_is_inclusive() {
        let at = |v| Lineage::start(1).at(v);
        assert!(at(10).admits(PolicyId::new(1, 8), 2));
        assert!(!at(10).admits(PolicyId::new(1, 7), 2));
        // A version of the learner's epoch it has not reached yet (heard of by the holder of an
        // older copy of the lineage) is not stale.
        assert!(at(3).admits(PolicyId::new(1, 4), 0));
    }

    #[test]
    fn admission_limit_follows_the_areal_rule() {
        // v = 0, staleness 2, 4 groups per step: 12 groups may be started before the first step.
        assert_eq!(admission_limit(PolicyVersion(0), 2, 4), 12);
        assert_eq!(admission_limit(PolicyVersion(3), 0, 8), 32);
        assert_eq!(admission_limit(PolicyVersion(u64::MAX), 1, 2), u64::MAX);
    }

    #[test]
    fn a_resume_orphans_what_its_epoch_published_after_the_checkpoint() {
        // Epoch 1 ran to 8; epoch 2 resumed from its checkpoint at 5 and crashed at 6 before
        // writing one; epoch 3 resumed from epoch 1's checkpoint at 5 again.
        let e1 = Lineage::start(1).at(8);
        let e2 = Lineage::start(1).at(5).fork(2).at(6);
        let e3 = Lineage::start(1).at(5).fork(3).at(9);
        assert!(PolicyId::new(2, 0) > PolicyId::new(1, 8), "a later epoch is newer, whatever its version");
        assert_eq!(e2.distance(PolicyId::new(1, 5)), Some(1));
        assert_eq!(e2.distance(PolicyId::new(1, 8)), None);
        assert_eq!(e3.distance(PolicyId::new(2, 6)), None, "an epoch that is not an ancestor");
        assert_eq!(e3.distance(PolicyId::new(3, 11)), Some(0), "ahead of what this holder heard");
        assert_eq!(e3.distance(PolicyId::new(4, 2)), Some(0), "a later epoch this holder has not heard of");
        assert!(e1.admits(PolicyId::new(1, 7), 1) && !e1.admits(PolicyId::new(1, 6), 1));
        assert!(e3.orphans(PolicyId::new(1, 6)) && !e3.orphans(PolicyId::new(0, 0)));
        let chain = e3.fork(4);
        assert_eq!(chain.ancestry, vec![(1, 5), (3, 9)]);
        assert_eq!(chain.now(), PolicyId::new(4, 9));
    }
}
