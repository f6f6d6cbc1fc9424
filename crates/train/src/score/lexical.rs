//! A second, independent value scorer for evaluation: a bag-of-words logistic regression over
//! hashed word unigrams and bigrams, trained on Touché23's training split. It shares neither
//! features nor weights with the encoder-based detector that the rewriter is rewarded by, so a
//! rewriter that games the detector (text the encoder reads as value-laden but whose words are
//! not) shows up as a gap between the two scorers' distances.

use std::path::Path;

use crate::detector::data::{Argument, load_split};
use crate::detector::eval::{Report, best_threshold, evaluate};
use crate::detector::train::held_out;
use crate::detector::values_from_categories;
use visa_values::ValueVector;

/// Hashed feature space (unigrams and bigrams share it).
pub const DIM: usize = 1 << 14;
const EPOCHS: usize = 200;
const LEARNING_RATE: f32 = 0.05;
const L2: f32 = 1e-5;
/// Share of the training split held out to choose the thresholds of the report.
const HOLDOUT: f64 = 0.15;

/// The trained scorer and how well it labels the validation split.
pub struct LexicalScorer {
    weight: Vec<Vec<f32>>,
    bias: [f32; 20],
    /// Validation report (thresholds chosen on a held-out part of the training split).
    pub report: Report,
    pub trained_on: usize,
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn bucket(s: &str) -> usize {
    // FNV-1a: stable across runs and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % DIM as u64) as usize
}

/// Log term frequencies of the text's unigrams and bigrams, L2-normalised, as sorted
/// (bucket, weight) pairs.
pub fn features(text: &str) -> Vec<(usize, f32)> {
    let w = words(text);
    let mut counts = std::collections::BTreeMap::<usize, f32>::new();
    for t in &w {
        *counts.entry(bucket(t)).or_default() += 1.0;
    }
    for pair in w.windows(2) {
        *counts
            .entry(bucket(&format!("{} {}", pair[0], pair[1])))
            .or_default() += 1.0;
    }
    let mut x: Vec<(usize, f32)> = counts.into_iter().map(|(i, c)| (i, 1.0 + c.ln())).collect();
    let norm = x.iter().map(|(_, v)| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        for (_, v) in &mut x {
            *v /= norm;
        }
    }
    x
}

/// Logistic regression over 20 outputs on sparse features, full batch with Adam: the same
/// class-weighted cross-entropy as the detector's head (positives weigh sqrt(negatives /
/// positives), capped at 10), a small L2 penalty on the weights.
fn fit_sparse(x: &[Vec<(usize, f32)>], y: &[[u8; 20]]) -> (Vec<Vec<f32>>, [f32; 20]) {
    let n = x.len().max(1) as f32;
    let pos_weight: Vec<f32> = (0..20)
        .map(|c| {
            let pos = y.iter().filter(|r| r[c] == 1).count().max(1) as f32;
            ((n - pos) / pos).sqrt().clamp(1.0, 10.0)
        })
        .collect();
    // Parameters: per output DIM weights then a bias, flattened; Adam's moments alongside.
    let width = DIM + 1;
    let mut theta = vec![0.0f32; 20 * width];
    let mut m = vec![0.0f32; theta.len()];
    let mut v = vec![0.0f32; theta.len()];
    let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
    for epoch in 1..=EPOCHS {
        let mut grad: Vec<f32> = theta.iter().map(|t| L2 * t).collect();
        for c in 0..20 {
            grad[c * width + DIM] = 0.0;
        }
        for (xi, yi) in x.iter().zip(y) {
            for c in 0..20 {
                let row = &theta[c * width..(c + 1) * width];
                let z = xi.iter().map(|(j, f)| row[*j] * f).sum::<f32>() + row[DIM];
                let p = sigmoid(z);
                // d/dz of pos_weight * y * softplus(-z) + (1 - y) * softplus(z), per item.
                let g = if yi[c] == 1 {
                    -pos_weight[c] * (1.0 - p)
                } else {
                    p
                } / n;
                for (j, f) in xi {
                    grad[c * width + j] += g * f;
                }
                grad[c * width + DIM] += g;
            }
        }
        let (c1, c2) = (1.0 - b1.powi(epoch as i32), 1.0 - b2.powi(epoch as i32));
        for k in 0..theta.len() {
            m[k] = b1 * m[k] + (1.0 - b1) * grad[k];
            v[k] = b2 * v[k] + (1.0 - b2) * grad[k] * grad[k];
            theta[k] -= LEARNING_RATE * (m[k] / c1) / ((v[k] / c2).sqrt() + eps);
        }
    }
    let weight = (0..20)
        .map(|c| theta[c * width..c * width + DIM].to_vec())
        .collect();
    let mut bias = [0.0f32; 20];
    for (c, b) in bias.iter_mut().enumerate() {
        *b = theta[c * width + DIM];
    }
    (weight, bias)
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

impl LexicalScorer {
    /// Train on `train`, choose report thresholds on the held-out part of it, report on `valid`.
    pub fn fit(train: &[Argument], valid: &[Argument]) -> anyhow::Result<Self> {
        let (fit_part, tune_part): (Vec<&Argument>, Vec<&Argument>) =
            train.iter().partition(|a| !held_out(&a.id, HOLDOUT));
        let x: Vec<Vec<(usize, f32)>> = fit_part.iter().map(|a| features(a.text())).collect();
        let y: Vec<[u8; 20]> = fit_part.iter().map(|a| a.labels).collect();
        let (weight, bias) = fit_sparse(&x, &y);
        let mut scorer = Self {
            weight,
            bias,
            report: evaluate(&[], &[], &[0.5; 20]),
            trained_on: fit_part.len(),
        };
        let tune: Vec<[f32; 20]> = tune_part
            .iter()
            .map(|a| scorer.categories(a.text()))
            .collect();
        let mut thresholds = [0.5f32; 20];
        for (c, t) in thresholds.iter_mut().enumerate() {
            let p: Vec<f32> = tune.iter().map(|r| r[c]).collect();
            let g: Vec<u8> = tune_part.iter().map(|a| a.labels[c]).collect();
            *t = best_threshold(&p, &g);
        }
        let probs: Vec<[f32; 20]> = valid.iter().map(|a| scorer.categories(a.text())).collect();
        let gold: Vec<[u8; 20]> = valid.iter().map(|a| a.labels).collect();
        scorer.report = evaluate(&probs, &gold, &thresholds);
        Ok(scorer)
    }

    /// Train on `DIR/arguments-training.tsv`, report on `DIR/arguments-validation.tsv`.
    pub fn train(dir: &Path) -> anyhow::Result<Self> {
        let train = load_split(dir, "training").map_err(anyhow::Error::msg)?;
        let valid = load_split(dir, "validation").map_err(anyhow::Error::msg)?;
        Self::fit(&train, &valid)
    }

    /// Probability of each of the 20 categories.
    pub fn categories(&self, text: &str) -> [f32; 20] {
        let x = features(text);
        let mut p = [0.0f32; 20];
        for (c, out) in p.iter_mut().enumerate() {
            let z = x.iter().map(|(j, v)| self.weight[c][*j] * v).sum::<f32>() + self.bias[c];
            *out = sigmoid(z);
        }
        p
    }

    /// The text's value vector (max over each value's categories, as the detector derives it).
    pub fn values(&self, text: &str) -> ValueVector {
        values_from_categories(&self.categories(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::CATEGORIES;
    use visa_values::ValueId;

    #[test]
    fn features_are_normalised_hashed_words_and_pairs() {
        let a = features("Care for the family, care for others.");
        let norm: f32 = a.iter().map(|(_, v)| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        let at = |i: usize| {
            a.iter()
                .find(|(j, _)| *j == i)
                .map(|(_, v)| *v)
                .unwrap_or(0.0)
        };
        // "care" twice weighs more than "family" once; case and punctuation do not matter.
        assert!(at(bucket("care")) > at(bucket("family")));
        assert_eq!(
            features("CARE for the Family"),
            features("care for the family")
        );
        assert!(at(bucket("care for")) > 0.0);
        assert!(features("").is_empty());
    }

    fn arg(id: usize, text: &str, category: Option<usize>) -> Argument {
        let mut labels = [0u8; 20];
        if let Some(c) = category {
            labels[c] = 1;
        }
        Argument {
            id: format!("T{id:05}"),
            conclusion: String::new(),
            stance: String::new(),
            premise: text.to_owned(),
            labels,
        }
    }

    #[test]
    fn learns_which_words_carry_a_value() {
        // Category indices of one benevolence and one power category.
        let care = CATEGORIES
            .iter()
            .position(|c| c.starts_with("Benevolence"))
            .expect("a benevolence category");
        let power = CATEGORIES
            .iter()
            .position(|c| c.starts_with("Power"))
            .expect("a power category");
        let mut train = Vec::new();
        for i in 0..120 {
            let (text, c) = match i % 3 {
                0 => ("we must help and care for our neighbours", Some(care)),
                1 => (
                    "wealth and control bring dominance over rivals",
                    Some(power),
                ),
                _ => ("the meeting is on tuesday in the hall", None),
            };
            train.push(arg(i, text, c));
        }
        let valid: Vec<Argument> = train.iter().take(30).cloned().collect();
        let s = LexicalScorer::fit(&train, &valid).expect("fit");
        let kind = s.values("please care for and help your neighbours");
        let rich = s.values("control and wealth give dominance");
        assert!(kind.get(ValueId::Benevolence) > 0.5 + kind.get(ValueId::Power));
        assert!(rich.get(ValueId::Power) > 0.5 + rich.get(ValueId::Benevolence));
        assert!(
            s.report.macro_f1_values > 0.15,
            "{}",
            s.report.macro_f1_values
        );
    }
}
