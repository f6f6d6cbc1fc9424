//! The value detector: sentence encoder + a trained multi-label head over the 20 Touché23
//! value categories, collapsed to Schwartz's 10 values by taking the maximum over each value's
//! categories and calibrated per value (`calibration`). A text is scored sentence by sentence;
//! its vector is, per value, the maximum over its sentences, and every sentence's scores are
//! kept so that enforcement knows which sentences carry which value.

pub mod calibration;
pub mod gate;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};

pub use calibration::Calibration;
use visa_models::error::ModelError;
use visa_models::service::EncoderService;
use visa_values::sentences::{self, Sentence};
use visa_values::{N_VALUES, ValueId, ValueVector};

// The files that belong to a head (written by `visa-proxy train-detector`).

/// Token limit used by the detector (sentence-transformers' setting for this encoder).
pub const MAX_TOKENS: usize = 256;

/// The calibration that belongs to a head: `head.safetensors` -> `head.calibration.json`.
pub fn calibration_path(head: &Path) -> PathBuf {
    head.with_extension("calibration.json")
}

/// The value gate that belongs to a head: `head.safetensors` -> `head.gate.safetensors`.
pub fn gate_path(head: &Path) -> PathBuf {
    head.with_extension("gate.safetensors")
}

/// The fine-tuned encoder layers that belong to a head: `head.safetensors` ->
/// `head.encoder.safetensors`.
pub fn delta_path(head: &Path) -> PathBuf {
    head.with_extension("encoder.safetensors")
}

/// The encoder a head was trained with: the base in `encoder_dir`, plus the head's fine-tuned
/// layers when it has them ([`delta_path`]). Serving and the training commands load it here.
pub fn load_encoder(
    encoder_dir: &Path,
    head: &Path,
) -> visa_models::encoder::Result<visa_models::encoder::SentenceEncoder> {
    let delta = delta_path(head);
    let delta = delta.exists().then_some(delta);
    visa_models::encoder::SentenceEncoder::load_with_delta(
        &visa_models::encoder::EncoderFiles::new(encoder_dir),
        delta.as_deref(),
        MAX_TOKENS,
    )
}

/// The 20 value categories of Touché23-ValueEval, in the data set's column order.
pub const CATEGORIES: [&str; 20] = [
    "Self-direction: thought",
    "Self-direction: action",
    "Stimulation",
    "Hedonism",
    "Achievement",
    "Power: dominance",
    "Power: resources",
    "Face",
    "Security: personal",
    "Security: societal",
    "Tradition",
    "Conformity: rules",
    "Conformity: interpersonal",
    "Humility",
    "Benevolence: caring",
    "Benevolence: dependability",
    "Universalism: concern",
    "Universalism: nature",
    "Universalism: tolerance",
    "Universalism: objectivity",
];

/// Variant A of the data set's mapping (as the ValueEval organisers' library does): each
/// category to its value by prefix; Face and Humility map to none.
pub fn category_value(c: usize) -> Option<ValueId> {
    match c {
        0 | 1 => Some(ValueId::SelfDirection),
        2 => Some(ValueId::Stimulation),
        3 => Some(ValueId::Hedonism),
        4 => Some(ValueId::Achievement),
        5 | 6 => Some(ValueId::Power),
        7 => None,
        8 | 9 => Some(ValueId::Security),
        10 => Some(ValueId::Tradition),
        11 | 12 => Some(ValueId::Conformity),
        13 => None,
        14 | 15 => Some(ValueId::Benevolence),
        16..=19 => Some(ValueId::Universalism),
        _ => None,
    }
}

pub const MAPPING_NAME: &str = "variantA_pyvalues";

/// Per-category probabilities -> value scores (max over the value's categories).
pub fn values_from_categories(p: &[f32; 20]) -> ValueVector {
    let mut v = ValueVector::default();
    for (c, &x) in p.iter().enumerate() {
        if let Some(id) = category_value(c) {
            let i = id.index();
            v.0[i] = v.0[i].max(x);
        }
    }
    v
}

/// The trained head: logits = W x + b, probabilities by sigmoid, labels by per-category
/// thresholds.
#[derive(Clone)]
pub struct Head {
    /// [20][dim]
    pub weight: Vec<Vec<f32>>,
    pub bias: [f32; 20],
    pub thresholds: [f32; 20],
}

impl Head {
    pub fn dim(&self) -> usize {
        self.weight.first().map(Vec::len).unwrap_or(0)
    }

    pub fn probabilities(&self, x: &[f32]) -> [f32; 20] {
        let mut out = [0f32; 20];
        for (c, o) in out.iter_mut().enumerate() {
            let z: f32 = self.weight[c]
                .iter()
                .zip(x)
                .map(|(w, v)| w * v)
                .sum::<f32>()
                + self.bias[c];
            *o = 1.0 / (1.0 + (-z).exp());
        }
        out
    }

    pub fn save(&self, path: &Path) -> Result<(), String> {
        let dim = self.dim();
        let flat: Vec<f32> = self.weight.iter().flatten().copied().collect();
        let dev = Device::Cpu;
        let map: HashMap<String, Tensor> = [
            ("weight".to_owned(), Tensor::from_vec(flat, (20, dim), &dev)),
            (
                "bias".to_owned(),
                Tensor::from_vec(self.bias.to_vec(), 20, &dev),
            ),
            (
                "thresholds".to_owned(),
                Tensor::from_vec(self.thresholds.to_vec(), 20, &dev),
            ),
        ]
        .into_iter()
        .map(|(k, t)| t.map(|t| (k, t)))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        candle_core::safetensors::save(&map, path).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let map = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
            format!(
                "{}: {e} (train one with `visa-proxy train-detector`)",
                path.display()
            )
        })?;
        let get = |name: &str| -> Result<Tensor, String> {
            map.get(name)
                .cloned()
                .ok_or_else(|| format!("{}: no tensor {name:?}", path.display()))?
                .to_dtype(DType::F32)
                .map_err(|e| e.to_string())
        };
        let weight = get("weight")?.to_vec2::<f32>().map_err(|e| e.to_string())?;
        let arr = |t: Tensor| -> Result<[f32; 20], String> {
            let v = t.to_vec1::<f32>().map_err(|e| e.to_string())?;
            v.try_into()
                .map_err(|_| format!("{}: expected 20 values", path.display()))
        };
        if weight.len() != 20 {
            return Err(format!("{}: weight must be [20, dim]", path.display()));
        }
        Ok(Self {
            weight,
            bias: arr(get("bias")?)?,
            thresholds: arr(get("thresholds")?)?,
        })
    }
}

/// Most sentences in one encoder job (a long text is scored in several).
pub const JOB_SENTENCES: usize = 32;

/// Sentences with fewer words than this carry no value score (headings, "Here's how:").
pub const MIN_SCORED_WORDS: usize = 3;

/// The scored units of a text: its sentences of at least [`MIN_SCORED_WORDS`] words, or the
/// whole (trimmed) text when it has none.
pub fn units(text: &str) -> Vec<Sentence> {
    let scored: Vec<Sentence> = sentences::split(text)
        .into_iter()
        .filter(|s| sentences::word_count(s.body(text)) >= MIN_SCORED_WORDS)
        .collect();
    if !scored.is_empty() {
        return scored;
    }
    let start = text.len() - text.trim_start().len();
    let end = text.trim_end().len();
    if start >= end {
        return Vec::new();
    }
    vec![Sentence {
        start,
        body: start,
        end,
    }]
}

/// One sentence's calibrated value scores; `start..end` are byte offsets into the text.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct SentenceScore {
    pub start: usize,
    pub end: usize,
    pub text: String,
    pub values: ValueVector,
}

/// One text's detection.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Detection {
    pub values: ValueVector,
    /// Values whose score reaches their category threshold.
    pub labels: Vec<ValueId>,
    /// Per category, in the data set's names.
    pub categories: Vec<(String, f32)>,
    /// Sentences scored.
    pub windows: usize,
    /// Each scored sentence with its calibrated scores, in order.
    pub sentences: Vec<SentenceScore>,
}

/// What the detector reports with a batch.
pub struct DetectTiming {
    pub queued: Duration,
    pub compute: Duration,
}

/// A value detector backend. The default is [`Detector`] (encoder + head); an LLM scoring
/// values from token log-probabilities, or a larger encoder, implements the same trait.
pub trait ValueDetector: Send + Sync + 'static {
    /// One detection per text, in order.
    fn detect<'a>(
        &'a self,
        texts: &'a [String],
    ) -> futures_util::future::BoxFuture<'a, Result<(Vec<Detection>, DetectTiming), ModelError>>;
    /// A short name for cards, logs and the API.
    fn name(&self) -> &str;
}

impl ValueDetector for Detector {
    fn detect<'a>(
        &'a self,
        texts: &'a [String],
    ) -> futures_util::future::BoxFuture<'a, Result<(Vec<Detection>, DetectTiming), ModelError>>
    {
        Box::pin(Detector::detect(self, texts))
    }
    fn name(&self) -> &str {
        "minilm-logistic"
    }
}

/// Encoder service + head + value gate + calibration.
pub struct Detector {
    pub encoder: Arc<EncoderService>,
    pub head: Head,
    /// Scales a sentence's raw value scores by the chance that it expresses any value.
    pub gate: Option<gate::Gate>,
    pub calibration: Calibration,
}

/// A sentence's raw scores: the head's categories times the gate, and those collapsed to
/// values.
pub fn raw_values(head: &Head, gate: Option<&gate::Gate>, x: &[f32]) -> (ValueVector, [f32; 20]) {
    let mut q = head.probabilities(x);
    if let Some(g) = gate {
        let p = g.probability(x);
        for a in q.iter_mut() {
            *a *= p;
        }
    }
    (values_from_categories(&q), q)
}

impl Detector {
    /// One text's detection from its units' embeddings: per sentence the head's categories
    /// times the gate, collapsed to values and calibrated; per value the maximum over
    /// sentences; labels from the per-category thresholds on the maximum (gated) category
    /// scores.
    pub fn detect_one(&self, text: &str, units: &[Sentence], vectors: &[Vec<f32>]) -> Detection {
        let mut p = [0f32; 20];
        let mut values = ValueVector::default();
        let mut sentences = Vec::with_capacity(units.len());
        for (u, v) in units.iter().zip(vectors) {
            let (raw, q) = raw_values(&self.head, self.gate.as_ref(), v);
            for c in 0..20 {
                p[c] = p[c].max(q[c]);
            }
            let calibrated = self.calibration.apply(&raw);
            for (a, b) in values.0.iter_mut().zip(calibrated.0) {
                *a = a.max(b);
            }
            sentences.push(SentenceScore {
                start: u.start,
                end: u.end,
                text: u.text(text).to_owned(),
                values: calibrated,
            });
        }
        let mut labels = Vec::new();
        for id in ValueId::ALL {
            let present =
                (0..20).any(|c| category_value(c) == Some(id) && p[c] >= self.head.thresholds[c]);
            if present {
                labels.push(id);
            }
        }
        Detection {
            values,
            labels,
            categories: CATEGORIES
                .iter()
                .zip(p)
                .map(|(n, x)| ((*n).to_owned(), x))
                .collect(),
            windows: units.len(),
            sentences,
        }
    }

    /// Detect values in each text: every text's sentences go into one encoder request.
    pub async fn detect(
        &self,
        texts: &[String],
    ) -> Result<(Vec<Detection>, DetectTiming), ModelError> {
        let per_text: Vec<Vec<Sentence>> = texts.iter().map(|t| units(t)).collect();
        let flat: Vec<String> = per_text
            .iter()
            .zip(texts)
            .flat_map(|(u, t)| u.iter().map(|s| s.body(t).to_owned()))
            .collect();
        // Jobs of at most JOB_SENTENCES sentences, one after another, so that a long answer
        // does not hold the one encoder thread while other requests wait behind it.
        let mut embedded = visa_models::service::Embedded::default();
        let mut flat = flat.into_iter().peekable();
        while flat.peek().is_some() {
            let job: Vec<String> = flat.by_ref().take(JOB_SENTENCES).collect();
            let e = self.encoder.embed(job).await?;
            embedded.vectors.extend(e.vectors);
            embedded.queued += e.queued;
            embedded.compute += e.compute;
        }
        let mut vectors = embedded.vectors.into_iter();
        let detections = per_text
            .iter()
            .zip(texts)
            .map(|(u, t)| {
                let mine: Vec<Vec<f32>> = vectors.by_ref().take(u.len()).collect();
                self.detect_one(t, u, &mine)
            })
            .collect();
        Ok((
            detections,
            DetectTiming {
                queued: embedded.queued,
                compute: embedded.compute,
            },
        ))
    }
}

/// Sanity of the value dimension.
const _: () = assert!(N_VALUES == 10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_is_variant_a() {
        let mapped: Vec<Option<ValueId>> = (0..20).map(category_value).collect();
        assert_eq!(mapped[7], None, "Face");
        assert_eq!(mapped[13], None, "Humility");
        assert_eq!(
            mapped
                .iter()
                .filter(|m| **m == Some(ValueId::Universalism))
                .count(),
            4
        );
        let mut p = [0f32; 20];
        p[5] = 0.2;
        p[6] = 0.7;
        p[7] = 0.9;
        let v = values_from_categories(&p);
        assert_eq!(v.get(ValueId::Power), 0.7);
        assert_eq!(v.get(ValueId::Tradition), 0.0);
    }

    #[test]
    fn units_are_sentences_with_enough_words() {
        let t = "## Tips\n1. Plan the week ahead. Rest.\nAsk your team for help when needed.";
        let u: Vec<&str> = units(t).iter().map(|s| s.body(t)).collect();
        assert_eq!(
            u,
            vec![
                "Plan the week ahead.",
                "Ask your team for help when needed."
            ]
        );
        // A text with no sentence long enough is one unit; a blank one has none.
        assert_eq!(units("  Hi there ").len(), 1);
        assert_eq!(units("  Hi there ")[0].text("  Hi there "), "Hi there");
        assert!(units(" \n ").is_empty());
    }
}
