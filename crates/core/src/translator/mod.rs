//! The semantic-to-value translator: a natural-language instruction ("more caring, less about
//! status") becomes a shift of the value vector. Instructions are split into clauses; each
//! clause's polarity and strength come from explicit cue words, and its topic is matched to the
//! values by encoder similarity against short descriptions of each value.

use std::sync::Arc;

use serde::Serialize;

use visa_models::encoder::cosine;
use visa_models::error::{ErrorKind, ModelError};
use visa_models::service::EncoderService;
use visa_values::profile::{PartialTarget, ProfilePatch, ProfileSpec};
use visa_values::{ValueId, ValueVector};

/// Descriptions each value is matched against (its definition is added to these).
fn prototypes(v: ValueId) -> &'static [&'static str] {
    match v {
        ValueId::SelfDirection => &[
            "independence and freedom to choose",
            "creativity and curiosity",
            "thinking for yourself",
            "autonomy and self-reliance",
        ],
        ValueId::Stimulation => &[
            "excitement and adventure",
            "novelty and variety",
            "daring, taking risks and challenges",
            "thrill",
        ],
        ValueId::Hedonism => &[
            "pleasure and fun",
            "enjoying life",
            "indulgence and treating yourself",
            "enjoyment",
        ],
        ValueId::Achievement => &[
            "success and ambition",
            "competence and high performance",
            "winning and accomplishment",
            "career success",
        ],
        ValueId::Power => &[
            "status and prestige",
            "wealth and money",
            "control and dominance over others",
            "authority and influence",
            "luxury and expensive things",
        ],
        ValueId::Security => &[
            "safety and protection",
            "stability and order",
            "health and avoiding danger",
            "caution and risk avoidance",
        ],
        ValueId::Conformity => &[
            "following rules and obeying",
            "politeness and self-discipline",
            "not upsetting others",
            "obedience and proper behaviour",
        ],
        ValueId::Tradition => &[
            "respect for tradition and customs",
            "religion and faith",
            "humility and heritage",
            "old ways",
        ],
        ValueId::Benevolence => &[
            "caring for others",
            "kindness and helpfulness",
            "loyalty and honesty to friends and family",
            "compassion and warmth",
        ],
        ValueId::Universalism => &[
            "fairness and equality for all",
            "tolerance and diversity",
            "protecting the environment and nature",
            "social justice and the welfare of everyone",
        ],
    }
}

const NEGATIVE: &[&str] = &[
    "less",
    "fewer",
    "avoid",
    "avoiding",
    "don't",
    "dont",
    "do not",
    "never",
    "no",
    "not",
    "reduce",
    "lower",
    "decrease",
    "stop",
    "without",
    "downplay",
    "tone down",
    "minimise",
    "minimize",
    "de-emphasise",
    "de-emphasize",
    "drop",
    "remove",
    "limit",
    "stay away from",
    "away from",
    "less about",
];
const POSITIVE: &[&str] = &[
    "more",
    "emphasise",
    "emphasize",
    "increase",
    "stress",
    "highlight",
    "focus on",
    "prioritise",
    "prioritize",
    "encourage",
    "boost",
    "raise",
    "promote",
    "add",
    "show",
    "be",
    "sound",
    "value",
    "care about",
    "more about",
    "embrace",
    "celebrate",
];
const STRONG: &[&str] = &[
    "much",
    "a lot",
    "far",
    "strongly",
    "very",
    "really",
    "extremely",
    "significantly",
    "way",
    "a great deal",
];
const WEAK: &[&str] = &[
    "slightly",
    "a bit",
    "a little",
    "somewhat",
    "a touch",
    "marginally",
    "a tad",
];
const FILLER: &[&str] = &[
    "about",
    "the",
    "a",
    "an",
    "of",
    "on",
    "to",
    "be",
    "being",
    "it",
    "its",
    "in",
    "with",
    "and",
    "answers",
    "answer",
    "responses",
    "response",
    "text",
    "tone",
    "please",
    "should",
    "make",
    "sound",
    "things",
    "stuff",
];

pub const DELTA_DEFAULT: f32 = 0.2;
pub const DELTA_STRONG: f32 = 0.35;
pub const DELTA_WEAK: f32 = 0.1;
/// A clause whose best similarity is below this names no value.
pub const MATCH_THRESHOLD: f32 = 0.35;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Evidence {
    /// The words of the instruction that moved the value.
    pub phrase: String,
    /// The description of the value they matched.
    pub matched: String,
    #[serde(serialize_with = "visa_values::ser_short")]
    pub similarity: f32,
    /// The cue that set the direction, if any ("less", "more", ...).
    pub cue: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Shift {
    pub value: ValueId,
    /// Signed change of the target, in score units.
    #[serde(serialize_with = "visa_values::ser_short")]
    pub delta: f32,
    pub evidence: Evidence,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Translation {
    pub instruction: String,
    pub shifts: Vec<Shift>,
    /// Clauses that matched no value.
    pub unmatched: Vec<String>,
    /// True when nothing in the instruction names a value.
    pub unrelated: bool,
}

impl Translation {
    /// The shifts as a profile patch on `base`: targets move from the current target (or from
    /// `start` when given, else 0.5) by the shift, clamped to [0, 1].
    pub fn as_patch_from(&self, base: &ProfileSpec, start: Option<&ValueVector>) -> ProfilePatch {
        let mut patch = ProfilePatch::default();
        for s in &self.shifts {
            let from = base
                .values
                .get(&s.value)
                .map(|t| t.target)
                .or_else(|| start.map(|v| v.get(s.value)))
                .unwrap_or(0.5);
            patch.values.insert(
                s.value,
                Some(PartialTarget {
                    target: Some((from + s.delta).clamp(0.0, 1.0)),
                    ..Default::default()
                }),
            );
        }
        patch
    }

    pub fn as_patch(&self, base: &ProfileSpec) -> ProfilePatch {
        self.as_patch_from(base, None)
    }
}

/// Lower-case words and the clauses between separators.
fn clauses(instruction: &str) -> Vec<String> {
    let lower = instruction.to_lowercase();
    let mut out = Vec::new();
    for part in lower.split([',', ';', '.', '!', '?', '\n']) {
        // Split on conjunctions too, keeping cue words with the clause they start.
        let mut current: Vec<&str> = Vec::new();
        for w in part.split_whitespace() {
            if matches!(
                w,
                "and" | "but" | "while" | "yet" | "however" | "though" | "whereas" | "or"
            ) {
                if !current.is_empty() {
                    out.push(current.join(" "));
                    current.clear();
                }
            } else {
                current.push(w);
            }
        }
        if !current.is_empty() {
            out.push(current.join(" "));
        }
    }
    out
}

fn has_phrase(text: &str, phrase: &str) -> bool {
    let t = format!(" {text} ");
    t.contains(&format!(" {phrase} "))
}

/// Remove cue and filler words, leaving the topic.
fn topic(clause: &str) -> String {
    let mut t = format!(" {clause} ");
    for list in [NEGATIVE, POSITIVE, STRONG, WEAK] {
        let mut sorted: Vec<&&str> = list.iter().collect();
        sorted.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in sorted {
            t = t.replace(&format!(" {p} "), " ");
        }
    }
    t.split_whitespace()
        .filter(|w| !FILLER.contains(w))
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric() && c != '-'))
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The translator: value descriptions embedded once, clauses embedded per instruction.
pub struct Translator {
    encoder: Arc<EncoderService>,
    /// (value, description, embedding)
    protos: Vec<(ValueId, String, Vec<f32>)>,
}

impl Translator {
    pub async fn new(encoder: Arc<EncoderService>) -> Result<Self, ModelError> {
        let mut items: Vec<(ValueId, String)> = Vec::new();
        for v in ValueId::ALL {
            items.push((v, v.definition().to_owned()));
            for p in prototypes(v) {
                items.push((v, (*p).to_owned()));
            }
        }
        let embedded = encoder
            .embed(items.iter().map(|(_, t)| t.clone()).collect())
            .await?;
        let protos = items
            .into_iter()
            .zip(embedded.vectors)
            .map(|((v, t), e)| (v, t, e))
            .collect();
        Ok(Self { encoder, protos })
    }

    pub async fn translate(&self, instruction: &str) -> Result<Translation, ModelError> {
        let trimmed = instruction.trim();
        if trimmed.is_empty() {
            return Err(ModelError::new(
                ErrorKind::Unprocessable,
                "'instruction' must not be empty",
            )
            .with_param("instruction"));
        }
        if trimmed.chars().count() > 2000 {
            return Err(ModelError::new(
                ErrorKind::Unprocessable,
                "'instruction' is longer than 2000 characters",
            )
            .with_param("instruction"));
        }
        let parts = clauses(trimmed);
        let topics: Vec<String> = parts.iter().map(|c| topic(c)).collect();
        let to_embed: Vec<String> = topics.iter().filter(|t| !t.is_empty()).cloned().collect();
        let vectors = if to_embed.is_empty() {
            Vec::new()
        } else {
            self.encoder.embed(to_embed).await?.vectors
        };
        let mut vectors = vectors.into_iter();
        let mut shifts: Vec<Shift> = Vec::new();
        let mut unmatched = Vec::new();
        let mut sign = 1.0f32;
        for (clause, topic) in parts.iter().zip(&topics) {
            // Direction: the clause's own cue, else the previous clause's ("less X and Y").
            let neg = NEGATIVE.iter().find(|c| has_phrase(clause, c));
            let pos = POSITIVE.iter().find(|c| has_phrase(clause, c));
            let cue = match (neg, pos) {
                (Some(n), _) => {
                    sign = -1.0;
                    Some((*n).to_owned())
                }
                (None, Some(p)) => {
                    sign = 1.0;
                    Some((*p).to_owned())
                }
                (None, None) => None,
            };
            let magnitude = if STRONG.iter().any(|c| has_phrase(clause, c)) {
                DELTA_STRONG
            } else if WEAK.iter().any(|c| has_phrase(clause, c)) {
                DELTA_WEAK
            } else {
                DELTA_DEFAULT
            };
            if topic.is_empty() {
                continue;
            }
            let Some(v) = vectors.next() else { break };
            let best = self
                .protos
                .iter()
                .map(|(id, text, e)| (*id, text, cosine(&v, e)))
                .max_by(|a, b| a.2.total_cmp(&b.2));
            match best {
                Some((id, text, sim)) if sim >= MATCH_THRESHOLD => {
                    let shift = Shift {
                        value: id,
                        delta: sign * magnitude,
                        evidence: Evidence {
                            phrase: clause.clone(),
                            matched: text.clone(),
                            similarity: (sim * 1000.0).round() / 1000.0,
                            cue,
                        },
                    };
                    // One shift per value: keep the best-supported one.
                    match shifts.iter_mut().find(|s| s.value == id) {
                        Some(existing)
                            if existing.evidence.similarity < shift.evidence.similarity =>
                        {
                            *existing = shift
                        }
                        Some(_) => {}
                        None => shifts.push(shift),
                    }
                }
                _ => unmatched.push(clause.clone()),
            }
        }
        Ok(Translation {
            instruction: trimmed.to_owned(),
            unrelated: shifts.is_empty(),
            shifts,
            unmatched,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_clauses_and_strips_cues() {
        assert_eq!(
            clauses("More caring, less about status"),
            vec!["more caring", "less about status"]
        );
        assert_eq!(
            clauses("avoid bragging and money; be kind"),
            vec!["avoid bragging", "money", "be kind"]
        );
        assert_eq!(topic("less about status"), "status");
        assert_eq!(topic("much more focus on safety"), "safety");
        assert!(has_phrase("do not brag", "do not"));
        assert!(!has_phrase("nothing", "no"));
    }
}
