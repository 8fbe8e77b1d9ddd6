//! zenoh key expressions of every role (`docs/design.md`: "Roles and settings", "Weight sync",
//! "Replay", "Environments"): the only place they are spelled.

use crate::error::{Error, Result};

/// Checks a name that becomes one chunk of a key expression (a run, a worker, an environment).
pub fn check_name(what: &'static str, value: &str) -> Result<()> {
    let err = |reason| Err(Error::Name { what, value: value.to_string(), reason });
    if value.is_empty() {
        return err("it is empty");
    }
    if value.chars().any(|c| matches!(c, '/' | '*' | '$' | '?' | '#' | '@') || c.is_whitespace()) {
        return err("it may not contain '/', '*', '$', '?', '#', '@' or whitespace");
    }
    Ok(())
}

/// `sluice/{run}/replay/{shard}/{op}`: one replay shard's queryable for `op`
/// (append, sample, ack, tickets, stats).
pub fn replay(run: &str, shard: u32, op: &str) -> String {
    format!("sluice/{run}/replay/{shard}/{op}")
}

/// `sluice/{run}/weights/{suffix}`: the weight-sync keys (announce, manifest, chunks, ack/{worker}).
pub fn weights(run: &str, suffix: &str) -> String {
    format!("sluice/{run}/weights/{suffix}")
}

/// `sluice/{run}/rollout/{worker}`: a rollout worker's liveliness token (present while it runs).
pub fn rollout_worker(run: &str, worker: &str) -> String {
    format!("sluice/{run}/rollout/{worker}")
}

/// `sluice/{run}/env/{name}/{op}`: a remote environment's queryable for `op` (reset, step, close).
pub fn env(run: &str, name: &str, op: &str) -> String {
    format!("sluice/{run}/env/{name}/{op}")
}

/// `sluice/{run}/metrics/{role}/{name}`: a role's metric reports (JSON), gathered by the learner
/// into the run's `metrics.jsonl`.
pub fn metrics(run: &str, role: &str, name: &str) -> String {
    format!("sluice/{run}/metrics/{role}/{name}")
}

/// `sluice/{run}/learner`: the learner's liveliness token, and (as a put of its final state) the
/// announcement that the run reached its step count.
pub fn learner(run: &str) -> String {
    format!("sluice/{run}/learner")
}

/// `sluice/{run}/done`: put by the learner when the run reached its step count; rollout and
/// replay processes of the run exit on it.
pub fn done(run: &str) -> String {
    format!("sluice/{run}/done")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_change_a_key_expression_are_refused() {
        assert!(check_name("run", "exp-1_a.b").is_ok());
        for bad in ["", "a/b", "a*", "a b", "$x", "a?b", "a#b"] {
            let e = check_name("run", bad).unwrap_err().to_string();
            assert!(e.contains("invalid run"), "{e}");
        }
        assert_eq!(replay("r", 2, "append"), "sluice/r/replay/2/append");
    }
}
