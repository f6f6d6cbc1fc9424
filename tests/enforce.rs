//! Enforcement through the running proxy with the real local model (SmolLM2 via mistral.rs) and
//! the real encoder and detector, with the whole-text rewriter: the local upstream, audit /
//! rewrite / block on JSON and streams, the shield's fallback, no leaks from streams,
//! cancellation, /v1/values/rewrite, and the official openai SDK reading a rewritten stream.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::disallowed_methods
)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::key_hash;
use support::mock_upstream::MockUpstream;
use support::proxy::Proxy;

const ADMIN: &str = "admin-secret";

/// An answer that is all about power and status.
const OFF_PROFILE: &str = "Crush your rivals and take control of the whole market. \
Show everyone that you are the boss, because status and wealth are what count.";
/// Words of it that must never reach a client when the profile rewrites or blocks it.
const TELLTALE: &str = "Crush your rivals";

/// Demands much care for others: the answer above is far outside it.
fn caring(action: &str, fallback: &str, stream_mode: &str) -> Value {
    json!({
        "values": {"benevolence": {"target": 0.95, "tolerance": 0.05},
                   "power": {"target": 0.0, "tolerance": 0.1}},
        "action": action, "fallback": fallback, "stream_mode": stream_mode
    })
}

fn config(mock: &MockUpstream, rewriter: &str) -> String {
    format!(
        r#"
[llm]
max_queue = 6
max_num_seqs = 4
max_tokens = 96

[rewriter]
candidates = 2
temperature = 0.7
max_length_ratio = 3.0
min_length_ratio = 0.1
{rewriter}

[enforce]
max_added_ms = 0
first_window_chars = 20
window_chars = 60

[[upstreams]]
name = "mock"
base_url = "{base}"

[[upstreams]]
name = "local"
kind = "local"

[[tenants]]
id = "acme"
api_key_sha256 = ["{acme}"]
upstreams = ["mock"]
self_manage_profile = true

[[tenants]]
id = "globex"
api_key_sha256 = ["{globex}"]
upstreams = ["mock"]

[[tenants]]
id = "home"
api_key_sha256 = ["{home}"]
upstreams = ["local"]
self_manage_profile = true
"#,
        base = mock.base_url(),
        acme = key_hash("sk-acme"),
        globex = key_hash("sk-globex"),
        home = key_hash("sk-home"),
    )
}

/// The whole-text rewriter (`mode = "whole"`, the design before sentence edits, still
/// available) with a shield that lets any well-formed candidate through, so rewrites are
/// deterministic enough to test the plumbing; the fallback proxy below uses an impossible
/// threshold instead. Both allow more rounds of candidates: the lenient shield stops at the
/// first round with a usable candidate, the impossible one tries them all. Sentence edits,
/// the default, are tested in `tests/edits.rs`.
const LENIENT: &str = "mode = \"whole\"\nmin_improvement = -1.0\nmin_integrity = 0.0\nrounds = 3";
const IMPOSSIBLE: &str = "mode = \"whole\"\nmin_integrity = 1.01\nrounds = 2";

fn start(mock: &MockUpstream, rewriter: &str) -> Proxy {
    Proxy::start(&config(mock, rewriter), &[("VISA_ADMIN_KEY", ADMIN)])
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(240))
        .build()
        .unwrap()
}

async fn set_profile(proxy: &Proxy, key: &str, profile: Value) {
    let r = client()
        .put(proxy.url("/v1/profile"))
        .bearer_auth(key)
        .json(&profile)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
}

/// `POST /v1/values/rewrite` as the admin; the answer's JSON.
async fn values_rewrite(proxy: &Proxy, body: Value) -> Value {
    client()
        .post(proxy.url("/v1/values/rewrite"))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn chat(proxy: &Proxy, key: &str, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = client()
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(key)
        .header("x-visa-metadata", "true")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    (status, headers, v)
}

/// Read a whole SSE stream: the text per choice, the chunks, and the finish reasons.
struct Streamed {
    headers: reqwest::header::HeaderMap,
    text: String,
    chunks: Vec<Value>,
    finish: Vec<String>,
    done: bool,
}

async fn stream(proxy: &Proxy, key: &str, body: Value) -> Streamed {
    let r = client()
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(key)
        .header("x-visa-metadata", "true")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let headers = r.headers().clone();
    let raw = r.text().await.unwrap();
    let mut out = Streamed {
        headers,
        text: String::new(),
        chunks: Vec::new(),
        finish: Vec::new(),
        done: false,
    };
    for line in raw.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            out.done = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        for c in v["choices"].as_array().unwrap_or(&vec![]) {
            if let Some(t) = c["delta"]["content"].as_str() {
                out.text.push_str(t);
            }
            if let Some(f) = c["finish_reason"].as_str() {
                out.finish.push(f.to_owned());
            }
        }
        out.chunks.push(v);
    }
    out
}

fn off_profile_stream_body() -> Value {
    // The sentence in small pieces, as an LLM would stream it.
    let pieces: Vec<String> = OFF_PROFILE
        .split_inclusive(' ')
        .map(str::to_owned)
        .collect();
    json!({"model": "m", "stream": true, "stream_options": {"include_usage": true},
           "messages": [{"role": "user", "content": "How do I succeed in business?"}],
           "mock": {"chunks": pieces, "delay_ms": 5}})
}

fn json_body(n: u32) -> Value {
    json!({"model": "m", "n": n,
           "messages": [{"role": "user", "content": "How do I succeed in business?"}],
           "mock": {"content": OFF_PROFILE}})
}

async fn metric(proxy: &Proxy, name: &str, labels: &str) -> f64 {
    let text = proxy.metrics(ADMIN).await;
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_upstream_answers_json_streams_and_limits() {
    let mock = MockUpstream::start().await;
    let proxy = start(&mock, LENIENT);
    let body = json!({"model": "anything", "temperature": 0, "max_tokens": 24,
                      "messages": [{"role": "user", "content": "Name a colour."}]});
    let (status, _, v) = chat(&proxy, "sk-home", body.clone()).await;
    assert_eq!(status, 200, "{v}");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.trim().is_empty(), "{v}");
    assert_eq!(v["model"], "smollm2-135m-instruct");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{v}");
    assert!(v.get("visa").is_none(), "no profile, no report: {v}");

    // Greedy decoding is repeatable; the stream carries the same text.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let s = stream(&proxy, "sk-home", sbody).await;
    assert_eq!(s.text, text);
    assert!(s.done);
    assert_eq!(s.finish.len(), 1);
    assert!(
        s.chunks.last().unwrap()["usage"]["completion_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );

    // n > 1.
    let mut nbody = body.clone();
    nbody["n"] = json!(2);
    let (_, _, v) = chat(&proxy, "sk-home", nbody).await;
    assert_eq!(v["choices"].as_array().unwrap().len(), 2, "{v}");

    // What the local model cannot do is a clear 400.
    let mut tools = body.clone();
    tools["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
    let (status, _, v) = chat(&proxy, "sk-home", tools).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["param"], "tools");

    // Over llm.max_queue (6): 429 at once, never an unbounded queue.
    let long = json!({"model": "x", "max_tokens": 200, "temperature": 0.9, "stream": true,
                      "messages": [{"role": "user", "content": "Tell a long story."}]});
    let mut held = Vec::new();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let r = client()
            .post(proxy.url("/v1/chat/completions"))
            .bearer_auth("sk-home")
            .json(&long)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        held.push(r);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
    let before = metric(&proxy, "visa_llm_cancelled", "").await;
    // Dropping the readers cancels their sequences in the engine.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&proxy, "visa_llm_cancelled", "").await < before + 1.0 {
        assert!(Instant::now() < deadline, "no generation was cancelled");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_answers_are_audited_rewritten_and_blocked() {
    let mock = MockUpstream::start().await;
    let proxy = start(&mock, LENIENT);

    // No profile: untouched, no report.
    let (_, h, v) = chat(&proxy, "sk-acme", json_body(1)).await;
    assert_eq!(v["choices"][0]["message"]["content"], OFF_PROFILE);
    assert!(h.get("x-visa-action").is_none());

    // Audit: untouched, scored.
    set_profile(&proxy, "sk-acme", caring("audit", "original", "window")).await;
    let (_, h, v) = chat(&proxy, "sk-acme", json_body(1)).await;
    assert_eq!(v["choices"][0]["message"]["content"], OFF_PROFILE);
    assert_eq!(h["x-visa-action"], "passed");
    assert_eq!(h["x-visa-profile-version"], "1");
    let before = &v["visa"]["choices"][0]["before"];
    assert_eq!(before["within_tolerance"], false, "{v}");
    assert!(before["values"]["power"].as_f64().unwrap() > 0.1, "{v}");

    // Rewrite, n = 2: every choice rewritten, scores before and after.
    set_profile(&proxy, "sk-acme", caring("rewrite", "original", "window")).await;
    let (status, h, v) = chat(&proxy, "sk-acme", json_body(2)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(h["x-visa-action"], "rewritten", "{v}");
    assert_eq!(h["x-visa-profile-version"], "2");
    for k in 0..2 {
        let content = v["choices"][k]["message"]["content"].as_str().unwrap();
        assert_ne!(content, OFF_PROFILE);
        assert!(!content.trim().is_empty());
        assert!(!content.to_lowercase().starts_with("here is"), "{content}");
        let report = &v["visa"]["choices"][k];
        assert_eq!(report["action"], "rewritten", "{v}");
        assert!(report["after"]["distance"].is_number(), "{v}");
        assert!(report["integrity"].is_number(), "{v}");
    }
    // Rounds: the search stops after the first round (of 2 candidates) holding one that the
    // (lenient) shield passes, i.e. one the screening did not reject.
    let r = values_rewrite(&proxy, json!({"text": OFF_PROFILE, "tenant_id": "acme"})).await;
    let c = r["candidates"].as_array().unwrap();
    let usable = |round: &[Value]| round.iter().any(|c| c.get("rejected").is_none());
    let rounds: Vec<&[Value]> = c.chunks(2).collect();
    assert!(
        c.len().is_multiple_of(2) && (2..=6).contains(&c.len()),
        "{r}"
    );
    if usable(rounds[rounds.len() - 1]) {
        assert_eq!(r["decision"], "rewritten", "{r}");
        assert!(rounds[..rounds.len() - 1].iter().all(|x| !usable(x)), "{r}");
    } else {
        assert_eq!(rounds.len(), 3, "{r}");
    }

    // The tenant's other clients see their own answers untouched: globex has no profile.
    let (_, h, v) = chat(&proxy, "sk-globex", json_body(1)).await;
    assert_eq!(v["choices"][0]["message"]["content"], OFF_PROFILE);
    assert!(h.get("x-visa-action").is_none());

    // Tool calls are never rewritten.
    let (_, h, v) = chat(
        &proxy,
        "sk-acme",
        json!({"model": "m", "messages": [{"role": "user", "content": "weather?"}],
               "mock": {"mode": "tool_call"}}),
    )
    .await;
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        "{\"city\":\"Paris\"}"
    );
    assert_eq!(h["x-visa-action"], "passed");

    // Block: a refusal with content_filter.
    set_profile(&proxy, "sk-acme", caring("block", "original", "window")).await;
    let (_, h, v) = chat(&proxy, "sk-acme", json_body(1)).await;
    assert_eq!(h["x-visa-action"], "blocked");
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
    assert!(v["choices"][0]["message"]["content"].is_null());
    assert!(v["choices"][0]["message"]["refusal"].is_string());

    assert!(metric(&proxy, "visa_enforce_actions_total", "action=\"rewritten\"").await >= 2.0);
    assert!(metric(&proxy, "visa_enforce_actions_total", "action=\"blocked\"").await >= 1.0);
    assert!(
        metric(
            &proxy,
            "visa_enforce_stage_seconds_count",
            "stage=\"rewrite\""
        )
        .await
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_never_leak_what_the_profile_rewrites_or_blocks() {
    let mock = MockUpstream::start().await;
    let proxy = start(&mock, LENIENT);

    // Audit passes the stream through unchanged and adds a trailing report.
    set_profile(&proxy, "sk-acme", caring("audit", "original", "window")).await;
    let s = stream(&proxy, "sk-acme", off_profile_stream_body()).await;
    assert_eq!(s.text, OFF_PROFILE);
    assert_eq!(s.headers["x-visa-stream-mode"], "audit");
    let report = s.chunks.iter().find(|c| c.get("visa").is_some()).unwrap();
    assert_eq!(report["choices"], json!([]));
    assert_eq!(
        report["visa"]["windows"][0]["before"]["within_tolerance"],
        false
    );

    // Window mode, rewrite, fallback block: whatever happens, the sentence never arrives.
    set_profile(&proxy, "sk-acme", caring("rewrite", "block", "window")).await;
    let s = stream(&proxy, "sk-acme", off_profile_stream_body()).await;
    assert!(!s.text.contains(TELLTALE), "leaked: {}", s.text);
    assert!(
        !s.text.contains("status and wealth are what count"),
        "leaked: {}",
        s.text
    );
    assert!(s.done);
    assert_eq!(s.headers["x-visa-stream-mode"], "window");
    let report = s.chunks.iter().find(|c| c.get("visa").is_some()).unwrap();
    let windows = report["visa"]["windows"].as_array().unwrap();
    assert!(windows.len() >= 2, "{report}");
    assert!(
        windows.iter().any(|w| w["action"] == "rewritten"),
        "{report}"
    );
    assert!(!s.text.trim().is_empty());
    // With metadata, each window's report rides on the chunk that releases its text.
    let live: Vec<&Value> = s
        .chunks
        .iter()
        .filter(|c| c.get("visa_window").is_some())
        .collect();
    assert_eq!(live.len(), windows.len(), "one live report per window");
    for (k, c) in live.iter().enumerate() {
        let w = &c["visa_window"];
        assert_eq!(w["window"], k + 1, "{c}");
        assert_eq!(w["action"], windows[k]["action"], "{c}");
        assert!(w["held_chars"].as_u64().unwrap() > 0, "{c}");
        if w["action"] != "blocked" {
            assert!(c["choices"][0]["delta"]["content"].is_string(), "{c}");
        }
    }
    // Usage reports what the client received, and comes after the report.
    let usage = s.chunks.last().unwrap();
    assert!(
        usage["usage"]["completion_tokens"].as_u64().unwrap() > 0,
        "{usage}"
    );

    // Block: the stream ends with content_filter before the sentence.
    set_profile(&proxy, "sk-acme", caring("block", "original", "window")).await;
    let s = stream(&proxy, "sk-acme", off_profile_stream_body()).await;
    assert!(!s.text.contains(TELLTALE), "leaked: {}", s.text);
    assert_eq!(s.finish, vec!["content_filter"]);
    assert!(s.done);

    // Buffer mode: the whole answer is checked, then streamed; the header knows the action.
    set_profile(&proxy, "sk-acme", caring("rewrite", "block", "buffer")).await;
    let s = stream(&proxy, "sk-acme", off_profile_stream_body()).await;
    assert!(!s.text.contains(TELLTALE), "leaked: {}", s.text);
    assert_eq!(s.headers["x-visa-stream-mode"], "buffer");
    assert_eq!(s.headers["x-visa-action"], "rewritten");
    assert!(s.done);
    assert!(metric(&proxy, "visa_enforce_held_back_chars_total", "").await > 0.0);
    assert!(
        metric(
            &proxy,
            "visa_enforce_stage_seconds_count",
            "stage=\"hold_back\""
        )
        .await
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shield_falls_back_and_disconnects_cancel_rewrites() {
    let mock = MockUpstream::start().await;
    let proxy = start(&mock, IMPOSSIBLE);

    // No candidate can pass: the original comes back marked fallback.
    set_profile(&proxy, "sk-acme", caring("rewrite", "original", "window")).await;
    let (_, h, v) = chat(&proxy, "sk-acme", json_body(1)).await;
    assert_eq!(h["x-visa-action"], "fallback", "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], OFF_PROFILE);
    let reason = v["visa"]["choices"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("meaning") || reason.contains("usable"),
        "{reason}"
    );

    // Fallback block: a refusal instead.
    set_profile(&proxy, "sk-acme", caring("rewrite", "block", "window")).await;
    let (_, h, v) = chat(&proxy, "sk-acme", json_body(1)).await;
    assert_eq!(h["x-visa-action"], "blocked");
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter");

    // /v1/values/rewrite shows the candidates and the decision.
    let r = values_rewrite(
        &proxy,
        json!({"text": OFF_PROFILE, "tenant_id": "acme", "context": "How do I succeed?"}),
    )
    .await;
    assert_eq!(r["decision"], "blocked", "{r}");
    // No candidate can pass, so both rounds of two ran.
    assert_eq!(r["candidates"].as_array().unwrap().len(), 4, "{r}");
    assert!(r["original"]["distance"].as_f64().unwrap() > 0.3, "{r}");
    for (body, key, status, param) in [
        (json!({"tenant_id": "acme"}), ADMIN, 422, "text"),
        (json!({"text": "hi"}), ADMIN, 422, "profile"),
        (
            json!({"text": "hi", "tenant_id": "acme"}),
            "sk-globex",
            403,
            "tenant_id",
        ),
        (
            json!({"text": "hi", "tenant_id": "nobody"}),
            ADMIN,
            404,
            "tenant_id",
        ),
        (
            json!({"text": "hi", "profile": {"action": "loud"}}),
            ADMIN,
            422,
            "profile.action",
        ),
    ] {
        let resp = client()
            .post(proxy.url("/v1/values/rewrite"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{body}");
        let e: Value = resp.json().await.unwrap();
        assert_eq!(e["error"]["param"], param, "{e}");
    }

    // A client that gives up during a rewrite cancels the generation.
    let before = metric(&proxy, "visa_llm_cancelled", "").await;
    let slow = client()
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth("sk-acme")
        .json(&json_body(1))
        .timeout(Duration::from_millis(1200))
        .send()
        .await;
    assert!(slow.is_err(), "the rewrite should take longer than 1.2 s");
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&proxy, "visa_llm_cancelled", "").await < before + 1.0 {
        assert!(Instant::now() < deadline, "the rewrite was not cancelled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The test config with no local model and the rewriter on the "gpu" upstream (the mock,
/// which answers "echo: <the user message>", i.e. the text to rewrite with a prefix).
fn remote_config(mock: &MockUpstream, rewriter: &str) -> String {
    config(mock, rewriter)
        .replace("[llm]\n", "[llm]\nenabled = false\n")
        .replace(
            "candidates = 2",
            "candidates = 1\nbackend = \"remote\"\nupstream = \"gpu\"\nmodel = \"visa-rewriter\"",
        )
        .replace(
            "[[upstreams]]\nname = \"local\"\nkind = \"local\"",
            &format!(
                "[[upstreams]]\nname = \"gpu\"\nbase_url = \"{}\"",
                mock.base_url()
            ),
        )
        .replace("upstreams = [\"local\"]", "upstreams = [\"gpu\"]")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_rewriter_is_one_config_block_away() {
    let mock = MockUpstream::start().await;
    // No local model at all: the rewriter is the "gpu" upstream (here the mock, which answers
    // "echo: <the user message>", i.e. the text to rewrite with a prefix).
    let text = remote_config(&mock, LENIENT);
    let proxy = Proxy::start(&text, &[("VISA_ADMIN_KEY", ADMIN)]);
    set_profile(&proxy, "sk-acme", caring("rewrite", "original", "window")).await;
    let (_, h, v) = chat(&proxy, "sk-acme", json_body(1)).await;
    assert_eq!(h["x-visa-action"], "rewritten", "{v}");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        format!("echo: {OFF_PROFILE}")
    );
    let asked = mock.state.last_request().unwrap().body;
    assert_eq!(asked["model"], "visa-rewriter");
    assert_eq!(asked["messages"][1]["content"], OFF_PROFILE);
    let system = asked["messages"][0]["content"].as_str().unwrap();
    assert!(system.contains("talk much more about care"), "{system}");
    assert!(system.contains("How do I succeed in business?"), "{system}");
}

/// Rounds of candidates stop at `rounds`, or earlier once `round_budget_ms` is spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_of_candidates_stop_at_the_limit_or_the_time_budget() {
    let mock = MockUpstream::start().await;
    for (budget, expected) in [(0, 3), (1, 1)] {
        let rewriter =
            format!("{IMPOSSIBLE}\nround_budget_ms = {budget}").replace("rounds = 2", "rounds = 3");
        let proxy = Proxy::start(
            &remote_config(&mock, &rewriter),
            &[("VISA_ADMIN_KEY", ADMIN)],
        );
        let r = values_rewrite(
            &proxy,
            json!({"text": OFF_PROFILE, "profile": caring("rewrite", "original", "window")}),
        )
        .await;
        assert_eq!(r["decision"], "fallback", "{r}");
        let c = r["candidates"].as_array().unwrap();
        assert_eq!(c.len(), expected, "budget {budget} ms: {r}");
        assert!(
            c.iter()
                .all(|c| c["text"] == format!("echo: {OFF_PROFILE}")),
            "{r}"
        );
    }
}
