//! The value detector: sentence encoder + a trained multi-label head over the 20 Touché23
//! value categories, collapsed to Schwartz's 10 values by taking the maximum over each value's
//! categories. Long texts are scored in sentence windows and combined by maximum.

pub mod data;
pub mod eval;
pub mod train;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};

use crate::error::ApiError;
use crate::models::service::EncoderService;
use crate::values::{N_VALUES, ValueId, ValueVector};

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

/// Split a text into windows, so that one strongly value-laden passage in a long answer is
/// scored on its own: a text of at most `max_words` words is one window; a longer one is split
/// into sentences, and sentences shorter than `min_words` are joined to the next one.
pub fn windows(text: &str, max_words: usize, min_words: usize) -> Vec<String> {
    if text.split_whitespace().count() <= max_words {
        return vec![text.trim().to_owned()];
    }
    let mut sentences = Vec::new();
    let mut start = 0;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    for (k, &(i, ch)) in chars.iter().enumerate() {
        let end_of_sentence = matches!(ch, '.' | '!' | '?' | '\n')
            && chars
                .get(k + 1)
                .is_none_or(|&(_, next)| next.is_whitespace());
        if end_of_sentence {
            let s = text[start..i + ch.len_utf8()].trim();
            if !s.is_empty() {
                sentences.push(s.to_owned());
            }
            start = i + ch.len_utf8();
        }
    }
    let tail = text[start..].trim();
    if !tail.is_empty() {
        sentences.push(tail.to_owned());
    }
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new();
    for s in sentences {
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(&s);
        if current.split_whitespace().count() >= min_words {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        match out.last_mut() {
            Some(last) => {
                last.push(' ');
                last.push_str(&current);
            }
            None => out.push(current),
        }
    }
    out
}

/// Texts up to this many words are scored whole (premises in the training data average about
/// 25 words); longer ones sentence by sentence.
pub const WINDOW_WORDS: usize = 60;
/// Sentences shorter than this are scored together with the next one.
pub const MIN_WINDOW_WORDS: usize = 8;

/// One text's detection.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Detection {
    pub values: ValueVector,
    /// Values whose score reaches their category threshold.
    pub labels: Vec<ValueId>,
    /// Per category, in the data set's names.
    pub categories: Vec<(String, f32)>,
    pub windows: usize,
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
    ) -> futures_util::future::BoxFuture<'a, Result<(Vec<Detection>, DetectTiming), ApiError>>;
    /// A short name for cards, logs and the API.
    fn name(&self) -> &str;
}

impl ValueDetector for Detector {
    fn detect<'a>(
        &'a self,
        texts: &'a [String],
    ) -> futures_util::future::BoxFuture<'a, Result<(Vec<Detection>, DetectTiming), ApiError>> {
        Box::pin(Detector::detect(self, texts))
    }
    fn name(&self) -> &str {
        "minilm-logistic"
    }
}

/// Encoder service + head.
pub struct Detector {
    pub encoder: Arc<EncoderService>,
    pub head: Head,
}

impl Detector {
    pub fn detect_one_from_windows(&self, window_vectors: &[Vec<f32>]) -> Detection {
        let mut p = [0f32; 20];
        for v in window_vectors {
            let q = self.head.probabilities(v);
            for c in 0..20 {
                p[c] = p[c].max(q[c]);
            }
        }
        let values = values_from_categories(&p);
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
            windows: window_vectors.len(),
        }
    }

    /// Detect values in each text (texts are split into windows; all windows go in one
    /// encoder request).
    pub async fn detect(
        &self,
        texts: &[String],
    ) -> Result<(Vec<Detection>, DetectTiming), ApiError> {
        let per_text: Vec<Vec<String>> = texts
            .iter()
            .map(|t| windows(t, WINDOW_WORDS, MIN_WINDOW_WORDS))
            .collect();
        let flat: Vec<String> = per_text.iter().flatten().cloned().collect();
        let embedded = self.encoder.embed(flat).await?;
        let mut vectors = embedded.vectors.into_iter();
        let detections = per_text
            .iter()
            .map(|w| {
                let mine: Vec<Vec<f32>> = vectors.by_ref().take(w.len()).collect();
                self.detect_one_from_windows(&mine)
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
    fn windows_keep_sentences_whole() {
        assert_eq!(
            windows("One short text. Another one.", 80, 3),
            vec!["One short text. Another one."]
        );
        let long = "First sentence here. Second one is here! Third? Fourth sentence. Fifth.";
        let w = windows(long, 5, 3);
        assert_eq!(
            w,
            vec![
                "First sentence here.",
                "Second one is here!",
                "Third? Fourth sentence. Fifth."
            ]
        );
        assert_eq!(
            windows("Version 2.5 is out", 2, 1),
            vec!["Version 2.5 is out"]
        );
    }
}
