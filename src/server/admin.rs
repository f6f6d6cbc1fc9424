//! Management routes, guarded by the admin key.

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::AppState;
use crate::config::TenantLimits;
use crate::values::{Action, Fallback, StreamMode};

/// `GET /v1/tenants`: every tenant.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"object":"list","data":[{"id":"acme","upstreams":["openai"],"limits":{"max_concurrent":16,"requests_per_minute":600},"in_flight":0,"admitted_total":42,"self_manage_profile":true,"profile":{"action":"rewrite","fallback":"original","stream_mode":"window","version":3,"updated_at":1764320000,"values":2}}]}))]
pub struct TenantList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<TenantInfo>,
}

/// One tenant: its config and live counters, and a summary of its profile.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TenantInfo {
    pub id: String,
    /// The upstreams it may use, in order.
    pub upstreams: Vec<String>,
    pub limits: TenantLimits,
    /// Requests of this tenant in flight on this replica.
    pub in_flight: u64,
    /// Requests admitted on this replica since it started.
    pub admitted_total: u64,
    /// Whether its own key may change its profile.
    pub self_manage_profile: bool,
    /// Its profile's settings (not its targets), or null when it has none.
    pub profile: Option<ProfileSummary>,
}

/// What `GET /v1/tenants` shows of a profile.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ProfileSummary {
    pub action: Action,
    pub fallback: Fallback,
    pub stream_mode: StreamMode,
    pub version: u64,
    pub updated_at: i64,
    /// How many values it constrains.
    pub values: usize,
}

#[utoipa::path(get, path = "/v1/tenants", tag = "admin",
    responses(
        (status = 200, description = "Every tenant with its upstreams, limits and live counters", body = TenantList),
        (status = 401, description = "No or wrong admin key, or the admin API is disabled (VISA_ADMIN_KEY unset)", body = crate::server::openapi::ErrorResponse),
        (status = 403, description = "A tenant key was sent", body = crate::server::openapi::ErrorResponse),
    ),
    security(("admin" = [])))]
pub async fn list_tenants(State(state): State<AppState>) -> Json<TenantList> {
    let data = state
        .tenants
        .list()
        .iter()
        .map(|t| TenantInfo {
            id: t.id.clone(),
            upstreams: t.upstreams.clone(),
            limits: t.limits.clone(),
            in_flight: t.in_flight(),
            admitted_total: t.admitted_total(),
            self_manage_profile: t.self_manage_profile,
            profile: state.profiles.get(&t.id).map(|p| ProfileSummary {
                action: p.action,
                fallback: p.fallback,
                stream_mode: p.stream_mode,
                version: p.version,
                updated_at: p.updated_at,
                values: p.values.len(),
            }),
        })
        .collect();
    Json(TenantList {
        object: "list",
        data,
    })
}
