//! `GET /v1/me`: who a key belongs to (the admin, or which tenant and what it may do), so a
//! client such as the web console can sign in with either kind of key.

use axum::Extension;
use axum::Json;
use serde::Serialize;

use super::auth::Caller;

/// The caller of `GET /v1/me`.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"object":"caller","kind":"tenant","tenant_id":"acme","self_manage_profile":true,"upstreams":["openai"]}))]
pub struct CallerInfo {
    /// Always `caller`.
    pub object: &'static str,
    /// `admin` or `tenant`.
    pub kind: &'static str,
    /// The tenant's id (tenants only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Whether the tenant may change its own profile (tenants only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub self_manage_profile: Option<bool>,
    /// The upstreams the tenant may use (tenants only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstreams: Option<Vec<String>>,
}

#[utoipa::path(get, path = "/v1/me", tag = "admin",
    responses(
        (status = 200, description = "The caller: the admin, or a tenant with what it may do", body = CallerInfo),
        (status = 401, description = "No or unknown key", body = crate::server::openapi::ErrorResponse),
    ),
    security(("bearer" = []), ("admin" = [])))]
pub async fn me(Extension(caller): Extension<Caller>) -> Json<CallerInfo> {
    Json(match caller {
        Caller::Admin => CallerInfo {
            object: "caller",
            kind: "admin",
            tenant_id: None,
            self_manage_profile: None,
            upstreams: None,
        },
        Caller::Tenant(t) => CallerInfo {
            object: "caller",
            kind: "tenant",
            tenant_id: Some(t.id.clone()),
            self_manage_profile: Some(t.self_manage_profile),
            upstreams: Some(t.upstreams.clone()),
        },
    })
}
