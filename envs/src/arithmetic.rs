//! `arithmetic`: one multi-digit `+`, `-` or `x` question; the answer is an integer.
//!
//! Difficulty is the operands' digit range. Scored by [`crate::answer`]: part `format` is 1 when an
//! answer in a recognised form was found, `correct` when it equals the exact result; the reward is
//! `correct + format_weight * format`.
//!
//! Two styles of question: `chat` (the default) asks an instruct model in a chat message for a
//! `\boxed{}` answer; `bare` is the plain text `12+34=` whose answer is the integer the completion
//! starts with — the task of small models with a char-level tokenizer and no chat template (the
//! TRL benchmark's "a+b=").

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sluice_core::{Message, Prompt, Reward, Task, TaskSource, Verifier};

use crate::answer::{extract_answer, graded, matches_integer, strip_template};
use crate::error::{EnvsError, Result};
use crate::split::{split_one_in, Split, HELD_OUT_ONE_IN};

/// Settings of the `arithmetic` source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArithmeticConfig {
    /// Fewest digits of an operand.
    pub min_digits: u32,
    /// Most digits of an operand (at most 9).
    pub max_digits: u32,
    /// Operators drawn from, among `+`, `-`, `*`.
    pub ops: Vec<char>,
    /// How the question is asked: `chat` or `bare`.
    pub style: Style,
    /// Weight of the `format` part in the reward.
    pub format_weight: f32,
    /// Train or held-out tasks.
    pub split: Split,
    /// One question in this many is held out (by a hash of the question; at least 2). The default
    /// holds out one in eight; a small task space needs more to be measured (the quickstart's
    /// one-digit questions: 150 of 300 at 2, where one question is under 1% of an eval's score).
    pub held_out_one_in: u64,
    /// Seed of the draws.
    pub seed: u64,
}

impl Default for ArithmeticConfig {
    fn default() -> Self {
        ArithmeticConfig {
            min_digits: 1,
            max_digits: 2,
            ops: vec!['+', '-', '*'],
            style: Style::Chat,
            format_weight: 0.1,
            split: Split::Train,
            held_out_one_in: HELD_OUT_ONE_IN,
            seed: 0,
        }
    }
}

impl ArithmeticConfig {
    /// Checks the ranges; the error names the key.
    pub fn check(&self) -> Result<()> {
        if self.min_digits == 0 || self.min_digits > self.max_digits || self.max_digits > 9 {
            return Err(EnvsError::Config(format!(
                "arithmetic.min_digits ({}) and max_digits ({}) must satisfy 1 <= min <= max <= 9",
                self.min_digits, self.max_digits
            )));
        }
        if self.held_out_one_in < 2 {
            return Err(EnvsError::Config(format!(
                "arithmetic.held_out_one_in {} must be at least 2 (one in N questions is held out)",
                self.held_out_one_in
            )));
        }
        if self.ops.is_empty() || self.ops.iter().any(|o| !matches!(o, '+' | '-' | '*')) {
            return Err(EnvsError::Config(format!(
                "arithmetic.ops {:?} must be a non-empty subset of + - *",
                self.ops
            )));
        }
        Ok(())
    }
}

/// How an `arithmetic` question is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Style {
    /// A chat message, "What is 12 + 34? Put the final answer in \boxed{}.", scored by
    /// [`IntegerVerifier`]: for instruct models.
    #[default]
    Chat,
    /// The plain text `12+34=`, scored by [`LeadingIntegerVerifier`]: for small models with a
    /// char-level tokenizer and no chat template.
    Bare,
}

/// The `arithmetic` task generator.
pub struct Arithmetic {
    cfg: ArithmeticConfig,
    rng: StdRng,
    drawn: u64,
}

impl Arithmetic {
    /// A generator; refuses bad settings.
    pub fn new(cfg: ArithmeticConfig) -> Result<Self> {
        cfg.check()?;
        let rng = StdRng::seed_from_u64(cfg.seed);
        Ok(Arithmetic { cfg, rng, drawn: 0 })
    }

    fn operand(&mut self) -> i64 {
        let digits = self.rng.random_range(self.cfg.min_digits..=self.cfg.max_digits);
        let lo = if digits == 1 { 0 } else { 10i64.pow(digits - 1) };
        self.rng.random_range(lo..10i64.pow(digits))
    }
}

/// The exact result of `a op b`.
pub fn evaluate(a: i64, op: char, b: i64) -> i64 {
    match op {
        '+' => a + b,
        '-' => a - b,
        _ => a * b,
    }
}

impl TaskSource for Arithmetic {
    fn name(&self) -> &str {
        "arithmetic"
    }

    fn next_task(&mut self) -> Option<Task> {
        loop {
            let (a, b) = (self.operand(), self.operand());
            let op = self.cfg.ops[self.rng.random_range(0..self.cfg.ops.len())];
            let shown = if op == '*' { 'x' } else { op };
            // The split is by the question's content in both styles, so a bare run and a chat
            // run hold out the same questions.
            let question = format!("{a} {shown} {b}");
            if split_one_in(&question, self.cfg.held_out_one_in) != self.cfg.split {
                continue;
            }
            self.drawn += 1;
            let prompt = match self.cfg.style {
                Style::Chat => {
                    let text = format!("What is {question}? Put the final answer in \\boxed{{}}.");
                    Prompt::Chat(vec![Message::new("user", text)])
                }
                Style::Bare => Prompt::Text(format!("{a}{op}{b}=")),
            };
            return Some(Task {
                id: format!("arithmetic-{}-{}", self.cfg.seed, self.drawn),
                source: "arithmetic".into(),
                prompt,
                answer: evaluate(a, op, b).into(),
                metadata: serde_json::json!({"a": a, "op": op.to_string(), "b": b}),
            });
        }
    }
}

/// Scores an integer answer against `task.answer`: parts `format` and `correct`.
pub fn score_integer(task: &Task, completion: &str, format_weight: f32) -> Reward {
    let expected = task.answer.as_i64();
    let answer = extract_answer(completion);
    let correct = match (&answer, expected) {
        (Some(a), Some(e)) => matches_integer(a, e),
        _ => false,
    };
    graded(answer.is_some(), correct, format_weight)
}

/// The verifier of tasks whose answer is an integer (`arithmetic`, `chain_sum`).
#[derive(Debug, Clone, Copy)]
pub struct IntegerVerifier {
    /// Weight of the `format` part.
    pub format_weight: f32,
}

impl Verifier for IntegerVerifier {
    fn score(&self, task: &Task, completion: &str) -> Reward {
        score_integer(task, completion, self.format_weight)
    }
}

/// The verifier of `bare` questions: the answer is the integer the completion starts with
/// (`46` in `46<eos>` or `46 because`); part `format` is 1 when it starts with one.
#[derive(Debug, Clone, Copy)]
pub struct LeadingIntegerVerifier {
    /// Weight of the `format` part.
    pub format_weight: f32,
}

/// The integer `text` starts with (an optional `-`, then digits), if any.
pub fn leading_integer(text: &str) -> Option<i64> {
    let text = strip_template(text);
    let digits_from = usize::from(text.starts_with('-'));
    let end = text[digits_from..].find(|c: char| !c.is_ascii_digit()).map_or(text.len(), |i| i + digits_from);
    if end == digits_from {
        return None;
    }
    text[..end].parse().ok()
}

impl Verifier for LeadingIntegerVerifier {
    fn score(&self, task: &Task, completion: &str) -> Reward {
        let answer = leading_integer(completion);
        let correct = answer.is_some() && answer == task.answer.as_i64();
        graded(answer.is_some(), correct, self.format_weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(a: i64, op: char, b: i64) -> Task {
        Task {
            id: "t".into(),
            source: "arithmetic".into(),
            prompt: Prompt::Text(String::new()),
            answer: evaluate(a, op, b).into(),
            metadata: serde_json::Value::Null,
        }
    }

    #[test]
    fn right_and_wrong_answers_in_every_format() {
        let v = IntegerVerifier { format_weight: 0.1 };
        let t = task(123, '*', 45);
        for right in ["\\boxed{5535}", "#### 5,535", "so the answer is 5535.", "\\boxed{5535}<|im_end|>"] {
            let r = v.score(&t, right);
            assert_eq!((r.parts["correct"], r.parts["format"]), (1.0, 1.0), "{right}");
            assert!((r.total - 1.1).abs() < 1e-6);
        }
        for (wrong, format) in [("\\boxed{5536}", 1.0), ("5535", 0.0), ("\\boxed{5535.5}", 1.0), ("", 0.0)] {
            let r = v.score(&t, wrong);
            assert_eq!((r.parts["correct"], r.parts["format"]), (0.0, format), "{wrong}");
        }
        assert_eq!(v.score(&task(3, '-', 10), "\\boxed{-7}").parts["correct"], 1.0);
    }

    #[test]
    fn bare_questions_are_scored_by_the_leading_integer() {
        let cfg = ArithmeticConfig { style: Style::Bare, ops: vec!['-'], ..Default::default() };
        let t = Arithmetic::new(cfg)
            .unwrap_or_else(|e| panic!("{e}"))
            .next_task()
            .unwrap_or_else(|| panic!("no task"));
        let Prompt::Text(text) = &t.prompt else { panic!("{t:?}") };
        let (a, b) = (t.metadata["a"].as_i64().unwrap_or(-1), t.metadata["b"].as_i64().unwrap_or(-1));
        assert_eq!(text, &format!("{a}-{b}="));
        let v = LeadingIntegerVerifier { format_weight: 0.1 };
        let right = (a - b).to_string();
        for (completion, correct, format) in [
            (format!("{right}<eos>"), 1.0, 1.0),
            (format!("{right}+1"), 1.0, 1.0),
            (format!("{}", a - b + 1), 0.0, 1.0),
            (format!(" {right}"), 0.0, 0.0),
            ("-".to_string(), 0.0, 0.0),
            (String::new(), 0.0, 0.0),
        ] {
            let r = v.score(&t, &completion);
            assert_eq!((r.parts["correct"], r.parts["format"]), (correct, format), "{completion:?}");
        }
        assert_eq!(leading_integer("-7x"), Some(-7));
        assert_eq!(leading_integer("99999999999999999999999"), None);
    }

    #[test]
    fn generation_is_seeded_in_range_and_splits_are_disjoint() {
        let cfg = ArithmeticConfig { min_digits: 2, max_digits: 3, ..Default::default() };
        let mut a = Arithmetic::new(cfg.clone()).unwrap_or_else(|e| panic!("{e}"));
        let mut b = Arithmetic::new(cfg.clone()).unwrap_or_else(|e| panic!("{e}"));
        let mut held = Arithmetic::new(ArithmeticConfig { split: Split::HeldOut, ..cfg })
            .unwrap_or_else(|e| panic!("{e}"));
        let train: Vec<Task> = (0..300).filter_map(|_| a.next_task()).collect();
        assert_eq!(train, (0..300).filter_map(|_| b.next_task()).collect::<Vec<_>>());
        let key = |t: &Task| t.metadata.to_string();
        let train_keys: std::collections::HashSet<String> = train.iter().map(key).collect();
        for t in (0..300).filter_map(|_| held.next_task()) {
            assert!(!train_keys.contains(&key(&t)), "{t:?} is in both splits");
        }
        for t in &train {
            let (x, y) = (t.metadata["a"].as_i64().unwrap_or(-1), t.metadata["b"].as_i64().unwrap_or(-1));
            assert!((10..1000).contains(&x) && (10..1000).contains(&y), "{t:?}");
        }
        assert!(Arithmetic::new(ArithmeticConfig { max_digits: 10, ..Default::default() }).is_err());
        assert!(Arithmetic::new(ArithmeticConfig { ops: vec!['/'], ..Default::default() }).is_err());
    }
}
