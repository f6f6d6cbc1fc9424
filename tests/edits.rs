//! Sentence-level enforcement through the running proxy with the real encoder, detector, value
//! gate and calibration: one value-laden sentence of a long answer edited while the others come
//! back byte-identical, a sentence inserted for a missing value only when insertions are on, a
//! drop only when no fact is lost, the time budget cutting a slow remote rewriter, the edit list in the metadata, stream
//! windows edited without leaking what they replace, and a steering profile changing what the
//! upstream is asked.
//!
//! Profiles are set from the detector's own scores of the test sentences (a tolerance between
//! the value-laden sentence's score and the others'), so the tests check the editor's behaviour
//! and not one detector's numbers; each test first asserts that precondition.

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

/// A long, mostly neutral answer with one power-laden sentence in the middle.
const NEUTRAL_1: &str =
    "To prepare for the quarterly review, collect the sales figures for each region.";
const NEUTRAL_2: &str =
    "Put them in one spreadsheet and check that the totals match the accounting report.";
const NEUTRAL_3: &str = "Send the spreadsheet to the finance team by Thursday.";
const POWER: &str =
    "Show everyone that you are the boss, because status and wealth are what count.";
/// What must not come back once the power sentence is edited.
const POWER_CLAUSE: &str = "because status and wealth are what count";

fn long_answer() -> String {
    format!("{NEUTRAL_1} {NEUTRAL_2}\n\n{POWER} {NEUTRAL_3}")
}

/// The test proxy: no local model; `rewriter` is the `[rewriter]` section's body.
fn config(mock: &MockUpstream, rewriter: &str, extra: &str) -> String {
    let rewriter = if rewriter.is_empty() {
        "edit_model_candidates = 0"
    } else {
        rewriter
    };
    format!(
        r#"
[llm]
enabled = false

[rewriter]
{rewriter}

[enforce]
first_window_chars = 20
window_chars = 20

[[upstreams]]
name = "mock"
base_url = "{base}"

[[tenants]]
id = "acme"
api_key_sha256 = ["{acme}"]
upstreams = ["mock"]
self_manage_profile = true
{extra}
"#,
        base = mock.base_url(),
        acme = key_hash("sk-acme"),
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(240))
        .build()
        .unwrap()
}

async fn set_profile(proxy: &Proxy, profile: Value) {
    let r = client()
        .put(proxy.url("/v1/profile"))
        .bearer_auth("sk-acme")
        .json(&profile)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
}

/// Per sentence of `texts`, the detector's calibrated score for `value`.
async fn scores(proxy: &Proxy, texts: &[&str], value: &str) -> Vec<f64> {
    let r: Value = client()
        .post(proxy.url("/v1/values/detect"))
        .bearer_auth(ADMIN)
        .json(&json!({"texts": texts}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["values"][value].as_f64().unwrap())
        .collect()
}

/// A profile that keeps `value` low, with its band's upper edge halfway between the score of
/// the sentence that carries it and the highest score of the others.
async fn keep_low(proxy: &Proxy, value: &str, laden: &str, others: &[&str]) -> Value {
    let mut all = vec![laden];
    all.extend_from_slice(others);
    let s = scores(proxy, &all, value).await;
    let rest = s[1..].iter().copied().fold(0.0, f64::max);
    assert!(
        s[0] > rest + 0.1,
        "precondition: {laden:?} scores {value} {:.3}, the others at most {rest:.3}",
        s[0]
    );
    let edge = (s[0] + rest) / 2.0;
    json!({"values": {value: {"target": 0.0, "tolerance": edge}}, "action": "rewrite"})
}

async fn chat(proxy: &Proxy, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = client()
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth("sk-acme")
        .header("x-visa-metadata", "true")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

fn answer_body(content: &str) -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "How do I prepare the review?"}],
           "mock": {"content": content}})
}

/// `text` with each edit of the report applied to the original: what the edit list claims.
fn apply(original: &str, edits: &[Value]) -> String {
    let mut out = String::new();
    let mut at = 0;
    let mut sorted: Vec<&Value> = edits.iter().collect();
    sorted.sort_by_key(|e| e["start"].as_u64().unwrap());
    for e in sorted {
        let (start, end) = (
            e["start"].as_u64().unwrap() as usize,
            e["end"].as_u64().unwrap() as usize,
        );
        out.push_str(&original[at..start]);
        match e["kind"].as_str().unwrap() {
            "rewritten" => out.push_str(e["text"].as_str().unwrap()),
            "inserted" => {
                out.push_str(e["separator"].as_str().unwrap());
                out.push_str(e["text"].as_str().unwrap());
            }
            _ => {}
        }
        at = end;
    }
    out.push_str(&original[at..]);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sentence_is_edited_and_the_others_come_back_byte_identical() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(&config(&mock, "", ""), &[("VISA_ADMIN_KEY", ADMIN)]);
    let profile = keep_low(&proxy, "power", POWER, &[NEUTRAL_1, NEUTRAL_2, NEUTRAL_3]).await;
    set_profile(&proxy, profile).await;
    let original = long_answer();
    let (status, h, v) = chat(&proxy, answer_body(&original)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(h["x-visa-action"], "rewritten", "{v}");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    let report = &v["visa"]["choices"][0];
    let edits = report["edits"].as_array().unwrap();
    assert!(!edits.is_empty(), "{report}");
    // Every edit is about the power sentence, and the text is the original with exactly those
    // edits applied: everything else is byte-identical, the layout included.
    for e in edits {
        assert_eq!(e["values"], json!(["power"]), "{e}");
        assert!(
            ["rewritten", "dropped"].contains(&e["kind"].as_str().unwrap()),
            "{e}"
        );
        assert!(
            e["original"].as_str().unwrap().contains("Show everyone"),
            "{e}"
        );
        assert!(!e["reason"].as_str().unwrap().is_empty(), "{e}");
    }
    assert_eq!(text, apply(&original, edits), "{report}");
    for s in [NEUTRAL_1, NEUTRAL_2, NEUTRAL_3] {
        assert!(text.contains(s), "{s:?} changed: {text}");
    }
    assert!(
        text.starts_with(&format!("{NEUTRAL_1} {NEUTRAL_2}\n\n")),
        "{text}"
    );
    assert!(!text.contains(POWER_CLAUSE), "{text}");
    // The scores moved toward the target, and the budget and the time spent are reported.
    let (before, after) = (
        report["before"]["distance"].as_f64().unwrap(),
        report["after"]["distance"].as_f64().unwrap(),
    );
    assert!(after < before, "{report}");
    assert_eq!(v["visa"]["budget_ms"], 10_000, "{v}");
    assert!(report["spent_ms"].as_f64().unwrap() > 0.0, "{report}");
    // The edit is counted in /metrics.
    let metrics = proxy.metrics(ADMIN).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("visa_enforce_edits_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(
        metrics.contains("visa_enforce_added_seconds_count{kind=\"json\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_value_gets_one_inserted_sentence_only_when_insertions_are_on() {
    let mock = MockUpstream::start().await;
    let original = format!("{NEUTRAL_1} {NEUTRAL_2} {NEUTRAL_3}");
    // Ask for clearly more care than the answer shows.
    let ask = |now: f64| {
        let target = (now + 0.45).min(1.0);
        json!({"values": {"benevolence": {"target": target, "tolerance": 0.1}}, "action": "rewrite"})
    };

    // By default nothing is inserted: the answer comes back as it was, and the site says why.
    let off = Proxy::start(&config(&mock, "", ""), &[("VISA_ADMIN_KEY", ADMIN)]);
    let now = scores(&off, &[&original], "benevolence").await[0];
    set_profile(&off, ask(now)).await;
    let (_, h, v) = chat(&off, answer_body(&original)).await;
    assert_eq!(h["x-visa-action"], "fallback", "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], original, "{v}");
    let report = &v["visa"]["choices"][0];
    assert_eq!(report["candidates"], 0, "{v}");
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .contains("insertions are off"),
        "{v}"
    );
    drop(off);

    let proxy = Proxy::start(
        &config(&mock, "edit_model_candidates = 0\ninsert = true", ""),
        &[("VISA_ADMIN_KEY", ADMIN)],
    );
    set_profile(&proxy, ask(now)).await;
    let (_, h, v) = chat(&proxy, answer_body(&original)).await;
    assert_eq!(h["x-visa-action"], "rewritten", "{v}");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    let edits = v["visa"]["choices"][0]["edits"].as_array().unwrap();
    assert_eq!(edits.len(), 1, "{v}");
    let e = &edits[0];
    assert_eq!(e["kind"], "inserted", "{e}");
    assert_eq!(e["values"], json!(["benevolence"]), "{e}");
    let inserted = e["text"].as_str().unwrap();
    // One sentence, no number, name or negation; the original sentences untouched.
    assert!(!inserted.chars().any(|c| c.is_ascii_digit()), "{inserted}");
    assert!(inserted.ends_with('.'), "{inserted}");
    assert_eq!(text, apply(&original, edits));
    for s in [NEUTRAL_1, NEUTRAL_2, NEUTRAL_3] {
        assert!(text.contains(s), "{text}");
    }
    assert!(
        e["after"]["benevolence"].as_f64().unwrap() > e["before"]["benevolence"].as_f64().unwrap(),
        "{e}"
    );
    // It follows a sentence, and the audit says how close in meaning it is to that sentence.
    if e.get("sentence").is_some() {
        let sim = e["similarity"].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&sim), "{e}");
    }
}

/// Power-laden sentences with no clause to cut: with no model candidates they can only go,
/// and the second only when its facts (a number, a name) are elsewhere in the answer.
const BOSS: &str = "Gain power over everyone around you.";
const BOSS_FACT: &str = "Control the 12 stores in Leeds with absolute authority.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentence_is_dropped_only_when_no_fact_is_lost() {
    let mock = MockUpstream::start().await;
    // `drop = "facts"`: a sentence may go when its facts are elsewhere (the default, `covered`,
    // also asks that another sentence say the same; below).
    let proxy = Proxy::start(
        &config(&mock, "edit_model_candidates = 0\ndrop = \"facts\"", ""),
        &[("VISA_ADMIN_KEY", ADMIN)],
    );
    let others = [NEUTRAL_1, NEUTRAL_2, NEUTRAL_3];
    let profile = keep_low(&proxy, "power", BOSS, &others).await;
    let with_fact = scores(&proxy, &[BOSS_FACT], "power").await[0];
    let edge = profile["values"]["power"]["tolerance"].as_f64().unwrap();
    assert!(
        with_fact > edge,
        "precondition: {BOSS_FACT:?} scores {with_fact:.3} <= {edge:.3}"
    );
    set_profile(&proxy, profile).await;

    // No fact in it: dropped, with the space before the next sentence.
    let original = format!("{NEUTRAL_1} {BOSS} {NEUTRAL_3}");
    let (_, h, v) = chat(&proxy, answer_body(&original)).await;
    assert_eq!(h["x-visa-action"], "rewritten", "{v}");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        format!("{NEUTRAL_1} {NEUTRAL_3}"),
        "{v}"
    );
    let e = &v["visa"]["choices"][0]["edits"][0];
    assert_eq!(
        (e["kind"].as_str(), e["source"].as_str()),
        (Some("dropped"), Some("drop")),
        "{e}"
    );

    // A number only it states: it stays, and without another edit the original comes back.
    let original = format!("{NEUTRAL_1} {BOSS_FACT} {NEUTRAL_3}");
    let (_, h, v) = chat(&proxy, answer_body(&original)).await;
    assert_eq!(h["x-visa-action"], "fallback", "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], original);
    let report = &v["visa"]["choices"][0];
    assert!(
        report["edits"].as_array().is_none_or(Vec::is_empty),
        "{report}"
    );
    // The same number and name elsewhere in the answer: nothing is lost by dropping it.
    let original = format!("{NEUTRAL_1} {BOSS_FACT} The 12 stores in Leeds open at nine.");
    let (_, h, v) = chat(&proxy, answer_body(&original)).await;
    assert_eq!(h["x-visa-action"], "rewritten", "{v}");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        format!("{NEUTRAL_1} The 12 stores in Leeds open at nine.")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_only_a_sentence_another_one_repeats_is_dropped() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(&config(&mock, "", ""), &[("VISA_ADMIN_KEY", ADMIN)]);
    let profile = keep_low(&proxy, "power", BOSS, &[NEUTRAL_1, NEUTRAL_3]).await;
    set_profile(&proxy, profile).await;
    // Said once: it says something the rest does not, so it stays (nothing else can be done).
    let once = format!("{NEUTRAL_1} {BOSS} {NEUTRAL_3}");
    let (_, h, v) = chat(&proxy, answer_body(&once)).await;
    assert_eq!(h["x-visa-action"], "fallback", "{v}");
    let sites = &v["visa"]["choices"][0];
    assert!(sites["reason"].as_str().is_some(), "{sites}");
    // Said twice: one repeat goes, the other stays (the value is lower only where it went, so
    // the whole answer is still outside the band, but the edit is what the shield judges).
    let twice = format!("{NEUTRAL_1} {BOSS} {NEUTRAL_3} {BOSS}");
    let r: Value = client()
        .post(proxy.url("/v1/values/rewrite"))
        .bearer_auth(ADMIN)
        .json(&json!({"text": twice, "tenant_id": "acme"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let drops: Vec<&Value> = r["sites"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["candidates"].as_array().unwrap().iter())
        .filter(|c| c["kind"] == "dropped")
        .collect();
    assert!(drops.iter().any(|c| c["passed"] == true), "{r}");
    assert!(
        drops.iter().any(|c| c["passed"] == false
            && c["note"]
                .as_str()
                .unwrap_or("")
                .contains("no other sentence")),
        "the last copy stays: {r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_cuts_a_slow_remote_rewriter_and_the_fallback_comes_in_time() {
    let mock = MockUpstream::start().await;
    // The remote rewriter is the mock, answering requests for "visa-rewriter" after 30 s.
    *mock.state.slow_model.lock().unwrap() = Some(("visa-rewriter".into(), 30_000));
    let rewriter = "edit_model_candidates = 1\nbackend = \"remote\"\nupstream = \"gpu\"\nmodel = \"visa-rewriter\"";
    let gpu = format!(
        "[[upstreams]]\nname = \"gpu\"\nbase_url = \"{}\"",
        mock.base_url()
    );
    let text = config(&mock, rewriter, "").replace("[[tenants]]", &format!("{gpu}\n\n[[tenants]]"));
    let proxy = Proxy::start(&text, &[("VISA_ADMIN_KEY", ADMIN)]);
    let mut profile = keep_low(&proxy, "power", BOSS_FACT, &[NEUTRAL_1]).await;
    profile["max_added_ms"] = json!(1500);
    set_profile(&proxy, profile).await;
    // Only a model rewrite could help (the sentence holds a fact and has no clause to cut).
    let original = format!("{NEUTRAL_1} {BOSS_FACT}");
    let started = Instant::now();
    let (status, h, v) = chat(&proxy, answer_body(&original)).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{v}");
    assert_eq!(h["x-visa-action"], "fallback", "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], original);
    assert!(took < Duration::from_millis(4000), "took {took:?}: {v}");
    let report = &v["visa"]["choices"][0];
    assert_eq!(report["budget_exhausted"], true, "{report}");
    assert_eq!(v["visa"]["budget_ms"], 1500, "{v}");
    // The rewriter was asked (and given up on).
    assert!(
        mock.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.body["model"] == "visa-rewriter"),
        "the remote rewriter was never asked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_windows_are_edited_without_leaking_what_they_replace() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(
        &config(&mock, "edit_model_candidates = 0\ndrop = \"facts\"", ""),
        &[("VISA_ADMIN_KEY", ADMIN)],
    );
    let profile = keep_low(&proxy, "power", BOSS, &[NEUTRAL_1, NEUTRAL_3]).await;
    set_profile(&proxy, profile).await;
    // Two power-laden sentences, each in a window of its own.
    let answer = format!("{NEUTRAL_1} {BOSS} {NEUTRAL_3} {BOSS}");
    let pieces: Vec<String> = answer.split_inclusive(' ').map(str::to_owned).collect();
    let r = client()
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth("sk-acme")
        .header("x-visa-metadata", "true")
        .json(
            &json!({"model": "m", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "How?"}],
                      "mock": {"chunks": pieces, "delay_ms": 2}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-visa-stream-mode"], "window");
    let raw = r.text().await.unwrap();
    let mut text = String::new();
    let mut live = Vec::new();
    for line in raw.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        for c in v["choices"].as_array().unwrap_or(&vec![]) {
            if let Some(t) = c["delta"]["content"].as_str() {
                text.push_str(t);
            }
        }
        if v.get("visa_window").is_some() {
            live.push(v["visa_window"].clone());
        }
    }
    assert!(!raw.contains("Be the boss"), "leaked: {raw}");
    assert!(
        text.contains(NEUTRAL_1) && text.contains(NEUTRAL_3),
        "{text}"
    );
    let edited: Vec<&Value> = live.iter().filter(|w| w["action"] == "rewritten").collect();
    assert_eq!(edited.len(), 2, "{live:?}");
    for w in edited {
        let e = &w["edits"][0];
        assert_eq!(e["original"], BOSS, "{w}");
        assert_eq!(e["kind"], "dropped", "{w}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steering_profile_adds_its_system_message_to_the_upstream_request() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(&config(&mock, "", ""), &[("VISA_ADMIN_KEY", ADMIN)]);
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "How do I win?"}]});
    let profile = json!({"values": {"benevolence": {"target": 0.9}, "power": {"target": 0.1}},
                         "action": "audit", "steer": true});
    set_profile(&proxy, profile.clone()).await;
    let (status, _, v) = chat(&proxy, body.clone()).await;
    assert_eq!(status, 200, "{v}");
    let asked = mock.state.last_request().unwrap().body;
    let messages = asked["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{asked}");
    assert_eq!(messages[0]["role"], "system");
    assert_eq!(
        messages[0]["content"],
        "In your answer, show care, kindness and helping the people close to you; avoid appeals to status, control and wealth."
    );
    assert_eq!(messages[1]["content"], "How do I win?");
    // The client's answer is about its own message (the mock echoes the last user message).
    assert_eq!(v["choices"][0]["message"]["content"], "echo: How do I win?");
    // Off by default, and off again when the profile says so.
    let mut off = profile;
    off["steer"] = json!(false);
    set_profile(&proxy, off).await;
    chat(&proxy, body).await;
    let asked = mock.state.last_request().unwrap().body;
    assert_eq!(asked["messages"].as_array().unwrap().len(), 1, "{asked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_of_a_blocked_or_rewritten_answer_leaks_through_other_fields() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(&config(&mock, "", ""), &[("VISA_ADMIN_KEY", ADMIN)]);
    let mut profile = keep_low(&proxy, "power", POWER, &[NEUTRAL_1, NEUTRAL_2, NEUTRAL_3]).await;
    // Fields that spell the upstream's text: token log-probabilities, reasoning, a transcript.
    let carrying = |content: Value| {
        json!({"model": "m", "messages": [{"role": "user", "content": "How?"}],
               "mock": {"content_value": content,
                        "choice_extra": {"logprobs": {"content": [{"token": "Show", "logprob": -0.1}]}},
                        "message_extra": {"reasoning_content": "Show everyone that you are the boss",
                                          "reasoning": "status and wealth",
                                          "audio": {"id": "a", "transcript": "Show everyone"},
                                          "tool_calls": [{"id": "c", "type": "function",
                                                          "function": {"name": "f", "arguments": "{}"}}]}}})
    };
    profile["action"] = json!("block");
    set_profile(&proxy, profile.clone()).await;
    let original = long_answer();
    for content in [json!(original), json!([{"type": "text", "text": original}])] {
        let (_, h, v) = chat(&proxy, carrying(content.clone())).await;
        assert_eq!(h["x-visa-action"], "blocked", "{content}: {v}");
        let choice = &v["choices"][0];
        let body = choice.to_string();
        assert!(
            !body.contains("Show") && !body.contains("status and wealth"),
            "leaked: {body}"
        );
        assert_eq!(choice["finish_reason"], "content_filter");
        assert!(choice["message"]["content"].is_null() && choice["message"]["refusal"].is_string());
    }
    // A content the proxy cannot read as text is not passed as checked.
    let (_, h, v) = chat(&proxy, carrying(json!({"weird": original}))).await;
    assert_eq!(h["x-visa-action"], "blocked", "{v}");
    assert!(!v["choices"][0].to_string().contains("Show"), "{v}");
    // Under audit it passes (audit never changes an answer).
    profile["action"] = json!("audit");
    set_profile(&proxy, profile.clone()).await;
    let (_, h, v) = chat(&proxy, carrying(json!({"weird": original}))).await;
    assert_eq!(h["x-visa-action"], "passed", "{v}");
    // Rewritten: the edited text, none of the original's other fields, usage counting what
    // the client receives.
    profile["action"] = json!("rewrite");
    set_profile(&proxy, profile).await;
    let (_, h, v) = chat(&proxy, carrying(json!(original))).await;
    assert_eq!(h["x-visa-action"], "rewritten", "{v}");
    let choice = &v["choices"][0];
    assert!(
        choice.get("logprobs").is_none() && choice["message"].get("reasoning_content").is_none(),
        "{choice}"
    );
    assert!(choice["message"].get("audio").is_none(), "{choice}");
    let text = choice["message"]["content"].as_str().unwrap();
    assert!(!text.contains(POWER_CLAUSE), "{text}");
    let expected =
        (7.0 * text.chars().count() as f64 / original.chars().count() as f64).round() as u64;
    assert_eq!(v["usage"]["completion_tokens"], expected, "{v}");
    assert_eq!(v["usage"]["total_tokens"], 5 + expected, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_choice_ends_on_its_own_and_the_usage_still_comes() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(&config(&mock, "", ""), &[("VISA_ADMIN_KEY", ADMIN)]);
    let mut profile = keep_low(&proxy, "power", BOSS, &[NEUTRAL_1, NEUTRAL_3]).await;
    profile["action"] = json!("block");
    set_profile(&proxy, profile).await;
    let words = |t: &str| -> Vec<String> { t.split_inclusive(' ').map(str::to_owned).collect() };
    // Choice 0 turns off-profile in its second sentence; choice 1 stays neutral.
    let first = words(&format!("{NEUTRAL_1} {BOSS} {NEUTRAL_3}"));
    let second = words(&format!("{NEUTRAL_3} {NEUTRAL_1}"));
    let r = client()
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth("sk-acme")
        .json(
            &json!({"model": "m", "stream": true, "n": 2, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "How?"}],
                      "mock": {"chunks": first, "second_chunks": second}}),
        )
        .send()
        .await
        .unwrap();
    let raw = r.text().await.unwrap();
    let mut text = [String::new(), String::new()];
    let mut finish: Vec<(u64, String)> = Vec::new();
    let mut usage = None;
    for line in raw.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        for c in v["choices"].as_array().unwrap_or(&vec![]) {
            let i = c["index"].as_u64().unwrap();
            if let Some(t) = c["delta"]["content"].as_str() {
                text[i as usize].push_str(t);
            }
            if let Some(f) = c["finish_reason"].as_str() {
                finish.push((i, f.to_owned()));
            }
        }
        if !v["usage"].is_null() {
            usage = Some(v["usage"].clone());
        }
    }
    assert!(!raw.contains("Gain power"), "leaked: {raw}");
    assert!(
        !text[0].contains(NEUTRAL_3),
        "choice 0 went on after its block: {}",
        text[0]
    );
    assert_eq!(text[1], format!("{NEUTRAL_3} {NEUTRAL_1}"), "{raw}");
    finish.sort();
    assert_eq!(
        finish,
        vec![(0, "content_filter".into()), (1, "stop".into())],
        "{raw}"
    );
    assert!(usage.is_some(), "no usage chunk: {raw}");
    assert!(raw.trim_end().ends_with("data: [DONE]"), "{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_too_long_to_check_is_never_passed_as_checked() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(
        &config(&mock, "", "\n[models]\nmax_text_chars = 200\n"),
        &[("VISA_ADMIN_KEY", ADMIN)],
    );
    let long = long_answer();
    assert!(long.chars().count() > 200);
    let profile = json!({"values": {"power": {"target": 0.1}}, "action": "rewrite"});
    set_profile(&proxy, profile.clone()).await;
    let (status, _, v) = chat(&proxy, answer_body(&long)).await;
    assert_eq!(status, 502, "{v}");
    assert_eq!(v["error"]["code"], "upstream_answer_too_large", "{v}");
    // Audit never fails a request: the answer passes as it came.
    let mut audit = profile;
    audit["action"] = json!("audit");
    set_profile(&proxy, audit).await;
    let (status, h, v) = chat(&proxy, answer_body(&long)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(h["x-visa-action"], "passed", "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], long);
}

/// One stream chunk of the mock's `events` for choice `index`.
fn delta_chunk(index: u64, delta: Value) -> Value {
    json!({"id": "chatcmpl-ev", "object": "chat.completion.chunk", "created": 1,
           "model": "m", "service_tier": "default",
           "choices": [{"index": index, "delta": delta, "finish_reason": null}]})
}

/// Content chunks, one a word, each with the log-probability of its one token.
fn content_chunks(index: u64, text: &str) -> Vec<Value> {
    text.split_inclusive(' ')
        .map(|w| {
            let mut c = delta_chunk(index, json!({"content": w}));
            c["choices"][0]["logprobs"] =
                json!({"content": [{"token": w, "logprob": -0.5, "top_logprobs": []}], "refusal": null});
            c["choices"][0]["content_filter_results"] = json!({"hate": {"filtered": false}});
            c
        })
        .collect()
}

fn field_chunks(index: u64, field: &str, text: &str) -> Vec<Value> {
    text.split_inclusive(' ')
        .map(|w| delta_chunk(index, json!({ field: w })))
        .collect()
}

fn finish_chunk(index: u64) -> Value {
    let mut c = delta_chunk(index, json!({}));
    c["choices"][0]["finish_reason"] = json!("stop");
    c
}

/// The data events of a stream, in order.
fn data_events(raw: &str) -> Vec<Value> {
    raw.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

/// Per choice, each field of its deltas joined, and the finish reasons, from a stream.
struct Seen {
    text: std::collections::BTreeMap<(u64, String), String>,
    tokens: std::collections::BTreeMap<u64, String>,
    finish: Vec<(u64, String)>,
    /// (choice, the first key of each delta) in order.
    order: Vec<(u64, String)>,
    usage: Option<Value>,
}

fn seen(raw: &str) -> Seen {
    let mut s = Seen {
        text: Default::default(),
        tokens: Default::default(),
        finish: Vec::new(),
        order: Vec::new(),
        usage: None,
    };
    for v in data_events(raw) {
        for c in v["choices"].as_array().unwrap_or(&vec![]) {
            let i = c["index"].as_u64().unwrap();
            for (k, d) in c["delta"].as_object().unwrap() {
                s.order.push((i, k.clone()));
                let piece = match d {
                    Value::String(t) => t.clone(),
                    other => other.to_string(),
                };
                s.text.entry((i, k.clone())).or_default().push_str(&piece);
            }
            for t in c["logprobs"]["content"].as_array().into_iter().flatten() {
                s.tokens
                    .entry(i)
                    .or_default()
                    .push_str(t["token"].as_str().unwrap());
            }
            if let Some(f) = c["finish_reason"].as_str() {
                s.finish.push((i, f.to_owned()));
            }
        }
        if !v["usage"].is_null() {
            s.usage = Some(v["usage"].clone());
        }
    }
    s.finish.sort();
    s
}

async fn stream_raw(proxy: &Proxy, n: u64, mock: Value) -> (reqwest::header::HeaderMap, String) {
    let r = client()
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth("sk-acme")
        .json(&json!({"model": "m", "stream": true, "n": n,
                      "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "How?"}], "mock": mock}))
        .send()
        .await
        .unwrap();
    let headers = r.headers().clone();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    (headers, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_sends_nothing_unchecked_in_any_field() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(&config(&mock, "", ""), &[("VISA_ADMIN_KEY", ADMIN)]);
    let mut profile = keep_low(&proxy, "power", BOSS, &[NEUTRAL_1, NEUTRAL_3]).await;
    profile["action"] = json!("block");
    set_profile(&proxy, profile).await;
    let mut events = Vec::new();
    for i in 0..4 {
        events.push(delta_chunk(i, json!({"role": "assistant"})));
    }
    // Choice 0: reasoning that turns off-profile, content with token log-probabilities that
    // does too in its second window, a tool call between the two.
    events.extend(field_chunks(
        0,
        "reasoning_content",
        &format!("{NEUTRAL_3} {BOSS}"),
    ));
    events.extend(content_chunks(0, &format!("{NEUTRAL_1} ")));
    events.push(delta_chunk(0, json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                       "function": {"name": "f", "arguments": "{}"}}]})));
    events.extend(content_chunks(0, BOSS));
    // Choice 1: a field the proxy does not know, then an off-profile refusal.
    events.push(delta_chunk(1, json!({"annotations": BOSS})));
    events.extend(field_chunks(1, "refusal", BOSS));
    // Choices 2 and 3: audio, with a neutral and an off-profile transcript.
    events.push(delta_chunk(
        2,
        json!({"audio": {"id": "a2", "data": "QUFB", "transcript": NEUTRAL_3}}),
    ));
    events.push(delta_chunk(
        3,
        json!({"audio": {"id": "a3", "data": "QkJC", "transcript": BOSS}}),
    ));
    // A chunk of an unknown shape.
    events.push(json!({"text": BOSS}));
    for i in 0..4 {
        events.push(finish_chunk(i));
    }
    events.push(
        json!({"id": "chatcmpl-ev", "object": "chat.completion.chunk", "created": 1,
                       "model": "m", "choices": [],
                       "usage": {"prompt_tokens": 5, "completion_tokens": 40, "total_tokens": 45}}),
    );
    let (_, raw) = stream_raw(&proxy, 4, json!({"events": events})).await;
    for leak in ["Gain", "power", "everyone", "QkJC"] {
        assert!(!raw.contains(leak), "leaked {leak:?}: {raw}");
    }
    let s = seen(&raw);
    let text = |i: u64, k: &str| s.text.get(&(i, k.to_owned())).cloned().unwrap_or_default();
    assert_eq!(
        text(0, "reasoning_content"),
        format!("{NEUTRAL_3} "),
        "{raw}"
    );
    assert_eq!(text(0, "content"), format!("{NEUTRAL_1} "), "{raw}");
    // The tokens that went out spell exactly the text that went out.
    assert_eq!(
        s.tokens.get(&0).cloned().unwrap_or_default(),
        text(0, "content")
    );
    let pos = |i: u64, k: &str| s.order.iter().position(|o| *o == (i, k.to_owned()));
    assert!(
        pos(0, "tool_calls").unwrap() > pos(0, "content").unwrap(),
        "{raw}"
    );
    assert!(
        text(1, "refusal").is_empty() && text(1, "annotations").is_empty(),
        "{raw}"
    );
    assert!(text(2, "audio").contains("QUFB"), "{raw}");
    assert_eq!(
        s.finish,
        vec![
            (0, "content_filter".into()),
            (1, "content_filter".into()),
            (2, "stop".into()),
            (3, "content_filter".into())
        ],
        "{raw}"
    );
    assert!(s.usage.is_some(), "{raw}");
    // The proxy's chunks keep the upstream's fields (here its service tier) and each
    // choice's own (content filter results).
    let built = data_events(&raw)
        .into_iter()
        .find(|v| v["choices"][0]["delta"]["content"].is_string())
        .unwrap();
    assert_eq!(built["service_tier"], "default", "{built}");
    assert!(
        built["choices"][0]["content_filter_results"].is_object(),
        "{built}"
    );
    assert!(raw.trim_end().ends_with("data: [DONE]"), "{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffered_stream_keeps_the_upstreams_event_order() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(&config(&mock, "", ""), &[("VISA_ADMIN_KEY", ADMIN)]);
    let mut profile = keep_low(&proxy, "power", BOSS, &[NEUTRAL_1, NEUTRAL_3]).await;
    profile["action"] = json!("block");
    profile["stream_mode"] = json!("buffer");
    set_profile(&proxy, profile).await;
    let mut events = vec![
        json!({"id": "chatcmpl-ev", "object": "chat.completion.chunk", "created": 1,
                                 "model": "m", "choices": [], "prompt_filter_results": [{"prompt_index": 0}]}),
    ];
    events.push(delta_chunk(0, json!({"role": "assistant"})));
    events.extend(content_chunks(0, &format!("{NEUTRAL_1} ")));
    events.push(delta_chunk(0, json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                       "function": {"name": "f", "arguments": "{}"}}]})));
    events.extend(content_chunks(0, NEUTRAL_3));
    events.extend(field_chunks(1, "reasoning_content", BOSS));
    events.extend(content_chunks(1, NEUTRAL_3));
    events.push(finish_chunk(0));
    events.push(finish_chunk(1));
    let (h, raw) = stream_raw(&proxy, 2, json!({"events": events})).await;
    assert_eq!(h["x-visa-stream-mode"], "buffer");
    assert_eq!(h["x-visa-action"], "passed", "{raw}");
    assert!(!raw.contains("Gain"), "leaked: {raw}");
    let all = data_events(&raw);
    assert!(all[0]["prompt_filter_results"].is_array(), "{raw}");
    let s = seen(&raw);
    let answer = format!("{NEUTRAL_1} {NEUTRAL_3}");
    assert_eq!(s.text[&(0, "content".to_owned())], answer);
    assert_eq!(s.tokens[&0], answer);
    // Choice 0 comes back chunk for chunk, the tool call where it was.
    let order: Vec<&str> = s
        .order
        .iter()
        .filter(|(i, _)| *i == 0)
        .map(|(_, k)| k.as_str())
        .collect();
    let words = |t: &str| t.split_inclusive(' ').count();
    let mut expected = vec!["role"];
    expected.extend(std::iter::repeat_n(
        "content",
        words(&format!("{NEUTRAL_1} ")),
    ));
    expected.push("tool_calls");
    expected.extend(std::iter::repeat_n("content", words(NEUTRAL_3)));
    assert_eq!(order, expected, "{raw}");
    assert!(
        !s.text.contains_key(&(1, "reasoning_content".to_owned())),
        "{raw}"
    );
    assert_eq!(s.text[&(1, "content".to_owned())], NEUTRAL_3);
    assert_eq!(
        s.finish,
        vec![(0, "stop".into()), (1, "stop".into())],
        "{raw}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_text_never_leaks_on_an_upstream_error_or_a_refusing_shield() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(
        &config(
            &mock,
            "edit_model_candidates = 0\nmin_sentence_similarity = 1.0\ndrop = \"never\"",
            "",
        ),
        &[("VISA_ADMIN_KEY", ADMIN)],
    );
    // Without a profile the stream passes as it came, with its `event:` and `id:` fields.
    let tagged = format!(
        "event: chunk\nid: 41\ndata: {}\n\n",
        delta_chunk(0, json!({"content": "Hi"}))
    );
    let (_, raw) = stream_raw(&proxy, 1, json!({"events": [tagged, finish_chunk(0)]})).await;
    assert!(raw.contains("event: chunk\nid: 41\ndata: {"), "{raw}");
    let mut profile = keep_low(&proxy, "power", BOSS, &[NEUTRAL_1, NEUTRAL_3]).await;
    profile["fallback"] = json!("block");
    set_profile(&proxy, profile).await;
    // The upstream breaks off while a window is held: the client gets the error, not the text.
    let mut events = content_chunks(0, "Gain power over");
    events.insert(0, delta_chunk(0, json!({"role": "assistant"})));
    let (_, raw) = stream_raw(
        &proxy,
        1,
        json!({"events": events, "then": "break", "delay_ms": 30}),
    )
    .await;
    assert!(!raw.contains("Gain"), "leaked: {raw}");
    let last = data_events(&raw).pop().unwrap();
    assert!(last["error"]["message"].is_string(), "{raw}");
    // A rewrite the shield refuses (no edit is similar enough): the profile's fallback blocks
    // the window, and nothing of it goes out.
    let mut events = content_chunks(0, &format!("{NEUTRAL_1} {BOSS} {NEUTRAL_3}"));
    events.push(finish_chunk(0));
    let (_, raw) = stream_raw(&proxy, 1, json!({"events": events})).await;
    assert!(
        !raw.contains("Gain") && !raw.contains("power"),
        "leaked: {raw}"
    );
    let s = seen(&raw);
    assert_eq!(
        s.text[&(0, "content".to_owned())],
        format!("{NEUTRAL_1} "),
        "{raw}"
    );
    assert_eq!(s.finish, vec![(0, "content_filter".into())], "{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_answers_refusal_reasoning_and_transcript_are_checked() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(&config(&mock, "", ""), &[("VISA_ADMIN_KEY", ADMIN)]);
    let mut profile = keep_low(&proxy, "power", BOSS, &[NEUTRAL_1, NEUTRAL_3]).await;
    profile["action"] = json!("block");
    set_profile(&proxy, profile).await;
    let answer = |content: Value, extra: Value| {
        json!({"model": "m", "messages": [{"role": "user", "content": "How?"}],
               "mock": {"content_value": content, "message_extra": extra}})
    };
    // Reasoning that expresses too much is removed; the answer itself passes.
    let (_, h, v) = chat(
        &proxy,
        answer(json!(NEUTRAL_1), json!({"reasoning_content": BOSS})),
    )
    .await;
    assert_eq!(h["x-visa-action"], "passed", "{v}");
    let m = &v["choices"][0]["message"];
    assert_eq!(m["content"], NEUTRAL_1);
    assert!(m.get("reasoning_content").is_none(), "{v}");
    // A refusal, or an audio transcript, that misses the profile blocks its choice.
    for extra in [
        json!({"refusal": BOSS}),
        json!({"audio": {"id": "a", "data": "QkJC", "transcript": BOSS}}),
        json!({"audio": {"id": "a", "data": "QkJC"}}),
    ] {
        let (_, h, v) = chat(&proxy, answer(Value::Null, extra.clone())).await;
        assert_eq!(h["x-visa-action"], "blocked", "{extra}: {v}");
        let c = v["choices"][0].to_string();
        assert!(!c.contains("Gain") && !c.contains("QkJC"), "leaked: {c}");
        assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
    }
    // A neutral transcript passes with its audio.
    let (_, h, v) = chat(
        &proxy,
        answer(
            Value::Null,
            json!({"audio": {"id": "a", "data": "QUFB", "transcript": NEUTRAL_3}}),
        ),
    )
    .await;
    assert_eq!(h["x-visa-action"], "passed", "{v}");
    assert_eq!(v["choices"][0]["message"]["audio"]["data"], "QUFB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_reads_a_rewritten_stream_and_answer() {
    let python = std::env::var("VISA_TEST_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").to_owned());
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(
        &config(&mock, "edit_model_candidates = 0\ndrop = \"facts\"", ""),
        &[("VISA_ADMIN_KEY", ADMIN)],
    );
    let profile = keep_low(&proxy, "power", BOSS, &[NEUTRAL_1, NEUTRAL_3]).await;
    set_profile(&proxy, profile).await;
    let out = tokio::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/sdk/enforce_sdk_check.py"
        ))
        .env("VISA_BASE_URL", proxy.url("/v1"))
        .env("VISA_KEY", "sk-acme")
        .env("VISA_ANSWER", format!("{NEUTRAL_1} {BOSS} {NEUTRAL_3}"))
        .env("VISA_TELLTALE", "Gain power")
        .env("VISA_KEPT", format!("{NEUTRAL_1}|{NEUTRAL_3}"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("2 passed, 0 failed"), "{stdout}\n{stderr}");
}

async fn decisions(proxy: &Proxy, key: &str, query: &str) -> (u16, Value) {
    let r = client()
        .get(proxy.url(&format!("/v1/decisions{query}")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// The decision log, written off the request path: wait until the tenant's log holds `n`.
async fn logged(proxy: &Proxy, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, v) = decisions(proxy, "sk-acme", "").await;
        assert_eq!(status, 200, "{v}");
        let data = v["data"].as_array().unwrap().clone();
        if data.len() >= n {
            return data;
        }
        assert!(Instant::now() < deadline, "{n} decisions not logged: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Decisions still queued when SIGTERM arrives are written before the process exits: the
/// writer is background work that shutdown waits for, and a restarted proxy on the same store
/// lists every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_still_queued_at_shutdown_are_written_before_exit() {
    let mock = MockUpstream::start().await;
    let cfg = config(&mock, "", "");
    let mut proxy = Proxy::start(&cfg, &[("VISA_ADMIN_KEY", ADMIN)]);
    let mut profile = keep_low(&proxy, "power", POWER, &[NEUTRAL_1, NEUTRAL_2, NEUTRAL_3]).await;
    profile["log_decisions"] = json!("all");
    set_profile(&proxy, profile).await;
    // SIGTERM while answers are being enforced: those in flight finish (graceful shutdown), and
    // the decisions they queue last are what a process that exits at once would lose.
    const N: usize = 48;
    let first = std::sync::atomic::AtomicUsize::new(0);
    let first = &first;
    let send = |i: usize| {
        let body = answer_body(if i.is_multiple_of(2) {
            NEUTRAL_1
        } else {
            NEUTRAL_2
        });
        let url = proxy.url("/v1/chat/completions");
        async move {
            let r = client()
                .post(url)
                .bearer_auth("sk-acme")
                .json(&body)
                .send()
                .await
                .ok()?;
            let passed = r
                .headers()
                .get("x-visa-action")
                .map(|v| v.as_bytes() == b"passed");
            let ok = r.status() == 200 && r.bytes().await.is_ok();
            first.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            ok.then_some(passed)
        }
    };
    let (answers, ()) = tokio::join!(futures_util::future::join_all((0..N).map(send)), async {
        // Once the first answer is back, the others are queued or being enforced.
        let deadline = Instant::now() + Duration::from_secs(30);
        while first.load(std::sync::atomic::Ordering::SeqCst) == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        proxy.terminate();
    });
    let answered: Vec<bool> = answers
        .into_iter()
        .flatten()
        .map(|p| p == Some(true))
        .collect();
    assert!(!answered.is_empty(), "no answer before the shutdown");
    assert!(answered.iter().all(|p| *p), "{answered:?}");
    let status = proxy.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit: {status:?}\n{}",
        proxy.stderr()
    );
    assert!(
        proxy.stderr().contains("background work drained"),
        "{}",
        proxy.stderr()
    );
    let db = proxy.dir.path().join("profiles.sqlite");
    let again = Proxy::start(
        &cfg,
        &[
            ("VISA_ADMIN_KEY", ADMIN),
            ("VISA_PROFILES_DB", db.to_str().unwrap()),
        ],
    );
    let (status, v) = decisions(&again, "sk-acme", "?limit=100").await;
    assert_eq!(status, 200, "{v}");
    let data = v["data"].as_array().unwrap();
    assert_eq!(
        data.len(),
        answered.len(),
        "decisions lost at shutdown: {} logged, {} answered",
        data.len(),
        answered.len()
    );
    assert!(data.iter().all(|d| d["action"] == "passed"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_log_records_what_was_changed_for_its_tenant_only() {
    let mock = MockUpstream::start().await;
    let other = format!(
        "[[tenants]]\nid = \"other\"\napi_key_sha256 = [\"{}\"]\nupstreams = [\"mock\"]\n",
        key_hash("sk-other")
    );
    let proxy = Proxy::start(&config(&mock, "", &other), &[("VISA_ADMIN_KEY", ADMIN)]);
    let mut profile = keep_low(&proxy, "power", POWER, &[NEUTRAL_1, NEUTRAL_2, NEUTRAL_3]).await;
    profile["log_text"] = json!("full");
    set_profile(&proxy, profile).await;
    // A passed answer is not logged (the profile logs changes); a rewritten one is.
    let (_, h, _) = chat(&proxy, answer_body(NEUTRAL_1)).await;
    assert_eq!(h["x-visa-action"], "passed");
    let original = long_answer();
    let (status, h, v) = chat(&proxy, answer_body(&original)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(h["x-visa-action"], "rewritten", "{v}");
    let sent = v["choices"][0]["message"]["content"].as_str().unwrap();
    let d = logged(&proxy, 1).await;
    assert_eq!(d.len(), 1, "{d:?}");
    let d = &d[0];
    assert_eq!(d["tenant_id"], "acme");
    assert_eq!(d["action"], "rewritten");
    assert_eq!(d["kind"], "json");
    assert_eq!(d["values"], json!(["power"]));
    assert_eq!(d["profile_version"], 1);
    assert_eq!(d["request_id"], h["x-request-id"].to_str().unwrap());
    // The edits as the metadata reported them, and both texts (the profile keeps them).
    assert_eq!(
        d["choices"][0]["edits"], v["visa"]["choices"][0]["edits"],
        "{d}"
    );
    let distance = |k: &str| d["choices"][0][k]["distance"].as_f64().unwrap();
    assert!(distance("after") < distance("before"), "{d}");
    assert_eq!(d["texts"][0]["original"], original.as_str());
    assert_eq!(d["texts"][0]["final"], sent);

    // Filters, pages and who sees what.
    let (_, _, v2) = chat(&proxy, answer_body(&original)).await;
    assert_eq!(v2["visa"]["action"], "rewritten", "{v2}");
    let both = logged(&proxy, 2).await;
    let (_, page) = decisions(&proxy, "sk-acme", "?limit=1").await;
    assert_eq!(page["data"][0]["id"], both[0]["id"]);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, page2) = decisions(&proxy, "sk-acme", &format!("?limit=1&cursor={cursor}")).await;
    assert_eq!(page2["data"][0]["id"], both[1]["id"], "{page2}");
    assert!(page2.get("next_cursor").is_none(), "{page2}");
    for (query, n) in [
        ("?action=rewritten", 2),
        ("?action=blocked", 0),
        ("?value=power", 2),
        ("?value=hedonism", 0),
        ("?since=4102444800", 0),
    ] {
        let (status, v) = decisions(&proxy, "sk-acme", query).await;
        assert_eq!(status, 200, "{query}: {v}");
        assert_eq!(v["data"].as_array().unwrap().len(), n, "{query}: {v}");
    }
    let (status, v) = decisions(&proxy, "sk-other", "").await;
    assert_eq!(status, 200);
    assert_eq!(v["data"], json!([]), "another tenant's decisions: {v}");
    let (status, v) = decisions(&proxy, "sk-other", "?tenant_id=acme").await;
    assert_eq!(
        (status, &v["error"]["param"]),
        (400, &json!("tenant_id")),
        "{v}"
    );
    let (status, v) = decisions(&proxy, ADMIN, "?tenant_id=acme&action=rewritten").await;
    assert_eq!(status, 200);
    assert_eq!(v["data"].as_array().unwrap().len(), 2, "{v}");
    let (status, v) = decisions(&proxy, ADMIN, "?value=nonsense").await;
    assert_eq!(
        (status, &v["error"]["param"]),
        (400, &json!("value")),
        "{v}"
    );

    // With log_text "none" (the default), no text is kept: not the answer's, not the edits'.
    let r = client()
        .patch(proxy.url("/v1/profile"))
        .bearer_auth("sk-acme")
        .json(&json!({"log_text": "none"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    chat(&proxy, answer_body(&original)).await;
    let d = logged(&proxy, 3).await;
    assert_eq!(d[0]["profile_version"], 2);
    assert!(d[0].get("texts").is_none(), "{}", d[0]);
    let edits = d[0]["choices"][0]["edits"].as_array().unwrap();
    assert!(!edits.is_empty());
    for e in edits {
        assert!(
            e.get("original").is_none() && e.get("text").is_none(),
            "{e}"
        );
        assert!(!d[0].to_string().contains("Show everyone"), "{}", d[0]);
    }
    let metrics = proxy.metrics(ADMIN).await;
    assert!(
        metrics.contains("visa_decisions_written_total 3"),
        "{metrics}"
    );
}
