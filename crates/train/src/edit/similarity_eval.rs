//! `visa-proxy eval-similarity`: how well the per-sentence checks of an edit tell a rewrite
//! that keeps the meaning from one that changes it, on hand-written pairs
//! (`tests/data/edit_pairs.jsonl`): the encoder similarity of each faithful and each changed
//! rewrite to its sentence, the facts check both ways, and the similarity floor that keeps 90%
//! of the faithful rewrites with how many changed ones it and the facts check let through.

use std::path::Path;

use crate::models::encoder::{EncoderFiles, SentenceEncoder};
use crate::score::facts;

fn quantile(sorted: &[f32], q: f32) -> f32 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f32 * q).round() as usize]
}

pub fn run(pairs: &Path, encoder_dir: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(pairs).map_err(|e| anyhow::anyhow!("{}: {e}", pairs.display()))?;
    let mut rows: Vec<(String, String, String)> = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", pairs.display(), n + 1))?;
        let get = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        rows.push((get("original"), get("faithful"), get("changed")));
    }
    // The base encoder: the one the editor's similarity uses.
    let encoder =
        SentenceEncoder::load(&EncoderFiles::new(encoder_dir), crate::detector::MAX_TOKENS)?;
    let mut all: Vec<&str> = Vec::new();
    for (o, f, c) in &rows {
        all.extend([o.as_str(), f.as_str(), c.as_str()]);
    }
    let v =
        crate::models::service::embed_batched(&encoder, &all, 32).map_err(anyhow::Error::msg)?;
    let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let mut faithful = Vec::new();
    let mut changed = Vec::new();
    for (k, (o, f, c)) in rows.iter().enumerate() {
        let (vo, vf, vc) = (&v[3 * k], &v[3 * k + 1], &v[3 * k + 2]);
        faithful.push((cos(vo, vf), facts::check(o, f).fraction() >= 1.0));
        changed.push((cos(vo, vc), facts::check(o, c).fraction() >= 1.0));
    }
    let mut fs: Vec<f32> = faithful.iter().map(|x| x.0).collect();
    let mut cs: Vec<f32> = changed.iter().map(|x| x.0).collect();
    fs.sort_by(f32::total_cmp);
    cs.sort_by(f32::total_cmp);
    println!(
        "{} pairs ({}), base encoder similarity to the original sentence:",
        rows.len(),
        pairs.display()
    );
    println!(
        "{:<10} {:>6} {:>6} {:>6} {:>6} {:>6}",
        "rewrite", "min", "p10", "p50", "p90", "max"
    );
    for (name, s) in [("faithful", &fs), ("changed", &cs)] {
        println!(
            "{:<10} {:>6.3} {:>6.3} {:>6.3} {:>6.3} {:>6.3}",
            name,
            s[0],
            quantile(s, 0.1),
            quantile(s, 0.5),
            quantile(s, 0.9),
            s[s.len() - 1]
        );
    }
    // The floor that keeps 90% of the faithful rewrites, rounded down to 0.05.
    let floor = (quantile(&fs, 0.1) * 20.0).floor() / 20.0;
    let pass = |x: &(f32, bool)| x.0 >= floor && x.1;
    println!(
        "floor keeping 90% of the faithful rewrites (rounded down to 0.05): {floor:.2}\nwith the facts check both ways: faithful kept {} of {}, changed let through {} of {} (by similarity alone: {} of {}; the facts check alone rejects {} faithful and {} changed)",
        faithful.iter().filter(|x| pass(x)).count(),
        faithful.len(),
        changed.iter().filter(|x| pass(x)).count(),
        changed.len(),
        changed.iter().filter(|x| x.0 >= floor).count(),
        changed.len(),
        faithful.iter().filter(|x| !x.1).count(),
        changed.iter().filter(|x| !x.1).count(),
    );
    Ok(())
}
