//! Per-request bookkeeping: request id, tracing span, access log, metrics (measured when the
//! response body ends, so streams count in full), and global load shedding.

use std::sync::atomic::AtomicI64;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use prometheus_client::metrics::gauge::Gauge;
use tracing::Instrument;

use super::AppState;
use crate::error::{ApiError, ErrorCode, ErrorKind};
use crate::upstream::UpstreamTimer;

/// The request id: the client's `x-request-id` when it is sane, else a new UUID.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// Set by the auth layer on the response so metrics and logs can name the tenant.
#[derive(Clone, Debug)]
pub struct TenantLabel(pub String);

const REQUEST_ID: &str = "x-request-id";

fn request_id(req: &Request) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// Keep `guard` alive until the response body has been sent or dropped.
pub fn attach_guard<G: Send + 'static>(response: Response, guard: G) -> Response {
    let (parts, body) = response.into_parts();
    let body = body.map_frame(move |frame| {
        let _keep = &guard;
        frame
    });
    Response::from_parts(parts, axum::body::Body::new(body))
}

struct Finished {
    state: AppState,
    route: String,
    method: Method,
    status: u16,
    tenant: String,
    error_code: Option<&'static str>,
    start: Instant,
    timer: UpstreamTimer,
    gauge: Gauge<i64, AtomicI64>,
    span: tracing::Span,
    request_id: String,
}

impl Drop for Finished {
    fn drop(&mut self) {
        let total = self.start.elapsed();
        let upstream = self.timer.total();
        self.gauge.dec();
        self.state.metrics.finished(
            &self.route,
            self.method.as_str(),
            self.status,
            &self.tenant,
            total,
            upstream,
        );
        let _enter = self.span.enter();
        tracing::info!(
            request_id = %self.request_id,
            method = %self.method,
            route = %self.route,
            status = self.status,
            tenant = %self.tenant,
            error = self.error_code.unwrap_or(""),
            total_ms = total.as_secs_f64() * 1e3,
            upstream_ms = upstream.as_secs_f64() * 1e3,
            "request finished"
        );
    }
}

pub async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().clone();
    let id = request_id(&req);
    let timer = UpstreamTimer::default();
    req.extensions_mut().insert(RequestId(id.clone()));
    req.extensions_mut().insert(timer.clone());
    let gauge = state.metrics.in_flight(&route);
    gauge.inc();
    // A span per request costs measurable time at info level; it exists at debug level, and
    // the access log line below carries the same fields.
    let span = tracing::debug_span!("request", request_id = %id, method = %method, route = %route);
    let mut response = next.run(req).instrument(span.clone()).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    let finished = Finished {
        route,
        method,
        status: response.status().as_u16(),
        tenant: response
            .extensions()
            .get::<TenantLabel>()
            .map(|t| t.0.clone())
            .unwrap_or_else(|| "-".to_owned()),
        error_code: response.extensions().get::<ErrorCode>().map(|c| c.0),
        start,
        timer,
        gauge,
        span,
        state,
        request_id: id,
    };
    attach_guard(response, finished)
}

/// Global admission: past `server.max_concurrent_requests` in flight, answer 429 at once.
pub async fn shed_load(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match state.admission.clone().try_acquire_owned() {
        Ok(permit) => attach_guard(next.run(req).await, permit),
        Err(_) => {
            state.metrics.rejected("overloaded");
            ApiError::new(
                ErrorKind::Overloaded,
                format!(
                    "the proxy is at its limit of {} concurrent requests; retry shortly",
                    state.config.server.max_concurrent_requests
                ),
            )
            .into_response()
        }
    }
}
