//! The staleness gate (`docs/design.md`, "Versions and staleness"): a rollout worker starts new
//! groups only while the version it has applied is on the learner's lineage and within
//! `max_staleness` of it, i.e. while what it would sample now is still admissible
//! ([`Lineage::admits`], the one statement of the rule).
//!
//! The gate holds the learner's latest lineage (from announces and ticket replies) and the
//! worker's applied version in a tokio watch channel: [`StalenessGate::may_start`] answers now, and
//! [`StalenessGate::until_may_start`] resolves as soon as either moves the worker back within
//! bounds (a weight version applied, or the learner found to be older than thought: a resume).

use sluice_core::{Lineage, PolicyId};
use tokio::sync::watch;

/// Shared between the subscriber (which sets both versions) and the worker loop (which asks).
#[derive(Debug, Clone)]
pub struct StalenessGate {
    max_staleness: u64,
    /// (the learner's lineage, the version applied).
    state: watch::Sender<(Lineage, PolicyId)>,
}

impl StalenessGate {
    /// A gate for a worker that starts from `applied` (the initial weights: `PolicyId::default()`).
    pub fn new(max_staleness: u64, applied: PolicyId) -> Self {
        let learner = Lineage { epoch: applied.epoch, version: applied.version, ancestry: Vec::new() };
        let (state, _) = watch::channel((learner, applied));
        StalenessGate { max_staleness, state }
    }

    /// The bound.
    pub fn max_staleness(&self) -> u64 {
        self.max_staleness
    }

    /// Records the learner's lineage (from an announce or a ticket reply) when it is newer than
    /// the one held ([`PolicyId`] order: a resumed learner's epoch is newer, though its version
    /// may be lower).
    pub fn set_learner(&self, lineage: &Lineage) {
        self.state.send_if_modified(|s| {
            let moved = lineage.now() > s.0.now();
            if moved {
                s.0 = lineage.clone();
            }
            moved
        });
    }

    /// Records the version the worker now generates with; never moves backwards.
    pub fn set_applied(&self, v: PolicyId) {
        self.state.send_if_modified(|s| {
            let moved = v > s.1;
            s.1 = s.1.max(v);
            moved
        });
    }

    /// (the learner's current version, the applied version).
    pub fn versions(&self) -> (PolicyId, PolicyId) {
        let s = self.state.borrow();
        (s.0.now(), s.1)
    }

    /// Whether the worker may start new work at the learner version it knows of: the weights it
    /// holds are on the learner's lineage and within the bound.
    pub fn may_start(&self) -> bool {
        let s = self.state.borrow();
        s.0.admits(s.1, self.max_staleness)
    }

    /// Whether the worker may start new work if the learner is at `learner`.
    pub fn may_start_at(&self, learner: &Lineage) -> bool {
        self.set_learner(learner);
        self.may_start()
    }

    /// Resolves when the worker may start new work.
    pub async fn until_may_start(&self) {
        let mut rx = self.state.subscribe();
        let bound = self.max_staleness;
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|(learner, applied)| learner.admits(*applied, bound)).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;

    fn at(v: u64) -> Lineage {
        Lineage::start(1).at(v)
    }

    #[tokio::test(start_paused = true)]
    async fn a_lagging_worker_is_blocked_until_it_catches_up() {
        let gate = StalenessGate::new(2, PolicyId::new(1, 0));
        assert!(gate.may_start_at(&at(2)));
        assert!(!gate.may_start_at(&at(3)), "3 versions behind with max_staleness 2");
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.until_may_start().await })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiter.is_finished(), "still blocked while nothing is applied");
        gate.set_applied(PolicyId::new(1, 1));
        tokio::time::timeout(Duration::from_secs(1), waiter).await.unwrap().unwrap();
        assert!(gate.may_start());
        // Versions never move backwards.
        gate.set_applied(PolicyId::new(1, 0));
        gate.set_learner(&at(1));
        assert_eq!(gate.versions(), (PolicyId::new(1, 3), PolicyId::new(1, 1)));
        // Synchronous training: only the learner's own version may start work.
        let sync = StalenessGate::new(0, PolicyId::new(1, 4));
        assert!(sync.may_start_at(&at(4)));
        assert!(!sync.may_start_at(&at(5)));
    }

    #[test]
    fn a_resumed_learner_shuts_the_gate_on_orphaned_weights_only() {
        // The worker holds version 7 of epoch 1; the learner resumed epoch 2 from epoch 1's 5.
        let gate = StalenessGate::new(4, PolicyId::new(1, 7));
        assert!(gate.may_start_at(&at(8)));
        let resumed = Lineage::start(1).at(5).fork(2);
        assert!(!gate.may_start_at(&resumed), "version 7 of epoch 1 is orphaned");
        assert_eq!(gate.versions().0, PolicyId::new(2, 5), "the gate follows the resumed learner back");
        gate.set_applied(PolicyId::new(2, 5));
        assert!(gate.may_start());
        // Weights of an ancestor version stay usable within the bound.
        let old = StalenessGate::new(1, PolicyId::new(1, 4));
        assert!(old.may_start_at(&resumed) && !old.may_start_at(&resumed.clone().at(6)));
        // The initial weights are on every lineage.
        assert!(StalenessGate::new(8, PolicyId::default()).may_start_at(&resumed));
    }
}
