//! The route table: each path once, with the layers that guard it. Logic lives in the handlers.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::services::ServeDir;

use super::{
    AppState, admin, auth, chat, decisions, health, me, models, observe, openapi, profiles,
    rewrite, stats, values,
};
use crate::error::{ApiError, ErrorKind};

pub const CHAT_COMPLETIONS: &str = "/v1/chat/completions";
pub const MODELS: &str = "/v1/models";
pub const TENANTS: &str = "/v1/tenants";
pub const TENANT_PROFILE: &str = "/v1/tenants/{tenant_id}/profile";
pub const TENANT_PROFILE_HISTORY: &str = "/v1/tenants/{tenant_id}/profile/history";
pub const OWN_PROFILE: &str = "/v1/profile";
pub const OWN_PROFILE_HISTORY: &str = "/v1/profile/history";
pub const ME: &str = "/v1/me";
pub const STATS: &str = "/v1/stats";
pub const DECISIONS: &str = "/v1/decisions";
pub const VALUES: &str = "/v1/values";
pub const VALUES_DETECT: &str = "/v1/values/detect";
pub const VALUES_REWRITE: &str = "/v1/values/rewrite";
pub const PROFILES_TRANSLATE: &str = "/v1/profiles/translate";
pub const HEALTHZ: &str = "/healthz";
pub const READYZ: &str = "/readyz";
pub const METRICS: &str = "/metrics";
pub const OPENAPI: &str = "/openapi.json";

pub fn router(state: AppState) -> Router {
    // Tenant routes: a tenant API key, the tenant's own limits.
    let tenant_routes = Router::new()
        .route(CHAT_COMPLETIONS, post(chat::chat_completions))
        .route(MODELS, get(models::list_models))
        .route(
            OWN_PROFILE,
            get(profiles::tenant_get)
                .put(profiles::tenant_put)
                .patch(profiles::tenant_patch),
        )
        .route(OWN_PROFILE_HISTORY, get(profiles::tenant_history))
        .route_layer(from_fn_with_state(state.clone(), auth::tenant_auth));
    // Routes for either key.
    let shared_routes = Router::new()
        .route(VALUES, get(profiles::list_values))
        .route(VALUES_DETECT, post(values::detect))
        .route(VALUES_REWRITE, post(rewrite::rewrite))
        .route(PROFILES_TRANSLATE, post(values::translate))
        .route(ME, get(me::me))
        .route(STATS, get(stats::stats))
        .route(DECISIONS, get(decisions::list))
        .route_layer(from_fn_with_state(state.clone(), auth::any_auth));
    // Management routes: the admin key.
    let admin_routes = Router::new()
        .route(TENANTS, get(admin::list_tenants))
        .route(
            TENANT_PROFILE,
            get(profiles::admin_get)
                .put(profiles::admin_put)
                .patch(profiles::admin_patch)
                .delete(profiles::admin_delete),
        )
        .route(TENANT_PROFILE_HISTORY, get(profiles::admin_history))
        .route_layer(from_fn_with_state(state.clone(), auth::admin_auth));
    // Metrics name every tenant: the admin key (Prometheus sends it as a bearer token).
    let metrics = Router::new()
        .route(METRICS, get(health::metrics))
        .route_layer(from_fn_with_state(state.clone(), auth::admin_auth));
    // Everything under /v1 counts against the global concurrency limit.
    let api = tenant_routes
        .merge(admin_routes)
        .merge(shared_routes)
        .route_layer(from_fn_with_state(state.clone(), observe::shed_load));
    // Open routes: no key.
    let open = Router::new()
        .route(HEALTHZ, get(health::healthz))
        .route(READYZ, get(health::readyz))
        .route(OPENAPI, get(openapi::openapi_json));
    // The web console, with its security headers.
    let console = Router::new()
        .route("/", get(health::index))
        .nest_service("/static", ServeDir::new(&state.config.server.static_dir))
        .layer(axum::middleware::map_response(console_headers));
    let open = open.merge(console).merge(metrics);

    open.merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.server.max_body_bytes))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(from_fn_with_state(state.clone(), observe::observe))
        .with_state(state)
}

/// The console's own files only (no inline scripts, no other origins), never framed, and no
/// Referer that could carry anything out.
async fn console_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(ErrorKind::NotFound, format!("no route for {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a handler panicked");
    ApiError::internal("internal error").into_response()
}
