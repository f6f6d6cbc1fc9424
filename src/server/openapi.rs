//! The OpenAPI document, generated from the handlers' annotations, and the schemas it names.
//! `visa-proxy openapi` prints it; `openapi/openapi.json` is the committed copy.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

pub use crate::error::{ErrorObject, ErrorResponse};

// The chat body is forwarded as bytes (server/chat_body.rs reads its few fields) and the
// upstream's answer passed on (or edited) as JSON, not rebuilt: these two types document them.

/// A chat-completions request as OpenAI defines it. Only `model`, `messages`, `stream` and
/// `stream_options` are read by the proxy; every other field (tools, tool_choice,
/// response_format, n, logprobs, seed, ...) is forwarded unchanged.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}],"stream":false}))]
pub struct ChatCompletionRequest {
    /// A model name or a configured alias.
    pub model: String,
    #[schema(value_type = Vec<Object>)]
    pub messages: Vec<serde_json::Value>,
    pub stream: Option<bool>,
    #[schema(value_type = Option<Object>)]
    pub stream_options: Option<serde_json::Value>,
}

/// A chat completion as the upstream returned it.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}))]
pub struct ChatCompletion {
    pub id: String,
    pub object: String,
    pub created: i64,
    pub model: String,
    #[schema(value_type = Vec<Object>)]
    pub choices: Vec<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    pub usage: Option<serde_json::Value>,
}

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A tenant API key, as OpenAI SDKs send it"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The admin key from VISA_ADMIN_KEY"))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "visa-proxy",
        description = "OpenAI-compatible proxy that enforces per-tenant value profiles on LLM answers.",
        license(name = "Apache-2.0")
    ),
    paths(
        crate::server::chat::chat_completions,
        crate::server::models::list_models,
        crate::server::admin::list_tenants,
        crate::server::profiles::admin_get,
        crate::server::profiles::admin_put,
        crate::server::profiles::admin_patch,
        crate::server::profiles::admin_delete,
        crate::server::profiles::admin_history,
        crate::server::profiles::tenant_get,
        crate::server::profiles::tenant_put,
        crate::server::profiles::tenant_patch,
        crate::server::profiles::tenant_history,
        crate::server::me::me,
        crate::server::stats::stats,
        crate::server::decisions::list,
        crate::server::profiles::list_values,
        crate::server::values::detect,
        crate::server::rewrite::rewrite,
        crate::server::values::translate,
        crate::server::health::healthz,
        crate::server::health::readyz,
        crate::server::health::metrics,
        openapi_json,
    ),
    components(schemas(ErrorResponse, ErrorObject, ChatCompletionRequest, ChatCompletion,
        crate::server::models::ModelList, crate::server::admin::TenantList, crate::server::admin::TenantInfo,
        crate::values::profile::ProfileFields, crate::values::profile::PartialTarget,
        crate::server::profiles::ProfilePatchBody, crate::server::profiles::InstructionPatch,
        crate::values::Profile, crate::values::ValueTarget, crate::values::Action, crate::values::Fallback,
        crate::values::StreamMode, crate::values::ValueId, crate::values::ValueVector,
        crate::values::profile::LogDecisions, crate::values::profile::LogText,
        crate::decisions::DecisionRecord, crate::decisions::DecisionText,
        crate::server::values::DetectRequest, crate::server::values::TranslateRequest,
        crate::server::rewrite::RewriteRequest)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "chat", description = "OpenAI-compatible endpoints"),
        (name = "admin", description = "Management, with the admin key"),
        (name = "profiles", description = "Value profiles: per-tenant targets, weights, tolerances and actions"),
        (name = "values", description = "The 10 Schwartz values and the detector"),
        (name = "decisions", description = "The decision log: what enforcement changed in answers, and why"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    )
)]
pub struct ApiDoc;

/// The document as pretty JSON with a trailing newline, as committed.
pub fn document() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let mut text = doc.to_pretty_json().unwrap_or_else(|_| "{}".to_owned());
    text.push('\n');
    text
}

#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This OpenAPI document", body = Object)))]
pub async fn openapi_json() -> Response {
    static DOC: OnceLock<String> = OnceLock::new();
    let doc = DOC.get_or_init(document).clone();
    ([(header::CONTENT_TYPE, "application/json")], doc).into_response()
}
