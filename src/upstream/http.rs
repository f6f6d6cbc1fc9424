//! An OpenAI-compatible upstream reached over HTTP: timeouts, retries before the first byte,
//! JSON answers, and SSE streams turned into checked events.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use bytes::{Bytes, BytesMut};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use reqwest::Client;

use super::passthrough::{ByteStream, Framer, Seen};
use super::sse::{EventStream, StreamEvent, classify};
use super::{JsonReply, RawStreamReply, StreamReply, UpstreamError};
use crate::config::UpstreamConfig;
use crate::error::{ApiError, is_openai_error_body};
use crate::metrics::Metrics;

/// Time spent waiting on upstreams for one client request, so the proxy's own overhead can be
/// measured as total time minus this.
#[derive(Clone, Default, Debug)]
pub struct UpstreamTimer(Arc<AtomicU64>);

impl UpstreamTimer {
    pub fn add(&self, d: Duration) {
        self.0.fetch_add(
            d.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }
    pub fn total(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

/// What one chat-completions call sends.
pub struct ChatCall {
    pub body: Bytes,
    pub stream: bool,
    pub request_id: String,
    pub timer: UpstreamTimer,
}

/// Statuses retried before anything reached the client.
const RETRYABLE: [StatusCode; 4] = [
    StatusCode::TOO_MANY_REQUESTS,
    StatusCode::BAD_GATEWAY,
    StatusCode::SERVICE_UNAVAILABLE,
    StatusCode::GATEWAY_TIMEOUT,
];

/// Error bodies are read up to this size.
const MAX_ERROR_BODY: usize = 64 * 1024;

pub struct HttpUpstream {
    pub config: UpstreamConfig,
    /// Parsed once: URL parsing is measurable per request.
    chat_url: reqwest::Url,
    models_url: reqwest::Url,
    auth: Option<HeaderValue>,
    client: Client,
    metrics: Arc<Metrics>,
}

impl HttpUpstream {
    /// `api_key` is the value of the configured environment variable, read once at start.
    pub fn new(
        config: UpstreamConfig,
        api_key: Option<String>,
        client: Client,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let auth = match api_key {
            Some(k) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {k}")).map_err(|_| {
                    "the API key holds characters not allowed in a header".to_string()
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let base = config.base_url.trim_end_matches('/');
        let parse = |path: &str| {
            reqwest::Url::parse(&format!("{base}{path}"))
                .map_err(|e| format!("base_url {base:?} does not make a URL: {e}"))
        };
        Ok(Self {
            chat_url: parse("/chat/completions")?,
            models_url: parse("/models")?,
            config,
            auth,
            client,
            metrics,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let base = self
            .config
            .retry_backoff_ms
            .saturating_mul(1u64 << attempt.min(16));
        let capped = base.min(self.config.retry_backoff_max_ms);
        // Up to 25% jitter so that retries of many clients do not arrive together.
        let jitter = (capped / 4).max(1);
        let jittered = capped + u64::from(uuid::Uuid::new_v4().as_u128() as u16) % jitter;
        let wait = Duration::from_millis(jittered);
        match retry_after {
            Some(ra) if ra <= Duration::from_millis(self.config.retry_backoff_max_ms) => {
                ra.max(wait)
            }
            _ => wait,
        }
    }

    /// Send the request, retrying connect errors and retryable statuses. Returns the first
    /// response that is not retried (which may be an error status) or a timeout/connect error.
    async fn send_with_retries(
        &self,
        call: &ChatCall,
        deadline: Instant,
        header_deadline: Instant,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut attempt: u32 = 0;
        loop {
            let now = Instant::now();
            if now >= header_deadline {
                return Err(self.timeout_error(call.stream));
            }
            let mut req = self
                .client
                .post(self.chat_url.clone())
                .timeout(deadline.saturating_duration_since(now))
                .header(header::CONTENT_TYPE, "application/json")
                .header("x-request-id", &call.request_id)
                .body(call.body.clone());
            if call.stream {
                req = req.header(header::ACCEPT, "text/event-stream");
            }
            if let Some(auth) = &self.auth {
                req = req.header(header::AUTHORIZATION, auth.clone());
            }
            let started = Instant::now();
            let sent = tokio::time::timeout(
                header_deadline.saturating_duration_since(started),
                req.send(),
            )
            .await;
            let waited = started.elapsed();
            call.timer.add(waited);
            let retries_left = attempt < self.config.max_retries;
            match sent {
                Err(_) => {
                    self.metrics
                        .upstream_attempt(self.name(), "timeout", waited);
                    return Err(self.timeout_error(call.stream));
                }
                Ok(Err(e)) if e.is_timeout() => {
                    self.metrics
                        .upstream_attempt(self.name(), "timeout", waited);
                    return Err(self.timeout_error(call.stream));
                }
                Ok(Err(e)) => {
                    self.metrics
                        .upstream_attempt(self.name(), "connect_error", waited);
                    if e.is_connect() && retries_left {
                        tracing::warn!(request_id = %call.request_id, upstream = self.name(), attempt, error = %e, "upstream connect failed, retrying");
                        tokio::time::sleep(self.backoff(attempt, None)).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(ApiError::bad_gateway(format!(
                        "upstream {} could not be reached: {}",
                        self.name(),
                        error_chain(&e)
                    ))
                    .into());
                }
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    self.metrics
                        .upstream_attempt(self.name(), status.as_str(), waited);
                    if RETRYABLE.contains(&status) && retries_left {
                        let retry_after = resp
                            .headers()
                            .get(header::RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u64>().ok())
                            .map(Duration::from_secs);
                        tracing::warn!(request_id = %call.request_id, upstream = self.name(), attempt, %status, "upstream answered a retryable status, retrying");
                        drop(resp);
                        tokio::time::sleep(self.backoff(attempt, retry_after)).await;
                        attempt += 1;
                        continue;
                    }
                    return Ok(resp);
                }
            }
        }
    }

    fn timeout_error(&self, stream: bool) -> UpstreamError {
        self.timeout(stream).into()
    }

    fn timeout(&self, stream: bool) -> ApiError {
        let (what, ms) = if stream {
            ("its first byte", self.config.first_byte_timeout_ms)
        } else {
            ("an answer", self.config.total_timeout_ms)
        };
        ApiError::gateway_timeout(format!(
            "upstream {} did not send {what} within {ms} ms",
            self.name()
        ))
    }

    /// Turn a non-success upstream response into the error the client sees: passed through when
    /// it is OpenAI-shaped, otherwise a 502 that says what came back.
    async fn error_from(&self, resp: reqwest::Response, timer: &UpstreamTimer) -> UpstreamError {
        let status = resp.status();
        let headers = super::headers::pass_back(resp.headers());
        let started = Instant::now();
        let body = read_limited(resp, MAX_ERROR_BODY).await;
        timer.add(started.elapsed());
        match body {
            // The upstream refused the proxy's own credentials: not the client's key, and its
            // body may quote a fragment of the upstream key.
            Ok(_) if status.as_u16() == 401 || status.as_u16() == 403 => {
                ApiError::bad_gateway(format!(
                    "upstream {} refused the proxy's credentials ({status}); check its api_key_env",
                    self.name()
                ))
                .into()
            }
            Ok(body) if is_openai_error_body(&body) => UpstreamError::Passthrough {
                status,
                headers,
                body,
            },
            Ok(body) => {
                let snippet: String = String::from_utf8_lossy(&body).chars().take(200).collect();
                ApiError::bad_gateway(format!(
                    "upstream {} answered {status} with a body that is not an OpenAI error: {snippet:?}",
                    self.name()
                ))
                .into()
            }
            Err(e) => ApiError::bad_gateway(format!(
                "upstream {} answered {status} and then failed: {e}",
                self.name()
            ))
            .into(),
        }
    }

    /// A non-streaming chat completion.
    pub async fn chat_json(&self, call: ChatCall) -> Result<JsonReply, UpstreamError> {
        let deadline = Instant::now() + self.config.total_timeout();
        let resp = self.send_with_retries(&call, deadline, deadline).await?;
        if !resp.status().is_success() {
            return Err(self.error_from(resp, &call.timer).await);
        }
        let status = resp.status();
        let headers = super::headers::pass_back(resp.headers());
        let started = Instant::now();
        let limit = self.config.max_response_bytes;
        let body = read_capped(resp, limit).await;
        call.timer.add(started.elapsed());
        let body = body.map_err(|e| match e {
            Capped::TooLarge => ApiError::bad_gateway(format!(
                "upstream {} answered with more than {limit} bytes (max_response_bytes)",
                self.name()
            ))
            .with_code("upstream_answer_too_large")
            .into(),
            Capped::Failed(e) if e.is_timeout() => self.timeout_error(false),
            Capped::Failed(e) => ApiError::bad_gateway(format!(
                "upstream {} broke off its answer: {}",
                self.name(),
                error_chain(&e)
            ))
            .into(),
        })?;
        if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
            let snippet: String = String::from_utf8_lossy(&body).chars().take(200).collect();
            return Err(ApiError::bad_gateway(format!(
                "upstream {} answered with a body that is not JSON: {snippet:?}",
                self.name()
            ))
            .into());
        }
        Ok(JsonReply {
            status,
            headers,
            body,
        })
    }

    /// Send a stream request and check the answer's status and content type: the response,
    /// its end-to-end headers and the first-byte deadline.
    async fn open_stream(
        &self,
        call: &ChatCall,
    ) -> Result<(reqwest::Response, HeaderMap, Instant), UpstreamError> {
        let start = Instant::now();
        let deadline = start + self.config.total_timeout();
        let first_byte_deadline = (start + self.config.first_byte_timeout()).min(deadline);
        let resp = self
            .send_with_retries(call, deadline, first_byte_deadline)
            .await?;
        if !resp.status().is_success() {
            return Err(self.error_from(resp, &call.timer).await);
        }
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !content_type
            .get(..17)
            .is_some_and(|t| t.eq_ignore_ascii_case("text/event-stream"))
        {
            return Err(ApiError::bad_gateway(format!(
                "upstream {} answered a stream request with content-type {:?}, not text/event-stream",
                self.name(),
                content_type.to_ascii_lowercase()
            ))
            .into());
        }
        let headers = super::headers::pass_back(resp.headers());
        Ok((resp, headers, first_byte_deadline))
    }

    /// A streamed chat completion forwarded without decoding: returns once the first event
    /// arrived (so that retries and error statuses are still possible) with the bytes up to
    /// it and the rest of the stream, every event checked as [`Self::chat_stream`] checks it.
    pub async fn chat_stream_raw(&self, call: ChatCall) -> Result<RawStreamReply, UpstreamError> {
        let (resp, headers, first_byte_deadline) = self.open_stream(&call).await?;
        let name = self.name().to_owned();
        let idle = self.config.stream_idle_timeout();
        let mut body = resp.bytes_stream();
        let mut framer = Framer::default();
        // Comment-only events before the first data event go out with it.
        let mut lead = BytesMut::new();
        let (first, seen) = loop {
            let limit = first_byte_deadline.saturating_duration_since(Instant::now());
            let chunk = wait_next(&mut body, limit, &call.timer, |e: &reqwest::Error| {
                error_chain(e)
            })
            .await
            .first(self)?;
            framer.push(&chunk);
            match framer.take()? {
                Some((bytes, Seen::Nothing)) => lead.extend_from_slice(&bytes),
                Some((bytes, seen)) if lead.is_empty() => break (bytes, seen),
                Some((bytes, seen)) => {
                    lead.extend_from_slice(&bytes);
                    break (lead.freeze(), seen);
                }
                None => {}
            }
        };
        let timer = call.timer.clone();
        let rest: ByteStream = if seen == Seen::Done {
            futures_util::stream::empty().boxed()
        } else {
            async_stream::stream! {
                loop {
                    match framer.take() {
                        Err(e) => {
                            yield Err(e);
                            break;
                        }
                        Ok(Some((bytes, seen))) => {
                            yield Ok(bytes);
                            if seen == Seen::Done {
                                break;
                            }
                            continue;
                        }
                        Ok(None) => {}
                    }
                    match wait_next(&mut body, idle, &timer, |e: &reqwest::Error| error_chain(e)).await.mid_stream(&name, idle) {
                        Ok(chunk) => framer.push(&chunk),
                        Err(e) => {
                            yield Err(e);
                            break;
                        }
                    }
                }
            }
            .boxed()
        };
        Ok(RawStreamReply {
            headers,
            first,
            rest,
        })
    }

    /// A streamed chat completion. Returns once the first event arrived (so that retries and
    /// error statuses are still possible), with that event and the rest of the stream.
    pub async fn chat_stream(&self, call: ChatCall) -> Result<StreamReply, UpstreamError> {
        let (resp, headers, first_byte_deadline) = self.open_stream(&call).await?;
        let name = self.name().to_owned();
        let idle = self.config.stream_idle_timeout();
        let mut events = resp.bytes_stream().eventsource();

        // The first event, within the first-byte deadline.
        let limit = first_byte_deadline.saturating_duration_since(Instant::now());
        let ev = wait_next(&mut events, limit, &call.timer, display)
            .await
            .first(self)?;
        let first = classify(&ev.data, &ev.event, &ev.id)?;

        let timer = call.timer.clone();
        let rest: EventStream = if first == StreamEvent::Done {
            futures_util::stream::empty().boxed()
        } else {
            async_stream::stream! {
                loop {
                    let next = wait_next(&mut events, idle, &timer, display).await;
                    match next.mid_stream(&name, idle).and_then(|ev| classify(&ev.data, &ev.event, &ev.id)) {
                            Ok(StreamEvent::Done) => {
                                yield Ok(StreamEvent::Done);
                                break;
                            }
                            Ok(ev) => yield Ok(ev),
                            Err(e) => {
                                yield Err(e);
                                break;
                            }
                    }
                }
            }
            .boxed()
        };
        Ok(StreamReply {
            headers,
            first,
            rest,
        })
    }

    /// The upstream's own model list (`GET /models`), as OpenAI model objects.
    pub async fn list_models(&self) -> Result<Vec<serde_json::Value>, String> {
        let mut req = self.client.get(self.models_url.clone()).timeout(
            self.config
                .first_byte_timeout()
                .min(Duration::from_secs(10)),
        );
        if let Some(auth) = &self.auth {
            req = req.header(header::AUTHORIZATION, auth.clone());
        }
        let resp = req.send().await.map_err(|e| error_chain(&e))?;
        if !resp.status().is_success() {
            return Err(format!("GET /models answered {}", resp.status()));
        }
        let bytes = read_capped(resp, self.config.max_response_bytes)
            .await
            .map_err(|e| match e {
                Capped::TooLarge => "GET /models answered with more than max_response_bytes".into(),
                Capped::Failed(e) => error_chain(&e),
            })?;
        let body: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("GET /models: {e}"))?;
        match body.get("data").and_then(|d| d.as_array()) {
            Some(list) => Ok(list.clone()),
            None => Err("GET /models did not return a list".into()),
        }
    }

    /// Reachability for `/readyz`: any HTTP answer counts, an auth error included.
    pub async fn probe(&self) -> Result<(), String> {
        let mut req = self
            .client
            .get(self.models_url.clone())
            .timeout(Duration::from_secs(2));
        if let Some(auth) = &self.auth {
            req = req.header(header::AUTHORIZATION, auth.clone());
        }
        req.send().await.map(|_| ()).map_err(|e| error_chain(&e))
    }
}

enum Capped {
    TooLarge,
    Failed(reqwest::Error),
}

/// The whole body, or `TooLarge` as soon as it passes `limit` bytes (never holding more).
async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Result<Bytes, Capped> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(Capped::TooLarge);
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(Capped::Failed)? {
        if buf.len() + chunk.len() > limit {
            return Err(Capped::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

/// Read at most `limit` bytes of a body.
async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Bytes, String> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| error_chain(&e))? {
        let room = limit.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= limit {
            break;
        }
    }
    Ok(Bytes::from(buf))
}

/// How one wait for the next item of an upstream stream ended.
enum Waited<T> {
    Item(T),
    TimedOut,
    Closed,
    Failed(String),
}

/// Wait up to `limit` for the stream's next item, the wait counted as upstream time; a
/// failure is described by `describe` (reqwest errors with their sources).
async fn wait_next<S, T, E>(
    stream: &mut S,
    limit: Duration,
    timer: &UpstreamTimer,
    describe: fn(&E) -> String,
) -> Waited<T>
where
    S: futures_util::Stream<Item = Result<T, E>> + Unpin,
{
    let waited_from = Instant::now();
    let next = tokio::time::timeout(limit, stream.next()).await;
    timer.add(waited_from.elapsed());
    match next {
        Err(_) => Waited::TimedOut,
        Ok(None) => Waited::Closed,
        Ok(Some(Err(e))) => Waited::Failed(describe(&e)),
        Ok(Some(Ok(item))) => Waited::Item(item),
    }
}

impl<T> Waited<T> {
    /// Before the first event: still an error status (and retryable by the client).
    fn first(self, upstream: &HttpUpstream) -> Result<T, ApiError> {
        let name = upstream.name();
        match self {
            Waited::Item(item) => Ok(item),
            Waited::TimedOut => Err(upstream.timeout(true)),
            Waited::Closed => Err(ApiError::bad_gateway(format!(
                "upstream {name} closed the stream before sending any event"
            ))),
            Waited::Failed(e) => Err(ApiError::bad_gateway(format!(
                "upstream {name} stream failed: {e}"
            ))),
        }
    }

    /// After the first event: the error the client's stream ends with.
    fn mid_stream(self, name: &str, idle: Duration) -> Result<T, ApiError> {
        match self {
            Waited::Item(item) => Ok(item),
            Waited::TimedOut => Err(ApiError::gateway_timeout(format!(
                "upstream {name} sent nothing for {} ms mid-stream",
                idle.as_millis()
            ))),
            Waited::Closed => Err(ApiError::bad_gateway(format!(
                "upstream {name} closed the stream before it finished"
            ))),
            Waited::Failed(e) => Err(ApiError::bad_gateway(format!(
                "upstream {name} stream broke off: {e}"
            ))),
        }
    }
}

fn display<E: std::fmt::Display>(e: &E) -> String {
    e.to_string()
}

/// An error with its sources, e.g. "error sending request: connection refused".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
