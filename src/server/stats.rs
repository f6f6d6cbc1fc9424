//! `GET /v1/stats`: enforcement figures as JSON (actions per tenant and per value, time per
//! stage) for the web console's overview. The admin sees every tenant; a tenant key only its own.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Caller;

#[utoipa::path(get, path = "/v1/stats", tag = "admin",
    responses(
        (status = 200, description = "Per tenant: answers by action, actions per value, time per enforcement stage (recent p50/p95), requests admitted, and the proxy's uptime", body = Object,
            example = json!({"object":"stats","uptime_s":3600,"tenants":[{"tenant_id":"acme","requests_admitted":12,"actions":{"passed":9,"rewritten":2,"fallback":1},"values":{"power":{"rewritten":2,"fallback":1}},"stages":{"detect":{"count":12,"mean_ms":181.0,"p50_ms":175.2,"p95_ms":240.9,"max_ms":260.0}},"held_back_chars":0}]})),
        (status = 401, description = "No or unknown key", body = crate::server::openapi::ErrorResponse),
    ),
    security(("bearer" = []), ("admin" = [])))]
pub async fn stats(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Json<Value> {
    let tenants: Vec<_> = match &caller {
        Caller::Admin => state.tenants.list(),
        Caller::Tenant(t) => vec![t.clone()],
    };
    let data: Vec<Value> = tenants
        .iter()
        .map(|t| {
            let mut v = serde_json::to_value(state.metrics.stats.tenant(&t.id)).unwrap_or_default();
            v["requests_admitted"] = json!(t.admitted_total());
            v
        })
        .collect();
    Json(json!({
        "object": "stats",
        "uptime_s": state.started.elapsed().as_secs(),
        "tenants": data,
    }))
}
