//! The rewriter's prompt (the target rendered as explicit instructions, strongest gaps first)
//! and the clean-up of what a small model answers (preambles, quotes, commentary).

use crate::models::llm::{ChatMessage, Role};
use crate::values::ValueId;

/// SmolLM2's instruction data (smol-rewrite) phrases rewriting tasks this way: the task in the
/// system message, the text alone as the user message. Small models follow it best.
const SYSTEM_HEAD: &str = "You're an AI assistant for text re-writing. Rewrite the input text to";
const SYSTEM_TAIL: &str = "while maintaining its main points and every fact, number, name and negation. \
Reply with the rewritten text only.";

/// A plain-language cue per value, for instructions a small model can follow.
fn cue(v: ValueId) -> &'static str {
    match v {
        ValueId::SelfDirection => "independence, own choices and creativity",
        ValueId::Stimulation => "excitement, novelty and challenge",
        ValueId::Hedonism => "pleasure and enjoying life",
        ValueId::Achievement => "success, ambition and competence",
        ValueId::Power => "status, control and wealth",
        ValueId::Security => "safety, stability and order",
        ValueId::Conformity => "following rules and not upsetting others",
        ValueId::Tradition => "customs, heritage and religion",
        ValueId::Benevolence => "care, kindness and helping the people close to you",
        ValueId::Universalism => "fairness, tolerance and care for all people and nature",
    }
}

/// One instruction per gap (target - score; positive: express more), strongest first.
pub fn instructions(gaps: &[(ValueId, f32)]) -> Vec<String> {
    gaps.iter()
        .map(|(v, gap)| {
            let strength = match gap.abs() {
                g if g >= 0.4 => "much ",
                g if g >= 0.2 => "",
                _ => "slightly ",
            };
            let direction = if *gap > 0.0 { "more" } else { "less" };
            format!("talk {strength}{direction} about {}", cue(*v))
        })
        .collect()
}

/// The chat messages for one rewrite: the task (instructions and the request the text answers)
/// as the system message, the text as the user message.
pub fn messages(
    original: &str,
    context: Option<&str>,
    gaps: &[(ValueId, f32)],
) -> Vec<ChatMessage> {
    let lines = instructions(gaps);
    let task = match lines.len() {
        0 => "keep its tone".to_owned(),
        1 => lines[0].clone(),
        n => format!("{} and {}", lines[..n - 1].join(", "), lines[n - 1]),
    };
    let mut system = format!("{SYSTEM_HEAD} {task}, {SYSTEM_TAIL}");
    if let Some(c) = context.filter(|c| !c.trim().is_empty()) {
        system.push_str(" The text answers this request: ");
        system.push_str(&truncate_chars(c.trim(), 600));
    }
    vec![
        ChatMessage::new(Role::System, system),
        ChatMessage::new(Role::User, original.trim()),
    ]
}

pub fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

const PREAMBLES: &[&str] = &[
    "here is",
    "here's",
    "sure",
    "certainly",
    "of course",
    "rewritten text",
    "revised text",
    "rewrite:",
    "the rewritten",
    "the revised",
    "okay",
    "ok,",
];

const COMMENTARY: &[&str] = &[
    "note:",
    "this rewrite",
    "this version",
    "i hope",
    "in this rewrite",
    "let me know",
    "i have rewritten",
    "i've rewritten",
    "changes made",
];

/// Strip what is not the rewrite: a leading "Here is ..." line or sentence, wrapping quotes,
/// trailing notes about the rewrite.
pub fn clean(raw: &str) -> String {
    let mut text = raw.trim().to_owned();
    // A first line (or first sentence ending with ':') that announces the rewrite.
    loop {
        let lower = text.to_lowercase();
        if !PREAMBLES.iter().any(|p| lower.starts_with(p)) {
            break;
        }
        let cut = text
            .find('\n')
            .or_else(|| text.find(':').map(|i| i + 1))
            .or_else(|| text.find(['.', '!']).map(|i| i + 1));
        match cut {
            Some(i) if i < text.len() => text = text[i..].trim_start().to_owned(),
            _ => return String::new(),
        }
    }
    // Trailing commentary paragraphs or lines.
    while let Some(i) = text.rfind('\n') {
        let last = text[i + 1..].trim().to_lowercase();
        let last = last.trim_start_matches(['(', '*', '-', ' ']);
        if last.is_empty() || COMMENTARY.iter().any(|c| last.starts_with(c)) {
            text.truncate(i);
            text = text.trim_end().to_owned();
        } else {
            break;
        }
    }
    let t = text.trim();
    let unquoted = t
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .filter(|s| !s.contains('"'))
        .unwrap_or(t);
    unquoted.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_put_the_strongest_gap_first_in_plain_words() {
        let lines = instructions(&[(ValueId::Benevolence, 0.5), (ValueId::Power, -0.15)]);
        assert_eq!(
            lines,
            vec![
                "talk much more about care, kindness and helping the people close to you",
                "talk slightly less about status, control and wealth"
            ]
        );
        let m = messages(
            "Buy now.",
            Some("What should I do?"),
            &[(ValueId::Power, -0.3)],
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].content, "Buy now.");
        assert!(
            m[0].content.starts_with(
                "You're an AI assistant for text re-writing. Rewrite the input text to talk less about status, control and wealth, while"
            ),
            "{}",
            m[0].content
        );
        assert!(m[0].content.ends_with("this request: What should I do?"));
    }

    #[test]
    fn strips_preambles_quotes_and_commentary() {
        assert_eq!(
            clean("Here is the rewritten text:\n\"We care about you.\"\n\nNote: I kept the facts."),
            "We care about you."
        );
        assert_eq!(clean("Sure! We care about you."), "We care about you.");
        assert_eq!(clean("We care.\nThis rewrite adds warmth."), "We care.");
        assert_eq!(
            clean("Plain answer, nothing to strip."),
            "Plain answer, nothing to strip."
        );
        assert_eq!(clean("Here is the rewrite:"), "");
        assert_eq!(clean("  "), "");
    }
}
