//! Detector metrics (precision, recall, F1 per category and per value, macro-F1) and the
//! `eval-detector` command.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::calibration::{Calibration, ece, reliability};
use super::{CATEGORIES, Head, category_value};
use crate::models::encoder::SentenceEncoder;
use crate::models::service::embed_batched;
use crate::values::ValueId;

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Prf {
    pub precision: f32,
    pub recall: f32,
    pub f1: f32,
    pub support: usize,
}

fn prf(tp: usize, fp: usize, fn_: usize) -> Prf {
    let p = if tp + fp == 0 {
        0.0
    } else {
        tp as f32 / (tp + fp) as f32
    };
    let r = if tp + fn_ == 0 {
        0.0
    } else {
        tp as f32 / (tp + fn_) as f32
    };
    let f1 = if p + r == 0.0 {
        0.0
    } else {
        2.0 * p * r / (p + r)
    };
    Prf {
        precision: p,
        recall: r,
        f1,
        support: tp + fn_,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub categories: Vec<(String, Prf)>,
    pub values: Vec<(String, Prf)>,
    pub macro_f1_categories: f32,
    pub macro_f1_values: f32,
    pub items: usize,
}

/// Score predictions (probabilities, thresholds) against gold labels.
pub fn evaluate(probs: &[[f32; 20]], gold: &[[u8; 20]], thresholds: &[f32; 20]) -> Report {
    let mut cat = [(0usize, 0usize, 0usize); 20];
    let mut val = [(0usize, 0usize, 0usize); 10];
    for (p, g) in probs.iter().zip(gold) {
        let pred: Vec<bool> = (0..20).map(|c| p[c] >= thresholds[c]).collect();
        for c in 0..20 {
            match (pred[c], g[c] == 1) {
                (true, true) => cat[c].0 += 1,
                (true, false) => cat[c].1 += 1,
                (false, true) => cat[c].2 += 1,
                _ => {}
            }
        }
        for v in ValueId::ALL {
            let pv = (0..20).any(|c| category_value(c) == Some(v) && pred[c]);
            let gv = (0..20).any(|c| category_value(c) == Some(v) && g[c] == 1);
            let slot = &mut val[v.index()];
            match (pv, gv) {
                (true, true) => slot.0 += 1,
                (true, false) => slot.1 += 1,
                (false, true) => slot.2 += 1,
                _ => {}
            }
        }
    }
    let categories: Vec<(String, Prf)> = CATEGORIES
        .iter()
        .zip(cat)
        .map(|(n, (tp, fp, fn_))| ((*n).to_owned(), prf(tp, fp, fn_)))
        .collect();
    let values: Vec<(String, Prf)> = ValueId::ALL
        .iter()
        .zip(val)
        .map(|(v, (tp, fp, fn_))| (v.as_str().to_owned(), prf(tp, fp, fn_)))
        .collect();
    let macro_f1_categories = categories.iter().map(|(_, m)| m.f1).sum::<f32>() / 20.0;
    let macro_f1_values = values.iter().map(|(_, m)| m.f1).sum::<f32>() / 10.0;
    Report {
        categories,
        values,
        macro_f1_categories,
        macro_f1_values,
        items: probs.len(),
    }
}

/// The threshold in [0.05, 0.95] that maximises F1 for one category.
pub fn best_threshold(probs: &[f32], gold: &[u8]) -> f32 {
    let mut best = (0.5f32, -1.0f32);
    for k in 1..=90 {
        let t = 0.05 + 0.01 * (k - 1) as f32;
        let (mut tp, mut fp, mut fn_) = (0, 0, 0);
        for (&p, &g) in probs.iter().zip(gold) {
            match (p >= t, g == 1) {
                (true, true) => tp += 1,
                (true, false) => fp += 1,
                (false, true) => fn_ += 1,
                _ => {}
            }
        }
        let f = prf(tp, fp, fn_).f1;
        if f > best.1 {
            best = (t, f);
        }
    }
    best.0
}

fn print_table(first: &str, rows: &[(String, Prf)], macro_label: &str, macro_f1: f32) {
    println!(
        "{:<28} {:>9} {:>7} {:>6} {:>8}",
        first, "precision", "recall", "F1", "support"
    );
    for (n, m) in rows {
        println!(
            "{:<28} {:>9.3} {:>7.3} {:>6.3} {:>8}",
            n, m.precision, m.recall, m.f1, m.support
        );
    }
    println!("macro-F1 over the {macro_label}: {macro_f1:.3}");
}

pub fn print_report(r: &Report) {
    print_table(
        "category",
        &r.categories,
        "20 categories",
        r.macro_f1_categories,
    );
    println!();
    print_table("value", &r.values, "10 values", r.macro_f1_values);
}

/// Latency of one text of about `tokens` tokens, batch size 1: (p50, p90) in milliseconds, and
/// batched throughput in texts per second.
pub fn latency(
    encoder: &SentenceEncoder,
    head: &Head,
    tokens: usize,
    runs: usize,
) -> (f64, f64, f64) {
    let sentence = "People should be free to choose their own path, but the community must also protect those who are vulnerable. ";
    let mut text = String::new();
    while encoder.count_tokens(&text).unwrap_or(0) < tokens {
        text.push_str(sentence);
    }
    let mut times = Vec::new();
    for _ in 0..runs + 2 {
        let t = Instant::now();
        if let Ok(v) = encoder.embed_vecs(&[text.as_str()]) {
            let _ = head.probabilities(&v[0]);
        }
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut measured = times[2..].to_vec();
    measured.sort_by(f64::total_cmp);
    let p = |q: f64| measured[((measured.len() - 1) as f64 * q).round() as usize];
    let batch: Vec<&str> = (0..32).map(|_| text.as_str()).collect();
    let t = Instant::now();
    let _ = embed_batched(encoder, &batch, 32);
    let per_sec = 32.0 / t.elapsed().as_secs_f64();
    (p(0.5), p(0.9), per_sec)
}

/// Long answers made of 5 consecutive arguments each (gold: the union of their labels), scored
/// (a) whole, truncated to the encoder's token limit, and (b) sentence by sentence with the
/// maximum over sentences, as the detector does.
fn long_texts(
    encoder: &SentenceEncoder,
    head: &Head,
    items: &[super::data::Argument],
) -> anyhow::Result<()> {
    let groups: Vec<&[super::data::Argument]> = items.chunks(5).filter(|g| g.len() == 5).collect();
    if groups.is_empty() {
        return Ok(());
    }
    let texts: Vec<String> = groups
        .iter()
        .map(|g| g.iter().map(|a| a.text()).collect::<Vec<_>>().join(" "))
        .collect();
    let gold: Vec<[u8; 20]> = groups
        .iter()
        .map(|g| {
            let mut l = [0u8; 20];
            for a in g.iter() {
                for (x, y) in l.iter_mut().zip(a.labels) {
                    *x |= y;
                }
            }
            l
        })
        .collect();
    let whole_refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let whole = embed_batched(encoder, &whole_refs, 16).map_err(anyhow::Error::msg)?;
    let whole_probs: Vec<[f32; 20]> = whole.iter().map(|v| head.probabilities(v)).collect();
    let (window_probs, n_units) = sentence_probs(encoder, head, None, &whole_refs)?;
    let a = evaluate(&whole_probs, &gold, &head.thresholds);
    let b = evaluate(&window_probs, &gold, &head.thresholds);
    println!();
    println!(
        "long texts ({} texts of 5 arguments, {:.1} sentences each): macro-F1 categories / values: whole text {:.3} / {:.3}, sentence by sentence + max {:.3} / {:.3}",
        groups.len(),
        n_units as f64 / groups.len() as f64,
        a.macro_f1_categories,
        a.macro_f1_values,
        b.macro_f1_categories,
        b.macro_f1_values
    );
    Ok(())
}

/// Category probabilities of each text as the detector serves them: the maximum over its
/// sentences (times the gate, when given); and how many sentences were scored.
fn sentence_probs(
    encoder: &SentenceEncoder,
    head: &Head,
    gate: Option<&super::gate::Gate>,
    texts: &[&str],
) -> anyhow::Result<(Vec<[f32; 20]>, usize)> {
    let per_text: Vec<Vec<visa_values::sentences::Sentence>> =
        texts.iter().map(|t| super::units(t)).collect();
    let flat: Vec<&str> = per_text
        .iter()
        .zip(texts)
        .flat_map(|(u, t)| u.iter().map(|s| s.body(t)))
        .collect();
    let vecs = embed_batched(encoder, &flat, 32).map_err(anyhow::Error::msg)?;
    let mut it = vecs.iter();
    let probs = per_text
        .iter()
        .map(|u| {
            let mut p = [0f32; 20];
            for v in it.by_ref().take(u.len()) {
                let (_, q) = super::raw_values(head, gate, v);
                for (x, y) in p.iter_mut().zip(q) {
                    *x = x.max(y);
                }
            }
            p
        })
        .collect();
    Ok((probs, flat.len()))
}

/// Expected calibration error and a reliability table per value, raw and calibrated, on the
/// split's arguments scored as served (the maximum over sentences).
fn calibration_report(
    encoder: &SentenceEncoder,
    head: &Head,
    gate: Option<&super::gate::Gate>,
    calibration: &Calibration,
    items: &[super::data::Argument],
) -> anyhow::Result<()> {
    let texts: Vec<&str> = items.iter().map(|a| a.text()).collect();
    let raw = super::calibrate::served_raw(encoder, head, gate, &texts)?;
    let labels: Vec<[bool; 10]> = items
        .iter()
        .map(|a| super::calibrate::value_labels(&a.labels))
        .collect();
    let bins = super::calibrate::BINS;
    println!();
    println!(
        "calibration ({} arguments, each scored sentence by sentence, max; {bins} equal-width bins; calibration: {}{}):",
        items.len(),
        calibration.method,
        if gate.is_some() {
            ", with the value gate"
        } else {
            ""
        }
    );
    println!(
        "{:<15} {:>9} {:>11} {:>10} {:>12}",
        "value", "ECE raw", "ECE calib.", "mean raw", "mean calib."
    );
    let mut tables = Vec::new();
    let (mut sum_raw, mut sum_cal) = (0.0, 0.0);
    for v in ValueId::ALL {
        let p: Vec<f32> = raw.iter().map(|r| r.get(v)).collect();
        let q: Vec<f32> = raw.iter().map(|r| calibration.apply(r).get(v)).collect();
        let l: Vec<bool> = labels.iter().map(|x| x[v.index()]).collect();
        let (e_raw, e_cal) = (ece(&p, &l, bins), ece(&q, &l, bins));
        sum_raw += e_raw;
        sum_cal += e_cal;
        let rate = l.iter().filter(|x| **x).count() as f32 / l.len().max(1) as f32;
        println!(
            "{:<15} {:>9.3} {:>11.3} {:>10.3} {:>12.3}   (share present {:.3})",
            v.to_string(),
            e_raw,
            e_cal,
            p.iter().sum::<f32>() / p.len().max(1) as f32,
            q.iter().sum::<f32>() / q.len().max(1) as f32,
            rate
        );
        tables.push((v, reliability(&p, &l, bins), reliability(&q, &l, bins)));
    }
    println!(
        "mean ECE over the 10 values: raw {:.3}, calibrated {:.3}",
        sum_raw / 10.0,
        sum_cal / 10.0
    );
    println!();
    println!(
        "reliability per value: for each bin of predicted probability, observed share present / count (raw -> calibrated)"
    );
    let header: Vec<String> = (0..bins)
        .map(|i| {
            format!(
                "{:.1}-{:.1}",
                i as f32 / bins as f32,
                (i + 1) as f32 / bins as f32
            )
        })
        .collect();
    println!("{:<24} {}", "value", header.join("  "));
    for (v, a, b) in tables {
        for (name, t) in [("raw", a), ("calibrated", b)] {
            let cells: Vec<String> = t
                .iter()
                .map(|x| {
                    if x.count == 0 {
                        "    -   ".to_owned()
                    } else {
                        format!("{:.2}/{:<4}", x.observed, x.count)
                    }
                })
                .collect();
            println!("{:<24} {}", format!("{v} {name}"), cells.join(" "));
        }
    }
    Ok(())
}

/// How often the detector calls value-neutral texts value-laden: per value, the share of the
/// texts whose calibrated score is at least 0.5 ("present"), the share labelled present by the
/// category thresholds, the mean score, and the share within the default tolerance (0.15) of a
/// target of 0.1 (score at most 0.25), i.e. that pass a profile which keeps the value low.
pub fn neutral_check(
    encoder: &SentenceEncoder,
    head: &Head,
    gate: Option<&super::gate::Gate>,
    calibration: &Calibration,
    path: &Path,
) -> anyhow::Result<()> {
    let texts = super::calibrate::read_texts(path)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let raw = super::calibrate::served_raw(encoder, head, gate, &refs)?;
    let (probs, _) = sentence_probs(encoder, head, gate, &refs)?;
    let n = texts.len().max(1) as f32;
    println!();
    println!(
        "neutral texts ({}, {}): per value, share called present (calibrated score >= 0.5), share labelled present (category thresholds), mean score raw -> calibrated, share within tolerance of a low target (score <= 0.25)",
        texts.len(),
        path.display()
    );
    println!(
        "{:<15} {:>9} {:>9} {:>10} {:>12} {:>10}",
        "value", "present", "labelled", "mean raw", "mean calib.", "low ok"
    );
    let mut all_low = vec![true; texts.len()];
    for v in ValueId::ALL {
        let cal: Vec<f32> = raw.iter().map(|r| calibration.apply(r).get(v)).collect();
        let labelled = probs
            .iter()
            .filter(|p| (0..20).any(|c| category_value(c) == Some(v) && p[c] >= head.thresholds[c]))
            .count();
        for (ok, x) in all_low.iter_mut().zip(&cal) {
            *ok &= *x <= 0.25;
        }
        println!(
            "{:<15} {:>9.3} {:>9.3} {:>10.3} {:>12.3} {:>10.3}",
            v.to_string(),
            cal.iter().filter(|x| **x >= 0.5).count() as f32 / n,
            labelled as f32 / n,
            raw.iter().map(|r| r.get(v)).sum::<f32>() / n,
            cal.iter().sum::<f32>() / n,
            cal.iter().filter(|x| **x <= 0.25).count() as f32 / n
        );
    }
    println!(
        "texts within tolerance of a profile keeping all ten values low (each score <= 0.25): {:.3}",
        all_low.iter().filter(|x| **x).count() as f32 / n
    );
    Ok(())
}

/// The other side of the gate: sentences in an answer's style that each express one value
/// (`value` field). Per value: the mean calibrated score for it, with and without the gate,
/// and how many reach 0.5 and 0.8.
pub fn valued_check(
    encoder: &SentenceEncoder,
    head: &Head,
    gate: Option<&super::gate::Gate>,
    calibration: &Calibration,
    path: &Path,
) -> anyhow::Result<()> {
    let raw_file =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut rows: Vec<(ValueId, String)> = Vec::new();
    for line in raw_file.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let id: ValueId = v["value"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .map_err(anyhow::Error::msg)?;
        rows.push((id, v["text"].as_str().unwrap_or_default().to_owned()));
    }
    let refs: Vec<&str> = rows.iter().map(|(_, t)| t.as_str()).collect();
    let gated = super::calibrate::served_raw(encoder, head, gate, &refs)?;
    let ungated = super::calibrate::served_raw(encoder, head, None, &refs)?;
    println!();
    println!(
        "value-laden texts in an answer's style ({}, {}): per value, the calibrated score of its own sentences: mean with the gate (without), and how many reach 0.5 and 0.8",
        rows.len(),
        path.display()
    );
    println!(
        "{:<15} {:>6} {:>10} {:>9} {:>9}",
        "value", "texts", "mean", ">= 0.5", ">= 0.8"
    );
    for v in ValueId::ALL {
        let mine: Vec<usize> = (0..rows.len()).filter(|i| rows[*i].0 == v).collect();
        if mine.is_empty() {
            continue;
        }
        let with: Vec<f32> = mine
            .iter()
            .map(|i| calibration.apply(&gated[*i]).get(v))
            .collect();
        let without: Vec<f32> = mine
            .iter()
            .map(|i| calibration.apply(&ungated[*i]).get(v))
            .collect();
        let n = mine.len() as f32;
        println!(
            "{:<15} {:>6} {:>4.2} ({:.2}) {:>9} {:>9}",
            v.to_string(),
            mine.len(),
            with.iter().sum::<f32>() / n,
            without.iter().sum::<f32>() / n,
            with.iter().filter(|x| **x >= 0.5).count(),
            with.iter().filter(|x| **x >= 0.8).count()
        );
    }
    Ok(())
}

/// `visa-proxy eval-detector`.
pub fn run(
    data: &Path,
    split: &str,
    encoder_dir: &Path,
    head_path: &Path,
    calibration_path: Option<&Path>,
    neutral: Option<&Path>,
    valued: Option<&Path>,
) -> anyhow::Result<()> {
    let items = super::data::load_split(data, split).map_err(anyhow::Error::msg)?;
    let head = Head::load(head_path).map_err(anyhow::Error::msg)?;
    let encoder = visa_core::detector::load_encoder(encoder_dir, head_path)?;
    let calibration = match calibration_path {
        Some(p) => Calibration::load(p).map_err(anyhow::Error::msg)?,
        None => Calibration::identity(),
    };
    // The head's gate goes with the calibration (both off: the raw head).
    let gate_file = super::gate_path(head_path);
    let gate = match (calibration_path, gate_file.exists()) {
        (Some(_), true) => Some(super::gate::Gate::load(&gate_file).map_err(anyhow::Error::msg)?),
        _ => None,
    };
    let texts: Vec<&str> = items.iter().map(|a| a.text()).collect();
    let started = Instant::now();
    eprintln!("embedding {} texts of split {split} ...", texts.len());
    let vectors = embed_batched(&encoder, &texts, 32).map_err(anyhow::Error::msg)?;
    let embed_s = started.elapsed().as_secs_f64();
    let probs: Vec<[f32; 20]> = vectors.iter().map(|v| head.probabilities(v)).collect();
    let gold: Vec<[u8; 20]> = items.iter().map(|a| a.labels).collect();
    let report = evaluate(&probs, &gold, &head.thresholds);
    println!(
        "split {split}: {} arguments (premise text), mapping {}",
        report.items,
        super::MAPPING_NAME
    );
    print_report(&report);
    let (served, _) = sentence_probs(&encoder, &head, None, &texts)?;
    let served_report = evaluate(&served, &gold, &head.thresholds);
    let (gated, _) = sentence_probs(&encoder, &head, gate.as_ref(), &texts)?;
    let gated_report = evaluate(&gated, &gold, &head.thresholds);
    println!();
    println!(
        "the same arguments scored as served (sentence by sentence, max): macro-F1 categories {:.3}, values {:.3}; with the value gate (the labels serving returns): {:.3}, {:.3}",
        served_report.macro_f1_categories,
        served_report.macro_f1_values,
        gated_report.macro_f1_categories,
        gated_report.macro_f1_values
    );
    long_texts(&encoder, &head, &items)?;
    calibration_report(&encoder, &head, gate.as_ref(), &calibration, &items)?;
    if let Some(path) = neutral {
        neutral_check(&encoder, &head, gate.as_ref(), &calibration, path)?;
    }
    if let Some(path) = valued {
        valued_check(&encoder, &head, gate.as_ref(), &calibration, path)?;
    }
    let (p50, p90, per_sec) = latency(&encoder, &head, 200, 20);
    println!();
    println!(
        "latency, one 200-token text: p50 {p50:.1} ms, p90 {p90:.1} ms; batched (32 x 200 tokens): {per_sec:.1} texts/s; whole split: {:.1} texts/s",
        texts.len() as f64 / embed_s
    );
    Ok(())
}
