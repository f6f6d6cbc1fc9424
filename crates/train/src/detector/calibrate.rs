//! `visa-proxy calibrate-detector`: fit the per-value calibration of the committed head on data
//! it was not trained on: the part of Touché23's training split held out from fitting the head
//! (the same 15% that chose its thresholds) and value-neutral answers of the local model
//! (`assets/detector/neutral-fit.jsonl`, the share train-detector keeps out of the head's fit),
//! each text scored as serving scores it (the maximum
//! over its sentences). Also the served scores of texts, which `eval-detector` reports on.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::calibration::{Calibration, Platt, ece, fit_platt};
use super::gate::Gate;
use super::{Head, category_value, raw_values, units};
use crate::models::encoder::SentenceEncoder;
use crate::models::service::embed_batched;
use crate::values::{ValueId, ValueVector};

/// Bins of the reliability tables and the expected calibration error.
pub const BINS: usize = 10;

/// Raw (uncalibrated) value scores of each text, as serving computes them before calibration:
/// per sentence the head's categories collapsed to values, then the maximum over sentences.
/// Calibration is monotone per value, so calibrating this maximum equals the maximum of the
/// calibrated sentences that serving returns.
pub fn served_raw(
    encoder: &SentenceEncoder,
    head: &Head,
    gate: Option<&Gate>,
    texts: &[&str],
) -> anyhow::Result<Vec<ValueVector>> {
    let per_text: Vec<Vec<visa_values::sentences::Sentence>> =
        texts.iter().map(|t| units(t)).collect();
    let flat: Vec<&str> = per_text
        .iter()
        .zip(texts)
        .flat_map(|(u, t)| u.iter().map(|s| s.body(t)))
        .collect();
    let vecs = embed_batched(encoder, &flat, 32).map_err(anyhow::Error::msg)?;
    let mut it = vecs.iter();
    Ok(per_text
        .iter()
        .map(|u| {
            let mut out = ValueVector::default();
            for v in it.by_ref().take(u.len()) {
                let (q, _) = raw_values(head, gate, v);
                for (a, b) in out.0.iter_mut().zip(q.0) {
                    *a = a.max(b);
                }
            }
            out
        })
        .collect())
}

/// Value labels of an argument (any of the value's categories).
pub fn value_labels(labels: &[u8; 20]) -> [bool; 10] {
    let mut out = [false; 10];
    for (c, l) in labels.iter().enumerate() {
        if *l == 1
            && let Some(v) = category_value(c)
        {
            out[v.index()] = true;
        }
    }
    out
}

/// Texts of a JSONL file with a `text` field per line.
pub fn read_texts(path: &Path) -> anyhow::Result<Vec<String>> {
    let raw =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    raw.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| {
            let v: serde_json::Value = serde_json::from_str(l)
                .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), n + 1))?;
            v.get("text")
                .and_then(|t| t.as_str())
                .map(str::to_owned)
                .ok_or_else(|| anyhow::anyhow!("{}:{}: no 'text'", path.display(), n + 1))
        })
        .collect()
}

pub struct CalibrateOptions {
    pub data: PathBuf,
    pub neutral: PathBuf,
    /// The local model's value-laden sentences (answers to value prompts): value-laden
    /// examples for the gate in the style of answers. `None`: arguments only.
    pub valued: Option<PathBuf>,
    pub encoder_dir: PathBuf,
    pub head: PathBuf,
    pub out: PathBuf,
    pub holdout: f64,
}

/// Fit and write the gate and the calibration; returns the calibration.
pub fn run(o: &CalibrateOptions) -> anyhow::Result<Calibration> {
    let train = super::data::load_split(&o.data, "training").map_err(anyhow::Error::msg)?;
    let (held, fit): (Vec<&super::data::Argument>, Vec<&super::data::Argument>) = train
        .iter()
        .partition(|a| super::train::held_out(&a.id, o.holdout));
    let all_neutral = read_texts(&o.neutral)?;
    let (neutral, neutral_fit): (Vec<String>, Vec<String>) = all_neutral
        .into_iter()
        .partition(|t| super::train::neutral_held_out(t));
    let head = Head::load(&o.head).map_err(anyhow::Error::msg)?;
    let encoder = visa_core::detector::load_encoder(&o.encoder_dir, &o.head)?;

    // The gate: the head's own fit arguments (value-laden) against neutral sentences.
    let mut seen = std::collections::HashSet::new();
    let negatives: Vec<&str> = neutral_fit
        .iter()
        .flat_map(|t| units(t).into_iter().map(|u| u.body(t)))
        .filter(|s| seen.insert(*s))
        .collect();
    let valued = match &o.valued {
        Some(p) => read_texts(p)?,
        None => Vec::new(),
    };
    let valued_sentences: Vec<&str> = valued
        .iter()
        .flat_map(|t| units(t).into_iter().map(|u| u.body(t)))
        .filter(|s| seen.insert(*s))
        .collect();
    let mut positives: Vec<&str> = fit
        .iter()
        .filter(|a| a.labels.contains(&1))
        .map(|a| a.text())
        .collect();
    let arguments = positives.len();
    positives.extend(valued_sentences.iter().copied());
    eprintln!(
        "fitting the value gate on {} arguments and {} value-laden sentences of the local model against {} neutral sentences ...",
        arguments,
        valued_sentences.len(),
        negatives.len()
    );
    let mut gate_texts = positives.clone();
    gate_texts.extend(negatives.iter().copied());
    let x = embed_batched(&encoder, &gate_texts, 32).map_err(anyhow::Error::msg)?;
    let labels: Vec<bool> = (0..gate_texts.len()).map(|i| i < positives.len()).collect();
    let gate = super::train::fit_gate(&x, &labels)?;
    let gate_file = super::gate_path(&o.head);
    gate.save(&gate_file).map_err(anyhow::Error::msg)?;
    println!("wrote {}", gate_file.display());
    eprintln!(
        "scoring {} held-out training arguments and {} neutral answers sentence by sentence ...",
        held.len(),
        neutral.len()
    );
    let mut texts: Vec<&str> = held.iter().map(|a| a.text()).collect();
    texts.extend(neutral.iter().map(String::as_str));
    let raw = served_raw(&encoder, &head, Some(&gate), &texts)?;
    let mut labels: Vec<[bool; 10]> = held.iter().map(|a| value_labels(&a.labels)).collect();
    labels.extend(std::iter::repeat_n([false; 10], neutral.len()));
    let mut values = std::collections::BTreeMap::new();
    let mut fit_report = serde_json::Map::new();
    for v in ValueId::ALL {
        let p: Vec<f32> = raw.iter().map(|r| r.get(v)).collect();
        let l: Vec<bool> = labels.iter().map(|l| l[v.index()]).collect();
        let mut platt = fit_platt(&p, &l);
        if platt.a <= 0.0 {
            // A decreasing map would invert the detector; keep the raw scores instead.
            platt = Platt::IDENTITY;
        }
        let q: Vec<f32> = p.iter().map(|x| platt.apply(*x)).collect();
        fit_report.insert(
            v.to_string(),
            json!({"positives": l.iter().filter(|x| **x).count(), "ece_raw": ece(&p, &l, BINS), "ece_calibrated": ece(&q, &l, BINS)}),
        );
        values.insert(v, platt);
    }
    let calibration = Calibration {
        method: "platt".into(),
        values,
        fitted_on: json!({
            "texts": texts.len(),
            "held_out_training_arguments": held.len(),
            "holdout_share": o.holdout,
            "neutral_answers": neutral.len(),
            "gate": {
                "file": gate_file.display().to_string(),
                "value_laden_arguments": arguments,
                "value_laden_answer_sentences": valued_sentences.len(),
                "valued_file": o.valued.as_ref().map(|p| p.display().to_string()),
                "neutral_sentences": negatives.len(),
                "neutral_answers": neutral_fit.len(),
            },
            "neutral_file": o.neutral.display().to_string(),
            "head": o.head.display().to_string(),
            "scoring": "per value, the maximum over the text's sentences of the head's score (max over the value's categories) times the gate's",
            "per_value": fit_report,
        }),
    };
    calibration.save(&o.out).map_err(anyhow::Error::msg)?;
    println!("wrote {}", o.out.display());
    for v in ValueId::ALL {
        let r = &calibration.fitted_on["per_value"][v.to_string()];
        println!(
            "{:<15} a {:>6.3} b {:>7.3}  ECE on the fit data {:.3} -> {:.3}",
            v.to_string(),
            calibration.values[&v].a,
            calibration.values[&v].b,
            r["ece_raw"].as_f64().unwrap_or(0.0),
            r["ece_calibrated"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(calibration)
}
