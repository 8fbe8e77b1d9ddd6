//! Environment calls under a timeout, with panics contained: a reward function or tool that hangs
//! or panics ends its episode as `finish = error` (counted), never the worker.
//!
//! # Design
//! *Constraints.* Env code is the user's: it may block, loop forever, or panic, in async `reset`/
//! `step` or in a synchronous verifier. A stuck call must not hold up the other episodes, and the
//! worker must know which failure it was. *Solution.* Every call runs on its own tokio task (async
//! calls) or blocking-pool thread (verifiers) that owns what it needs (`Arc<dyn Env>`, the
//! `Box<dyn Episode>`, a copy of the task and action); the worker awaits the task's handle under
//! the timeout. A panic surfaces as the join error's panic payload; on timeout an async call is
//! aborted. *Cons:* a verifier that never returns keeps its blocking thread until it does (threads
//! cannot be killed); the worker has moved on and the episode is already counted as failed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::{Env, EnvError, Episode, Reward, Started, StepResult, Task, Verifier};

/// Why an env call produced nothing usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvFailure {
    /// The call did not finish in time.
    #[error("{call} timed out after {after:?}")]
    Timeout {
        /// `reset`, `step` or `score`.
        call: &'static str,
        /// The limit.
        after: Duration,
    },
    /// The call panicked.
    #[error("{call} panicked: {message}")]
    Panic {
        /// `reset`, `step` or `score`.
        call: &'static str,
        /// The panic payload, when it was a string.
        message: String,
    },
    /// The env returned an error.
    #[error("{call} failed: {source}")]
    Env {
        /// `reset`, `step` or `score`.
        call: &'static str,
        /// Its error.
        source: EnvError,
    },
}

/// Failures by kind, shared by a worker's episodes, with the first message of each kind (what a
/// failure summary quotes).
#[derive(Debug, Default)]
pub struct FailureCounts {
    /// Calls that timed out.
    pub timeouts: AtomicU64,
    /// Calls that panicked.
    pub panics: AtomicU64,
    /// Calls that returned an error.
    pub errors: AtomicU64,
    first: Mutex<BTreeMap<&'static str, String>>,
}

impl EnvFailure {
    /// `timeout`, `panic` or `error`.
    pub fn kind(&self) -> &'static str {
        match self {
            EnvFailure::Timeout { .. } => "timeout",
            EnvFailure::Panic { .. } => "panic",
            EnvFailure::Env { .. } => "error",
        }
    }
}

impl FailureCounts {
    /// Counts `f`; returns how many of its kind there have been, this one included.
    pub fn count(&self, f: &EnvFailure) -> u64 {
        let c = match f {
            EnvFailure::Timeout { .. } => &self.timeouts,
            EnvFailure::Panic { .. } => &self.panics,
            EnvFailure::Env { .. } => &self.errors,
        };
        let n = c.fetch_add(1, Ordering::Relaxed) + 1;
        if n == 1 {
            let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
            first.entry(f.kind()).or_insert_with(|| f.to_string());
        }
        n
    }

    /// `(timeouts, panics, errors)` so far.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.timeouts.load(Ordering::Relaxed),
            self.panics.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }

    /// The first failure of each kind that occurred, by [`EnvFailure::kind`].
    pub fn first(&self) -> BTreeMap<String, String> {
        let first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        first.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".into()),
        Err(e) => format!("task cancelled: {e}"),
    }
}

async fn guarded<T: Send + 'static>(
    call: &'static str,
    timeout: Duration,
    mut handle: tokio::task::JoinHandle<Result<T, EnvError>>,
) -> Result<T, EnvFailure> {
    match tokio::time::timeout(timeout, &mut handle).await {
        Err(_) => {
            handle.abort();
            Err(EnvFailure::Timeout { call, after: timeout })
        }
        Ok(Err(join)) => Err(EnvFailure::Panic { call, message: panic_message(join) }),
        Ok(Ok(r)) => r.map_err(|source| EnvFailure::Env { call, source }),
    }
}

/// `env.reset(task)` under `timeout`.
pub async fn reset(env: Arc<dyn Env>, task: Task, timeout: Duration) -> Result<Started, EnvFailure> {
    guarded("reset", timeout, tokio::spawn(async move { env.reset(&task).await })).await
}

/// `episode.step(action)` under `timeout`; the episode comes back with the result. A failed step
/// consumes the episode (it is closed when it can be).
pub async fn step(
    mut episode: Box<dyn Episode>,
    action: String,
    timeout: Duration,
) -> Result<(Box<dyn Episode>, StepResult), EnvFailure> {
    let handle = tokio::spawn(async move {
        match episode.step(&action).await {
            Ok(r) => Ok((episode, r)),
            Err(e) => {
                episode.close().await;
                Err(e)
            }
        }
    });
    guarded("step", timeout, handle).await
}

/// `verifier.score(task, completion)` on the blocking pool under `timeout`.
pub async fn score(
    verifier: Arc<dyn Verifier>,
    task: Task,
    completion: String,
    timeout: Duration,
) -> Result<Reward, EnvFailure> {
    let handle = tokio::task::spawn_blocking(move || {
        let r = verifier.score(&task, &completion);
        if r.total.is_finite() {
            Ok(r)
        } else {
            Err(EnvError(format!("non-finite reward {} for task {}", r.total, task.id)))
        }
    });
    guarded("score", timeout, handle).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::{BoxFuture, Prompt};

    fn task() -> Task {
        Task {
            id: "t".into(),
            source: "s".into(),
            prompt: Prompt::Text("?".into()),
            answer: serde_json::Value::Null,
            metadata: serde_json::Value::Null,
        }
    }

    /// An env whose episodes misbehave as the action says.
    struct Unruly;
    struct UnrulyEpisode;

    impl Env for Unruly {
        fn name(&self) -> &str {
            "unruly"
        }
        fn reset<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Started, EnvError>> {
            Box::pin(async move {
                if task.id == "panic" {
                    panic!("reset exploded");
                }
                Ok((Box::new(UnrulyEpisode) as Box<dyn Episode>, "hi".to_string()))
            })
        }
    }

    impl Episode for UnrulyEpisode {
        fn step<'a>(&'a mut self, action: &'a str) -> BoxFuture<'a, Result<StepResult, EnvError>> {
            Box::pin(async move {
                match action {
                    "hang" => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        unreachable!("the guard aborts the call first")
                    }
                    "panic" => panic!("step exploded"),
                    "error" => Err(EnvError("bad action".into())),
                    _ => Ok(StepResult { done: true, ..Default::default() }),
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn hangs_panics_and_errors_become_counted_failures() {
        let env: Arc<dyn Env> = Arc::new(Unruly);
        let counts = FailureCounts::default();
        let t = Duration::from_secs(5);
        let (ep, obs) = reset(env.clone(), task(), t).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(obs, "hi");
        let (ep, r) = step(ep, "ok".into(), t).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(r.done);
        for (action, want) in [
            ("hang", "step timed out after 5s"),
            ("panic", "step panicked: step exploded"),
            ("error", "step failed: bad action"),
        ] {
            let (fresh, _) = reset(env.clone(), task(), t).await.unwrap_or_else(|e| panic!("{e}"));
            let e = step(fresh, action.into(), t).await.err().unwrap_or_else(|| panic!("{action} succeeded"));
            assert_eq!(e.to_string(), want);
            counts.count(&e);
        }
        let e = reset(env, Task { id: "panic".into(), ..task() }, t)
            .await
            .err()
            .unwrap_or_else(|| panic!("no panic"));
        counts.count(&e);
        assert_eq!(counts.snapshot(), (1, 2, 1));
        let first = counts.first();
        assert_eq!(first.get("panic").map(String::as_str), Some("step panicked: step exploded"));
        assert_eq!(first.get("timeout").map(String::as_str), Some("step timed out after 5s"));
        drop(ep);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_verifier_that_hangs_or_panics_or_returns_nan_does_not_stop_the_caller() {
        let t = Duration::from_millis(200);
        let slow: Arc<dyn Verifier> = Arc::new(|_: &Task, _: &str| {
            // A verifier that blocks its thread is what this test guards against.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_secs(2));
            Reward::new(1.0)
        });
        let e = score(slow, task(), "x".into(), t).await.err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("score timed out after 200ms"));
        let bad: Arc<dyn Verifier> =
            Arc::new(
                |_: &Task, c: &str| {
                    if c == "boom" {
                        panic!("verifier exploded")
                    } else {
                        Reward::new(f32::NAN)
                    }
                },
            );
        // Generous limits below: capturing a panic's backtrace can take a while in a debug build.
        let t = Duration::from_secs(30);
        let e = score(bad.clone(), task(), "boom".into(), t).await.err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("score panicked: verifier exploded"));
        let e = score(bad, task(), "x".into(), t).await.err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("non-finite reward")));
        let good: Arc<dyn Verifier> = Arc::new(|_: &Task, _: &str| Reward::new(0.5));
        assert_eq!(score(good, task(), "x".into(), t).await.map(|r| r.total), Ok(0.5));
    }
}
