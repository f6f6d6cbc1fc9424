//! `GET /v1/stats`: enforcement figures as JSON (actions per tenant and per value, time per
//! stage) for the web console's overview. The admin sees every tenant; a tenant key only its own.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::AppState;
use super::auth::Caller;
use crate::stats::TenantSummary;

/// What `GET /v1/stats` answers.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"object":"stats","uptime_s":3600,"tenants":[{"tenant_id":"acme","requests_admitted":12,"actions":{"passed":9,"rewritten":2,"fallback":1},"values":{"power":{"rewritten":2,"fallback":1}},"stages":{"detect":{"count":12,"mean_ms":181.0,"p50_ms":175.2,"p95_ms":240.9,"max_ms":260.0}},"held_back_chars":0}]}))]
pub struct StatsReport {
    /// Always `stats`.
    pub object: &'static str,
    /// Seconds since this replica started.
    pub uptime_s: u64,
    pub tenants: Vec<TenantReport>,
}

/// One tenant's figures on this replica.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TenantReport {
    #[serde(flatten)]
    pub figures: TenantSummary,
    /// Requests admitted since this replica started.
    pub requests_admitted: u64,
}

#[utoipa::path(get, path = "/v1/stats", tag = "admin",
    responses(
        (status = 200, description = "Per tenant: answers by action, actions per value, time per enforcement stage (recent p50/p95), requests admitted, and the proxy's uptime", body = StatsReport),
        (status = 401, description = "No or unknown key", body = crate::server::openapi::ErrorResponse),
    ),
    security(("bearer" = []), ("admin" = [])))]
pub async fn stats(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Json<StatsReport> {
    let tenants: Vec<_> = match &caller {
        Caller::Admin => state.tenants.list(),
        Caller::Tenant(t) => vec![t.clone()],
    };
    let tenants = tenants
        .iter()
        .map(|t| TenantReport {
            figures: state.metrics.stats.tenant(&t.id),
            requests_admitted: t.admitted_total(),
        })
        .collect();
    Json(StatsReport {
        object: "stats",
        uptime_s: state.started.elapsed().as_secs(),
        tenants,
    })
}
