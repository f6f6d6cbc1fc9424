//! The rewriter's prompt (the target rendered as explicit instructions, strongest gaps first)
//! and the clean-up of what a small model answers (preambles, quotes, commentary).

use visa_models::llm::{ChatMessage, Role};
use visa_values::ValueId;

/// SmolLM2's instruction data (smol-rewrite) phrases rewriting tasks this way: the task in the
/// system message, the text alone as the user message. Small models follow it best.
const SYSTEM_HEAD: &str = "You're an AI assistant for text re-writing. Rewrite the input text to";
const SYSTEM_TAIL: &str = "while maintaining its main points and every fact, number, name and negation. \
Reply with the rewritten text only.";

/// A plain-language cue per value, for instructions a small model can follow.
pub fn cue(v: ValueId) -> &'static str {
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

/// Starts of a trailing line or paragraph that talks about the rewrite instead of being it.
const COMMENTARY: &[&str] = &[
    "note:",
    "note that",
    "notes:",
    "explanation",
    "changes:",
    "changes made",
    "this rewrite",
    "this version",
    "this revised",
    "this rewritten",
    "in this rewrite",
    "in this version",
    "in the rewrite",
    "in the revised",
    "in the rewritten",
    "the rewritten",
    "the revised",
    "i hope",
    "let me know",
];

/// What "the original ..." / "in the original ..." names when it talks about the edit; a
/// paragraph about "the original Constitution" is text, not commentary.
const ORIGINAL_NOUNS: &[&str] = &[
    "text",
    "sentence",
    "version",
    "input",
    "answer",
    "passage",
    "paragraph",
    "statement",
    "message",
    "response",
    "wording",
    "phrasing",
    "was",
    "is",
    "had",
    "said",
    "read",
];

/// Verbs with which a trailing first-person paragraph reports an edit ("I made a few
/// changes", "I've removed ..."), after "i ", "i've " or "i have ".
const EDIT_VERBS: &[&str] = &[
    "made",
    "changed",
    "removed",
    "added",
    "replaced",
    "rephrased",
    "kept",
    "rewrote",
    "rewritten",
    "revised",
    "corrected",
    "edited",
    "adjusted",
    "modified",
    "used",
    "tried",
];

/// Whether a trailing line or paragraph is commentary about the rewrite.
fn is_commentary(block: &str) -> bool {
    let lower = block.trim().to_lowercase().replace('\u{2019}', "'");
    let lower = lower.trim_start_matches(['(', '*', '-', ' ']);
    if COMMENTARY.iter().any(|c| lower.starts_with(c)) {
        return true;
    }
    let original = ["in the original ", "the original "]
        .iter()
        .find_map(|p| lower.strip_prefix(p));
    if let Some(rest) = original {
        let word = rest
            .split(|c: char| !c.is_alphanumeric())
            .next()
            .unwrap_or("");
        let named = |w: &str| ORIGINAL_NOUNS.contains(&w);
        if named(word) || word.strip_suffix('s').is_some_and(named) {
            return true;
        }
    }
    ["i ", "i've ", "i have "].iter().any(|p| {
        lower.strip_prefix(p).is_some_and(|rest| {
            let rest = rest.trim_start_matches("also ").trim_start_matches("just ");
            EDIT_VERBS.iter().any(|v| rest.starts_with(v))
        })
    })
}

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
    // Trailing commentary: from the end, drop each paragraph (blank-line separated) or last
    // line that talks about the rewrite; the first paragraph is the rewrite and stays.
    loop {
        let paragraph = text.rfind("\n\n").filter(|i| is_commentary(&text[i + 2..]));
        let line = text
            .rfind('\n')
            .filter(|i| text[i + 1..].trim().is_empty() || is_commentary(&text[i + 1..]));
        match paragraph.or(line) {
            Some(i) => text = text[..i].trim_end().to_owned(),
            None => break,
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
        // Notes about the edit, as small models append them, in one or several paragraphs.
        assert_eq!(
            clean(
                "We care about you.\n\nI made a few changes to improve the text. First, I added an apostrophe."
            ),
            "We care about you."
        );
        assert_eq!(
            clean(
                "We care.\nWe help.\n\nIn the original sentence, I changed \"it can\".\n\nThe original was\nrephrased to be concise."
            ),
            "We care.\nWe help."
        );
        assert_eq!(
            clean("We care.\n\nI\u{2019}ve also removed a word.\nI hope this helps!"),
            "We care."
        );
        // First-person text that is not about an edit stays, and so does a lone paragraph.
        assert_eq!(
            clean("We care.\n\nI believe kindness matters."),
            "We care.\n\nI believe kindness matters."
        );
        // "The original ..." is commentary only when it names the text being edited.
        assert_eq!(
            clean("We care.\n\nThe original Constitution protects speech."),
            "We care.\n\nThe original Constitution protects speech."
        );
        assert_eq!(
            clean("We care.\n\nIn the original treaty, both sides agreed."),
            "We care.\n\nIn the original treaty, both sides agreed."
        );
        assert_eq!(
            clean("We care.\n\nThe original texts were harsher."),
            "We care."
        );
        assert_eq!(
            clean("I made this choice freely."),
            "I made this choice freely."
        );
        assert_eq!(clean("  "), "");
    }
}
