//! Integration tests of the proxy foundation: the real binary on a random port in front of a
//! real mock upstream, driven over HTTP.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::disallowed_methods
)]

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::key_hash;
use support::mock_upstream::MockUpstream;
use support::proxy::Proxy;

const ADMIN_KEY: &str = "admin-secret";
const UPSTREAM_KEY: &str = "upstream-secret";

/// The standard test config: tenants with and without limits, a working and a dead upstream.
fn config(mock: &MockUpstream, server_extra: &str) -> String {
    format!(
        r#"
[server]
max_body_bytes = 65536
upstream_connect_timeout_ms = 1000
{server_extra}

[log]
format = "json"

[models]
enabled = false

[llm]
enabled = false

[[upstreams]]
name = "mock"
base_url = "{base}"
api_key_env = "VISA_TEST_UPSTREAM_KEY"
total_timeout_ms = 1500
first_byte_timeout_ms = 700
stream_idle_timeout_ms = 1000
max_retries = 2
retry_backoff_ms = 10
retry_backoff_max_ms = 50
[upstreams.models]
fast = "mock-small"

[[upstreams]]
name = "down"
base_url = "http://127.0.0.1:1/v1"
max_retries = 2
retry_backoff_ms = 10
skip_readiness_check = true

[[tenants]]
id = "acme"
api_key_sha256 = ["{acme}"]
upstreams = ["mock"]

[[tenants]]
id = "rpm"
api_key_sha256 = ["{rpm}"]
upstreams = ["mock"]
limits = {{ requests_per_minute = 3 }}

[[tenants]]
id = "solo"
api_key_sha256 = ["{solo}"]
upstreams = ["mock"]
limits = {{ max_concurrent = 1 }}

[[tenants]]
id = "downer"
api_key_sha256 = ["{downer}"]
upstreams = ["down"]
"#,
        base = mock.base_url(),
        acme = key_hash("sk-acme"),
        rpm = key_hash("sk-rpm"),
        solo = key_hash("sk-solo"),
        downer = key_hash("sk-down"),
    )
}

async fn setup_with(server_extra: &str) -> (MockUpstream, Proxy) {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(
        &config(&mock, server_extra),
        &[
            ("VISA_TEST_UPSTREAM_KEY", UPSTREAM_KEY),
            ("VISA_ADMIN_KEY", ADMIN_KEY),
        ],
    );
    (mock, proxy)
}

async fn setup() -> (MockUpstream, Proxy) {
    setup_with("").await
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

fn chat_body(extra: Value) -> Value {
    let mut body =
        json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi there"}]});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

fn post_chat(
    proxy: &Proxy,
    key: &str,
    body: Value,
) -> impl Future<Output = reqwest::Response> + 'static {
    let request = client()
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body);
    async move { request.send().await.unwrap() }
}

/// Assert an OpenAI-shaped error with this status and code; returns the error object.
async fn assert_error(resp: reqwest::Response, status: u16, code: &str) -> Value {
    let got = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    assert_eq!(got, status, "body: {text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    let err = &v["error"];
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    assert!(err["type"].as_str().is_some(), "{v}");
    assert!(err.get("param").is_some(), "{v}");
    assert_eq!(err["code"], code, "{v}");
    err.clone()
}

/// Read a whole SSE body and split it into `data:` payloads.
async fn sse_payloads(resp: reqwest::Response) -> Vec<String> {
    let text = resp.text().await.unwrap();
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data line: {e:?}"))
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn json_answer_is_forwarded_with_unknown_fields_and_headers() {
    let (mock, proxy) = setup().await;
    let body = chat_body(json!({
        "n": 2, "seed": 7, "logprobs": false, "custom_vendor_field": {"a": [1, 2]},
        "response_format": {"type": "text"},
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": "auto"
    }));
    let resp = client()
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth("sk-acme")
        .header("x-request-id", "client-rid-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["x-request-id"], "client-rid-1");
    assert_eq!(h["x-upstream-request-id"], "mock-req-1");
    assert_eq!(h["x-ratelimit-remaining-requests"], "99");
    assert_eq!(h["openai-processing-ms"], "3");
    assert_eq!(h["x-visa-upstream"], "mock");
    assert!(h.get("keep-alive").is_none(), "hop-by-hop header leaked");
    assert!(
        h["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["choices"].as_array().unwrap().len(), 2);
    assert_eq!(answer["choices"][0]["message"]["content"], "echo: hi there");

    let seen = mock.state.last_request().unwrap();
    assert_eq!(seen.body, body, "the upstream must get the body unchanged");
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {UPSTREAM_KEY}")
    );
    assert_eq!(seen.headers["x-request-id"], "client-rid-1");
}

#[tokio::test]
async fn request_id_is_created_when_absent() {
    let (_mock, proxy) = setup().await;
    let resp = post_chat(&proxy, "sk-acme", chat_body(json!({}))).await;
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "expected a UUID, got {id}");
    let err = client().get(proxy.url("/nope")).send().await.unwrap();
    assert!(
        err.headers().get("x-request-id").is_some(),
        "errors carry a request id too"
    );
}

#[tokio::test]
async fn alias_maps_to_upstream_model() {
    let (mock, proxy) = setup().await;
    let resp = post_chat(
        &proxy,
        "sk-acme",
        json!({"model": "fast", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        mock.state.last_request().unwrap().body["model"],
        "mock-small"
    );
}

/// A tenant without a profile takes the fast path: the request goes upstream as the client
/// wrote it, byte for byte, except for an aliased model name, which is spliced in.
#[tokio::test]
async fn without_a_profile_the_body_is_forwarded_as_sent_with_the_alias_spliced() {
    let (mock, proxy) = setup().await;
    let send = |body: &'static str| {
        client()
            .post(proxy.url("/v1/chat/completions"))
            .bearer_auth("sk-acme")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // Odd spacing, key order, escapes and a number serde_json would print differently.
    let sent = "{ \"temperature\" : 0.50, \"model\":\"fast\" ,\n \"messages\": [{\"role\":\"user\",\"content\":\"caf\\u00e9\"}], \"x_extra\": {\"k\": [1, 2e3]}}";
    let resp = send(sent).await.unwrap();
    assert_eq!(resp.status(), 200);
    let got = mock.state.last_request().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got.raw),
        sent.replace("\"fast\"", "\"mock-small\"")
    );
    assert_eq!(got.body["messages"][0]["content"], "café");
    // Without an alias the bytes are untouched; streams take the same path.
    let sent = "{\"model\": \"gpt-test\", \"stream\": true, \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}";
    let resp = send(sent).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(sse_payloads(resp).await.last().unwrap(), "[DONE]");
    assert_eq!(mock.state.last_request().unwrap().raw, sent.as_bytes());
    // A field the proxy reads, given twice, is refused: the proxy and the upstream must not
    // read different models.
    let before = mock.state.request_count();
    let resp = send("{\"model\":\"fast\",\"messages\":[{}],\"model\":\"mock-large\"}")
        .await
        .unwrap();
    let e = assert_error(resp, 422, "invalid_type").await;
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("duplicate field `model`"),
        "{e}"
    );
    assert_eq!(mock.state.request_count(), before);
}

/// The fast path's streams reach the client as the upstream sent them: comments, `event:` and
/// `id:` fields, CRLF line ends and the exact JSON bytes, with every event still checked.
#[tokio::test]
async fn without_a_profile_stream_events_pass_byte_for_byte() {
    let (_mock, proxy) = setup().await;
    let events = json!([
        ": keep-alive\n\n",
        "event: delta\r\nid: 7\r\ndata: {\"id\":\"c\", \"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\r\n\r\n",
        {"id": "c", "choices": [{"index": 0, "delta": {"content": " there"}, "finish_reason": "stop"}]},
    ]);
    let resp = post_chat(
        &proxy,
        "sk-acme",
        chat_body(json!({"stream": true, "mock": {"events": events, "delay_ms": 20}})),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = resp.text().await.unwrap();
    let third = format!("data: {}\n\n", events[2]);
    let expected = format!(
        "{}{}{third}data: [DONE]\n\n",
        events[0].as_str().unwrap(),
        events[1].as_str().unwrap()
    );
    assert_eq!(text, expected);
}

#[tokio::test]
async fn tool_calls_pass_through() {
    let (_mock, proxy) = setup().await;
    let resp = post_chat(
        &proxy,
        "sk-acme",
        chat_body(json!({"mock": {"mode": "tool_call"}})),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        "{\"city\":\"Paris\"}"
    );
}

#[tokio::test]
async fn stream_is_sse_with_usage_and_done() {
    let (mock, proxy) = setup().await;
    let resp = post_chat(
        &proxy,
        "sk-acme",
        chat_body(json!({"stream": true, "stream_options": {"include_usage": true}})),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["x-upstream-request-id"], "mock-req-1");
    let payloads = sse_payloads(resp).await;
    assert_eq!(payloads.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello from the mock.");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage["usage"]["completion_tokens"], 4);
    assert_eq!(
        mock.state.last_request().unwrap().headers["accept"],
        "text/event-stream"
    );
}

#[tokio::test]
async fn authentication_errors() {
    let (_mock, proxy) = setup().await;
    let c = client();
    let resp = c
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat_body(json!({})))
        .send()
        .await
        .unwrap();
    assert_error(resp, 401, "invalid_api_key").await;
    let resp = post_chat(&proxy, "sk-wrong", chat_body(json!({}))).await;
    let err = assert_error(resp, 401, "invalid_api_key").await;
    assert_eq!(err["type"], "authentication_error");
    assert!(
        !err["message"].as_str().unwrap().contains("sk-wrong"),
        "the key must not be echoed"
    );
    let resp = c.get(proxy.url("/v1/models")).send().await.unwrap();
    assert_error(resp, 401, "invalid_api_key").await;

    // Admin routes take only the admin key.
    let resp = c
        .get(proxy.url("/v1/tenants"))
        .bearer_auth("sk-acme")
        .send()
        .await
        .unwrap();
    assert_error(resp, 403, "forbidden").await;
    let resp = c
        .get(proxy.url("/v1/tenants"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_error(resp, 401, "invalid_api_key").await;
    let resp = c
        .get(proxy.url("/v1/tenants"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["acme", "downer", "rpm", "solo"]);
    assert_eq!(v["data"][2]["limits"]["requests_per_minute"], 3);
    // The admin key is not a tenant key.
    let resp = post_chat(&proxy, ADMIN_KEY, chat_body(json!({}))).await;
    assert_error(resp, 401, "invalid_api_key").await;
}

#[tokio::test]
async fn admin_routes_are_closed_without_an_admin_key() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(
        &config(&mock, ""),
        &[("VISA_TEST_UPSTREAM_KEY", UPSTREAM_KEY)],
    );
    let resp = client()
        .get(proxy.url("/v1/tenants"))
        .bearer_auth("anything")
        .send()
        .await
        .unwrap();
    let err = assert_error(resp, 401, "invalid_api_key").await;
    assert!(err["message"].as_str().unwrap().contains("VISA_ADMIN_KEY"));
}

#[tokio::test]
async fn request_errors_have_openai_shape() {
    let (mock, proxy) = setup().await;
    let c = client();
    let url = proxy.url("/v1/chat/completions");
    let raw = |body: &'static str| {
        c.post(&url)
            .bearer_auth("sk-acme")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    assert_error(raw("{not json").await.unwrap(), 400, "invalid_json").await;
    assert_error(raw("").await.unwrap(), 400, "invalid_json").await;
    assert_error(raw("[1,2]").await.unwrap(), 422, "invalid_type").await;
    let e = assert_error(
        raw(r#"{"model":"m"}"#).await.unwrap(),
        400,
        "invalid_request",
    )
    .await;
    assert_eq!(e["param"], "messages");
    let e = assert_error(
        raw(r#"{"messages":[{"role":"user","content":"x"}]}"#)
            .await
            .unwrap(),
        400,
        "invalid_request",
    )
    .await;
    assert_eq!(e["param"], "model");
    let e = assert_error(
        raw(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#)
            .await
            .unwrap(),
        422,
        "invalid_type",
    )
    .await;
    assert_eq!(e["param"], "stream");

    let big = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(70_000)}]});
    let resp = c
        .post(&url)
        .bearer_auth("sk-acme")
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_error(resp, 413, "payload_too_large").await;

    let resp = c
        .get(proxy.url("/v1/nothing-here"))
        .bearer_auth("sk-acme")
        .send()
        .await
        .unwrap();
    assert_error(resp, 404, "not_found").await;
    let resp = c.get(&url).bearer_auth("sk-acme").send().await.unwrap();
    assert_error(resp, 405, "method_not_allowed").await;

    assert_eq!(
        mock.state.request_count(),
        0,
        "no bad request may reach the upstream"
    );
}

#[tokio::test]
async fn tenant_rate_limit_answers_429_with_retry_after() {
    let (_mock, proxy) = setup().await;
    for _ in 0..3 {
        assert_eq!(
            post_chat(&proxy, "sk-rpm", chat_body(json!({})))
                .await
                .status(),
            200
        );
    }
    let resp = post_chat(&proxy, "sk-rpm", chat_body(json!({}))).await;
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "retry-after {retry_after}");
    let e = assert_error(resp, 429, "rate_limit_exceeded").await;
    assert_eq!(e["type"], "rate_limit_error");
    // Other tenants are not affected.
    assert_eq!(
        post_chat(&proxy, "sk-acme", chat_body(json!({})))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn tenant_concurrency_limit_answers_429() {
    let (_mock, proxy) = setup().await;
    let slow = post_chat(
        &proxy,
        "sk-solo",
        chat_body(json!({"mock": {"mode": "hang", "delay_ms": 600}})),
    );
    let slow = tokio::spawn(slow);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = post_chat(&proxy, "sk-solo", chat_body(json!({}))).await;
    assert!(resp.headers().get("retry-after").is_some());
    assert_error(resp, 429, "concurrency_limit_exceeded").await;
    assert_eq!(slow.await.unwrap().status(), 200);
    // The slot is free again once the first answer is done.
    assert_eq!(
        post_chat(&proxy, "sk-solo", chat_body(json!({})))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn global_concurrency_limit_sheds_load() {
    let (_mock, proxy) = setup_with("max_concurrent_requests = 1").await;
    let slow = tokio::spawn(post_chat(
        &proxy,
        "sk-acme",
        chat_body(json!({"mock": {"mode": "hang", "delay_ms": 600}})),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = post_chat(&proxy, "sk-acme", chat_body(json!({}))).await;
    let e = assert_error(resp, 429, "overloaded").await;
    assert_eq!(e["type"], "overloaded_error");
    // Operators' routes are not shed.
    assert_eq!(
        client()
            .get(proxy.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(slow.await.unwrap().status(), 200);
}

#[tokio::test]
async fn retries_retryable_statuses_before_answering() {
    let (mock, proxy) = setup().await;
    for status in [503, 502, 504, 429] {
        let key = format!("retry-{status}");
        let resp = post_chat(
            &proxy,
            "sk-acme",
            chat_body(json!({"mock": {"mode": "fail", "status": status, "times": 2, "key": key}})),
        )
        .await;
        assert_eq!(resp.status(), 200, "status {status} should be retried");
        assert_eq!(mock.state.attempts(&key), 3);
    }
    // Streams are retried too while nothing was sent.
    let resp = post_chat(&proxy, "sk-acme", chat_body(json!({"stream": true, "mock": {"mode": "fail", "status": 503, "times": 1, "key": "s"}}))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(sse_payloads(resp).await.last().unwrap(), "[DONE]");
    assert_eq!(mock.state.attempts("s"), 2);
}

#[tokio::test]
async fn upstream_errors_pass_through_or_become_502() {
    let (mock, proxy) = setup().await;
    // Retries exhausted: the upstream's own OpenAI-shaped error and status.
    let resp = post_chat(
        &proxy,
        "sk-acme",
        chat_body(json!({"mock": {"mode": "fail", "status": 503, "key": "always"}})),
    )
    .await;
    assert_eq!(mock.state.attempts("always"), 3, "1 try + 2 retries");
    assert_eq!(resp.headers()["x-upstream-request-id"], "mock-req-3");
    assert_error(resp, 503, "mock_failure").await;
    // Not retryable: passed through at once.
    let resp = post_chat(
        &proxy,
        "sk-acme",
        chat_body(json!({"mock": {"mode": "fail", "status": 400, "key": "bad"}})),
    )
    .await;
    assert_error(resp, 400, "mock_failure").await;
    assert_eq!(mock.state.attempts("bad"), 1);
    let resp = post_chat(
        &proxy,
        "sk-acme",
        chat_body(json!({"mock": {"mode": "fail", "status": 500, "key": "five"}})),
    )
    .await;
    assert_error(resp, 500, "mock_failure").await;
    assert_eq!(mock.state.attempts("five"), 1);
    // Not OpenAI-shaped: a 502 in our shape saying what came back.
    let resp = post_chat(
        &proxy,
        "sk-acme",
        chat_body(
            json!({"mock": {"mode": "fail", "status": 502, "openai_shaped": false, "key": "html"}}),
        ),
    )
    .await;
    let e = assert_error(resp, 502, "upstream_unavailable").await;
    assert!(e["message"].as_str().unwrap().contains("502"), "{e}");
    // 200 with a body that is not JSON.
    let resp = post_chat(
        &proxy,
        "sk-acme",
        chat_body(json!({"mock": {"mode": "garbage"}})),
    )
    .await;
    assert_error(resp, 502, "upstream_unavailable").await;
    // JSON where a stream was asked for.
    let resp = post_chat(
        &proxy,
        "sk-acme",
        chat_body(json!({"stream": true, "mock": {"mode": "json_to_stream"}})),
    )
    .await;
    assert_error(resp, 502, "upstream_unavailable").await;
    // The upstream refusing the proxy's own key is not the client's fault, and its body (which
    // may quote part of that key) does not reach the client.
    for status in [401, 403] {
        let resp = post_chat(
            &proxy,
            "sk-acme",
            chat_body(
                json!({"mock": {"mode": "fail", "status": status, "key": format!("auth{status}")}}),
            ),
        )
        .await;
        let e = assert_error(resp, 502, "upstream_unavailable").await;
        let m = e["message"].as_str().unwrap();
        assert!(
            m.contains("upstream mock") && m.contains(&status.to_string()),
            "{e}"
        );
        assert!(
            !m.contains("mock failure"),
            "the upstream's body leaked: {e}"
        );
    }
}

#[tokio::test]
async fn an_upstream_answer_over_its_size_cap_is_a_502() {
    let mock = MockUpstream::start().await;
    let text = config(&mock, "").replacen(
        "api_key_env = \"VISA_TEST_UPSTREAM_KEY\"",
        "api_key_env = \"VISA_TEST_UPSTREAM_KEY\"\nmax_response_bytes = 2048",
        1,
    );
    let proxy = Proxy::start(
        &text,
        &[
            ("VISA_TEST_UPSTREAM_KEY", UPSTREAM_KEY),
            ("VISA_ADMIN_KEY", ADMIN_KEY),
        ],
    );
    let small = post_chat(
        &proxy,
        "sk-acme",
        chat_body(json!({"mock": {"content": "short"}})),
    )
    .await;
    assert_eq!(small.status(), 200);
    let big = post_chat(
        &proxy,
        "sk-acme",
        chat_body(json!({"mock": {"content": "x".repeat(4000)}})),
    )
    .await;
    let e = assert_error(big, 502, "upstream_answer_too_large").await;
    assert!(e["message"].as_str().unwrap().contains("2048"), "{e}");
}

#[tokio::test]
async fn multi_line_stream_events_are_re_encoded_line_by_line() {
    let (_mock, proxy) = setup().await;
    let resp = post_chat(
        &proxy,
        "sk-acme",
        chat_body(
            json!({"stream": true, "mock": {"sse_pretty": true, "chunks": ["Hi", " there"]}}),
        ),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let raw = resp.text().await.unwrap();
    let mut text = String::new();
    for event in raw.split("\n\n").filter(|e| !e.trim().is_empty()) {
        // Every line of every event is a data line, and the lines join into one payload.
        let lines: Vec<&str> = event
            .lines()
            .map(|l| {
                l.strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("not a data line: {l:?} in {raw}"))
            })
            .collect();
        let payload = lines.join("\n");
        if payload == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(&payload).unwrap();
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    assert!(raw.matches("data: ").count() > 6, "{raw}");
    assert_eq!(text, "Hi there");
}

#[tokio::test]
async fn unreachable_upstream_is_502_after_retries() {
    let (_mock, proxy) = setup().await;
    let started = Instant::now();
    let resp = post_chat(&proxy, "sk-down", chat_body(json!({}))).await;
    let e = assert_error(resp, 502, "upstream_unavailable").await;
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("could not be reached"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let resp = post_chat(&proxy, "sk-down", chat_body(json!({"stream": true}))).await;
    assert_error(resp, 502, "upstream_unavailable").await;
}

#[tokio::test]
async fn slow_upstreams_time_out_with_504() {
    let (mock, proxy) = setup().await;
    let started = Instant::now();
    let resp = post_chat(
        &proxy,
        "sk-acme",
        chat_body(json!({"mock": {"mode": "hang", "key": "hang"}})),
    )
    .await;
    assert_error(resp, 504, "upstream_timeout").await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(5),
        "took {took:?}"
    );
    assert_eq!(mock.state.attempts("hang"), 1, "timeouts are not retried");

    // A stream whose first byte does not come within first_byte_timeout_ms (700).
    let started = Instant::now();
    let resp = post_chat(
        &proxy,
        "sk-acme",
        chat_body(json!({"stream": true, "mock": {"mode": "stream_stall"}})),
    )
    .await;
    let e = assert_error(resp, 504, "upstream_timeout").await;
    assert!(e["message"].as_str().unwrap().contains("first byte"), "{e}");
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "first-byte timeout should beat the total timeout"
    );
}

#[tokio::test]
async fn broken_streams_end_with_an_error_event_and_no_retry() {
    let (mock, proxy) = setup().await;
    let resp = post_chat(&proxy, "sk-acme", chat_body(json!({"stream": true, "mock": {"mode": "close_mid_stream", "after": 2, "key": "mid", "delay_ms": 50}}))).await;
    assert_eq!(resp.status(), 200);
    let payloads = sse_payloads(resp).await;
    let last: Value = serde_json::from_str(payloads.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "upstream_error", "{payloads:?}");
    assert!(payloads.iter().all(|p| p != "[DONE]"));
    let text: String = payloads
        .iter()
        .filter_map(|p| serde_json::from_str::<Value>(p).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, "Hello from", "chunks before the break are delivered");
    assert_eq!(
        mock.state.attempts("mid"),
        1,
        "no retry after bytes were sent"
    );

    let resp = post_chat(
        &proxy,
        "sk-acme",
        chat_body(json!({"stream": true, "mock": {"mode": "malformed_sse"}})),
    )
    .await;
    let payloads = sse_payloads(resp).await;
    let last: Value = serde_json::from_str(payloads.last().unwrap()).unwrap();
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("malformed"),
        "{last}"
    );
}

#[tokio::test]
async fn stalled_stream_ends_with_an_error_event() {
    let (_mock, proxy) = setup().await;
    // 1500 ms between chunks is past stream_idle_timeout_ms (1000) but the first event is prompt.
    let started = Instant::now();
    let resp = post_chat(
        &proxy,
        "sk-acme",
        chat_body(json!({"stream": true, "mock": {"delay_ms": 1200}})),
    )
    .await;
    let payloads = sse_payloads(resp).await;
    let last: Value = serde_json::from_str(payloads.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_timeout", "{payloads:?}");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_stream() {
    let (mock, proxy) = setup().await;
    let resp = post_chat(
        &proxy,
        "sk-acme",
        chat_body(json!({"stream": true, "mock": {"delay_ms": 100, "chunks": vec!["x"; 40]}})),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    drop(body);
    let deadline = Instant::now() + Duration::from_secs(3);
    while mock
        .state
        .streams_cancelled
        .load(std::sync::atomic::Ordering::SeqCst)
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the upstream stream was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        mock.state
            .streams_completed
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn models_lists_aliases_and_upstream_models() {
    let (_mock, proxy) = setup().await;
    let resp = client()
        .get(proxy.url("/v1/models"))
        .bearer_auth("sk-acme")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["fast", "mock-large", "mock-small"]);
    // A tenant whose only upstream is down and has no aliases gets a 502.
    let resp = client()
        .get(proxy.url("/v1/models"))
        .bearer_auth("sk-down")
        .send()
        .await
        .unwrap();
    assert_error(resp, 502, "upstream_unavailable").await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let (_mock, proxy) = setup().await;
    let c = client();
    assert_eq!(
        c.get(proxy.url("/healthz")).send().await.unwrap().status(),
        200
    );
    // Anonymous callers learn the status only; the admin key gets each upstream's outcome.
    let ready = c.get(proxy.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let v: Value = ready.json().await.unwrap();
    assert_eq!(v, json!({"status": "ready"}));
    let ready = c
        .get(proxy.url("/readyz"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    let v: Value = ready.json().await.unwrap();
    assert_eq!(v["upstreams"]["mock"], "ok");
    assert_eq!(v["upstreams"]["down"], "skipped");
    // Metrics name every tenant: no key or a tenant's key is refused.
    let m = c.get(proxy.url("/metrics")).send().await.unwrap();
    assert_error(m, 401, "invalid_api_key").await;
    let m = c
        .get(proxy.url("/metrics"))
        .bearer_auth("sk-acme")
        .send()
        .await
        .unwrap();
    assert_error(m, 403, "forbidden").await;

    assert_eq!(
        post_chat(&proxy, "sk-acme", chat_body(json!({})))
            .await
            .status(),
        200
    );
    let resp = post_chat(&proxy, "sk-acme", chat_body(json!({"stream": true}))).await;
    let _ = resp.text().await.unwrap();
    let _ = post_chat(&proxy, "sk-wrong", chat_body(json!({}))).await;
    // Metrics are recorded when a body ends; give the server a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = proxy.metrics(ADMIN_KEY).await;
    assert!(text.contains(r#"visa_http_requests_total{route="/v1/chat/completions",method="POST",status="200",tenant="acme"} 2"#), "{text}");
    assert!(text.contains(r#"visa_http_requests_total{route="/v1/chat/completions",method="POST",status="401",tenant="-"} 1"#), "{text}");
    assert!(
        text.contains(r#"visa_proxy_overhead_seconds_count{route="/v1/chat/completions"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"visa_upstream_request_duration_seconds_count{upstream="mock",outcome="200"} 2"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"visa_http_requests_in_flight{route="/v1/chat/completions"} 0"#),
        "{text}"
    );
    assert!(
        text.contains(r#"visa_rejected_requests_total{reason="invalid_key"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("visa_http_request_duration_seconds_bucket"),
        "{text}"
    );
}

#[tokio::test]
async fn readiness_fails_when_an_upstream_is_down() {
    let mock = MockUpstream::start().await;
    let text = config(&mock, "").replace(
        "skip_readiness_check = true",
        "skip_readiness_check = false",
    );
    let proxy = Proxy::start(
        &text,
        &[
            ("VISA_TEST_UPSTREAM_KEY", UPSTREAM_KEY),
            ("VISA_ADMIN_KEY", ADMIN_KEY),
        ],
    );
    let resp = client()
        .get(proxy.url("/readyz"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["status"], "not_ready");
    assert!(
        v["upstreams"]["down"]
            .as_str()
            .unwrap()
            .starts_with("unreachable"),
        "{v}"
    );
}

#[tokio::test]
async fn openapi_document_matches_the_committed_copy() {
    let (_mock, proxy) = setup().await;
    let served: Value = client()
        .get(proxy.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let committed_text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
            .unwrap();
    let committed: Value = serde_json::from_str(&committed_text).unwrap();
    assert!(
        served == committed,
        "openapi/openapi.json is stale: run `cargo run --release -- openapi > openapi/openapi.json`"
    );
    for path in [
        "/v1/chat/completions",
        "/v1/models",
        "/v1/tenants",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(
            served["paths"].get(path).is_some(),
            "{path} is not documented"
        );
    }
}

#[tokio::test]
async fn sigterm_lets_in_flight_streams_finish() {
    let (_mock, mut proxy) = setup().await;
    let resp = post_chat(
        &proxy,
        "sk-acme",
        chat_body(json!({"stream": true, "mock": {"delay_ms": 150, "chunks": vec!["y"; 6]}})),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let reading = tokio::spawn(sse_payloads(resp));
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.terminate();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // New connections are refused while the stream finishes.
    assert!(
        client().get(proxy.url("/healthz")).send().await.is_err(),
        "listener should be closed"
    );
    let payloads = reading.await.unwrap();
    assert_eq!(
        payloads.last().unwrap(),
        "[DONE]",
        "the in-flight stream must complete"
    );
    let status = tokio::task::spawn_blocking(move || {
        let status = proxy.wait_exit(Duration::from_secs(5));
        (status, proxy)
    })
    .await
    .unwrap();
    assert!(
        status.0.is_some_and(|s| s.success()),
        "exit: {:?}\n{}",
        status.0,
        status.1.stderr()
    );
}

#[tokio::test]
async fn shutdown_deadline_cuts_off_endless_requests() {
    let mock = MockUpstream::start().await;
    let text = config(&mock, "shutdown_grace_ms = 300")
        .replace("total_timeout_ms = 1500", "total_timeout_ms = 60000");
    let mut proxy = Proxy::start(&text, &[("VISA_TEST_UPSTREAM_KEY", UPSTREAM_KEY)]);
    let _hanging = tokio::spawn(post_chat(
        &proxy,
        "sk-acme",
        chat_body(json!({"stream": true, "mock": {"delay_ms": 200, "chunks": vec!["z"; 100]}})),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    proxy.terminate();
    let status = tokio::task::spawn_blocking(move || proxy.wait_exit(Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(
        status.is_some(),
        "the proxy must exit after its grace period"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn invalid_config_fails_at_start_naming_the_field() {
    let err = Proxy::try_start(
        "[[upstreams]]\nname = \"a\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\n[[tenants]]\nid = \"t\"\napi_key_sha256 = [\"abc\"]\nupstreams = [\"a\"]\n",
        &[],
    )
    .err()
    .expect("must not start");
    assert!(err.contains("tenants[0].api_key_sha256[0]"), "{err}");

    let err = Proxy::try_start("[server]\nlisten_typo = 1\n", &[])
        .err()
        .expect("must not start");
    assert!(err.contains("listen_typo"), "{err}");

    // An admin key that is also a tenant's key would give that tenant's clients admin rights.
    let err = Proxy::try_start(
        &format!(
            "[[upstreams]]\nname = \"a\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\n[[tenants]]\nid = \"t\"\napi_key_sha256 = [\"{}\"]\nupstreams = [\"a\"]\n",
            key_hash("sk-same")
        ),
        &[("VISA_ADMIN_KEY", "sk-same")],
    )
    .err()
    .expect("must not start");
    assert!(
        err.contains("tenants[0].api_key_sha256[0]") && err.contains("VISA_ADMIN_KEY"),
        "{err}"
    );
}

#[test]
fn hash_key_subcommand_prints_the_config_digest() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_visa-proxy"))
        .args(["hash-key", "sk-acme"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        key_hash("sk-acme")
    );
}

#[test]
fn shipped_config_is_valid() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_visa-proxy"))
        .args([
            "check-config",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Docker image rewrites the demo tenant's published key hash into `api_key_env`: the
/// line it rewrites must be in the shipped config, and a tenant keyed by an environment
/// variable answers only to that key.
#[tokio::test]
async fn a_tenant_key_from_the_environment_and_the_images_demo_tenant() {
    let dockerfile =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap();
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml")).unwrap();
    let line = format!("api_key_sha256 = [\"{}\"]", key_hash("sk-visa-demo"));
    assert!(
        shipped.lines().any(|l| l == line),
        "config.toml lost the demo key line"
    );
    assert!(
        dockerfile.contains(&line.replace('[', "\\[").replace(']', "\\]")),
        "the Dockerfile no longer rewrites it"
    );

    let mock = MockUpstream::start().await;
    let text = format!(
        "[models]\nenabled = false\n[llm]\nenabled = false\n[[upstreams]]\nname = \"mock\"\nbase_url = \"{}\"\n\n[[tenants]]\nid = \"demo\"\napi_key_env = \"VISA_TEST_DEMO_KEY\"\nupstreams = [\"mock\"]\n",
        mock.base_url()
    );
    let proxy = Proxy::start(&text, &[("VISA_TEST_DEMO_KEY", "sk-from-env")]);
    assert_eq!(
        post_chat(&proxy, "sk-from-env", chat_body(json!({})))
            .await
            .status(),
        200
    );
    assert_eq!(
        post_chat(&proxy, "sk-visa-demo", chat_body(json!({})))
            .await
            .status(),
        401
    );
    drop(proxy);
    // Unset: the tenant has no key at all.
    let proxy = Proxy::start(&text, &[]);
    assert_eq!(
        post_chat(&proxy, "sk-from-env", chat_body(json!({})))
            .await
            .status(),
        401
    );
}

/// The official `openai` Python SDK against the proxy (see tests/sdk/openai_sdk_check.py).
#[tokio::test]
async fn official_openai_python_sdk_works_against_the_proxy() {
    let python = std::env::var("VISA_TEST_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").to_owned());
    assert!(
        std::path::Path::new(&python).exists(),
        "no Python with the openai SDK at {python}: run scripts/setup-python.sh (or set VISA_TEST_PYTHON)"
    );
    let (_mock, proxy) = setup().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_sdk_check.py");
    let out = tokio::process::Command::new(&python)
        .arg(script)
        .env("VISA_BASE_URL", proxy.url("/v1"))
        .env("VISA_KEY", "sk-acme")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK check failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("4 passed, 0 failed"), "{stdout}");
}

/// Profile writes can name the version they replace (`If-Match`, the `ETag` a read gave):
/// a stale one writes nothing and answers 412; a malformed one is a 400 naming the header.
#[tokio::test]
async fn if_match_guards_profile_writes_with_the_version_etag() {
    let (_mock, proxy) = setup().await;
    let url = proxy.url("/v1/tenants/acme/profile");
    let body = json!({"values": {"power": {"target": 0.2}}, "action": "audit"});
    let write = |method: reqwest::Method, if_match: Option<&str>, body: Value| {
        let mut r = client()
            .request(method, &url)
            .bearer_auth(ADMIN_KEY)
            .json(&body);
        if let Some(v) = if_match {
            r = r.header("if-match", v);
        }
        async move { r.send().await.unwrap() }
    };
    // "0": only when there is no profile yet.
    let r = write(reqwest::Method::PUT, Some("\"0\""), body.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "\"1\"");
    assert_eq!(
        write(reqwest::Method::PUT, Some("\"0\""), body.clone())
            .await
            .status(),
        412
    );
    let r = client()
        .get(&url)
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["etag"], "\"1\"");
    let patch = json!({"values": {"benevolence": {"target": 0.8}}});
    let r = write(reqwest::Method::PATCH, Some("\"1\""), patch.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "\"2\"");
    // The same version again is stale now: nothing is written.
    let err = assert_error(
        write(reqwest::Method::PATCH, Some("\"1\""), patch).await,
        412,
        "precondition_failed",
    )
    .await;
    assert_eq!(err["param"], "If-Match");
    assert!(
        err["message"].as_str().unwrap().contains("version 2"),
        "{err}"
    );
    let err = assert_error(
        write(reqwest::Method::PUT, Some("W/abc"), body.clone()).await,
        400,
        "invalid_if_match",
    )
    .await;
    assert_eq!(err["param"], "If-Match");
    let r = write(reqwest::Method::DELETE, Some("1"), Value::Null).await;
    assert_eq!(r.status(), 412);
    let history: Value = client()
        .get(proxy.url("/v1/tenants/acme/profile/history"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["data"].as_array().unwrap().len(), 2, "{history}");
    assert_eq!(
        write(reqwest::Method::DELETE, Some("2"), Value::Null)
            .await
            .status(),
        200
    );
}
