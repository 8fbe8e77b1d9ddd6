//! Finding the final answer in a model's text, in the forms models use: `\boxed{...}` (LaTeX, the
//! DeepSeek/Qwen math convention), `#### X` (GSM8K), "the answer is X" / "Answer: X", and
//! `<answer>X</answer>` (R1-style tags) — after chat-template end markers are cut off.
//!
//! The *last* occurrence wins: models often restate the question or try intermediate values
//! before committing. Numbers are compared as numbers (`1,000`, `$1000.00`, `1e3` and `1000` agree),
//! never as strings.

/// Markers after which a completion's text is not the model's answer any more.
const END_MARKERS: [&str; 6] =
    ["<|im_end|>", "<|endoftext|>", "</s>", "<|eot_id|>", "<|end|>", "<end_of_turn>"];

/// The reward of a graded answer: parts `format` (an answer in a recognised form was found) and
/// `correct`, total `correct + format_weight * format`. Every verifier of the built-in envs
/// reports these two parts under these names.
pub fn graded(format: bool, correct: bool, format_weight: f32) -> sluice_core::Reward {
    let (format, correct) = (format as u8 as f32, correct as u8 as f32);
    sluice_core::Reward::new(correct + format_weight * format)
        .with_part("format", format)
        .with_part("correct", correct)
}

/// The text before the first chat-template end marker.
pub fn strip_template(text: &str) -> &str {
    let end = END_MARKERS.iter().filter_map(|m| text.find(m)).min().unwrap_or(text.len());
    &text[..end]
}

/// The content of the last `\boxed{...}` (or `\fbox{...}`), braces balanced.
pub fn last_boxed(text: &str) -> Option<&str> {
    let mut found = None;
    for marker in ["\\boxed{", "\\fbox{"] {
        let mut from = 0;
        while let Some(i) = text[from..].find(marker) {
            let open = from + i + marker.len();
            let mut depth = 1usize;
            let mut close = None;
            for (j, ch) in text[open..].char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            close = Some(open + j);
                            break;
                        }
                    }
                    _ => {}
                }
            }
            if let Some(c) = close {
                if found.is_none_or(|(at, _)| at < open) {
                    found = Some((open, &text[open..c]));
                }
            }
            from = open;
        }
    }
    found.map(|(_, s)| s.trim())
}

/// The content of the last `<answer>...</answer>` (to the end of the text when unclosed), trimmed.
pub fn last_answer_tag(text: &str) -> Option<&str> {
    let rest = &text[text.rfind("<answer>")? + "<answer>".len()..];
    Some(rest[..rest.find("</answer>").unwrap_or(rest.len())].trim())
}

/// The model's final answer, if it gave one in a recognised form.
pub fn extract_answer(text: &str) -> Option<String> {
    let text = strip_template(text);
    if let Some(b) = last_boxed(text) {
        return Some(clean(b));
    }
    if let Some(a) = last_answer_tag(text) {
        return non_empty(clean(a));
    }
    if let Some(i) = text.rfind("####") {
        return non_empty(clean(first_line(&text[i + 4..])));
    }
    // ASCII lowercasing keeps byte offsets, so a cue found in `lower` is at the same place in `text`.
    let lower = text.to_ascii_lowercase();
    for cue in ["answer is", "answer:"] {
        if let Some(i) = lower.rfind(cue) {
            return non_empty(clean(first_line(&text[i + cue.len()..])));
        }
    }
    None
}

fn first_line(s: &str) -> &str {
    s.trim_start().lines().next().unwrap_or("")
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// Trims what surrounds an answer: whitespace, `$`, `**`, trailing periods, a leading `:` or `=`,
/// and a `\text{...}` wrapper.
fn clean(s: &str) -> String {
    let mut s = s.trim();
    loop {
        let before = s;
        s = s.trim_start_matches([':', '=']).trim();
        s = s.trim_matches('$').trim();
        s = s.trim_matches('*').trim();
        s = s.trim_end_matches(['.', '!']).trim();
        if let Some(inner) = s.strip_prefix("\\text{").and_then(|r| r.strip_suffix('}')) {
            s = inner.trim();
        }
        if s == before {
            return s.to_string();
        }
    }
}

/// Parses a numeric answer: thousands separators, a leading `$`, a trailing `%` or unit word,
/// `\frac{a}{b}` and `a/b` are accepted. Returns `None` for anything else.
pub fn parse_number(s: &str) -> Option<f64> {
    let s = s.trim().trim_start_matches('$').replace(",", "").replace("\\!", "");
    let s = s.trim();
    if let Some(rest) = s.strip_prefix("\\frac{").or_else(|| s.strip_prefix("\\dfrac{")) {
        let (num, rest) = rest.split_once("}{")?;
        let den = rest.strip_suffix('}')?;
        return Some(parse_number(num)? / parse_number(den)?);
    }
    if let Ok(v) = s.parse::<f64>() {
        return v.is_finite().then_some(v);
    }
    if let Some((a, b)) = s.split_once('/') {
        let (a, b) = (a.trim().parse::<f64>().ok()?, b.trim().parse::<f64>().ok()?);
        return (b != 0.0).then(|| a / b);
    }
    // "42 apples", "15%": the leading number, if the rest is a single word or symbol.
    let end = s.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+')).unwrap_or(s.len());
    let (num, rest) = s.split_at(end);
    let rest = rest.trim();
    if !num.is_empty()
        && !rest.contains(char::is_whitespace)
        && rest.chars().all(|c| c.is_alphabetic() || c == '%')
    {
        return num.parse::<f64>().ok().filter(|v| v.is_finite());
    }
    None
}

/// Whether `answer` equals the integer `expected` as a number.
pub fn matches_integer(answer: &str, expected: i64) -> bool {
    parse_number(answer).is_some_and(|v| v == expected as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_is_found_and_the_last_one_wins() {
        let cases = [
            ("so 2+2 = \\boxed{4}.", "4"),
            ("first \\boxed{3}, no wait, \\boxed{4}", "4"),
            ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
            ("The total is 12.\n#### 1,234\n", "1,234"),
            ("Thus the answer is $42$.", "42"),
            ("So the Answer: **17**", "17"),
            ("The answer is 5.<|im_end|>The answer is 6", "5"),
            ("<think>maybe 3</think><answer> 7 </answer>", "7"),
            ("\\boxed{\\text{Alice}}", "Alice"),
            ("ÄÖÜ the answer is 9", "9"),
        ];
        for (text, want) in cases {
            assert_eq!(extract_answer(text).as_deref(), Some(want), "{text:?}");
        }
        for text in ["I don't know", "\\boxed{unbalanced", "#### ", "the answer is"] {
            assert_eq!(extract_answer(text), None, "{text:?}");
        }
    }

    #[test]
    fn numbers_compare_as_numbers() {
        for (s, v) in [
            ("1,000", 1000.0),
            ("$1000.00", 1000.0),
            ("1e3", 1000.0),
            ("-7", -7.0),
            ("\\frac{3}{4}", 0.75),
            ("3/4", 0.75),
            ("42 apples", 42.0),
            ("15%", 15.0),
        ] {
            assert_eq!(parse_number(s), Some(v), "{s}");
        }
        for s in ["", "abc", "1/0", "4 2", "two"] {
            assert_eq!(parse_number(s), None, "{s}");
        }
        assert!(matches_integer("1,234", 1234) && !matches_integer("1234.5", 1234));
    }
}
