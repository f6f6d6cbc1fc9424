//! `POST /v1/chat/completions`: check the body, route it to an upstream, pass the answer
//! through the response stage, and answer with JSON or an OpenAI-style SSE stream.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Map, Value};

use super::AppState;
use super::extract::JsonBody;
use super::observe::RequestId;
use crate::error::{ApiError, ErrorKind};
use crate::stage::{StageContext, StageStream};
use crate::tenants::Tenant;
use crate::upstream::{ChatCall, UpstreamError, UpstreamTimer, sse};

pub const UPSTREAM_HEADER: HeaderName = HeaderName::from_static("x-visa-upstream");

/// The fields the proxy reads; everything else is forwarded untouched.
#[derive(Debug)]
struct ChatFields {
    model: String,
    stream: bool,
}

fn required_string(body: &Map<String, Value>, field: &str) -> Result<String, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Err(ApiError::invalid_request(format!(
            "you must provide a '{field}' parameter"
        ))
        .with_param(field)),
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => {
            Err(ApiError::invalid_request(format!("'{field}' must not be empty")).with_param(field))
        }
        Some(other) => Err(wrong_type(field, "a string", other)),
    }
}

fn wrong_type(field: &str, expected: &str, got: &Value) -> ApiError {
    let kind = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    ApiError::new(
        ErrorKind::Unprocessable,
        format!("'{field}' must be {expected}, not {kind}"),
    )
    .with_param(field)
}

fn check(body: &Map<String, Value>) -> Result<ChatFields, ApiError> {
    let model = required_string(body, "model")?;
    match body.get("messages") {
        None | Some(Value::Null) => {
            return Err(
                ApiError::invalid_request("you must provide a 'messages' parameter")
                    .with_param("messages"),
            );
        }
        Some(Value::Array(m)) if m.is_empty() => {
            return Err(
                ApiError::invalid_request("'messages' must hold at least one message")
                    .with_param("messages"),
            );
        }
        Some(Value::Array(m)) => {
            if let Some(i) = m.iter().position(|msg| !msg.is_object()) {
                return Err(wrong_type(&format!("messages[{i}]"), "an object", &m[i]));
            }
        }
        Some(other) => return Err(wrong_type("messages", "an array", other)),
    }
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(wrong_type("stream", "a boolean", other)),
    };
    match body.get("stream_options") {
        None | Some(Value::Null) => {}
        Some(Value::Object(_)) if stream => {}
        Some(Value::Object(_)) => {
            return Err(ApiError::invalid_request(
                "'stream_options' is only allowed when 'stream' is true",
            )
            .with_param("stream_options"));
        }
        Some(other) => return Err(wrong_type("stream_options", "an object", other)),
    }
    Ok(ChatFields { model, stream })
}

#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "chat",
    request_body(content = crate::server::openapi::ChatCompletionRequest, description = "Any OpenAI chat-completions body. Fields the proxy does not read are forwarded unchanged."),
    responses(
        (status = 200, description = "The upstream's answer after the tenant's value profile was enforced: JSON, or with `stream: true` Server-Sent Events (`data: {chunk}` lines ending with `data: [DONE]`; a stream that breaks ends with a `data: {\"error\":...}` event). With a profile: header `x-visa-action` (`passed`, `rewritten`, `fallback`, `blocked`; on window-mode streams only in the report), `x-visa-profile-version`, on streams `x-visa-stream-mode`; a blocked choice has `finish_reason: content_filter` and a `refusal`. Request header `x-visa-metadata: true` adds a `visa` report (a trailing chunk with empty `choices` on streams).",
            content(
                (crate::server::openapi::ChatCompletion = "application/json"),
                (serde_json::Value = "text/event-stream", example = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: [DONE]\n\n"),
            )),
        (status = 400, description = "Not JSON, or a required field missing", body = crate::server::openapi::ErrorResponse, example = json!({"error":{"message":"you must provide a 'messages' parameter","type":"invalid_request_error","param":"messages","code":"invalid_request"}})),
        (status = 401, description = "No API key, or one no tenant owns", body = crate::server::openapi::ErrorResponse, example = json!({"error":{"message":"Incorrect API key provided.","type":"authentication_error","param":null,"code":"invalid_api_key"}})),
        (status = 413, description = "Body over server.max_body_bytes", body = crate::server::openapi::ErrorResponse),
        (status = 422, description = "A field of the wrong type", body = crate::server::openapi::ErrorResponse, example = json!({"error":{"message":"'stream' must be a boolean, not a string","type":"invalid_request_error","param":"stream","code":"invalid_type"}})),
        (status = 503, description = "The tenant's profile needs the value models, which are disabled", body = crate::server::openapi::ErrorResponse),
        (status = 429, description = "A tenant limit, the proxy's concurrency limit, or a busy local model or encoder; see retry-after", body = crate::server::openapi::ErrorResponse, example = json!({"error":{"message":"tenant acme is over its limit of 60 requests per minute","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}})),
        (status = 502, description = "Upstream unreachable or answered garbage (an upstream's own OpenAI-shaped error is passed through with its status)", body = crate::server::openapi::ErrorResponse),
        (status = 504, description = "Upstream too slow (total or first-byte timeout)", body = crate::server::openapi::ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn chat_completions(
    State(state): State<AppState>,
    Extension(tenant): Extension<Arc<Tenant>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    Extension(timer): Extension<UpstreamTimer>,
    client_headers: HeaderMap,
    JsonBody(mut body): JsonBody<Map<String, Value>>,
) -> Result<Response, UpstreamError> {
    let fields = check(&body)?;
    let route = state.upstreams.route(&tenant, &fields.model)?;
    // A steering profile adds its system message here; the client never sees it.
    state.stage.prepare(&tenant, &mut body);
    if let Some(model) = &route.model {
        body.insert("model".into(), Value::String(model.clone()));
    }
    let request = Value::Object(body);
    let bytes = serde_json::to_vec(&request)
        .map(Bytes::from)
        .map_err(|e| ApiError::internal(format!("could not encode the request: {e}")))?;
    let call = ChatCall {
        body: bytes,
        stream: fields.stream,
        request_id: request_id.clone(),
        timer,
    };
    let ctx = StageContext {
        tenant,
        request_id,
        request: Arc::new(request),
        metadata: client_headers
            .get(crate::enforce::METADATA_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1"),
    };
    let upstream_name = HeaderValue::from_str(route.upstream.name()).ok();

    if fields.stream {
        let reply = route.upstream.chat_stream(call).await?;
        let staged = state
            .stage
            .stream(
                ctx,
                StageStream {
                    first: reply.first,
                    rest: reply.rest,
                    headers: HeaderMap::new(),
                },
            )
            .await?;
        let mut headers = reply.headers;
        headers.extend(staged.headers);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        if let Some(v) = upstream_name {
            headers.insert(UPSTREAM_HEADER, v);
        }
        let events = futures_util::stream::once(async move { Ok(staged.first) })
            .chain(staged.rest)
            .map(|item| Ok::<Bytes, Infallible>(sse::encode(&item)));
        Ok((StatusCode::OK, headers, Body::from_stream(events)).into_response())
    } else {
        let reply = route.upstream.chat_json(call).await?;
        let staged = state.stage.json(ctx, reply.body).await?;
        let mut headers = reply.headers;
        headers.extend(staged.headers);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(v) = upstream_name {
            headers.insert(UPSTREAM_HEADER, v);
        }
        Ok((reply.status, headers, staged.body).into_response())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn checks_required_fields_and_types() {
        let ok = check(&obj(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}))).unwrap();
        assert!(ok.stream);
        assert_eq!(ok.model, "m");

        let e = check(&obj(json!({"messages":[{"role":"user"}]}))).unwrap_err();
        assert_eq!(
            (e.status().as_u16(), e.param.as_deref()),
            (400, Some("model"))
        );

        let e = check(&obj(json!({"model":"m"}))).unwrap_err();
        assert_eq!(
            (e.status().as_u16(), e.param.as_deref()),
            (400, Some("messages"))
        );

        let e = check(&obj(json!({"model":"m","messages":"hi"}))).unwrap_err();
        assert_eq!(
            (e.status().as_u16(), e.param.as_deref()),
            (422, Some("messages"))
        );

        let e = check(&obj(
            json!({"model":"m","messages":[{"role":"user"}],"stream":"yes"}),
        ))
        .unwrap_err();
        assert_eq!(
            (e.status().as_u16(), e.param.as_deref()),
            (422, Some("stream"))
        );

        let e = check(&obj(json!({"model":"m","messages":[{"role":"user"}],"stream_options":{"include_usage":true}}))).unwrap_err();
        assert_eq!(
            (e.status().as_u16(), e.param.as_deref()),
            (400, Some("stream_options"))
        );

        let e = check(&obj(json!({"model":7,"messages":[{"role":"user"}]}))).unwrap_err();
        assert_eq!(
            (e.status().as_u16(), e.param.as_deref()),
            (422, Some("model"))
        );
    }
}
