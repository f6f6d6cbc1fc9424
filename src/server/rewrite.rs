//! `POST /v1/values/rewrite`: run the rewriter and the shield on one text against a profile
//! (inline, a tenant's, or the caller's own) and show every candidate's scores.

use std::time::Instant;

use axum::Extension;
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Caller;
use super::extract::TypedBody;
use crate::config::RewriteMode;
use crate::edit::{EditRequest, Editor, Scope};
use crate::enforce::{REFUSAL, VisaAction};
use crate::error::{ApiError, ErrorKind};
use crate::rewriter::Decision;
use crate::values::profile::{Fallback, Profile, ProfileFields, ProfileSpec};

fn unprocessable(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::Unprocessable, message).with_param(param)
}

/// The profile the request names: inline, a tenant's (admin, or the caller itself), or the
/// caller's own.
fn profile_of(
    state: &AppState,
    caller: &Caller,
    body: &RewriteRequest,
) -> Result<std::sync::Arc<Profile>, ApiError> {
    let tenant_id = body.tenant_id.clone();
    match (body.profile.as_ref(), tenant_id) {
        (Some(_), Some(_)) => Err(ApiError::invalid_request(
            "send 'profile' or 'tenant_id', not both",
        )
        .with_param("tenant_id")),
        (Some(p), None) => {
            let spec = ProfileSpec::from_fields(p.clone()).map_err(|e| e.within("profile"))?;
            Ok(std::sync::Arc::new(Profile::from_spec(spec, 0, 0)))
        }
        (None, id) => {
            let id = match (caller, id) {
                (Caller::Admin, Some(id)) => id,
                (Caller::Admin, None) => {
                    return Err(unprocessable(
                        "profile",
                        "the admin key must send 'profile' or 'tenant_id'",
                    ));
                }
                (Caller::Tenant(t), Some(id)) if id != t.id => {
                    return Err(ApiError::new(
                        ErrorKind::Forbidden,
                        "a tenant key may only use its own profile",
                    )
                    .with_param("tenant_id"));
                }
                (Caller::Tenant(t), _) => t.id.clone(),
            };
            state.profiles.get(&id).ok_or_else(|| {
                ApiError::new(
                    ErrorKind::NotFound,
                    format!("tenant {id:?} has no value profile"),
                )
                .with_param("tenant_id")
            })
        }
    }
}

/// `POST /v1/values/rewrite`: a text and the profile to enforce on it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"text": "Buy the premium plan to show everyone you are ahead.", "profile": {"values": {"power": {"target": 0.1, "tolerance": 0.1}, "benevolence": {"target": 0.8}}, "action": "rewrite"}}))]
pub struct RewriteRequest {
    /// The text to enforce the profile on; at most `rewriter.max_text_chars` characters.
    pub text: String,
    /// The request the text answers, when there is one (it shapes the rewrite's prompt).
    pub context: Option<String>,
    /// An inline profile (as `PUT /v1/profile` takes it); send this, `tenant_id`, or neither
    /// (the calling tenant's own).
    pub profile: Option<ProfileFields>,
    /// A tenant whose profile to use (the admin; a tenant may name only itself).
    pub tenant_id: Option<String>,
}

#[utoipa::path(post, path = "/v1/values/rewrite", tag = "values",
    request_body(content = RewriteRequest, description = "`text` (required), `context` (the request the text answers, optional), and the profile: `profile` (inline), `tenant_id` (admin; a tenant may name only itself), or neither (the calling tenant's own)."),
    responses(
        (status = 200, description = "What the proxy would do with this text under the profile (`decision`: `passed`, `rewritten`, `fallback`, `blocked`) and the text it would return. With `[rewriter] mode = \"edits\"` (the default, `mode: \"edits\"`): the original's scores, the edited text's (`after`: fit, similarity, facts, integrity), the edits made (`edits`: kind, source, sentence, byte range, original and new text, values moved, why), every edit site with its candidates and why each passed or not (`sites`), the edited text even when the shield refused it (`assembled`), the budget and timings. With `mode = \"whole\"`: every whole-text candidate with its scores or why it was rejected, and the best one (`best`)", body = Object,
            example = json!({"decision":"rewritten","text":"Choose the premium plan if it helps you care for the people around you.","reason":null,"original":{"values":{"power":0.71},"distance":0.83,"cosine":0.4,"precision":0.2,"within_tolerance":false},"candidates":[{"text":"...","score":{"fit":{"distance":0.35},"similarity":0.81,"facts":{"total":0,"kept":0,"missing":[]},"integrity":0.81,"progress":0.58,"reward":0.69}}],"best":0,"timing":{"generate_ms":2100.0,"score_ms":180.0,"total_ms":2400.0}})),
        (status = 400, description = "Text over rewriter.max_text_chars (`text_too_long`), or both profile and tenant_id", body = crate::server::openapi::ErrorResponse),
        (status = 401, description = "No or unknown key", body = crate::server::openapi::ErrorResponse),
        (status = 403, description = "A tenant naming another tenant", body = crate::server::openapi::ErrorResponse),
        (status = 404, description = "The tenant has no profile", body = crate::server::openapi::ErrorResponse),
        (status = 422, description = "Missing or empty text, a field of the wrong type, an invalid inline profile", body = crate::server::openapi::ErrorResponse),
        (status = 429, description = "The encoder or the local model is busy", body = crate::server::openapi::ErrorResponse),
        (status = 503, description = "No rewriter (value models or local model disabled)", body = crate::server::openapi::ErrorResponse),
    ),
    security(("bearer" = []), ("admin" = [])))]
pub async fn rewrite(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    TypedBody(body): TypedBody<RewriteRequest>,
) -> Result<Json<Value>, ApiError> {
    let started = Instant::now();
    if body.text.trim().is_empty() {
        return Err(unprocessable("text", "'text' must not be empty"));
    }
    let text = body.text.clone();
    let limit = state.config.rewriter.max_text_chars;
    if text.chars().count() > limit {
        return Err(
            ApiError::invalid_request(format!("'text' is longer than {limit} characters"))
                .with_param("text")
                .with_code("text_too_long"),
        );
    }
    let context = body.context.clone();
    let profile = profile_of(&state, &caller, &body)?;
    let decider = &state.enforcer.decider;
    if let (Some(editor), RewriteMode::Edits) = (&decider.editor, decider.mode) {
        return edits(&state, editor, &profile, &text, context.as_deref(), started).await;
    }
    let rewriter = decider.rewriter.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorKind::Unavailable,
            "no rewriter on this proxy (it needs the value models and a local or remote model)",
        )
    })?;
    let result = rewriter
        .rewrite(&profile, &text, context.as_deref())
        .await?;
    let (decision, out_text) = match (result.decision, profile.fallback) {
        (Decision::Passed, _) => (VisaAction::Passed, Some(text.clone())),
        (Decision::Rewritten, _) => (VisaAction::Rewritten, result.text.clone()),
        (Decision::Failed, Fallback::Original) => (VisaAction::Fallback, Some(text.clone())),
        (Decision::Failed, Fallback::Block) => (VisaAction::Blocked, None),
    };
    Ok(Json(json!({
        "decision": decision,
        "text": out_text,
        "refusal": (decision == VisaAction::Blocked).then_some(REFUSAL),
        "reason": result.reason,
        "original": result.original,
        "candidates": result.candidates,
        "best": result.best,
        "mode": "whole",
        "backend": rewriter.backend.name(),
        "timing": {
            "generate_ms": result.generate_ms,
            "score_ms": result.score_ms,
            "total_ms": (started.elapsed().as_secs_f64() * 1e4).round() / 10.0,
        },
    })))
}

/// The sentence editor's answer: what serving would do with this text, every site with its
/// candidates and why each passed or not, and the edits made.
async fn edits(
    state: &AppState,
    editor: &Editor,
    profile: &Profile,
    text: &str,
    context: Option<&str>,
    started: Instant,
) -> Result<Json<Value>, ApiError> {
    let deadline = state
        .enforcer
        .budget(profile)
        .map(|b| tokio::time::Instant::from_std(started) + b);
    let assessed = editor.assess(profile, text, None, Scope::Full).await?;
    let detect_ms = (assessed.detect.as_secs_f64() * 1e4).round() / 10.0;
    let result = editor
        .edit(
            EditRequest {
                profile,
                text,
                context,
                deadline,
                prior: None,
                scope: Scope::Full,
            },
            assessed,
        )
        .await?;
    let (decision, out_text) = match (result.decision, profile.fallback) {
        (Decision::Passed, _) => (VisaAction::Passed, Some(text.to_owned())),
        (Decision::Rewritten, _) => (VisaAction::Rewritten, result.text.clone()),
        (Decision::Failed, Fallback::Original) => (VisaAction::Fallback, Some(text.to_owned())),
        (Decision::Failed, Fallback::Block) => (VisaAction::Blocked, None),
    };
    Ok(Json(json!({
        "decision": decision,
        "text": out_text,
        "refusal": (decision == VisaAction::Blocked).then_some(REFUSAL),
        "reason": result.reason,
        "original": result.original,
        "after": result.after,
        "assembled": result.assembled,
        "edits": result.edits,
        "sites": result.sites,
        "sentences": result.sentences,
        "generated": result.generated,
        "budget_exhausted": result.budget_exhausted,
        "mode": "edits",
        "backend": editor.backend.as_ref().map_or_else(|| "none".to_owned(), |b| b.name()),
        "timing": {
            "detect_ms": detect_ms,
            "generate_ms": result.timing.generate_ms,
            "score_ms": result.timing.score_ms,
            "budget_ms": result.timing.budget_ms,
            "total_ms": (started.elapsed().as_secs_f64() * 1e4).round() / 10.0,
        },
    })))
}
