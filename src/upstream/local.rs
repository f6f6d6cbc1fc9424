//! The local language model as an upstream (`kind = "local"`): OpenAI chat-completions bodies in,
//! OpenAI JSON answers and SSE chunks out, so the shipped configuration answers with no API key.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::sse::{EventStream, StreamEvent};
use super::{ChatCall, JsonReply, StreamReply, UpstreamError};
use crate::config::UpstreamConfig;
use crate::error::ApiError;
use crate::models::llm::{ChatMessage, GenEvent, LlmEngine, Role, Sampling};

/// Most choices (`n`) one request may ask of the local model.
pub const MAX_N: usize = 8;

pub struct LocalUpstream {
    pub config: UpstreamConfig,
    engine: Arc<LlmEngine>,
}

/// What a chat-completions body asks of the local model.
#[derive(Debug)]
pub struct LocalRequest {
    pub messages: Vec<ChatMessage>,
    pub sampling: Sampling,
    pub n: usize,
    pub include_usage: bool,
}

fn text_of(content: &Value, i: usize) -> Result<String, ApiError> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut out = String::new();
            for (k, p) in parts.iter().enumerate() {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => out.push_str(t),
                    _ => {
                        return Err(ApiError::invalid_request(
                            "the local model reads text parts only",
                        )
                        .with_param(format!("messages[{i}].content[{k}]")));
                    }
                }
            }
            Ok(out)
        }
        _ => Err(
            ApiError::invalid_request("message content must be a string or a list of parts")
                .with_param(format!("messages[{i}].content")),
        ),
    }
}

fn number(body: &Value, field: &str) -> Result<Option<f64>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| {
            ApiError::invalid_request(format!("'{field}' must be a number")).with_param(field)
        }),
    }
}

impl LocalRequest {
    /// Read the fields the local model uses; reject what it cannot do.
    pub fn parse(body: &Value, defaults: &Sampling) -> Result<Self, ApiError> {
        if body.get("tools").is_some_and(|t| !t.is_null()) {
            return Err(ApiError::invalid_request(
                "the local model does not support tools; use a remote upstream for tool calls",
            )
            .with_param("tools"));
        }
        let mut messages = Vec::new();
        for (i, m) in body
            .get("messages")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let role = match m.get("role").and_then(Value::as_str) {
                Some("system" | "developer") => Role::System,
                Some("user" | "tool") => Role::User,
                Some("assistant") => Role::Assistant,
                _ => {
                    return Err(ApiError::invalid_request(
                        "role must be system, developer, user, assistant or tool",
                    )
                    .with_param(format!("messages[{i}].role")));
                }
            };
            let content = text_of(m.get("content").unwrap_or(&Value::Null), i)?;
            messages.push(ChatMessage { role, content });
        }
        let mut sampling = defaults.clone();
        if let Some(t) = number(body, "temperature")? {
            if !(0.0..=2.0).contains(&t) {
                return Err(ApiError::invalid_request("'temperature' must be in [0, 2]")
                    .with_param("temperature"));
            }
            sampling.temperature = t;
        }
        if let Some(p) = number(body, "top_p")? {
            if !(p > 0.0 && p <= 1.0) {
                return Err(
                    ApiError::invalid_request("'top_p' must be in (0, 1]").with_param("top_p")
                );
            }
            sampling.top_p = p;
        }
        for field in ["max_completion_tokens", "max_tokens"] {
            if let Some(m) = number(body, field)? {
                if m < 1.0 || m.fract() != 0.0 {
                    return Err(ApiError::invalid_request(format!(
                        "'{field}' must be a positive integer"
                    ))
                    .with_param(field));
                }
                sampling.max_tokens = (m as usize).min(defaults.max_tokens.max(1) * 8);
                break;
            }
        }
        sampling.stop = match body.get("stop") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .map(|s| {
                    s.as_str().map(str::to_owned).ok_or_else(|| {
                        ApiError::invalid_request("'stop' must hold strings").with_param("stop")
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(ApiError::invalid_request(
                    "'stop' must be a string or a list of strings",
                )
                .with_param("stop"));
            }
        };
        let n = match number(body, "n")? {
            None => 1,
            Some(n) if n >= 1.0 && n.fract() == 0.0 && n as usize <= MAX_N => n as usize,
            Some(_) => {
                return Err(ApiError::invalid_request(format!(
                    "'n' must be an integer from 1 to {MAX_N} for the local model"
                ))
                .with_param("n"));
            }
        };
        sampling.logprobs = match body.get("logprobs") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => None,
            Some(Value::Bool(true)) => Some(0),
            Some(_) => {
                return Err(ApiError::invalid_request("'logprobs' must be a boolean")
                    .with_param("logprobs"));
            }
        };
        if let Some(k) = number(body, "top_logprobs")? {
            if !(0.0..=20.0).contains(&k) || k.fract() != 0.0 {
                return Err(ApiError::invalid_request(
                    "'top_logprobs' must be an integer from 0 to 20",
                )
                .with_param("top_logprobs"));
            }
            if sampling.logprobs.is_none() {
                return Err(
                    ApiError::invalid_request("'top_logprobs' needs 'logprobs': true")
                        .with_param("top_logprobs"),
                );
            }
            sampling.logprobs = Some(k as usize);
        }
        let include_usage = body
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(Self {
            messages,
            sampling,
            n,
            include_usage,
        })
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn chunk(id: &str, created: u64, model: &str, choices: Value, usage: Option<Value>) -> StreamEvent {
    let mut c = json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": choices,
    });
    if let Some(u) = usage {
        c["usage"] = u;
    }
    StreamEvent::Data(c.to_string())
}

impl LocalUpstream {
    pub fn new(config: UpstreamConfig, engine: Arc<LlmEngine>) -> Self {
        Self { config, engine }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn served_name(&self) -> &str {
        &self.engine.served_name
    }

    fn parse(&self, call: &ChatCall) -> Result<LocalRequest, ApiError> {
        let body: Value = serde_json::from_slice(&call.body)
            .map_err(|e| ApiError::internal(format!("request body: {e}")))?;
        LocalRequest::parse(&body, &self.engine.defaults)
    }

    pub async fn chat_json(&self, call: ChatCall) -> Result<JsonReply, UpstreamError> {
        let req = self.parse(&call)?;
        let started = Instant::now();
        // Admit every choice before running any, so a busy engine answers 429 at once.
        let generations = (0..req.n)
            .map(|_| {
                self.engine
                    .generate(req.messages.clone(), req.sampling.clone())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let done =
            futures_util::future::join_all(generations.into_iter().map(|g| g.collect())).await;
        call.timer.add(started.elapsed());
        let mut choices = Vec::new();
        let (mut prompt, mut completion) = (0, 0);
        for (i, c) in done.into_iter().enumerate() {
            let c = c?;
            prompt = prompt.max(c.prompt_tokens);
            completion += c.completion_tokens;
            let logprobs = req
                .sampling
                .logprobs
                .map(|_| json!({"content": c.logprobs, "refusal": null}));
            choices.push(json!({
                "index": i,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": logprobs,
                "finish_reason": c.finish_reason,
            }));
        }
        let body = json!({
            "id": format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            "object": "chat.completion",
            "created": now_secs(),
            "model": self.engine.served_name,
            "choices": choices,
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion},
        });
        Ok(JsonReply {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_string()),
        })
    }

    /// Starts the generations at once (no await needed: the first event arrives through the
    /// stream).
    #[expect(
        clippy::result_large_err,
        reason = "the HTTP upstream's error type, which callers handle alike"
    )]
    pub fn chat_stream(&self, call: ChatCall) -> Result<StreamReply, UpstreamError> {
        let req = self.parse(&call)?;
        let generations = (0..req.n)
            .map(|_| {
                self.engine
                    .generate(req.messages.clone(), req.sampling.clone())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
        let created = now_secs();
        let model = self.engine.served_name.clone();
        let first = chunk(
            &id,
            created,
            &model,
            Value::Array(
                (0..req.n)
                    .map(|i| json!({"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}))
                    .collect(),
            ),
            None,
        );
        let merged = futures_util::stream::select_all(
            generations
                .into_iter()
                .enumerate()
                .map(|(i, g)| g.map(move |ev| (i, ev)).boxed()),
        );
        let n = req.n;
        let include_usage = req.include_usage;
        let timer = call.timer.clone();
        let rest: EventStream = async_stream::stream! {
            let mut merged = merged;
            let (mut prompt, mut completion, mut finished) = (0usize, 0usize, 0usize);
            // Log-probabilities wait for the text of their tokens, per choice.
            let mut pending: std::collections::HashMap<usize, Vec<Value>> = Default::default();
            loop {
                let waited = Instant::now();
                let next = merged.next().await;
                timer.add(waited.elapsed());
                match next {
                    Some((i, Ok(GenEvent::Logprobs(mut l)))) => {
                        pending.entry(i).or_default().append(&mut l);
                    }
                    Some((i, Ok(GenEvent::Delta(text)))) => {
                        let logprobs = pending
                            .remove(&i)
                            .map(|l| json!({"content": l, "refusal": null}));
                        yield Ok(chunk(&id, created, &model,
                            json!([{"index": i, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": null}]), None));
                    }
                    Some((i, Ok(GenEvent::Done { finish_reason, prompt_tokens, completion_tokens }))) => {
                        prompt = prompt.max(prompt_tokens);
                        completion += completion_tokens;
                        finished += 1;
                        yield Ok(chunk(&id, created, &model,
                            json!([{"index": i, "delta": {}, "finish_reason": finish_reason}]), None));
                    }
                    Some((_, Err(e))) => {
                        yield Err(ApiError::from(e));
                        break;
                    }
                    None => {
                        if finished < n {
                            yield Err(ApiError::internal("the local model stopped mid-answer"));
                            break;
                        }
                        if include_usage {
                            yield Ok(chunk(&id, created, &model, json!([]), Some(json!({
                                "prompt_tokens": prompt, "completion_tokens": completion,
                                "total_tokens": prompt + completion}))));
                        }
                        yield Ok(StreamEvent::Done);
                        break;
                    }
                }
            }
        }
        .boxed();
        Ok(StreamReply {
            headers: HeaderMap::new(),
            first,
            rest,
        })
    }

    pub fn list_models(&self) -> Vec<Value> {
        vec![json!({
            "id": self.engine.served_name, "object": "model", "created": 0, "owned_by": "visa-proxy"
        })]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Sampling {
        Sampling {
            temperature: 0.7,
            top_p: 0.9,
            max_tokens: 64,
            stop: vec![],
            logprobs: None,
        }
    }

    #[test]
    fn parses_messages_sampling_and_rejects_what_it_cannot_do() {
        let r = LocalRequest::parse(
            &json!({"messages":[{"role":"system","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"hi"}]}],
                "temperature":0,"max_tokens":10,"stop":"\n","n":2,
                "stream_options":{"include_usage":true}}),
            &defaults(),
        )
        .unwrap();
        assert_eq!(r.messages.len(), 2);
        assert_eq!(r.messages[1].content, "hi");
        assert_eq!(r.messages[0].role, Role::System);
        assert_eq!(r.sampling.temperature, 0.0);
        assert_eq!(r.sampling.max_tokens, 10);
        assert_eq!(r.sampling.stop, vec!["\n".to_string()]);
        assert_eq!((r.n, r.include_usage), (2, true));
        assert_eq!(r.sampling.logprobs, None);
        let lp = |b: Value| LocalRequest::parse(&b, &defaults());
        assert_eq!(
            lp(json!({"messages":[], "logprobs": true}))
                .unwrap()
                .sampling
                .logprobs,
            Some(0)
        );
        assert_eq!(
            lp(json!({"messages":[], "logprobs": true, "top_logprobs": 3}))
                .unwrap()
                .sampling
                .logprobs,
            Some(3)
        );

        for (body, param) in [
            (json!({"messages":[], "tools":[{}]}), "tools"),
            (
                json!({"messages":[{"role":"wizard","content":"x"}]}),
                "messages[0].role",
            ),
            (json!({"messages":[], "temperature": 3}), "temperature"),
            (json!({"messages":[], "n": 99}), "n"),
            (json!({"messages":[], "max_tokens": 0}), "max_tokens"),
            (json!({"messages":[], "logprobs": "yes"}), "logprobs"),
            (json!({"messages":[], "top_logprobs": 2}), "top_logprobs"),
            (
                json!({"messages":[], "logprobs": true, "top_logprobs": 21}),
                "top_logprobs",
            ),
            (
                json!({"messages":[{"role":"user","content":[{"type":"image_url"}]}]}),
                "messages[0].content[0]",
            ),
        ] {
            let e = LocalRequest::parse(&body, &defaults()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
            assert_eq!(e.status().as_u16(), 400);
        }
    }
}
