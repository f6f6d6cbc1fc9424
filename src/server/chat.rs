//! `POST /v1/chat/completions`: check the body, route it to an upstream, pass the answer
//! through the response stage, and answer with JSON or an OpenAI-style SSE stream.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::{Map, Value};

use super::AppState;
use super::chat_body;
use super::extract::RawBody;
use super::observe::RequestId;
use crate::error::ApiError;
use crate::stage::{Plan, ResponseStage, Sampled, SampledAnswer, StageContext, StageStream};
use crate::tenants::Tenant;
use crate::upstream::passthrough::ByteStream;
use crate::upstream::{ChatCall, UpstreamError, UpstreamTimer, sse};

pub const UPSTREAM_HEADER: HeaderName = HeaderName::from_static("x-visa-upstream");

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
    RawBody(raw): RawBody,
) -> Result<Response, UpstreamError> {
    let fields = chat_body::read(&raw)?;
    let route = state.upstreams.route(&tenant, &fields.model)?;
    let bytes = match &route.model {
        Some(model) => fields.with_model(&raw, model),
        None => raw,
    };
    let upstream_name = HeaderValue::from_str(route.upstream.name()).ok();
    let plan = state.stage.plan(&tenant);
    if plan != Plan::Stage {
        let sample = (plan == Plan::Sample).then(|| (tenant.id.clone(), request_id.clone()));
        let call = ChatCall {
            body: bytes,
            stream: fields.stream,
            request_id,
            timer,
        };
        return if fields.stream {
            let reply = route.upstream.chat_stream_bytes(call).await?;
            let rest = match sample {
                None => reply.rest,
                Some((tenant_id, request_id)) => tap_stream(
                    state.stage.clone(),
                    tenant_id,
                    request_id,
                    &reply.first,
                    reply.rest,
                ),
            };
            let body = futures_util::stream::once(async move { Ok(reply.first) })
                .chain(rest)
                .map(|item| Ok::<Bytes, Infallible>(item.unwrap_or_else(|e| sse::encode(&Err(e)))));
            Ok(stream_response(
                reply.headers,
                upstream_name,
                Body::from_stream(body),
            ))
        } else {
            let reply = route.upstream.chat_json(call).await?;
            if let Some((tenant_id, request_id)) = sample {
                state.stage.sampled(Sampled {
                    tenant_id,
                    request_id,
                    answer: SampledAnswer::Json(reply.body.clone()),
                });
            }
            Ok(json_response(
                reply.status,
                reply.headers,
                upstream_name,
                reply.body,
            ))
        };
    }

    // A stage looks at this request: it gets the body as JSON.
    let mut body: Map<String, Value> = super::extract::parse(&bytes)?;
    // A steering profile adds its system message here; the client never sees it.
    state.stage.prepare(&tenant, &mut body);
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
        let events = futures_util::stream::once(async move { Ok(staged.first) })
            .chain(staged.rest)
            .map(|item| Ok::<Bytes, Infallible>(sse::encode(&item)));
        Ok(stream_response(
            headers,
            upstream_name,
            Body::from_stream(events),
        ))
    } else {
        let reply = route.upstream.chat_json(call).await?;
        let staged = state.stage.json(ctx, reply.body).await?;
        let mut headers = reply.headers;
        headers.extend(staged.headers);
        Ok(json_response(
            reply.status,
            headers,
            upstream_name,
            staged.body,
        ))
    }
}

/// A sampled stream longer than this is counted (`too_large`), not kept and measured.
const MAX_SAMPLED_STREAM: usize = 2 * 1024 * 1024;

/// A stream that keeps a copy of what the client receives and hands it to the stage once it
/// ended normally (a client that goes away drops the copy with the stream).
fn tap_stream(
    stage: Arc<dyn ResponseStage>,
    tenant_id: String,
    request_id: String,
    first: &Bytes,
    mut rest: ByteStream,
) -> ByteStream {
    let mut copy = BytesMut::from(&first[..]);
    let mut whole = true;
    async_stream::stream! {
        while let Some(item) = rest.next().await {
            match item {
                Ok(bytes) => {
                    if copy.len() + bytes.len() <= MAX_SAMPLED_STREAM {
                        copy.extend_from_slice(&bytes);
                    } else {
                        whole = false;
                    }
                    yield Ok(bytes);
                }
                Err(e) => {
                    yield Err(e);
                    return;
                }
            }
        }
        let answer = if whole {
            SampledAnswer::Stream(copy.freeze())
        } else {
            SampledAnswer::TooLarge
        };
        stage.sampled(Sampled {
            tenant_id,
            request_id,
            answer,
        });
    }
    .boxed()
}

/// An SSE response with the headers every stream gets.
fn stream_response(mut headers: HeaderMap, upstream: Option<HeaderValue>, body: Body) -> Response {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Some(v) = upstream {
        headers.insert(UPSTREAM_HEADER, v);
    }
    (StatusCode::OK, headers, body).into_response()
}

/// A JSON response with the upstream's status and passed-back headers.
fn json_response(
    status: StatusCode,
    mut headers: HeaderMap,
    upstream: Option<HeaderValue>,
    body: Bytes,
) -> Response {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(v) = upstream {
        headers.insert(UPSTREAM_HEADER, v);
    }
    (status, headers, body).into_response()
}
