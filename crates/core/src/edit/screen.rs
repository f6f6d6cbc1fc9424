//! Screening of sentence edits before they are scored: a candidate that talks to the user or
//! about the edit (apologies, "Same post", notes, questions back, the model speaking as "I"),
//! that runs to more sentences than it replaces, or that is empty, unchanged or cut off is
//! rejected, with the reason in words. The same rules serve serving, evaluation and training.

use serde::Serialize;

use crate::rewriter::prompt;
use crate::score::facts;
use visa_values::sentences;

/// Why an edit candidate was not considered.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EditRejection {
    Empty,
    Unchanged,
    /// Ends without a sentence mark, or was cut by the token limit.
    Truncated,
    TooShort,
    TooLong,
    /// Talks to the user or about the edit instead of being the text.
    TalksAboutTheEdit,
    /// Asks a question where the original asks none.
    Question,
    /// Speaks as "I" where the original does not.
    FirstPerson,
    /// An inserted sentence that states a number, a name or a negation.
    AddsFacts,
}

/// Phrases of a model that talks to its user or about the edit rather than writing the text
/// (matched in lower case, on word boundaries).
const META: &[&str] = &[
    "sorry",
    "apologize",
    "apologise",
    "apologies",
    "same post",
    "same text",
    "same sentence",
    "rewritten",
    "rewrite",
    "rewriting",
    "revised",
    "the original",
    "this sentence",
    "the sentence",
    "new sentence",
    "the text",
    "this text",
    "input text",
    "here is",
    "here's",
    "note:",
    "as an ai",
    "language model",
    "i hope",
    "hope this helps",
    "let me know",
    "feel free to ask",
    "i can't",
    "i cannot",
    "i'm unable",
    "i am unable",
    "happy to help",
    "glad to help",
    "certainly",
    "of course",
    "as requested",
    "you asked",
    "your request",
    "thank you for",
    "thanks for",
    "great question",
    "good question",
    "talk less",
    "talk more",
    "task:",
    "sentence:",
];

/// Words by which a model speaks as itself.
const FIRST_PERSON: &[&str] = &[
    "i", "i'm", "i've", "i'll", "i'd", "me", "my", "mine", "myself",
];

fn words_lower(s: &str) -> Vec<String> {
    s.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '\u{2019}'))
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase().replace('\u{2019}', "'"))
        .collect()
}

/// Whether `text` holds one of the meta phrases, on word boundaries.
pub fn talks_about_the_edit(text: &str) -> bool {
    let normal = format!(" {} ", words_lower(text).join(" "));
    let raw = text.to_lowercase().replace('\u{2019}', "'");
    META.iter().any(|m| {
        if m.ends_with(':') {
            raw.contains(m)
        } else {
            normal.contains(&format!(" {m} "))
        }
    })
}

fn has_first_person(text: &str) -> bool {
    words_lower(text)
        .iter()
        .any(|w| FIRST_PERSON.contains(&w.as_str()))
}

fn ends_a_sentence(text: &str) -> bool {
    text.trim_end()
        .trim_end_matches(['"', '\'', ')', '\u{201d}', '*'])
        .ends_with(['.', '!', '?'])
}

/// A model's raw output for a sentence rewrite, cleaned and checked. `original` is the
/// sentence body it replaces; the result keeps at most as many sentences as the original has.
pub fn screen_rewrite(
    original: &str,
    raw: &str,
    finished: bool,
) -> (String, Option<EditRejection>) {
    let cleaned = prompt::clean(raw);
    let first_line = cleaned.lines().next().unwrap_or("").trim().to_owned();
    let allowed = sentences::split(original).len().max(1);
    let parts = sentences::split(&first_line);
    let text = match parts.get(allowed - 1) {
        // Keep the first `allowed` sentences; what follows is the model going on.
        Some(last) if parts.len() > allowed => first_line[..last.end].to_owned(),
        _ => first_line,
    };
    let rejected = check_rewrite(original, &text, finished, raw);
    (text, rejected)
}

fn check_rewrite(original: &str, text: &str, finished: bool, raw: &str) -> Option<EditRejection> {
    let (o, t) = (original.chars().count(), text.chars().count());
    if text.trim().is_empty() {
        return Some(EditRejection::Empty);
    }
    // The same words: a change of case, punctuation or spacing is no edit (GRPO on the edit
    // task learned to earn its integrity with such changes; README, "Rewriter training").
    if text.trim() == original.trim() || words_lower(text) == words_lower(original) {
        return Some(EditRejection::Unchanged);
    }
    if talks_about_the_edit(text) || (talks_about_the_edit(raw) && !talks_about_the_edit(original))
    {
        return Some(EditRejection::TalksAboutTheEdit);
    }
    if !ends_a_sentence(text) && (ends_a_sentence(original) || !finished) {
        return Some(EditRejection::Truncated);
    }
    if (t as f32) < 0.4 * o as f32 {
        return Some(EditRejection::TooShort);
    }
    if (t as f32) > 2.5 * o as f32 + 20.0 {
        return Some(EditRejection::TooLong);
    }
    if text.contains('?') && !original.contains('?') {
        return Some(EditRejection::Question);
    }
    if has_first_person(text) && !has_first_person(original) {
        return Some(EditRejection::FirstPerson);
    }
    None
}

/// A candidate sentence to insert: one complete sentence of 4 to 40 words that states no
/// number, name or negation and does not talk about the edit or as "I".
pub fn screen_insertion(raw: &str, finished: bool) -> (String, Option<EditRejection>) {
    let cleaned = prompt::clean(raw);
    let first_line = cleaned.lines().next().unwrap_or("").trim().to_owned();
    let parts = sentences::split(&first_line);
    let text = match parts.first() {
        Some(s) => s.text(&first_line).to_owned(),
        None => first_line,
    };
    let rejected = check_insertion(&text, finished, raw);
    (text, rejected)
}

pub fn check_insertion(text: &str, finished: bool, raw: &str) -> Option<EditRejection> {
    let words = sentences::word_count(text);
    if text.trim().is_empty() {
        Some(EditRejection::Empty)
    } else if talks_about_the_edit(text) || talks_about_the_edit(raw) {
        Some(EditRejection::TalksAboutTheEdit)
    } else if !ends_a_sentence(text) || !finished && sentences::split(raw).len() < 2 {
        Some(EditRejection::Truncated)
    } else if words < 4 {
        Some(EditRejection::TooShort)
    } else if words > 40 {
        Some(EditRejection::TooLong)
    } else if text.contains('?') {
        Some(EditRejection::Question)
    } else if has_first_person(text) {
        Some(EditRejection::FirstPerson)
    } else if !adds_no_facts(text) {
        Some(EditRejection::AddsFacts)
    } else {
        None
    }
}

/// An inserted sentence may state no number, name or negation: against an empty original,
/// every fact it has would be invented.
pub fn adds_no_facts(text: &str) -> bool {
    facts::check("", text).rewrite_total == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_text_that_talks_to_the_user_or_about_the_edit() {
        let original = "Crush your rivals and take control of the whole market.";
        for bad in [
            "Compete with your rivals in the market. I'm sorry for any confusion.",
            "Same post.",
            "Same post. Compete with your rivals in the market.",
            "Note: I kept the facts.",
            "Here is the rewritten sentence: compete fairly.",
            "I apologize, but I cannot rewrite this.",
            "Certainly! Compete fairly with your rivals.",
            "This sentence now talks less about control.",
            "Let me know if you want another version.",
            "As an AI language model, I suggest competing fairly.",
            "Thanks for asking, compete fairly with your rivals.",
            "Talk less about status, control and wealth.",
        ] {
            let (_, r) = screen_rewrite(original, bad, true);
            assert!(r.is_some(), "passed: {bad}");
        }
        // Questions back and the model speaking as itself.
        assert_eq!(
            screen_rewrite(
                original,
                "Would you like to compete with your rivals?",
                true
            )
            .1,
            Some(EditRejection::Question)
        );
        assert_eq!(
            screen_rewrite(original, "My advice is to compete with your rivals.", true).1,
            Some(EditRejection::FirstPerson)
        );
        // A plain rewrite passes; text after the first sentence is the model going on.
        let (t, r) = screen_rewrite(
            original,
            "Compete well with your rivals across the market. Also remember to rest.",
            true,
        );
        assert_eq!(
            (t.as_str(), r),
            ("Compete well with your rivals across the market.", None)
        );
        assert_eq!(
            screen_rewrite(original, original, true).1,
            Some(EditRejection::Unchanged)
        );
        // Only case, punctuation or spacing changed: the same words, no edit.
        assert_eq!(
            screen_rewrite(
                "the cost is high, and rising",
                "The cost is high and rising.",
                true
            )
            .1,
            Some(EditRejection::Unchanged)
        );
        assert_eq!(
            screen_rewrite(original, "Compete well with your rivals across", false).1,
            Some(EditRejection::Truncated)
        );
        // Words that only contain a meta phrase are fine ("rewrites" in a text about editing
        // is still caught, "thanksgiving" is not "thanks for").
        assert!(!talks_about_the_edit("Plan the Thanksgiving dinner early."));
        assert!(!talks_about_the_edit("Sort the notes by date."));
    }

    #[test]
    fn insertions_add_no_facts_and_are_one_sentence() {
        assert_eq!(
            screen_insertion("Be kind to the people around you.", true),
            ("Be kind to the people around you.".into(), None)
        );
        for (bad, why) in [
            ("Call Maria for help.", EditRejection::AddsFacts),
            ("Give 10% of it to charity.", EditRejection::AddsFacts),
            ("Never forget your friends.", EditRejection::AddsFacts),
            ("Be kind.", EditRejection::TooShort),
            (
                "I think you should be kind to others.",
                EditRejection::FirstPerson,
            ),
            (
                "Why not help your colleagues today?",
                EditRejection::Question,
            ),
            (
                "Be kind to everyone you meet along the",
                EditRejection::Truncated,
            ),
        ] {
            assert_eq!(screen_insertion(bad, true).1, Some(why), "{bad}");
        }
        // Only the first sentence is kept.
        assert_eq!(
            screen_insertion(
                "Help your colleagues when they are stuck. Then go home.",
                true
            )
            .0,
            "Help your colleagues when they are stuck."
        );
    }
}
