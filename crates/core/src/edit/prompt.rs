//! The prompts of sentence edits: rewrite one sentence (with the sentence before it as
//! context) less or more toward named values, or write one short sentence that follows a given
//! one and expresses a value. A fixed system message and worked examples come first, so the
//! engine's prefix cache serves them and only the task itself is new to the model.

use crate::rewriter::prompt::{cue, truncate_chars};
use visa_models::llm::{ChatMessage, Role};
use visa_values::ValueId;

const REWRITE_SYSTEM: &str = "You're an AI assistant for text re-writing. Rewrite one sentence of a text as the task says. \
Keep every fact, number, name and negation, and keep what it advises or states. Reply with the rewritten sentence only.";

/// Worked examples: (sentence before, sentence, task, rewrite).
const REWRITE_EXAMPLES: &[(&str, &str, &str, &str)] = &[
    (
        "You can find it in most good shops.",
        "Buy the premium watch so that everyone sees how rich you are.",
        "talk less about status, control and wealth",
        "Buy the premium watch if its quality is worth the price to you.",
    ),
    (
        "Plan your week on Monday.",
        "Send the report to your manager by Friday.",
        "talk more about care, kindness and helping the people close to you",
        "Send the report to your manager by Friday, and offer to help a teammate who is behind.",
    ),
    (
        "Track your sales every month.",
        "Set ambitious targets and beat them every quarter to prove you are the best.",
        "talk less about success, ambition and competence",
        "Set clear targets and review them every quarter.",
    ),
    (
        "The meeting starts at 9.",
        "Print the handouts for the meeting.",
        "talk more about fairness, tolerance and care for all people and nature",
        "Print the handouts for the meeting on recycled paper.",
    ),
];

const INSERT_SYSTEM: &str = "You're an AI assistant for text writing. Write one short sentence that can follow the given \
sentence of a text and says what the task asks. Use no numbers and no names. Reply with the new sentence only.";

/// Worked examples: (sentence, task, new sentence).
const INSERT_EXAMPLES: &[(&str, &str, &str)] = &[
    (
        "Save a part of your salary every month.",
        "talk about care, kindness and helping the people close to you",
        "That way you can also support your family when they need it.",
    ),
    (
        "Start the meeting on time and follow the agenda.",
        "talk about fairness, tolerance and care for all people and nature",
        "Give everyone in the room a fair chance to speak.",
    ),
    (
        "Keep the receipts in one folder.",
        "talk about safety, stability and order",
        "That keeps your records secure if something goes wrong.",
    ),
];

/// The task in words: what to talk less and more about.
pub fn task(lower: &[ValueId], raise: &[ValueId]) -> String {
    let mut parts = Vec::new();
    if !lower.is_empty() {
        parts.push(format!(
            "talk less about {}",
            lower
                .iter()
                .map(|v| cue(*v))
                .collect::<Vec<_>>()
                .join(" and about ")
        ));
    }
    if !raise.is_empty() {
        parts.push(format!(
            "talk more about {}",
            raise
                .iter()
                .map(|v| cue(*v))
                .collect::<Vec<_>>()
                .join(" and about ")
        ));
    }
    parts.join(", and ")
}

fn rewrite_turn(before: &str, sentence: &str, task: &str) -> String {
    format!("Text before it: {before}\nTask: {task}\nSentence: {sentence}")
}

/// Messages for rewriting `sentence` (after `before`, in an answer to `request`).
pub fn rewrite_messages(
    sentence: &str,
    before: Option<&str>,
    request: Option<&str>,
    lower: &[ValueId],
    raise: &[ValueId],
) -> Vec<ChatMessage> {
    let mut m = vec![ChatMessage::new(Role::System, REWRITE_SYSTEM)];
    for (b, s, t, r) in REWRITE_EXAMPLES {
        m.push(ChatMessage::new(Role::User, rewrite_turn(b, s, t)));
        m.push(ChatMessage::new(Role::Assistant, *r));
    }
    let before = match (before, request) {
        (Some(b), _) => truncate_chars(b.trim(), 240),
        (None, Some(r)) => format!("(an answer to: {})", truncate_chars(r.trim(), 200)),
        (None, None) => "(the start of the text)".to_owned(),
    };
    m.push(ChatMessage::new(
        Role::User,
        rewrite_turn(&before, sentence.trim(), &task(lower, raise)),
    ));
    m
}

/// Messages for one new sentence after `anchor` that expresses `value`.
pub fn insert_messages(anchor: &str, value: ValueId) -> Vec<ChatMessage> {
    let turn = |s: &str, t: &str| format!("Sentence: {s}\nTask: {t}");
    let mut m = vec![ChatMessage::new(Role::System, INSERT_SYSTEM)];
    for (s, t, r) in INSERT_EXAMPLES {
        m.push(ChatMessage::new(Role::User, turn(s, t)));
        m.push(ChatMessage::new(Role::Assistant, *r));
    }
    m.push(ChatMessage::new(
        Role::User,
        turn(
            &truncate_chars(anchor.trim(), 300),
            &format!("talk about {}", cue(value)),
        ),
    ));
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_part_comes_first_and_the_task_names_the_values() {
        let a = rewrite_messages(
            "Crush them.",
            Some("Work hard."),
            None,
            &[ValueId::Power],
            &[],
        );
        let b = rewrite_messages(
            "Be the boss.",
            None,
            Some("How do I win?"),
            &[ValueId::Power],
            &[ValueId::Benevolence],
        );
        // Same system message and examples: the engine's prefix cache serves them.
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b).take(a.len() - 1) {
            assert_eq!(x.content, y.content);
        }
        let last = &b.last().unwrap().content;
        assert!(last.contains("Sentence: Be the boss."), "{last}");
        assert!(last.contains("(an answer to: How do I win?)"), "{last}");
        assert!(
            last.contains("talk less about status, control and wealth, and talk more about care"),
            "{last}"
        );
        let i = insert_messages("Save money.", ValueId::Universalism);
        assert!(
            i.last()
                .unwrap()
                .content
                .ends_with("talk about fairness, tolerance and care for all people and nature")
        );
    }
}
