//! `GET /v1/me`: who a key belongs to (the admin, or which tenant and what it may do), so a
//! client such as the web console can sign in with either kind of key.

use axum::Extension;
use axum::Json;
use serde_json::{Value, json};

use super::auth::Caller;

#[utoipa::path(get, path = "/v1/me", tag = "admin",
    responses(
        (status = 200, description = "The caller: the admin, or a tenant with what it may do", body = Object,
            example = json!({"object":"caller","kind":"tenant","tenant_id":"acme","self_manage_profile":true,"upstreams":["openai"]})),
        (status = 401, description = "No or unknown key", body = crate::server::openapi::ErrorResponse),
    ),
    security(("bearer" = []), ("admin" = [])))]
pub async fn me(Extension(caller): Extension<Caller>) -> Json<Value> {
    Json(match caller {
        Caller::Admin => json!({"object": "caller", "kind": "admin"}),
        Caller::Tenant(t) => json!({
            "object": "caller",
            "kind": "tenant",
            "tenant_id": t.id,
            "self_manage_profile": t.self_manage_profile,
            "upstreams": t.upstreams,
        }),
    })
}
