//! Authentication: tenant API keys (with the tenant's limits) and the admin key.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::observe::{TenantLabel, attach_guard};
use crate::config::hash_key;
use crate::error::{ApiError, ErrorKind};

/// The key of an `Authorization: Bearer <key>` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let key = key.trim();
    (!key.is_empty()).then_some(key)
}

fn unauthorized(message: &str) -> Response {
    ApiError::new(ErrorKind::Unauthorized, message).into_response()
}

/// Who called a route that takes either kind of key.
#[derive(Clone, Debug)]
pub enum Caller {
    Admin,
    Tenant(std::sync::Arc<crate::tenants::Tenant>),
}

/// Whether the request carries the admin key.
pub fn is_admin(state: &AppState, headers: &axum::http::HeaderMap) -> bool {
    matches!((state.admin_key_hash, bearer(headers)), (Some(expected), Some(key)) if hash_key(key) == expected)
}

/// Routes open to the admin key and to tenant keys (tenants under their limits).
pub async fn any_auth(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if let (Some(expected), Some(key)) = (state.admin_key_hash, bearer(req.headers()))
        && hash_key(key) == expected
    {
        req.extensions_mut().insert(Caller::Admin);
        return next.run(req).await;
    }
    tenant_auth(State(state), req, next).await
}

/// Tenant routes: resolve the key to a tenant, admit the request under the tenant's limits, and
/// hand the tenant to the handler.
pub async fn tenant_auth(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(key) = bearer(req.headers()) else {
        state.metrics.rejected("missing_key");
        return unauthorized(
            "You didn't provide an API key. Send it in an Authorization header: 'Authorization: Bearer YOUR_KEY'.",
        );
    };
    let Some(tenant) = state.tenants.authenticate(key) else {
        state.metrics.rejected("invalid_key");
        return unauthorized("Incorrect API key provided.");
    };
    let label = TenantLabel(tenant.id.clone());
    let admission = match state.limits.admit(&tenant).await {
        Ok(a) => a,
        Err(e) => {
            state.metrics.rejected(match e.kind {
                ErrorKind::RateLimited { .. } => "tenant_rate_limit",
                _ => "tenant_concurrency_limit",
            });
            let mut response = e.into_response();
            response.extensions_mut().insert(label);
            return response;
        }
    };
    req.extensions_mut().insert(Caller::Tenant(tenant.clone()));
    req.extensions_mut().insert(tenant);
    let mut response = next.run(req).await;
    response.extensions_mut().insert(label);
    attach_guard(response, admission)
}

/// Management routes: only the admin key from `VISA_ADMIN_KEY`.
pub async fn admin_auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(expected) = state.admin_key_hash else {
        state.metrics.rejected("admin_disabled");
        return unauthorized("The admin API is disabled: start the proxy with VISA_ADMIN_KEY set.");
    };
    let Some(key) = bearer(req.headers()) else {
        state.metrics.rejected("missing_key");
        return unauthorized("This route needs the admin key: 'Authorization: Bearer ADMIN_KEY'.");
    };
    // Digests are compared, so the comparison's timing says nothing about the key.
    if hash_key(key) != expected {
        if state.tenants.authenticate(key).is_some() {
            state.metrics.rejected("forbidden");
            return ApiError::new(
                ErrorKind::Forbidden,
                "This is a tenant key; this route needs the admin key.",
            )
            .into_response();
        }
        state.metrics.rejected("invalid_key");
        return unauthorized("Incorrect admin key provided.");
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn parses_bearer() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk-1"),
        );
        assert_eq!(bearer(&h), Some("sk-1"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  sk-2 "),
        );
        assert_eq!(bearer(&h), Some("sk-2"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);
    }
}
