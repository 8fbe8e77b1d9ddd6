//! `knights_knaves`: logic puzzles (reasoning-gym's generator, run offline into
//! `envs/data/knights_knaves.jsonl`) scored by our own reader of the model's answer.
//!
//! A task's `answer` maps each inhabitant to their role (`{"Samuel": "saint", "Jacob": "sinner"}`)
//! and `metadata` names the two roles of the puzzle (`knight`, `knave`: "saint"/"sinner",
//! "hero"/"villain"...). The scorer reads the final answer (`\boxed{}`, `<answer>`, "the answer
//! is", `####` when present, else the whole completion after the chat template's end) and, for each
//! inhabitant, the *last* statement "NAME is a|an ROLE" in it (so a model may reason before it
//! answers). Part `format` is 1 when every inhabitant gets a role, `correct` when every role is
//! right; the reward is `correct + format_weight * format`.

use sluice_core::{Reward, Task, Verifier};

use crate::answer::{extract_answer, graded, strip_template};

/// The role the text last gives `name`, among `roles`.
fn last_role<'r>(text: &str, name: &str, roles: &[&'r str]) -> Option<&'r str> {
    let lower = text.to_lowercase();
    let name = name.to_lowercase();
    let mut best: Option<(usize, &'r str)> = None;
    let mut from = 0;
    while let Some(i) = lower[from..].find(&name) {
        let at = from + i;
        from = at + name.len();
        // A whole word: not the end of a longer name.
        if lower[..at].chars().next_back().is_some_and(|c| c.is_alphanumeric()) {
            continue;
        }
        let rest = lower[from..].trim_start();
        let Some(rest) = rest.strip_prefix("is") else { continue };
        let rest = rest.trim_start();
        let rest = rest.strip_prefix("an ").or_else(|| rest.strip_prefix("a ")).unwrap_or(rest).trim_start();
        for &role in roles {
            let r = role.to_lowercase();
            if rest.starts_with(&r) && !rest[r.len()..].chars().next().is_some_and(|c| c.is_alphanumeric()) {
                best = Some((at, role));
            }
        }
    }
    best.map(|(_, r)| r)
}

/// Scores a knights-and-knaves answer: parts `format` and `correct`.
pub fn score_knights_knaves(task: &Task, completion: &str, format_weight: f32) -> Reward {
    let (Some(answer), Some(knight), Some(knave)) = (
        task.answer.as_object(),
        task.metadata.get("knight").and_then(|v| v.as_str()),
        task.metadata.get("knave").and_then(|v| v.as_str()),
    ) else {
        return graded(false, false, format_weight);
    };
    let text = extract_answer(completion).unwrap_or_else(|| strip_template(completion).to_string());
    let roles = [knight, knave];
    let mut all_named = true;
    let mut all_right = true;
    for (name, role) in answer {
        match last_role(&text, name, &roles) {
            Some(given) => all_right &= role.as_str().is_some_and(|r| r.eq_ignore_ascii_case(given)),
            None => {
                all_named = false;
                all_right = false;
            }
        }
    }
    graded(all_named, all_named && all_right, format_weight)
}

/// The verifier of `knights_knaves` tasks.
#[derive(Debug, Clone, Copy)]
pub struct KnightsKnavesVerifier {
    /// Weight of the `format` part.
    pub format_weight: f32,
}

impl Verifier for KnightsKnavesVerifier {
    fn score(&self, task: &Task, completion: &str) -> Reward {
        score_knights_knaves(task, completion, self.format_weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonl::{parse_tasks, KNIGHTS_KNAVES};

    fn task() -> Task {
        parse_tasks(KNIGHTS_KNAVES, "kk")
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .find(|t| t.id == "kk2-0")
            .unwrap_or_else(|| panic!("kk2-0 missing"))
    }

    fn score(c: &str) -> (f32, f32) {
        let r = score_knights_knaves(&task(), c, 0.1);
        (r.parts["format"], r.parts["correct"])
    }

    #[test]
    fn right_wrong_and_tricky_answers() {
        // kk2-0: Samuel is a saint, Jacob is a sinner.
        assert_eq!(score("Samuel is a saint, and Jacob is a sinner."), (1.0, 1.0));
        assert_eq!(score("samuel is a Saint and jacob is a SINNER"), (1.0, 1.0));
        assert_eq!(score("Samuel is a sinner, and Jacob is a sinner."), (1.0, 0.0));
        // Reasoning first: the last statement about each counts.
        assert_eq!(
            score("Suppose Jacob is a saint... contradiction. So Samuel is a saint, and Jacob is a sinner."),
            (1.0, 1.0)
        );
        assert_eq!(score("Samuel is a saint. Jacob is a sinner. Wait, no: Jacob is a saint."), (1.0, 0.0));
        // The boxed / tagged answer wins over the reasoning.
        assert_eq!(score("Jacob is a saint? \\boxed{Samuel is a saint, Jacob is a sinner}"), (1.0, 1.0));
        assert_eq!(score("<answer>Samuel is a saint, and Jacob is a sinner</answer>"), (1.0, 1.0));
        // Someone left out; roles of another puzzle; a longer name is not the name.
        assert_eq!(score("Samuel is a saint."), (0.0, 0.0));
        assert_eq!(score("Samuel is a knight, and Jacob is a knave."), (0.0, 0.0));
        assert_eq!(score("Samuel is a saint, and Jacobson is a sinner."), (0.0, 0.0));
        // "saintly" is not "saint"; chat-template tail ignored.
        assert_eq!(score("Samuel is a saintly man."), (0.0, 0.0));
        assert_eq!(score("Samuel is a saint, and Jacob is a sinner.<|im_end|>Jacob is a saint"), (1.0, 1.0));
        let r = score_knights_knaves(&task(), "Samuel is a saint, and Jacob is a sinner.", 0.1);
        assert!((r.total - 1.1).abs() < 1e-6);
    }
}
