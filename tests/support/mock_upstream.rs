//! A real OpenAI-compatible mock upstream (axum on a random port) for tests, the benchmark and
//! local demos. What it does is chosen per request by a `mock` object in the request body, which
//! the proxy forwards unchanged like any field it does not read:
//!
//! - `{"mode":"json"}` (default): a chat completion whose content echoes the last user message
//!   (or is `content` when given), `n` choices when `n` is set.
//! - `{"mode":"tool_call"}`: a completion holding a tool call.
//! - streams (`"stream": true`): `chunks` (default ["Hello", " from", " the", " mock."]),
//!   `delay_ms` between chunks, a usage chunk when `stream_options.include_usage` is set;
//!   with `state.echo_streams` set, the default is the last user message, word by word.
//! - `{"mode":"fail","status":503,"times":2,"key":"k","openai_shaped":true}`: fail the first
//!   `times` attempts carrying `key` (all when `times` is absent), then answer normally.
//! - `{"mode":"hang","delay_ms":N}`: wait before any header.
//! - `{"ttft_ms":N}` (with any mode): wait N ms before answering, as a real model would.
//! - `{"mode":"stream_stall"}`: stream headers, then nothing.
//! - `{"mode":"close_mid_stream","after":N}`: N chunks, then the connection breaks.
//! - `{"mode":"malformed_sse"}`: one chunk, then an event that is not JSON.
//! - `{"mode":"garbage"}`: 200 with a body that is not JSON.
//! - `{"mode":"json_to_stream"}`: JSON even when a stream was asked for.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub struct Recorded {
    pub headers: HeaderMap,
    pub body: Value,
    /// The body's bytes as they arrived.
    pub raw: Bytes,
}

#[derive(Default)]
pub struct MockState {
    pub requests: Mutex<Vec<Recorded>>,
    attempts: Mutex<HashMap<String, u32>>,
    pub streams_started: AtomicUsize,
    pub streams_completed: AtomicUsize,
    pub streams_cancelled: AtomicUsize,
    /// When false, nothing is recorded (benchmarks).
    pub record: AtomicBool,
    /// When true, a stream without `mock.chunks` streams the last user message back word by
    /// word (for clients that cannot add a `mock` object, such as the web console).
    pub echo_streams: AtomicBool,
    /// Requests for this model wait this many milliseconds before answering (a slow remote
    /// rewriter, whose requests the proxy makes and a test cannot add a `mock` object to).
    pub slow_model: Mutex<Option<(String, u64)>>,
}

impl MockState {
    pub fn attempts(&self, key: &str) -> u32 {
        self.attempts
            .lock()
            .map(|a| a.get(key).copied().unwrap_or(0))
            .unwrap_or(0)
    }
    pub fn last_request(&self) -> Option<Recorded> {
        self.requests.lock().ok().and_then(|r| r.last().cloned())
    }
    pub fn request_count(&self) -> usize {
        self.requests.lock().map(|r| r.len()).unwrap_or(0)
    }
}

pub struct MockUpstream {
    pub addr: SocketAddr,
    pub state: Arc<MockState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl MockUpstream {
    /// Start on 127.0.0.1 with a random port, on the current tokio runtime.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0").await
    }

    pub async fn start_on(addr: &str) -> Self {
        let state = Arc::new(MockState {
            record: AtomicBool::new(true),
            ..Default::default()
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/models", get(models))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind mock upstream");
        let addr = listener.local_addr().expect("mock address");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Self {
            addr,
            state,
            shutdown: Some(tx),
        }
    }

    /// Base URL as an upstream `base_url` (with `/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn common_headers(n: usize) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "x-request-id",
        format!("mock-req-{n}").parse().expect("header"),
    );
    h.insert(
        "x-ratelimit-remaining-requests",
        "99".parse().expect("header"),
    );
    h.insert("openai-processing-ms", "3".parse().expect("header"));
    h.insert("keep-alive", "timeout=5".parse().expect("header"));
    h
}

async fn models() -> impl IntoResponse {
    axum::Json(json!({
        "object": "list",
        "data": [
            {"id": "mock-small", "object": "model", "created": 1, "owned_by": "mock"},
            {"id": "mock-large", "object": "model", "created": 1, "owned_by": "mock"},
        ]
    }))
}

fn last_user_text(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_owned()
}

fn completion(body: &Value, content: &str) -> Value {
    let n = body["n"].as_u64().unwrap_or(1);
    let choices: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "index": i,
                "message": {"role": "assistant", "content": content, "refusal": null},
                "logprobs": null,
                "finish_reason": "stop"
            })
        })
        .collect();
    json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": body["model"],
        "choices": choices,
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
        "system_fingerprint": "fp_mock"
    })
}

fn tool_call_completion(body: &Value) -> Value {
    json!({
        "id": "chatcmpl-mock-tool",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": body["model"],
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": null,
                "tool_calls": [{
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}
                }]
            },
            "finish_reason": "tool_calls"
        }],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    })
}

fn chunk(body: &Value, delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": body["model"],
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
    })
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// An event whose JSON is pretty-printed over several `data:` lines (which SSE allows).
fn sse_pretty(v: &Value) -> Bytes {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    let mut out = String::new();
    for line in text.lines() {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// Counts a stream as cancelled when it is dropped before its end.
struct StreamGuard {
    state: Arc<MockState>,
    done: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.done {
            self.state.streams_completed.fetch_add(1, Ordering::SeqCst);
        } else {
            self.state.streams_cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn chat(State(state): State<Arc<MockState>>, headers: HeaderMap, raw: Bytes) -> Response {
    let body: Value = match serde_json::from_slice(&raw) {
        Ok(v) => v,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": {"message": format!("mock: bad json: {e}"), "type": "invalid_request_error", "param": null, "code": null}})),
            )
                .into_response();
        }
    };
    let n = if state.record.load(Ordering::Relaxed) {
        let mut reqs = state.requests.lock().expect("mock lock");
        reqs.push(Recorded {
            headers: headers.clone(),
            body: body.clone(),
            raw: raw.clone(),
        });
        reqs.len()
    } else {
        0
    };
    let mock = body.get("mock").cloned().unwrap_or(Value::Null);
    let mode = mock["mode"].as_str().unwrap_or("json").to_owned();
    let stream = body["stream"].as_bool().unwrap_or(false);
    let delay = Duration::from_millis(mock["delay_ms"].as_u64().unwrap_or(0));
    let key = mock["key"].as_str().unwrap_or("default").to_owned();
    {
        let mut attempts = state.attempts.lock().expect("mock lock");
        *attempts.entry(key.clone()).or_insert(0) += 1;
    }
    let headers = common_headers(n);
    let slow = state
        .slow_model
        .lock()
        .ok()
        .and_then(|s| s.clone())
        .filter(|(m, _)| body["model"] == m.as_str());
    if let Some((_, ms)) = slow {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    // `ttft_ms`: think this long before answering (a real upstream's time to first token).
    if let Some(ms) = mock["ttft_ms"].as_u64() {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    match mode.as_str() {
        "fail" => {
            let times = mock["times"].as_u64().map(|t| t as u32).unwrap_or(u32::MAX);
            if state.attempts(&key) <= times {
                let status = StatusCode::from_u16(mock["status"].as_u64().unwrap_or(503) as u16)
                    .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                if mock["openai_shaped"].as_bool().unwrap_or(true) {
                    let err = json!({"error": {"message": format!("mock failure {status}"), "type": "server_error", "param": null, "code": "mock_failure"}});
                    return (status, headers, axum::Json(err)).into_response();
                }
                return (status, headers, "<html><body>Bad Gateway</body></html>").into_response();
            }
        }
        "hang" => {
            let wait = if delay.is_zero() {
                Duration::from_secs(3600)
            } else {
                delay
            };
            tokio::time::sleep(wait).await;
        }
        "garbage" => {
            return (
                StatusCode::OK,
                headers,
                [("content-type", "application/json")],
                "this is not json",
            )
                .into_response();
        }
        "tool_call" => {
            return (headers, axum::Json(tool_call_completion(&body))).into_response();
        }
        "json_to_stream" => {
            return (headers, axum::Json(completion(&body, "json"))).into_response();
        }
        _ => {}
    }

    if !stream {
        let content = mock["content"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("echo: {}", last_user_text(&body)));
        let mut answer = completion(&body, &content);
        // `content_value` replaces the content with any JSON (an array of parts, an object);
        // `message_extra` and `choice_extra` are merged into every choice.
        for c in answer["choices"].as_array_mut().into_iter().flatten() {
            if let Some(v) = mock.get("content_value") {
                c["message"]["content"] = v.clone();
            }
            for (field, at) in [("message_extra", Some("message")), ("choice_extra", None)] {
                if let Some(Value::Object(extra)) = mock.get(field) {
                    let target = match at {
                        Some(k) => &mut c[k],
                        None => &mut *c,
                    };
                    for (k, v) in extra {
                        target[k] = v.clone();
                    }
                }
            }
        }
        return (headers, axum::Json(answer)).into_response();
    }

    // `events`: the stream as given, each JSON value sent as one `data:` event, each string
    // as raw bytes (to send `event:` or `id:` fields); then `[DONE]`, or with
    // `"then": "break"` a broken connection instead.
    if let Some(events) = mock["events"].as_array().cloned() {
        let broken = mock["then"] == "break";
        let events = async_stream::stream! {
            for e in events {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                match e {
                    Value::String(raw) => yield Ok::<Bytes, std::io::Error>(Bytes::from(raw)),
                    v => yield Ok(sse(&v)),
                }
            }
            if broken {
                yield Err(std::io::Error::other("mock: connection broken on purpose"));
                return;
            }
            yield Ok(Bytes::from_static(b"data: [DONE]\n\n"));
        };
        let mut response = (headers, Body::from_stream(events)).into_response();
        response
            .headers_mut()
            .insert("content-type", "text/event-stream".parse().expect("header"));
        return response;
    }
    let pieces: Vec<String> = mock["chunks"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_else(|| {
            if state.echo_streams.load(Ordering::SeqCst) {
                let text = last_user_text(&body);
                return text.split_inclusive(' ').map(str::to_owned).collect();
            }
            vec![
                "Hello".into(),
                " from".into(),
                " the".into(),
                " mock.".into(),
            ]
        });
    let pretty = mock["sse_pretty"].as_bool().unwrap_or(false);
    let second: Vec<String> = mock["second_chunks"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let sse = move |v: &Value| if pretty { sse_pretty(v) } else { sse(v) };
    let include_usage = body["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    let after = mock["after"].as_u64().unwrap_or(1) as usize;
    state.streams_started.fetch_add(1, Ordering::SeqCst);
    let st = state.clone();
    let events = async_stream::stream! {
        let mut guard = StreamGuard { state: st, done: false };
        if mode == "stream_stall" {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        yield Ok::<Bytes, std::io::Error>(sse(&chunk(&body, json!({"role": "assistant", "content": ""}), None)));
        for (i, p) in pieces.iter().enumerate() {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if mode == "close_mid_stream" && i >= after {
                yield Err(std::io::Error::other("mock: connection broken on purpose"));
                return;
            }
            if mode == "malformed_sse" && i >= 1 {
                yield Ok(Bytes::from_static(b"data: {this is not json\n\n"));
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            yield Ok(sse(&chunk(&body, json!({"content": p}), None)));
            // A second choice (`mock.second_chunks`), interleaved with the first.
            if let Some(q) = second.get(i) {
                let mut c = chunk(&body, json!({"content": q}), None);
                c["choices"][0]["index"] = json!(1);
                yield Ok(sse(&c));
            }
        }
        yield Ok(sse(&chunk(&body, json!({}), Some("stop"))));
        if !second.is_empty() {
            let mut c = chunk(&body, json!({}), Some("stop"));
            c["choices"][0]["index"] = json!(1);
            yield Ok(sse(&c));
        }
        if include_usage {
            yield Ok(sse(&json!({
                "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000,
                "model": body["model"], "choices": [],
                "usage": {"prompt_tokens": 5, "completion_tokens": pieces.len(), "total_tokens": 5 + pieces.len()}
            })));
        }
        yield Ok(Bytes::from_static(b"data: [DONE]\n\n"));
        guard.done = true;
    };
    let mut response = (headers, Body::from_stream(events)).into_response();
    response
        .headers_mut()
        .insert("content-type", "text/event-stream".parse().expect("header"));
    response
}
