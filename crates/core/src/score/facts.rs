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

/// What a rewrite kept of the original's facts, and what it added: checked both ways, as the
/// paper's consistency is (entailment both ways), so an invented number or name, or an added
/// negation, costs as much as a lost one.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FactCheck {
    /// Facts of the original (numbers, names, negations).
    pub total: usize,
    /// How many of them the rewrite kept.
    pub kept: usize,
    /// Facts of the original the rewrite lost (at most 20 listed).
    pub missing: Vec<String>,
    /// Facts of the rewrite.
    pub rewrite_total: usize,
    /// How many of them the original holds.
    pub supported: usize,
    /// Facts of the rewrite the original does not hold (at most 20 listed).
    pub added: Vec<String>,
}

impl FactCheck {
    /// The smaller of the share kept and the share supported; 1 when neither text has any.
    pub fn fraction(&self) -> f32 {
        share(self.kept, self.total).min(share(self.supported, self.rewrite_total))
    }
}

fn share(part: usize, total: usize) -> f32 {
    if total == 0 {
        1.0
    } else {
        part as f32 / total as f32
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

/// Facts of `from` (numbers, names, negations), how many `to` holds, and the ones it lacks.
fn one_way(from: &str, to: &str) -> (usize, usize, Vec<String>) {
    let facts = fact_tokens(from);
    let to_norm = normalise_number(to);
    let mut lacking = Vec::new();
    let mut held = 0;
    for f in &facts {
        let present = if f.chars().any(|c| c.is_ascii_digit()) {
            to_norm.contains(&normalise_number(f))
        } else {
            to.contains(f.as_str())
        };
        if present {
            held += 1;
        } else if lacking.len() < 20 {
            lacking.push(f.clone());
        }
    }
    let negs = negation_count(from);
    let negs_held = negation_count(to).min(negs);
    if negs_held < negs && lacking.len() < 20 {
        lacking.push(format!("negation ({negs_held} of {negs})"));
    }
    (facts.len() + negs, held + negs_held, lacking)
}

/// Which facts of `original` survive in `rewrite`, and which facts of `rewrite` the original
/// does not hold.
pub fn check(original: &str, rewrite: &str) -> FactCheck {
    let (total, kept, missing) = one_way(original, rewrite);
    let (rewrite_total, supported, added) = one_way(rewrite, original);
    FactCheck {
        total,
        kept,
        missing,
        rewrite_total,
        supported,
        added,
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

    #[test]
    fn invented_facts_and_added_negations_count_too() {
        let t = "The report says Acme expects 15% growth in 2030.";
        // Everything kept, but a year and a name invented: 3 of the rewrite's 5 facts supported.
        let invented = check(
            t,
            "The report says Acme expects 15% growth in 2030, says Bob from 2019.",
        );
        assert_eq!((invented.kept, invented.total), (3, 3));
        assert_eq!((invented.supported, invented.rewrite_total), (3, 5));
        assert_eq!(invented.added, vec!["Bob", "2019"]);
        assert!((invented.fraction() - 0.6).abs() < 1e-6);
        // An added negation flips the statement: one of the rewrite's 4 facts unsupported.
        let negated = check(t, "No, the report says Acme expects 15% growth in 2030.");
        assert_eq!((negated.kept, negated.total), (3, 3));
        assert_eq!((negated.supported, negated.rewrite_total), (3, 4));
        assert!(negated.added.iter().any(|a| a.starts_with("negation")));
        assert!((negated.fraction() - 0.75).abs() < 1e-6);
        // Losing is measured as before, and the smaller share counts.
        let lost = check(t, "The report says Acme expects growth, not 15% but more.");
        assert_eq!((lost.kept, lost.total), (2, 3));
        assert!((lost.fraction() - 2.0 / 3.0).abs() < 1e-6);
    }
}
