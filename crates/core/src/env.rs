//! The environment API: tasks, where they come from, and how answers are judged — in one turn by a
//! [`Verifier`], over several turns by an [`Env`] whose [`Episode`]s take actions and return
//! observations.
//!
//! # Design
//! *Constraints.* Rollout workers mix environments of different kinds in one run (built-in ones,
//! a user's own crate, a remote process over zenoh), call them concurrently from async code, and
//! must survive any of them hanging or panicking. The token stream must never be re-tokenized: an
//! environment sees text, the worker owns the tokens. *Solution.* Object-safe traits with boxed
//! futures (`Box<dyn Env>` holds any of them), text in and text out, every call `Send` so the worker
//! can put it on a task under a timeout and learn of a panic from the task's join error (the
//! timeout and the `finish = error` bookkeeping live in the worker, once, not in each env). An
//! episode is its own object, so one env serves many episodes at once. A plain closure
//! `Fn(&Task, &str) -> Reward` is a [`Verifier`]. *Cons:* one allocation per call for the boxed
//! future, negligible next to a model step.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

/// A future that can run on any worker thread.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool`...
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message with `role`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message { role: role.into(), content: content.into() }
    }
}

/// What the model is asked: raw text, or chat messages the worker renders with the model's chat
/// template. In JSON a string or an array of `{role, content}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// Fed as is.
    Text(String),
    /// Rendered with the chat template (generation prompt added).
    Chat(Vec<Message>),
}

impl Prompt {
    /// The prompt's content as one string: what tells tasks apart (a JSONL source's train/held-out
    /// split, `sluice eval`'s distinct tasks). A chat is its messages as `role: content` lines.
    pub fn key(&self) -> String {
        match self {
            Prompt::Text(t) => t.clone(),
            Prompt::Chat(m) => m.iter().map(|m| format!("{}: {}\n", m.role, m.content)).collect(),
        }
    }
}

/// One task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// Unique within its source (stored in the `task_id` column).
    pub id: String,
    /// The source's name (the `source` column; the curriculum's arm).
    pub source: String,
    /// What the model is asked.
    pub prompt: Prompt,
    /// The reference answer, as the source's verifier expects it.
    #[serde(default)]
    pub answer: serde_json::Value,
    /// Anything else the verifier or env needs.
    #[serde(default)]
    pub metadata: serde_json::Value,
}

/// Where tasks come from: a generator with a seed, or a file.
pub trait TaskSource: Send {
    /// The source's name (every task it yields carries it).
    fn name(&self) -> &str;
    /// The next task; `None` once a finite source is exhausted (or has failed: [`Self::failure`]).
    fn next_task(&mut self) -> Option<Task>;
    /// Why the source gives no more tasks when that is a failure rather than the end of a finite
    /// source (a remote environment that never answered); a worker stops with it as an error.
    fn failure(&self) -> Option<String> {
        None
    }
}

/// A reward with its named parts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reward {
    /// What the learner trains on.
    pub total: f32,
    /// Named components (`format`, `correct`, ...); the part named `correct` is the accuracy.
    #[serde(default)]
    pub parts: BTreeMap<String, f32>,
}

impl Reward {
    /// A reward of `total` with no parts.
    pub fn new(total: f32) -> Self {
        Reward { total, parts: BTreeMap::new() }
    }

    /// Adds a named part (not added to `total`: the env decides how parts combine).
    pub fn with_part(mut self, name: impl Into<String>, value: f32) -> Self {
        self.parts.insert(name.into(), value);
        self
    }
}

/// Scores a single-turn completion.
pub trait Verifier: Send + Sync {
    /// The reward of `completion` (the model's text, special tokens removed) for `task`.
    fn score(&self, task: &Task, completion: &str) -> Reward;
}

impl<F: Fn(&Task, &str) -> Reward + Send + Sync> Verifier for F {
    fn score(&self, task: &Task, completion: &str) -> Reward {
        self(task, completion)
    }
}

/// What one multi-turn step returned.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    /// Text to append to the context (tokenized once, trained on never).
    #[serde(default)]
    pub observation: Option<String>,
    /// Reward earned by this step, if any (an episode's rewards add up).
    #[serde(default)]
    pub reward: Option<Reward>,
    /// Whether the episode is over.
    pub done: bool,
    /// Free-form diagnostics.
    #[serde(default)]
    pub info: serde_json::Value,
}

/// Why an env call failed (the worker ends the episode with `finish = error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EnvError(pub String);

/// A started episode and its first observation.
pub type Started = (Box<dyn Episode>, String);

/// A multi-turn environment: each [`Env::reset`] starts an independent episode.
pub trait Env: Send + Sync {
    /// Its name.
    fn name(&self) -> &str;
    /// Starts an episode on `task`; returns it with the first observation (appended after the
    /// prompt; empty when the prompt says it all).
    fn reset<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Started, EnvError>>;
}

/// One running episode.
pub trait Episode: Send {
    /// Takes the model's action (its text for this turn).
    fn step<'a>(&'a mut self, action: &'a str) -> BoxFuture<'a, Result<StepResult, EnvError>>;
    /// Releases what the episode holds; called once, also after an error.
    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_is_a_string_or_chat_messages_in_json() {
        let t: Task = serde_json::from_str(
            r#"{"id": "1", "source": "s", "prompt": [{"role": "user", "content": "hi"}], "answer": 3}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.prompt, Prompt::Chat(vec![Message::new("user", "hi")]));
        let t: Task = serde_json::from_str(r#"{"id": "1", "source": "s", "prompt": "2+2="}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.prompt, Prompt::Text("2+2=".into()));
        let e = serde_json::from_str::<Task>(r#"{"id": "1", "source": "s", "prompt": "x", "answr": 1}"#)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("answr"), "{e}");
    }

    #[test]
    fn a_closure_is_a_verifier() {
        let v = |t: &Task, c: &str| Reward::new((t.answer.as_str() == Some(c)) as u8 as f32);
        let t = Task {
            id: "1".into(),
            source: "s".into(),
            prompt: Prompt::Text("?".into()),
            answer: "a".into(),
            metadata: serde_json::Value::Null,
        };
        assert_eq!(Verifier::score(&v, &t, "a").total, 1.0);
        assert_eq!(Verifier::score(&v, &t, "b").total, 0.0);
    }
}
