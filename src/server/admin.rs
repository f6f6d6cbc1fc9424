//! Management routes, guarded by the admin key.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;

#[utoipa::path(get, path = "/v1/tenants", tag = "admin",
    responses(
        (status = 200, description = "Every tenant with its upstreams, limits and live counters", body = crate::server::openapi::TenantList),
        (status = 401, description = "No or wrong admin key, or the admin API is disabled (VISA_ADMIN_KEY unset)", body = crate::server::openapi::ErrorResponse),
        (status = 403, description = "A tenant key was sent", body = crate::server::openapi::ErrorResponse),
    ),
    security(("admin" = [])))]
pub async fn list_tenants(State(state): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = state
        .tenants
        .list()
        .iter()
        .map(|t| {
            json!({
                "id": t.id,
                "upstreams": t.upstreams,
                "limits": {
                    "max_concurrent": t.limits.max_concurrent,
                    "requests_per_minute": t.limits.requests_per_minute,
                },
                "in_flight": t.in_flight(),
                "admitted_total": t.admitted_total(),
                "self_manage_profile": t.self_manage_profile,
                "profile": state.profiles.get(&t.id).map(|p| json!({
                    "action": p.action,
                    "fallback": p.fallback,
                    "stream_mode": p.stream_mode,
                    "version": p.version,
                    "updated_at": p.updated_at,
                    "values": p.values.len(),
                })),
            })
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}
