//! `countdown`: reach a target with the given numbers, each used exactly once, with `+ - * /` and
//! parentheses (the Countdown numbers game, as TinyZero trains it).
//!
//! The verifier parses the model's expression itself and evaluates it in exact rational
//! arithmetic, so `6 / 4 * 2` is 3 and not a rounding accident; it checks that the numbers used
//! are exactly the given ones. Parts: `format` (an expression was found and parses), `correct`.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sluice_core::{Message, Prompt, Reward, Task, TaskSource, Verifier};

use crate::answer::{graded, last_answer_tag, last_boxed, strip_template};
use crate::error::{EnvsError, Result};
use crate::split::{split_of, Split};

/// Settings of the `countdown` source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CountdownConfig {
    /// Fewest numbers.
    pub min_numbers: usize,
    /// Most numbers.
    pub max_numbers: usize,
    /// Largest number given.
    pub max_value: i64,
    /// Largest target.
    pub max_target: i64,
    /// Weight of the `format` part in the reward.
    pub format_weight: f32,
    /// Train or held-out tasks.
    pub split: Split,
    /// Seed of the draws.
    pub seed: u64,
}

impl Default for CountdownConfig {
    fn default() -> Self {
        CountdownConfig {
            min_numbers: 3,
            max_numbers: 4,
            max_value: 99,
            max_target: 999,
            format_weight: 0.1,
            split: Split::Train,
            seed: 0,
        }
    }
}

/// An exact fraction `num / den`, `den > 0`, in lowest terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ratio {
    num: i128,
    den: i128,
}

fn gcd(a: i128, b: i128) -> i128 {
    if b == 0 {
        a.abs()
    } else {
        gcd(b, a % b)
    }
}

impl Ratio {
    fn new(num: i128, den: i128) -> Option<Ratio> {
        if den == 0 {
            return None;
        }
        let g = gcd(num, den).max(1);
        let s = if den < 0 { -1 } else { 1 };
        Some(Ratio { num: s * num / g, den: s * den / g })
    }

    fn int(v: i128) -> Ratio {
        Ratio { num: v, den: 1 }
    }

    fn apply(self, op: char, o: Ratio) -> Option<Ratio> {
        let (a, b, c, d) = (self.num, self.den, o.num, o.den);
        match op {
            '+' => Ratio::new(a.checked_mul(d)?.checked_add(c.checked_mul(b)?)?, b.checked_mul(d)?),
            '-' => Ratio::new(a.checked_mul(d)?.checked_sub(c.checked_mul(b)?)?, b.checked_mul(d)?),
            '*' => Ratio::new(a.checked_mul(c)?, b.checked_mul(d)?),
            _ => Ratio::new(a.checked_mul(d)?, b.checked_mul(c)?),
        }
    }

    /// The value as a float.
    pub fn to_f64(self) -> f64 {
        self.num as f64 / self.den as f64
    }

    /// The value if it is an integer.
    pub fn as_integer(self) -> Option<i128> {
        (self.den == 1).then_some(self.num)
    }
}

/// A parsed expression's value and the numbers it used, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluated {
    /// Exact value.
    pub value: Ratio,
    /// The literals, as written.
    pub numbers: Vec<i64>,
}

/// Parses and evaluates an arithmetic expression over non-negative integer literals with
/// `+ - * /` (also `x`, `×`, `÷`) and parentheses; `None` if it does not parse, divides by zero
/// or overflows. A trailing `= ...` is ignored.
pub fn evaluate(expr: &str) -> Option<Evaluated> {
    let expr = expr.split('=').next()?;
    let mut tokens = Vec::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' | '\n' => i += 1,
            '0'..='9' => {
                let start = i;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
                let s: String = chars[start..i].iter().collect();
                tokens.push(Tok::Num(s.parse().ok()?));
            }
            '+' | '-' | '*' | '/' | '(' | ')' => {
                tokens.push(Tok::Sym(c));
                i += 1;
            }
            'x' | '×' | '·' => {
                tokens.push(Tok::Sym('*'));
                i += 1;
            }
            '÷' => {
                tokens.push(Tok::Sym('/'));
                i += 1;
            }
            '\\' => {
                // LaTeX operators: \times, \cdot, \div; \left( \right).
                let rest: String = chars[i..].iter().collect();
                let (sym, len) =
                    [("\\times", '*'), ("\\cdot", '*'), ("\\div", '/'), ("\\left", ' '), ("\\right", ' ')]
                        .iter()
                        .find(|(name, _)| rest.starts_with(name))
                        .map(|(name, sym)| (*sym, name.chars().count()))?;
                if sym != ' ' {
                    tokens.push(Tok::Sym(sym));
                }
                i += len;
            }
            _ => return None,
        }
    }
    let mut p = Parser { tokens, at: 0, numbers: Vec::new() };
    let value = p.sum()?;
    if p.at != p.tokens.len() || p.numbers.is_empty() {
        return None;
    }
    Some(Evaluated { value, numbers: p.numbers })
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Num(i64),
    Sym(char),
}

struct Parser {
    tokens: Vec<Tok>,
    at: usize,
    numbers: Vec<i64>,
}

impl Parser {
    fn peek(&self) -> Option<Tok> {
        self.tokens.get(self.at).copied()
    }

    fn sum(&mut self) -> Option<Ratio> {
        let mut v = self.product()?;
        while let Some(Tok::Sym(op @ ('+' | '-'))) = self.peek() {
            self.at += 1;
            v = v.apply(op, self.product()?)?;
        }
        Some(v)
    }

    fn product(&mut self) -> Option<Ratio> {
        let mut v = self.atom()?;
        while let Some(Tok::Sym(op @ ('*' | '/'))) = self.peek() {
            self.at += 1;
            v = v.apply(op, self.atom()?)?;
        }
        Some(v)
    }

    fn atom(&mut self) -> Option<Ratio> {
        match self.peek()? {
            Tok::Num(n) => {
                self.at += 1;
                self.numbers.push(n);
                Some(Ratio::int(n as i128))
            }
            Tok::Sym('(') => {
                self.at += 1;
                let v = self.sum()?;
                (self.peek()? == Tok::Sym(')')).then_some(())?;
                self.at += 1;
                Some(v)
            }
            _ => None,
        }
    }
}

/// The `countdown` task generator: numbers, and a target some expression over all of them reaches.
pub struct Countdown {
    cfg: CountdownConfig,
    rng: StdRng,
    drawn: u64,
}

impl Countdown {
    /// A generator; refuses bad settings.
    pub fn new(cfg: CountdownConfig) -> Result<Self> {
        if cfg.min_numbers < 2 || cfg.min_numbers > cfg.max_numbers || cfg.max_numbers > 6 {
            return Err(EnvsError::Config(format!(
                "countdown.min_numbers ({}) and max_numbers ({}) must satisfy 2 <= min <= max <= 6",
                cfg.min_numbers, cfg.max_numbers
            )));
        }
        if cfg.max_value < 2 || cfg.max_target < 1 {
            return Err(EnvsError::Config(format!(
                "countdown.max_value ({}) must be >= 2 and max_target ({}) >= 1",
                cfg.max_value, cfg.max_target
            )));
        }
        let rng = StdRng::seed_from_u64(cfg.seed);
        Ok(Countdown { cfg, rng, drawn: 0 })
    }

    /// A random expression over all of `numbers` (in a shuffled order) with an integer value in
    /// `1..=max_target`, as text.
    fn solution(&mut self, numbers: &[i64]) -> Option<(String, i64)> {
        let mut order = numbers.to_vec();
        order.shuffle(&mut self.rng);
        let mut text = order[0].to_string();
        let mut value = Ratio::int(order[0] as i128);
        for &n in &order[1..] {
            let op = ['+', '-', '*', '/'][self.rng.random_range(0..4)];
            value = value.apply(op, Ratio::int(n as i128))?;
            text = format!("({text} {op} {n})");
        }
        let v = value.as_integer()?;
        (1..=self.cfg.max_target as i128).contains(&v).then_some((text, v as i64))
    }
}

impl TaskSource for Countdown {
    fn name(&self) -> &str {
        "countdown"
    }

    fn next_task(&mut self) -> Option<Task> {
        loop {
            let k = self.rng.random_range(self.cfg.min_numbers..=self.cfg.max_numbers);
            let numbers: Vec<i64> = (0..k).map(|_| self.rng.random_range(1..=self.cfg.max_value)).collect();
            let Some((solution, target)) = self.solution(&numbers) else { continue };
            let list = numbers.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
            if split_of(&format!("{list} -> {target}")) != self.cfg.split {
                continue;
            }
            self.drawn += 1;
            let text = format!(
                "Using the numbers [{list}], write an expression that equals {target}. Use + - * / and \
                 parentheses, and each number exactly once. Put the expression in \\boxed{{}}."
            );
            return Some(Task {
                id: format!("countdown-{}-{}", self.cfg.seed, self.drawn),
                source: "countdown".into(),
                prompt: Prompt::Chat(vec![Message::new("user", text)]),
                answer: target.into(),
                metadata: serde_json::json!({"numbers": numbers, "solution": solution}),
            });
        }
    }
}

/// The `countdown` verifier.
#[derive(Debug, Clone, Copy)]
pub struct CountdownVerifier {
    /// Weight of the `format` part.
    pub format_weight: f32,
}

/// The expression the model committed to: the last `\boxed{}`, else `<answer>...</answer>`, else the
/// last non-empty line.
fn committed_expression(completion: &str) -> Option<&str> {
    let text = strip_template(completion);
    if let Some(b) = last_boxed(text) {
        return Some(b);
    }
    if let Some(a) = last_answer_tag(text) {
        return Some(a);
    }
    text.lines().rev().map(str::trim).find(|l| !l.is_empty())
}

impl Verifier for CountdownVerifier {
    fn score(&self, task: &Task, completion: &str) -> Reward {
        let target = task.answer.as_i64();
        let mut given: Vec<i64> = task.metadata["numbers"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_i64()).collect())
            .unwrap_or_default();
        given.sort_unstable();
        let parsed = committed_expression(completion).and_then(|e| evaluate(e.trim_matches('$')));
        let format = parsed.is_some();
        let correct = match (parsed, target) {
            (Some(mut e), Some(t)) => {
                e.numbers.sort_unstable();
                e.numbers == given && e.value == Ratio::int(t as i128)
            }
            _ => false,
        };
        graded(format, correct, self.format_weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(numbers: &[i64], target: i64) -> Task {
        Task {
            id: "t".into(),
            source: "countdown".into(),
            prompt: Prompt::Text(String::new()),
            answer: target.into(),
            metadata: serde_json::json!({"numbers": numbers}),
        }
    }

    #[test]
    fn exact_arithmetic_and_every_number_exactly_once() {
        let v = CountdownVerifier { format_weight: 0.1 };
        let t = task(&[6, 4, 2, 25], 28);
        let score = |c: &str| {
            let r = v.score(&t, c);
            (r.parts["correct"], r.parts["format"])
        };
        assert_eq!(score("\\boxed{25 + 6 / 4 * 2}"), (1.0, 1.0)); // 6/4*2 = 3 exactly
        assert_eq!(score("so: \\boxed{(25 + 6 / 4 * 2) = 28}"), (1.0, 1.0));
        assert_eq!(score("<answer>25 + 6 \\div 4 \\times 2</answer>"), (1.0, 1.0));
        assert_eq!(score("I think\n25 + 6/4*2"), (1.0, 1.0));
        assert_eq!(score("\\boxed{25 + 6 / 2}"), (0.0, 1.0)); // 4 unused
        assert_eq!(score("\\boxed{25 + 6 / 4 * 2 + 0}"), (0.0, 1.0)); // 0 not given
        assert_eq!(score("\\boxed{25 + 6 + 4 - 2 - 2}"), (0.0, 1.0)); // 2 twice: not the given numbers
        assert_eq!(score("\\boxed{6 * 4 + 25 / 2}"), (0.0, 1.0)); // 36.5
        assert_eq!(score("\\boxed{(6 * 4 + 2}"), (0.0, 0.0)); // unbalanced
        assert_eq!(score("\\boxed{6 / (4 - 4) + 25 + 2}"), (0.0, 0.0)); // division by zero
        assert!(evaluate("2 ** 3").is_none() && evaluate("").is_none() && evaluate("abc").is_none());
        assert_eq!(evaluate("7 / 2 * 2").map(|e| e.value.as_integer()), Some(Some(7)));
    }

    #[test]
    fn every_generated_task_is_solvable_by_its_stored_solution() {
        let mut s = Countdown::new(CountdownConfig { seed: 11, ..Default::default() })
            .unwrap_or_else(|e| panic!("{e}"));
        let v = CountdownVerifier { format_weight: 0.0 };
        for _ in 0..300 {
            let t = s.next_task().unwrap_or_else(|| panic!("a generator never runs out"));
            let solution = t.metadata["solution"].as_str().unwrap_or_default();
            assert_eq!(v.score(&t, &format!("\\boxed{{{solution}}}")).total, 1.0, "{t:?}");
            let target = t.answer.as_i64().unwrap_or(0);
            assert!((1..=999).contains(&target));
        }
    }
}
