//! Sentences of an answer with their byte spans, so that enforcement can score each sentence,
//! edit a few of them, and return every other byte exactly as the upstream sent it.
//!
//! A sentence ends at `.`, `!` or `?` (with any closing quotes or brackets) followed by
//! whitespace or the end of the text, unless the word before the dot is a common abbreviation,
//! an initial or a list number; a line break always ends one. A list or heading marker at the
//! start of a line (`- `, `* `, `1. `, `2) `, `## `) belongs to the sentence after it but not to
//! its editable body.

use std::ops::Range;

/// One sentence of a text: `start..end` is the sentence with its line marker, `body..end` the
/// part that may be rewritten (without the marker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sentence {
    pub start: usize,
    pub body: usize,
    pub end: usize,
}

impl Sentence {
    pub fn text<'a>(&self, of: &'a str) -> &'a str {
        &of[self.start..self.end]
    }

    /// The sentence without its list or heading marker.
    pub fn body<'a>(&self, of: &'a str) -> &'a str {
        &of[self.body..self.end]
    }

    pub fn body_range(&self) -> Range<usize> {
        self.body..self.end
    }

    /// Whether a line or list marker precedes the body.
    pub fn has_marker(&self) -> bool {
        self.body > self.start
    }
}

/// Words before a dot that do not end a sentence (compared in lower case, without the dot).
const ABBREVIATIONS: &[&str] = &[
    "e.g", "i.e", "etc", "vs", "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "no", "fig",
    "approx", "a.m", "p.m", "u.s", "u.k", "inc", "ltd", "co", "cf", "al", "vol", "ch", "sec",
];

/// The length of a list or heading marker at the start of `line` (after leading spaces), with
/// the whitespace after it.
fn marker_len(line: &str) -> usize {
    let lead = line.len() - line.trim_start().len();
    let rest = &line[lead..];
    let bytes = rest.as_bytes();
    let after = |n: usize| -> usize {
        // The marker counts only when whitespace follows it.
        let ws = rest[n..].len() - rest[n..].trim_start().len();
        if ws > 0 || n == rest.len() {
            lead + n + ws
        } else {
            0
        }
    };
    match bytes.first() {
        Some(b'-' | b'*' | b'+') => after(1),
        Some(b'#') => {
            let n = bytes.iter().take_while(|b| **b == b'#').count();
            if n <= 6 { after(n) } else { 0 }
        }
        Some(b) if b.is_ascii_digit() => {
            let n = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
            if n <= 3 && matches!(bytes.get(n), Some(b'.' | b')')) {
                after(n + 1)
            } else {
                0
            }
        }
        _ => {
            if rest.starts_with('\u{2022}') {
                after('\u{2022}'.len_utf8())
            } else {
                0
            }
        }
    }
}

/// Whether the dot at byte `i` of `s` closes an abbreviation or an initial.
fn is_abbreviation(s: &str, i: usize) -> bool {
    let word_start = s[..i]
        .rfind(|c: char| c.is_whitespace() || c == '(' || c == '"')
        .map_or(0, |p| p + 1);
    let word = &s[word_start..i];
    if word.is_empty() {
        return false;
    }
    let lower = word.to_lowercase();
    if ABBREVIATIONS.contains(&lower.as_str()) {
        return true;
    }
    // A single capital letter ("J. Smith") is an initial.
    let mut chars = word.chars();
    matches!((chars.next(), chars.next()), (Some(c), None) if c.is_uppercase())
}

/// Split one line (no newline inside) that starts at byte `offset` of the whole text.
fn split_line(line: &str, offset: usize, out: &mut Vec<Sentence>) {
    if line.trim().is_empty() {
        return;
    }
    let marker = marker_len(line);
    let mut start = line.len() - line.trim_start().len();
    let mut body = marker.max(start);
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut k = 0;
    while k < chars.len() {
        let (i, c) = chars[k];
        if matches!(c, '.' | '!' | '?') && i >= body {
            // Take repeated marks and closing quotes or brackets.
            let mut j = k + 1;
            while j < chars.len()
                && matches!(
                    chars[j].1,
                    '.' | '!' | '?' | '"' | '\'' | ')' | ']' | '\u{201d}' | '\u{2019}' | '*'
                )
            {
                j += 1;
            }
            let end = chars.get(j).map_or(line.len(), |(p, _)| *p);
            let followed_by_space = chars.get(j).is_none_or(|(_, n)| n.is_whitespace());
            let abbreviation = c == '.' && is_abbreviation(line, i);
            if followed_by_space && !abbreviation && !line[body..end].trim().is_empty() {
                out.push(Sentence {
                    start: offset + start,
                    body: offset + body,
                    end: offset + end,
                });
                let next = line[end..]
                    .find(|c: char| !c.is_whitespace())
                    .map_or(line.len(), |p| end + p);
                start = next;
                body = next;
                k = j;
                while k < chars.len() && chars[k].0 < next {
                    k += 1;
                }
                continue;
            }
            k = j;
            continue;
        }
        k += 1;
    }
    let tail = line[start..].trim_end();
    if !tail.is_empty() {
        out.push(Sentence {
            start: offset + start,
            body: offset + body.min(start + tail.len()),
            end: offset + start + tail.len(),
        });
    }
}

/// The sentences of `text`, in order; the bytes between them are whitespace and nothing else.
pub fn split(text: &str) -> Vec<Sentence> {
    let mut out = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let content = line.strip_suffix('\n').unwrap_or(line);
        let content = content.strip_suffix('\r').unwrap_or(content);
        split_line(content, offset, &mut out);
        offset += line.len();
    }
    out
}

/// Words in `s` (whitespace-separated).
pub fn word_count(s: &str) -> usize {
    s.split_whitespace().count()
}

/// `text` with each range replaced (ranges sorted, not overlapping; an empty range inserts).
pub fn splice(text: &str, edits: &[(Range<usize>, String)]) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    let mut at = 0;
    for (range, new) in edits {
        out.push_str(&text[at..range.start]);
        out.push_str(new);
        at = range.end;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(t: &str) -> Vec<&str> {
        split(t).iter().map(|s| s.text(t)).collect()
    }

    #[test]
    fn splits_sentences_and_keeps_the_gaps() {
        let t = "First one. Second one! Third?  Fourth \"quoted.\" Last without a dot";
        assert_eq!(
            texts(t),
            vec![
                "First one.",
                "Second one!",
                "Third?",
                "Fourth \"quoted.\"",
                "Last without a dot"
            ]
        );
        // Only whitespace lies between sentences.
        let s = split(t);
        for w in s.windows(2) {
            assert!(t[w[0].end..w[1].start].trim().is_empty());
        }
    }

    #[test]
    fn abbreviations_numbers_and_initials_do_not_end_sentences() {
        let t =
            "Use tools, e.g. a hammer. Version 2.5 costs $3.50 now. J. Smith agreed. Dr. Lee came.";
        assert_eq!(
            texts(t),
            vec![
                "Use tools, e.g. a hammer.",
                "Version 2.5 costs $3.50 now.",
                "J. Smith agreed.",
                "Dr. Lee came."
            ]
        );
    }

    #[test]
    fn list_markers_and_headings_are_not_bodies() {
        let t = "## Tips\n1. Plan ahead. Write it down.\n- Ask for help\n2) Rest.\n\nDone.";
        let s = split(t);
        let got: Vec<(&str, &str)> = s.iter().map(|x| (x.text(t), x.body(t))).collect();
        assert_eq!(
            got,
            vec![
                ("## Tips", "Tips"),
                ("1. Plan ahead.", "Plan ahead."),
                ("Write it down.", "Write it down."),
                ("- Ask for help", "Ask for help"),
                ("2) Rest.", "Rest."),
                ("Done.", "Done."),
            ]
        );
        assert!(s[1].has_marker() && !s[2].has_marker());
        // A dash without a space is not a marker, and a bare number line is kept as text.
        assert_eq!(texts("-5 degrees.\n3.\n"), vec!["-5 degrees.", "3."]);
    }

    #[test]
    fn splice_replaces_and_inserts_byte_exactly() {
        let t = "One.  Two.\nThree.";
        let s = split(t);
        let out = splice(
            t,
            &[
                (s[1].body_range(), "2.".into()),
                (s[2].end..s[2].end, " Four.".into()),
            ],
        );
        assert_eq!(out, "One.  2.\nThree. Four.");
        assert_eq!(splice(t, &[]), t);
        assert!(split("   \n \n").is_empty());
        assert_eq!(
            texts("Ünïcode ends here。 Next."),
            vec!["Ünïcode ends here。 Next."]
        );
    }
}
