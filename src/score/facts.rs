//! Fact preservation: the numbers, dates, quantities, names and negations of a text, and which
//! of them a rewrite kept. A heuristic on purpose (no NER model ships offline): tokens holding a
//! digit, capitalised words that do not start a sentence, and negation words.

use serde::Serialize;

/// Words whose count must not drop: dropping one flips a statement.
const NEGATIONS: &[&str] = &[
    "not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "cannot", "without",
];

/// Capitalised words that are not names.
const NOT_NAMES: &[&str] = &["I", "I'm", "I've", "I'll", "I'd", "OK"];

/// What a rewrite kept of the original's facts.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FactCheck {
    pub total: usize,
    pub kept: usize,
    /// Facts of the original the rewrite lost (at most 20 listed).
    pub missing: Vec<String>,
}

impl FactCheck {
    /// Share kept; 1 when the original has none.
    pub fn fraction(&self) -> f32 {
        if self.total == 0 {
            1.0
        } else {
            self.kept as f32 / self.total as f32
        }
    }
}

fn trim_token(t: &str) -> &str {
    t.trim_matches(|c: char| {
        !(c.is_alphanumeric() || matches!(c, '%' | '$' | '€' | '£' | '\'' | '-'))
    })
    .trim_end_matches(['\'', '-'])
}

fn negation_count(text: &str) -> usize {
    text.split_whitespace()
        .map(|t| trim_token(t).to_lowercase())
        .filter(|t| NEGATIONS.contains(&t.as_str()) || t.ends_with("n't"))
        .count()
}

/// The fact tokens of a text: numbers (with units and signs attached) and names.
pub fn fact_tokens(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut sentence_start = true;
    for raw in text.split_whitespace() {
        let t = trim_token(raw);
        if !t.is_empty() {
            let is_number = t.chars().any(|c| c.is_ascii_digit());
            let is_name = !sentence_start
                && t.chars().next().is_some_and(char::is_uppercase)
                && t.chars().count() > 1
                && !NOT_NAMES.contains(&t);
            if (is_number || is_name) && !out.iter().any(|o| o == t) {
                // Numbers are compared without thousands separators and trailing dots.
                out.push(t.to_owned());
            }
        }
        sentence_start = raw.ends_with(['.', '!', '?', ':']) || raw.ends_with(".\"");
    }
    out
}

fn normalise_number(t: &str) -> String {
    t.chars().filter(|c| *c != ',').collect()
}

/// Which facts of `original` survive in `rewrite`.
pub fn check(original: &str, rewrite: &str) -> FactCheck {
    let facts = fact_tokens(original);
    let rewrite_norm = normalise_number(rewrite);
    let mut missing = Vec::new();
    let mut kept = 0;
    for f in &facts {
        let present = if f.chars().any(|c| c.is_ascii_digit()) {
            rewrite_norm.contains(&normalise_number(f))
        } else {
            rewrite.contains(f.as_str())
        };
        if present {
            kept += 1;
        } else if missing.len() < 20 {
            missing.push(f.clone());
        }
    }
    let negs = negation_count(original);
    let negs_kept = negation_count(rewrite).min(negs);
    if negs_kept < negs && missing.len() < 20 {
        missing.push(format!("negation ({} of {negs} kept)", negs_kept));
    }
    FactCheck {
        total: facts.len() + negs,
        kept: kept + negs_kept,
        missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_numbers_names_and_negations() {
        let t = "The plan costs $3,500 and starts on 12 March 2025. Ask Maria Lopez in Berlin, not Paris.";
        let f = fact_tokens(t);
        assert_eq!(
            f,
            vec![
                "$3,500", "12", "March", "2025", "Maria", "Lopez", "Berlin", "Paris"
            ]
        );
        let c = check(t, t);
        assert_eq!((c.kept, c.total), (9, 9));
        assert_eq!(c.fraction(), 1.0);
    }

    #[test]
    fn reports_what_a_rewrite_lost() {
        let t = "Do not sell before 2030; Acme expects 15% growth.";
        let ok = check(
            t,
            "Please don't sell before 2030, since Acme expects 15% growth.",
        );
        assert_eq!(ok.kept, ok.total, "{ok:?}");
        let bad = check(t, "Sell whenever you like; Acme expects growth.");
        assert_eq!(bad.total, 4);
        assert_eq!(bad.kept, 1);
        assert!(bad.missing.contains(&"2030".to_string()));
        assert!(bad.missing.iter().any(|m| m.starts_with("negation")));
        assert!(check("3,500 units", "3500 units").fraction() == 1.0);
        assert_eq!(check("plain words only.", "other words").fraction(), 1.0);
    }
}
