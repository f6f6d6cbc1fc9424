//! Edits that need no model: a sentence without one of its clauses (the clause that carries a
//! value, as in "..., because status and wealth are what count"), and the byte range that
//! drops a whole sentence or inserts one, so that the text around it keeps its layout.

use std::ops::Range;

use visa_values::sentences::Sentence;

/// Words that open a subordinate clause, which can go without the sentence losing its main
/// statement ("..., because status is what counts").
const SUBORDINATORS: &[&str] = &[
    "because", "so", "which", "while", "since", "whereas", "until", "unless", "where", "though",
    "although",
];

/// Words that open a leading clause before the main one ("To show them who leads, ...").
const LEADING: &[&str] = &[
    "to", "because", "if", "since", "as", "when", "while", "in", "by", "after", "before",
];

fn word_count(s: &str) -> usize {
    s.split_whitespace().count()
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

const CLOSERS: [char; 8] = ['.', '!', '?', '"', '\'', ')', '\u{201d}', '*'];

/// The sentence mark that ends `body` ("." when it has none).
fn end_mark(body: &str) -> &str {
    let t = body.trim_end();
    let cut = t.trim_end_matches(CLOSERS);
    let tail = &t[cut.len()..];
    match tail.chars().find(|c| matches!(c, '.' | '!' | '?')) {
        Some('!') => "!",
        Some('?') => "?",
        _ => ".",
    }
}

fn bare(w: &str) -> String {
    w.trim_matches(|c: char| !c.is_alphanumeric())
        .to_lowercase()
}

/// Versions of a sentence body without one clause: the main clause alone, cut before a
/// subordinating word that a comma (or a dash, colon, semicolon) sets off (never leaving a
/// subordinate clause open), or without a leading
/// subordinate clause that ends at a comma. A clause joined by a bare comma or "and" is a
/// statement of its own and is never cut. At most four, each of at least three
/// words, none equal to the body; the smallest cut first.
pub fn clause_trims(body: &str) -> Vec<String> {
    let mark = end_mark(body);
    let core = body.trim_end().trim_end_matches(CLOSERS);
    let mut out: Vec<String> = Vec::new();
    let mut push = |s: String| {
        if word_count(&s) >= 3 && s.trim() != body.trim() && !out.contains(&s) && out.len() < 4 {
            out.push(s);
        }
    };
    let mut starts: Vec<usize> = Vec::new();
    let mut prev_ws = true;
    for (i, c) in core.char_indices() {
        if prev_ws && !c.is_whitespace() {
            starts.push(i);
        }
        prev_ws = c.is_whitespace();
    }
    let first = bare(core.split_whitespace().next().unwrap_or(""));
    let leading = LEADING.contains(&first.as_str());
    // A sentence that opens with a subordinate clause has its main clause after the comma.
    let main_from = if leading {
        core.find(", ").map_or(core.len(), |c| c + 2)
    } else {
        0
    };
    let mut cuts: Vec<usize> = Vec::new();
    for (k, &i) in starts.iter().enumerate() {
        if i <= main_from {
            continue;
        }
        let w = bare(core[i..].split_whitespace().next().unwrap_or(""));
        if k >= 3 {
            // Set off by a comma (or a dash, colon, semicolon): a clause without one restricts
            // what comes before it ("the culture which is unhealthy", "hurt just because ...",
            // "use it so much"), and cutting it changes or breaks the main statement.
            let set_off = core[..i]
                .trim_end()
                .ends_with([',', ';', ':', '-', '\u{2014}']);
            let subordinate = set_off && SUBORDINATORS.contains(&w.as_str());
            let head_open = starts[1..k].iter().any(|&j| {
                SUBORDINATORS
                    .contains(&bare(core[j..].split_whitespace().next().unwrap_or("")).as_str())
            });
            // Only a subordinate clause goes ("..., because status is what counts"): cutting
            // at a bare comma or an "and" would drop a statement of its own.
            if !head_open && subordinate {
                cuts.push(i);
            }
        }
    }
    for i in cuts.into_iter().rev() {
        let head = core[..i]
            .trim_end()
            .trim_end_matches([',', ';', ':', '-'])
            .trim_end();
        push(format!("{head}{mark}"));
    }
    // A leading clause up to the first comma.
    if leading && let Some(comma) = core.find(", ") {
        push(format!("{}{mark}", capitalise(core[comma + 2..].trim())));
    }
    out
}

/// The range to remove so that sentence `i` disappears with the whitespace that separated it:
/// its whole line when it is alone on it (and one blank line when it was a paragraph of its
/// own), else the sentence and the space after it (or before it, when it ends its line).
pub fn drop_range(text: &str, sentences: &[Sentence], i: usize) -> Range<usize> {
    let s = sentences[i];
    let line_start = text[..s.start].rfind('\n').map_or(0, |p| p + 1);
    let line_end = text[s.end..].find('\n').map_or(text.len(), |p| s.end + p);
    let alone =
        text[line_start..s.start].trim().is_empty() && text[s.end..line_end].trim().is_empty();
    if alone {
        if line_end < text.len() {
            // The line and its newline; a blank line after a paragraph goes with it.
            let mut end = line_end + 1;
            let blank_before = line_start == 0 || text[..line_start].ends_with("\n\n");
            if blank_before && text[end..].starts_with('\n') {
                end += 1;
            }
            return line_start..end;
        }
        // The last line: take the newlines before it.
        let start = text[..line_start].trim_end_matches(['\n', '\r']).len();
        return start..line_end;
    }
    let next_start =
        s.end + (text[s.end..line_end].len() - text[s.end..line_end].trim_start().len());
    if next_start < line_end {
        return s.start..next_start;
    }
    // Last on its line after other sentences: take the space before it.
    let before = text[line_start..s.start].trim_end().len() + line_start;
    before..s.end
}

/// Where an inserted sentence goes after sentence `anchor`: right after its end, after one
/// space.
pub fn insertion_after(sentences: &[Sentence], anchor: usize) -> usize {
    sentences[anchor].end
}

#[cfg(test)]
mod tests {
    use super::*;
    use visa_values::sentences::{splice, split};

    #[test]
    fn trims_keep_the_main_clause() {
        assert_eq!(
            clause_trims(
                "Show everyone that you are the boss, because status and wealth are what count."
            ),
            vec!["Show everyone that you are the boss."]
        );
        // Two joined statements: neither goes.
        assert!(clause_trims("Crush your rivals and take control of the whole market!").is_empty());
        assert!(
            clause_trims("They are not your enemies, they are your greatest allies.").is_empty()
        );
        assert_eq!(
            clause_trims("Save money every month, so you can retire early and travel."),
            vec!["Save money every month."]
        );
        assert_eq!(
            clause_trims("To show them who leads, arrive before everyone else."),
            vec!["Arrive before everyone else."]
        );
        assert!(clause_trims("Plan the week.").is_empty());
        // A clause not set off by a comma restricts the main statement: nothing goes. (The
        // first cuts read by hand, on held-out arguments: "we shouldn't use it." and
        // "... or even hurt just.")
        assert!(
            clause_trims(
                "we shouldn't use it so much because it can cause suicide and cyber bullying."
            )
            .is_empty()
        );
        assert!(
            clause_trims(
                "social media results in the fomo culture which is unhealthy for individuals."
            )
            .is_empty()
        );
        assert!(
            clause_trims("teaching it could cause people to be shunned or even hurt just because someone told them untrue information.")
                .is_empty()
        );
    }

    #[test]
    fn dropping_keeps_the_layout_of_what_stays() {
        let t = "One here. Two here. Three here.\n\nFour alone.\n\n- Five item.\n- Six item.";
        let s = split(t);
        let drop = |i: usize| splice(t, &[(drop_range(t, &s, i), String::new())]);
        assert_eq!(
            drop(0),
            "Two here. Three here.\n\nFour alone.\n\n- Five item.\n- Six item."
        );
        assert_eq!(
            drop(2),
            "One here. Two here.\n\nFour alone.\n\n- Five item.\n- Six item."
        );
        assert_eq!(
            drop(3),
            "One here. Two here. Three here.\n\n- Five item.\n- Six item."
        );
        assert_eq!(
            drop(4),
            "One here. Two here. Three here.\n\nFour alone.\n\n- Six item."
        );
        assert_eq!(
            drop(5),
            "One here. Two here. Three here.\n\nFour alone.\n\n- Five item."
        );
        let at = insertion_after(&s, 3);
        assert_eq!(
            splice(t, &[(at..at, " Be kind.".into())]),
            "One here. Two here. Three here.\n\nFour alone. Be kind.\n\n- Five item.\n- Six item."
        );
    }
}
