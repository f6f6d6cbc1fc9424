//! Routes for operators: liveness and readiness (open; readiness in detail only for the admin
//! key, probed at most every few seconds), Prometheus metrics (the admin key), and the landing
//! page.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use std::collections::BTreeMap;

use serde::Serialize;

use super::AppState;

/// How long a readiness probe of the upstreams is reused.
pub const READY_CACHE: std::time::Duration = std::time::Duration::from_secs(5);

/// What `/healthz` answers.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"status":"ok"}))]
pub struct Health {
    /// Always `ok`.
    pub status: &'static str,
}

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is alive", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// What `/readyz` answers; the fields after `status` only for the admin key.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    /// Per upstream: `ok`, `skipped`, or `unreachable: ...`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstreams: Option<BTreeMap<String, String>>,
    /// The PostgreSQL store's change feed: `none`, `connected` or `disconnected`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile_feed: Option<&'static str>,
    /// Where tenant limits are counted: `local`, `redis`, or `redis unreachable: per-replica
    /// limits`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<&'static str>,
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Configuration loaded and every upstream reachable (or its check skipped). Anonymous callers get the status only; with the admin key, each upstream's outcome and whether the profile change feed (PostgreSQL store) is connected: `none`, `connected` or `disconnected`; and where tenant limits are counted: `local`, `redis`, or `redis unreachable: per-replica limits`. Probes are reused for 5 s.", body = Readiness,
            example = json!({"status":"ready","upstreams":{"openai":"ok","local-vllm":"skipped"},"profile_feed":"none","limits":"local"})),
        (status = 503, description = "Some upstream cannot be reached", body = Readiness,
            example = json!({"status":"not_ready","upstreams":{"openai":"unreachable: connection refused"}})),
    ))]
pub async fn readyz(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let (ready, upstreams) = {
        let cached = state
            .ready_cache
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .filter(|(at, _, _)| at.elapsed() < READY_CACHE);
        match cached {
            Some((_, ready, upstreams)) => (ready, upstreams),
            None => {
                let (ready, upstreams) = probe_all(&state).await;
                if let Ok(mut c) = state.ready_cache.lock() {
                    *c = Some((std::time::Instant::now(), ready, upstreams.clone()));
                }
                (ready, upstreams)
            }
        }
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = if ready { "ready" } else { "not_ready" };
    let body = if super::auth::is_admin(&state, &headers) {
        let feed = match state.profiles.feed() {
            crate::store::FeedState::None => "none",
            crate::store::FeedState::Connected => "connected",
            crate::store::FeedState::Disconnected => "disconnected",
        };
        Readiness {
            status: word,
            upstreams: Some(upstreams),
            profile_feed: Some(feed),
            limits: Some(state.limits.state().as_str()),
        }
    } else {
        Readiness {
            status: word,
            upstreams: None,
            profile_feed: None,
            limits: None,
        }
    };
    (status, Json(body)).into_response()
}

/// Probe every upstream (with its key): ready, and each one's outcome in words.
async fn probe_all(state: &AppState) -> (bool, BTreeMap<String, String>) {
    let checks =
        futures_util::future::join_all(state.upstreams.all().into_iter().map(|u| async move {
            let outcome = if u.config().skip_readiness_check {
                Ok("skipped".to_owned())
            } else {
                u.probe().await.map(|()| "ok".to_owned())
            };
            (u.name().to_owned(), outcome)
        }))
        .await;
    let mut ready = true;
    let mut upstreams = BTreeMap::new();
    for (name, outcome) in checks {
        let text = match outcome {
            Ok(s) => s,
            Err(e) => {
                ready = false;
                format!("unreachable: {e}")
            }
        };
        upstreams.insert(name, text);
    }
    (ready, upstreams)
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition (it names every tenant, so it needs the admin key)", content_type = "text/plain", body = String),
        (status = 401, description = "No admin key, or a wrong one", body = crate::server::openapi::ErrorResponse),
        (status = 403, description = "A tenant key", body = crate::server::openapi::ErrorResponse),
    ),
    security(("admin" = [])))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// `/`: the console's entry page when `static/index.html` exists.
pub async fn index(State(state): State<AppState>) -> Response {
    let path = std::path::Path::new(&state.config.server.static_dir).join("index.html");
    match tokio::fs::read_to_string(&path).await {
        Ok(html) => Html(html).into_response(),
        Err(_) => crate::error::ApiError::new(
            crate::error::ErrorKind::NotFound,
            "no console is installed (static/index.html)",
        )
        .into_response(),
    }
}
