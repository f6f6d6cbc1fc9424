//! The sentence encoder's inference speed on this machine: the packed path the detector and
//! the scorer use (`models::packed_bert`) against candle's padded batch (the baseline, the path
//! used before it), measured in the same run, on the texts the detector sees: one 200-token
//! text, the sentences the detector scores of a 200-token answer, and 32 texts of 200 tokens.
//!
//! `cargo bench --bench encoder` (env: BENCH_RUNS, repetitions, default 20).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::disallowed_methods
)]

use std::time::Instant;

use visa_proxy::detector::units;
use visa_proxy::models::encoder::{EncoderFiles, SentenceEncoder};

#[path = "support/answer.rs"]
mod answer;
use answer::ANSWER;

fn percentile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// p50 and p90 in ms of `f` over `runs` calls after two warm-ups.
fn time(runs: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    f();
    let v: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    (percentile(v.clone(), 0.5), percentile(v, 0.9))
}

fn main() {
    let runs = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20usize)
        .max(1);
    let root = env!("CARGO_MANIFEST_DIR");
    let head = std::path::PathBuf::from(format!("{root}/assets/detector/head.safetensors"));
    let delta = visa_proxy::detector::delta_path(&head);
    let encoder = SentenceEncoder::load_with_delta(
        &EncoderFiles::new(format!("{root}/models/minilm")),
        delta.exists().then_some(delta.as_path()),
        visa_proxy::detector::MAX_TOKENS,
    )
    .expect("encoder: run scripts/fetch-models.sh");
    println!(
        "sentence encoder (all-MiniLM-L6-v2, 6 layers, 384 wide), {} rayon threads",
        rayon::current_num_threads()
    );
    let tokens = encoder.count_tokens(ANSWER).unwrap();
    // The sentences the detector scores.
    let win_refs: Vec<&str> = units(ANSWER).iter().map(|u| u.body(ANSWER)).collect();
    let win_tokens: usize = encoder
        .token_ids(&win_refs)
        .unwrap()
        .iter()
        .map(Vec::len)
        .sum();
    let padded = win_refs.len() * encoder.tokenize(&win_refs).unwrap().0.dims2().unwrap().1;
    let batch: Vec<&str> = vec![ANSWER; 32];
    let cases: [(String, Vec<&str>); 3] = [
        (format!("one text, {tokens} tokens"), vec![ANSWER]),
        (
            format!(
                "its {} detector windows ({win_tokens} tokens; {padded} padded)",
                win_refs.len()
            ),
            win_refs.clone(),
        ),
        (format!("32 texts of {tokens} tokens"), batch),
    ];
    println!(
        "| input | candle padded p50 ms | p90 | packed p50 ms | p90 | speed-up (p50) | packed texts/s |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, texts) in &cases {
        let reps = if texts.len() > 8 {
            runs.div_ceil(4)
        } else {
            runs
        };
        let (c50, c90) = time(reps, || {
            encoder.embed(texts).unwrap();
        });
        let (p50, p90) = time(reps, || {
            encoder.embed_vecs(texts).unwrap();
        });
        println!(
            "| {name} | {c50:.1} | {c90:.1} | {p50:.1} | {p90:.1} | {:.2}x | {:.1} |",
            c50 / p50,
            texts.len() as f64 / (p50 / 1e3)
        );
    }
    let a = encoder.embed_vecs(&win_refs).unwrap();
    let b = encoder.embed(&win_refs).unwrap().to_vec2::<f32>().unwrap();
    let diff = a
        .iter()
        .zip(&b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0f32, f32::max);
    println!("largest difference between the two paths' embeddings: {diff:.2e}");
}
