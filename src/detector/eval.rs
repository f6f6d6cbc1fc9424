//! Detector metrics (precision, recall, F1 per category and per value, macro-F1) and the
//! `eval-detector` command.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

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
/// maximum over windows, as the detector does.
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
    let per_text: Vec<Vec<String>> = texts
        .iter()
        .map(|t| super::windows(t, super::WINDOW_WORDS, super::MIN_WINDOW_WORDS))
        .collect();
    let flat: Vec<&str> = per_text.iter().flatten().map(String::as_str).collect();
    let vecs = embed_batched(encoder, &flat, 32).map_err(anyhow::Error::msg)?;
    let mut it = vecs.iter();
    let window_probs: Vec<[f32; 20]> = per_text
        .iter()
        .map(|w| {
            let mut p = [0f32; 20];
            for v in it.by_ref().take(w.len()) {
                for (x, y) in p.iter_mut().zip(head.probabilities(v)) {
                    *x = x.max(y);
                }
            }
            p
        })
        .collect();
    let a = evaluate(&whole_probs, &gold, &head.thresholds);
    let b = evaluate(&window_probs, &gold, &head.thresholds);
    println!();
    println!(
        "long texts ({} texts of 5 arguments, {:.1} windows each): macro-F1 categories / values: whole text {:.3} / {:.3}, sentence windows + max {:.3} / {:.3}",
        groups.len(),
        flat.len() as f64 / groups.len() as f64,
        a.macro_f1_categories,
        a.macro_f1_values,
        b.macro_f1_categories,
        b.macro_f1_values
    );
    Ok(())
}

/// `visa-proxy eval-detector`.
pub fn run(data: &Path, split: &str, encoder_dir: &Path, head_path: &Path) -> anyhow::Result<()> {
    let items = super::data::load_split(data, split).map_err(anyhow::Error::msg)?;
    let head = Head::load(head_path).map_err(anyhow::Error::msg)?;
    let encoder = super::train::load_encoder(encoder_dir, head_path)?;
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
    long_texts(&encoder, &head, &items)?;
    let (p50, p90, per_sec) = latency(&encoder, &head, 200, 20);
    println!();
    println!(
        "latency, one 200-token text: p50 {p50:.1} ms, p90 {p90:.1} ms; batched (32 x 200 tokens): {per_sec:.1} texts/s; whole split: {:.1} texts/s",
        texts.len() as f64 / embed_s
    );
    Ok(())
}
