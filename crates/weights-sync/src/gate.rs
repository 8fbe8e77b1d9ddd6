//! The staleness gate (`docs/design.md`, "Versions and staleness"): a rollout worker starts new
//! groups only while the version it has applied is within `max_staleness` of the learner's, i.e.
//! while what it would sample now is still admissible ([`sluice_core::is_admissible`], the one
//! statement of the rule).
//!
//! The gate holds two numbers, the learner's latest announced version and the worker's applied
//! one, in tokio watch channels: [`StalenessGate::may_start`] answers now, and
//! [`StalenessGate::until_may_start`] resolves as soon as either number moves the worker back
//! within bounds (a weight version applied, or the learner found to be older than thought).

use sluice_core::{is_admissible, PolicyVersion};
use tokio::sync::watch;

/// Shared between the subscriber (which sets both versions) and the worker loop (which asks).
#[derive(Debug, Clone)]
pub struct StalenessGate {
    max_staleness: u64,
    /// (learner version, applied version).
    state: watch::Sender<(u64, u64)>,
}

impl StalenessGate {
    /// A gate for a worker that starts from version `applied` (0 for the initial weights).
    pub fn new(max_staleness: u64, applied: u64) -> Self {
        let (state, _) = watch::channel((applied, applied));
        StalenessGate { max_staleness, state }
    }

    /// The bound.
    pub fn max_staleness(&self) -> u64 {
        self.max_staleness
    }

    /// Records the learner's latest version (from an announce); never moves backwards.
    pub fn set_learner(&self, v: u64) {
        self.state.send_if_modified(|s| {
            let moved = v > s.0;
            s.0 = s.0.max(v);
            moved
        });
    }

    /// Records the version the worker now generates with; never moves backwards.
    pub fn set_applied(&self, v: u64) {
        self.state.send_if_modified(|s| {
            let moved = v > s.1;
            s.1 = s.1.max(v);
            s.0 = s.0.max(s.1);
            moved
        });
    }

    /// (learner version, applied version).
    pub fn versions(&self) -> (u64, u64) {
        *self.state.borrow()
    }

    /// Whether the worker may start new work at the learner version it knows of.
    pub fn may_start(&self) -> bool {
        let (learner, applied) = self.versions();
        admits(learner, applied, self.max_staleness)
    }

    /// Whether the worker may start new work if the learner is at `learner`.
    pub fn may_start_at(&self, learner: u64) -> bool {
        self.set_learner(learner);
        self.may_start()
    }

    /// Resolves when the worker may start new work.
    pub async fn until_may_start(&self) {
        let mut rx = self.state.subscribe();
        let bound = self.max_staleness;
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|&(learner, applied)| admits(learner, applied, bound)).await;
    }
}

/// Whether work sampled with the `applied` weights is admissible to the learner at `learner`.
fn admits(learner: u64, applied: u64, max_staleness: u64) -> bool {
    is_admissible(PolicyVersion(learner), PolicyVersion(applied), max_staleness)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_lagging_worker_is_blocked_until_it_catches_up() {
        let gate = StalenessGate::new(2, 0);
        assert!(gate.may_start_at(2));
        assert!(!gate.may_start_at(3), "3 versions behind with max_staleness 2");
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.until_may_start().await })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiter.is_finished(), "still blocked while nothing is applied");
        gate.set_applied(1);
        tokio::time::timeout(Duration::from_secs(1), waiter).await.unwrap().unwrap();
        assert!(gate.may_start());
        // Versions never move backwards.
        gate.set_applied(0);
        gate.set_learner(1);
        assert_eq!(gate.versions(), (3, 1));
        // Synchronous training: only the learner's own version may start work.
        let sync = StalenessGate::new(0, 4);
        assert!(sync.may_start_at(4));
        assert!(!sync.may_start_at(5));
    }
}
