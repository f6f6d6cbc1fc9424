//! Enforcement benchmark through the real `visa-proxy` binary with the real models: local model
//! tokens/s (prompt and generation, one stream and four at once), the detect stage, and the
//! latency enforcement adds to JSON answers and streams, each against a baseline measured in the
//! same run (the same request for a tenant without a profile).
//!
//! `cargo bench --bench enforce` (env: BENCH_RUNS, repetitions of the cheap cases, default 10).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::disallowed_methods
)]

#[path = "../tests/support/mock_upstream.rs"]
mod mock_upstream;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "support/answer.rs"]
mod answer;
#[path = "support/child.rs"]
mod child;
use answer::ANSWER;

/// About 109 tokens of prompt, as in the figures quoted in MODELS.md.
const PROMPT: &str = "You are a helpful assistant. Read the following note and answer the question after it. \
Note: The city council met on Tuesday to discuss the new bicycle lanes along the river. Residents \
asked for better lighting, more benches and a safe crossing near the school. The council agreed to \
publish a plan by the end of the month and to hold a second meeting in spring. Question: What did \
the residents ask for, and what happens next? Answer in a few sentences.";

fn key_hash(k: &str) -> String {
    hex::encode(visa_proxy::config::hash_key(k))
}

fn start_proxy(mock: &str, dir: &std::path::Path) -> (std::process::Child, String) {
    let root = env!("CARGO_MANIFEST_DIR");
    let config = format!(
        r#"
[models]
encoder_dir = "{root}/models/minilm"
detector_head = "{root}/assets/detector/head.safetensors"
[llm]
model = "{root}/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
max_tokens = 256
[rewriter]
# Sentence edits, the default (BENCH_MODE=whole for the whole-text rewriter with one round of
# candidates, as the README's earlier figures were measured).
mode = "{mode}"
rounds = 1
[enforce]
first_window_chars = 40
window_chars = 160
[[upstreams]]
name = "mock"
base_url = "{mock}"
[[upstreams]]
name = "local"
kind = "local"
[[tenants]]
id = "plain"
api_key_sha256 = ["{plain}"]
upstreams = ["mock"]
[[tenants]]
id = "audit"
api_key_sha256 = ["{audit}"]
upstreams = ["mock"]
self_manage_profile = true
[[tenants]]
id = "rewrite"
api_key_sha256 = ["{rewrite}"]
upstreams = ["mock"]
self_manage_profile = true
[[tenants]]
id = "loose"
api_key_sha256 = ["{loose}"]
upstreams = ["mock"]
self_manage_profile = true
[[tenants]]
id = "local"
api_key_sha256 = ["{local}"]
upstreams = ["local"]
"#,
        plain = key_hash("sk-plain"),
        audit = key_hash("sk-audit"),
        rewrite = key_hash("sk-rewrite"),
        mode = std::env::var("BENCH_MODE").unwrap_or_else(|_| "edits".into()),
        loose = key_hash("sk-loose"),
        local = key_hash("sk-local"),
    );
    let path = dir.join("bench.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = child::ends_with_bench(&mut Command::new(env!("CARGO_BIN_EXE_visa-proxy")))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .env("VISA_PROFILES_DB", dir.join("profiles.sqlite"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("visa-proxy listening on ")
        .unwrap()
        .to_owned();
    (child, base)
}

/// llama.cpp's prompt and generation tokens/s on the same GGUF file, when LLAMA_BENCH names
/// its llama-bench binary.
fn llama_bench() -> Option<(f64, f64)> {
    let bin = std::env::var("LLAMA_BENCH").ok()?;
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    );
    let out = child::ends_with_bench(&mut Command::new(bin))
        .args([
            "-m", model, "-t", "2", "-p", "109", "-n", "128", "-r", "3", "-o", "json",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let runs: Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut pp = None;
    let mut tg = None;
    for r in runs.as_array()? {
        let ts = r["avg_ts"].as_f64();
        if r["n_prompt"].as_u64() > Some(0) && r["n_gen"].as_u64() == Some(0) {
            pp = ts;
        } else if r["n_gen"].as_u64() > Some(0) {
            tg = ts;
        }
    }
    Some((pp?, tg?))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

struct Timed {
    ttft_ms: f64,
    total_ms: f64,
    usage: Value,
    headers: reqwest::header::HeaderMap,
}

async fn json_call(c: &reqwest::Client, base: &str, key: &str, body: &Value) -> Timed {
    let t = Instant::now();
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap();
    let headers = r.headers().clone();
    let v: Value = r.json().await.unwrap();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    Timed {
        ttft_ms: ms,
        total_ms: ms,
        usage: v["usage"].clone(),
        headers,
    }
}

async fn stream_call(c: &reqwest::Client, base: &str, key: &str, body: &Value) -> Timed {
    use futures_util::StreamExt;
    let t = Instant::now();
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap();
    let headers = r.headers().clone();
    let mut bytes = r.bytes_stream();
    let mut ttft = None;
    let mut usage = Value::Null;
    let mut buf = String::new();
    while let Some(chunk) = bytes.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(i) = buf.find("\n\n") {
            let event: String = buf.drain(..i + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(data).unwrap();
            let has_text = v["choices"].as_array().is_some_and(|cs| {
                cs.iter().any(|c| {
                    c["delta"]["content"]
                        .as_str()
                        .is_some_and(|s| !s.is_empty())
                })
            });
            if has_text && ttft.is_none() {
                ttft = Some(t.elapsed().as_secs_f64() * 1e3);
            }
            if !v["usage"].is_null() {
                usage = v["usage"].clone();
            }
        }
    }
    Timed {
        ttft_ms: ttft.unwrap_or(f64::NAN),
        total_ms: t.elapsed().as_secs_f64() * 1e3,
        usage,
        headers,
    }
}

async fn put_profile(c: &reqwest::Client, base: &str, key: &str, p: Value) {
    let r = c
        .put(format!("{base}/v1/profile"))
        .bearer_auth(key)
        .json(&p)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let mock = mock_upstream::MockUpstream::start().await;
    mock.state
        .record
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = start_proxy(&mock.base_url(), dir.path());
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let caring = |action: &str, mode: &str| {
        json!({"values": {"benevolence": {"target": 0.9, "tolerance": 0.1},
                          "power": {"target": 0.0, "tolerance": 0.1}},
               "action": action, "fallback": "original", "stream_mode": mode})
    };
    put_profile(&c, &base, "sk-audit", caring("audit", "window")).await;
    put_profile(&c, &base, "sk-rewrite", caring("rewrite", "window")).await;
    // Every text is within this one: checked, never rewritten.
    put_profile(
        &c,
        &base,
        "sk-loose",
        json!({"values": {"benevolence": {"target": 0.5, "tolerance": 0.5}}, "action": "rewrite"}),
    )
    .await;

    println!("== local model (SmolLM2-135M Q4_1, mistral.rs, through the proxy's local upstream)");
    let gen_body = json!({"model": "local", "temperature": 0, "max_tokens": 128, "stream": true,
        "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": PROMPT}]});
    // Warm-up.
    stream_call(&c, &base, "sk-local", &gen_body).await;
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let t = stream_call(&c, &base, "sk-local", &gen_body).await;
        let prompt = t.usage["prompt_tokens"].as_f64().unwrap_or(f64::NAN);
        let completion = t.usage["completion_tokens"].as_f64().unwrap_or(f64::NAN);
        pp.push(prompt / (t.ttft_ms / 1e3));
        tg.push((completion - 1.0) / ((t.total_ms - t.ttft_ms) / 1e3));
        println!(
            "  one stream: prompt {prompt} tokens, ttft {:.0} ms; {completion} generated in {:.0} ms",
            t.ttft_ms,
            t.total_ms - t.ttft_ms
        );
    }
    let (pp, tg) = (median(pp), median(tg));
    println!(
        "  prompt processing {pp:.1} tokens/s, generation {tg:.1} tokens/s (median of 3, one sequence)"
    );
    if let Some((lpp, ltg)) = llama_bench() {
        println!(
            "  llama.cpp llama-bench, same file, 2 threads: prompt {lpp:.1} tokens/s, generation {ltg:.1} tokens/s"
        );
        println!(
            "  mistral.rs / llama.cpp: prompt {:.2}, generation {:.2}",
            pp / lpp,
            tg / ltg
        );
    } else {
        println!(
            "  (llama.cpp comparison skipped: set LLAMA_BENCH to scripts/build-llama-bench.sh's output)"
        );
    }
    let t0 = Instant::now();
    let all = futures_util::future::join_all(
        (0..4).map(|_| stream_call(&c, &base, "sk-local", &gen_body)),
    )
    .await;
    let tokens: f64 = all
        .iter()
        .map(|t| t.usage["completion_tokens"].as_f64().unwrap_or(0.0))
        .sum();
    println!(
        "  4 concurrent streams: {:.1} generated tokens/s in total",
        tokens / t0.elapsed().as_secs_f64()
    );

    println!("\n== detect stage: POST /v1/values/detect, the ~200-token answer ({runs} runs)");
    let mut det = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let r = c
            .post(format!("{base}/v1/values/detect"))
            .bearer_auth("sk-plain")
            .json(&json!({"text": ANSWER}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        r.bytes().await.unwrap();
        det.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!("  p50 {:.1} ms", median(det));

    println!("\n== JSON answers (~200 tokens) from the mock upstream, p50 over {runs} runs");
    let json_body = json!({"model": "m", "messages": [{"role": "user", "content": "How do I get ahead at work?"}],
        "mock": {"content": ANSWER}});
    let mut base_ms = Vec::new();
    let mut audit_ms = Vec::new();
    for _ in 0..runs {
        base_ms.push(json_call(&c, &base, "sk-plain", &json_body).await.total_ms);
        audit_ms.push(json_call(&c, &base, "sk-audit", &json_body).await.total_ms);
    }
    let (b, a) = (median(base_ms), median(audit_ms));
    println!(
        "  no profile (baseline) {b:.1} ms; audit {a:.1} ms; added {:.1} ms",
        a - b
    );
    let mut rw = Vec::new();
    let mut actions = Vec::new();
    for _ in 0..3 {
        let t = json_call(&c, &base, "sk-rewrite", &json_body).await;
        rw.push(t.total_ms);
        actions.push(
            t.headers
                .get("x-visa-action")
                .and_then(|h| h.to_str().ok())
                .unwrap_or("?")
                .to_owned(),
        );
    }
    let r = median(rw);
    println!(
        "  rewrite ({}): {r:.0} ms, added {:.0} ms (median of 3; decisions {actions:?})",
        std::env::var("BENCH_MODE").unwrap_or_else(|_| "edits".into()),
        r - b
    );

    println!("\n== streams from the mock upstream (the answer in 5-character chunks, 2 ms apart)");
    let pieces: Vec<String> = ANSWER
        .as_bytes()
        .chunks(5)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    let stream_body = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "How do I get ahead at work?"}],
        "mock": {"chunks": pieces, "delay_ms": 2}});
    let (mut bt, mut bl, mut lt, mut ll) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = stream_call(&c, &base, "sk-plain", &stream_body).await;
        bt.push(t.ttft_ms);
        bl.push(t.total_ms);
        let t = stream_call(&c, &base, "sk-loose", &stream_body).await;
        lt.push(t.ttft_ms);
        ll.push(t.total_ms);
    }
    let (bt, bl, lt, ll) = (median(bt), median(bl), median(lt), median(ll));
    println!(
        "  no profile: first text {bt:.1} ms, end {bl:.1} ms; checked, nothing rewritten (window mode): first text {lt:.1} ms (+{:.1}), end {ll:.1} ms (+{:.1})",
        lt - bt,
        ll - bl
    );
    let short: Vec<String> =
        "Crush your rivals and take control of the market so everyone sees you are the boss."
            .split_inclusive(' ')
            .map(str::to_owned)
            .collect();
    let one_window = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "How do I win?"}],
        "mock": {"chunks": short, "delay_ms": 2}});
    let mut ow = Vec::new();
    for _ in 0..3 {
        let base_t = stream_call(&c, &base, "sk-plain", &one_window).await;
        let t = stream_call(&c, &base, "sk-rewrite", &one_window).await;
        ow.push((t.ttft_ms - base_t.ttft_ms, t.total_ms - base_t.total_ms));
    }
    println!(
        "  one rewritten window: added time to first text {:.0} ms, to the end {:.0} ms (median of 3)",
        median(ow.iter().map(|x| x.0).collect()),
        median(ow.iter().map(|x| x.1).collect())
    );
    let _ = child.kill();
    let _ = child.wait();
}
