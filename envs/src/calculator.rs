//! `calculator`: a multi-turn tool environment. The model may call a calculator by writing
//! `<calc>EXPRESSION</calc>`; the environment answers with `<result>VALUE</result>` as an
//! observation (never trained on), after an optional latency that stands in for a real tool. The
//! episode ends when the model gives a final answer (`\boxed{}`, `####`, "the answer is"), which
//! is scored like `arithmetic`, or after `max_turns` turns (reward 0, part `format` 0).
//!
//! Tasks are `arithmetic` tasks with larger operands (default 3–5 digits), where the tool pays off.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_core::{BoxFuture, Env, EnvError, Episode, Reward, Started, StepResult, Task};

use crate::answer::extract_answer;
use crate::arithmetic::score_integer;
use crate::countdown::evaluate;

/// Settings of the `calculator` environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CalculatorConfig {
    /// Turns before the episode is cut off.
    pub max_turns: u32,
    /// How long each tool call takes (a stand-in for a real tool's latency).
    pub tool_latency_ms: u64,
    /// Weight of the `format` part in the reward.
    pub format_weight: f32,
}

impl Default for CalculatorConfig {
    fn default() -> Self {
        CalculatorConfig { max_turns: 4, tool_latency_ms: 0, format_weight: 0.1 }
    }
}

/// The system prompt that tells the model about the tool.
pub const INSTRUCTIONS: &str =
    "You can use a calculator: write <calc>EXPRESSION</calc> (numbers, + - * / and \
parentheses) and wait for <result>VALUE</result>. When you know the answer, write it in \\boxed{}.";

/// Tasks of the `calculator` environment: `arithmetic` questions (default 3–5 digit operands)
/// with [`INSTRUCTIONS`] as the system message; source `calculator`.
pub struct CalculatorTasks {
    inner: crate::arithmetic::Arithmetic,
}

impl CalculatorTasks {
    /// Tasks drawn with `cfg` (see [`CalculatorTasks::default_config`]).
    pub fn new(cfg: crate::arithmetic::ArithmeticConfig) -> crate::Result<Self> {
        Ok(CalculatorTasks { inner: crate::arithmetic::Arithmetic::new(cfg)? })
    }

    /// 3–5 digit operands, where the tool pays off.
    pub fn default_config() -> crate::arithmetic::ArithmeticConfig {
        crate::arithmetic::ArithmeticConfig { min_digits: 3, max_digits: 5, ..Default::default() }
    }
}

impl sluice_core::TaskSource for CalculatorTasks {
    fn name(&self) -> &str {
        "calculator"
    }

    fn next_task(&mut self) -> Option<Task> {
        let mut t = self.inner.next_task()?;
        t.id = t.id.replacen("arithmetic", "calculator", 1);
        t.source = "calculator".into();
        let question = match t.prompt {
            sluice_core::Prompt::Text(q) => q,
            sluice_core::Prompt::Chat(m) => m.into_iter().map(|m| m.content).collect::<Vec<_>>().join("\n"),
        };
        t.prompt = sluice_core::Prompt::Chat(vec![
            sluice_core::Message::new("system", INSTRUCTIONS),
            sluice_core::Message::new("user", question),
        ]);
        Some(t)
    }
}

/// The `calculator` environment.
#[derive(Debug, Clone, Default)]
pub struct Calculator {
    cfg: CalculatorConfig,
}

impl Calculator {
    /// An environment with these settings.
    pub fn new(cfg: CalculatorConfig) -> Self {
        Calculator { cfg }
    }
}

struct CalculatorEpisode {
    cfg: CalculatorConfig,
    task: Task,
    turns: u32,
}

/// The expression of the last `<calc>...</calc>` call in `action`, if any. An action that closes a
/// call it did not open (`EXPR</calc>`) calls `EXPR`: the opening tag was in the prompt (a
/// response prefix such as `rollout.response_prefix = "<calc>"`).
pub fn tool_call(action: &str) -> Option<&str> {
    let end = action.rfind("</calc>")?;
    let start = action[..end].rfind("<calc>").map(|i| i + "<calc>".len()).unwrap_or(0);
    Some(action[start..end].trim())
}

/// What the calculator answers for `expr`: an integer, an exact decimal when the division ends, or
/// `error`.
pub fn calculate(expr: &str) -> String {
    match evaluate(expr).map(|e| e.value) {
        Some(v) => match v.as_integer() {
            Some(i) => i.to_string(),
            None => format!("{:.6}", v.to_f64()).trim_end_matches('0').to_string(),
        },
        None => "error".into(),
    }
}

impl Env for Calculator {
    fn name(&self) -> &str {
        "calculator"
    }

    fn reset<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Started, EnvError>> {
        Box::pin(async move {
            if task.answer.as_i64().is_none() {
                return Err(EnvError(format!("task {}: calculator tasks need an integer answer", task.id)));
            }
            let episode = CalculatorEpisode { cfg: self.cfg.clone(), task: task.clone(), turns: 0 };
            Ok((Box::new(episode) as Box<dyn Episode>, String::new()))
        })
    }
}

impl Episode for CalculatorEpisode {
    fn step<'a>(&'a mut self, action: &'a str) -> BoxFuture<'a, Result<StepResult, EnvError>> {
        Box::pin(async move {
            self.turns += 1;
            if let Some(expr) = tool_call(action) {
                if self.cfg.tool_latency_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(self.cfg.tool_latency_ms)).await;
                }
                let done = self.turns >= self.cfg.max_turns;
                return Ok(StepResult {
                    observation: (!done).then(|| format!("<result>{}</result>", calculate(expr))),
                    reward: done.then(cut_off),
                    done,
                    info: serde_json::json!({"tool_call": expr}),
                });
            }
            if extract_answer(action).is_some() || self.turns >= self.cfg.max_turns {
                let reward = score_integer(&self.task, action, self.cfg.format_weight);
                return Ok(StepResult {
                    observation: None,
                    reward: Some(reward),
                    done: true,
                    info: serde_json::Value::Null,
                });
            }
            // Neither a tool call nor an answer: the model is told so and may go on.
            Ok(StepResult {
                observation: Some("<result>no calculation or answer found</result>".into()),
                reward: None,
                done: false,
                info: serde_json::Value::Null,
            })
        })
    }
}

fn cut_off() -> Reward {
    crate::answer::graded(false, false, 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::Prompt;

    fn task(answer: i64) -> Task {
        Task {
            id: "c".into(),
            source: "calculator".into(),
            prompt: Prompt::Text("What is 1234 x 5678?".into()),
            answer: answer.into(),
            metadata: serde_json::Value::Null,
        }
    }

    #[test]
    fn calculator_tasks_carry_the_tool_instructions() {
        use sluice_core::{Prompt, TaskSource};
        let mut tasks =
            CalculatorTasks::new(CalculatorTasks::default_config()).unwrap_or_else(|e| panic!("{e}"));
        let t = tasks.next_task().unwrap_or_else(|| panic!("no task"));
        assert_eq!(t.source, "calculator");
        assert!(t.id.starts_with("calculator-"));
        let Prompt::Chat(m) = &t.prompt else { panic!("a chat prompt") };
        assert_eq!((m[0].role.as_str(), m[0].content.as_str()), ("system", INSTRUCTIONS));
        assert!(m[1].content.starts_with("What is ") && t.answer.is_i64());
    }

    #[test]
    fn tool_calls_are_read_with_or_without_their_opening_tag() {
        assert_eq!(tool_call("let me see <calc>12 * 3</calc>"), Some("12 * 3"));
        assert_eq!(tool_call("<calc>1+1</calc> then <calc>2*(3+4)</calc>"), Some("2*(3+4)"));
        assert_eq!(tool_call(" 17 + 25 </calc>"), Some("17 + 25"));
        assert_eq!(tool_call("<calc>1+1"), None);
        assert_eq!(tool_call("the answer is 4"), None);
    }

    #[tokio::test]
    async fn a_tool_call_then_an_answer() {
        let env = Calculator::new(CalculatorConfig { tool_latency_ms: 1, ..Default::default() });
        let t = task(1234 * 5678);
        let (mut ep, first) = env.reset(&t).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first, "");
        let r = ep.step("Let me compute. <calc>1234 * 5678</calc>").await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.observation.as_deref(), Some("<result>7006652</result>"));
        assert!(!r.done && r.reward.is_none());
        let r = ep.step("So the answer is \\boxed{7006652}.").await.unwrap_or_else(|e| panic!("{e}"));
        assert!(r.done);
        assert_eq!(r.reward.map(|r| r.parts["correct"]), Some(1.0));
    }

    #[tokio::test]
    async fn wrong_answers_bad_calls_and_the_turn_limit() {
        let env = Calculator::new(CalculatorConfig { max_turns: 3, ..Default::default() });
        let t = task(42);
        let (mut ep, _) = env.reset(&t).await.unwrap_or_else(|e| panic!("{e}"));
        let r = ep.step("<calc>6 * (7</calc>").await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.observation.as_deref(), Some("<result>error</result>"));
        let r = ep.step("hmm").await.unwrap_or_else(|e| panic!("{e}"));
        assert!(!r.done && r.observation.is_some());
        let r = ep.step("<calc>6 * 7</calc>").await.unwrap_or_else(|e| panic!("{e}"));
        assert!(r.done, "the third turn is the last");
        assert_eq!(r.reward.map(|r| r.total), Some(0.0));

        let (mut ep, _) = env.reset(&t).await.unwrap_or_else(|e| panic!("{e}"));
        let r = ep.step("\\boxed{41}").await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.reward.map(|r| (r.parts["correct"], r.parts["format"])), Some((0.0, 1.0)));
        assert_eq!(calculate("7 / 2"), "3.5");
        assert!(env.reset(&Task { answer: "x".into(), ..task(0) }).await.is_err());
    }
}
