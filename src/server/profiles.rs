//! Value profiles over REST: the admin manages any tenant's profile; a tenant reads its own,
//! and replaces it when its config allows. Validation happens before anything is written.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::Value;

use super::AppState;
use super::extract::{IfMatch, JsonBody, QueryParams, TypedBody, typed};
use crate::error::{ApiError, ErrorKind};
use crate::store::HistoryEntry;
use crate::tenants::Tenant;
use crate::values::profile::{ProfileFields, ProfilePatch, ProfileSpec};
use crate::values::{Profile, ValueId};

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        if let Some(current) = e.conflict {
            return ApiError::new(
                ErrorKind::PreconditionFailed,
                format!(
                    "the profile is at version {current}, not the one If-Match names; read it again (its ETag) and retry"
                ),
            )
            .with_param("If-Match");
        }
        tracing::error!(error = %e, "profile store failed");
        ApiError::internal("the profile store failed; nothing was changed")
    }
}

/// A profile as a response: the JSON, and its version as the `ETag` (what `If-Match` names).
pub struct Versioned(pub Profile);

impl axum::response::IntoResponse for Versioned {
    fn into_response(self) -> axum::response::Response {
        let etag = axum::http::HeaderValue::from_str(&format!("\"{}\"", self.0.version))
            .unwrap_or_else(|_| axum::http::HeaderValue::from_static("\"0\""));
        ([(axum::http::header::ETAG, etag)], Json(self.0)).into_response()
    }
}

fn tenant_exists(state: &AppState, tenant_id: &str) -> Result<(), ApiError> {
    state.tenants.get(tenant_id).map(|_| ()).ok_or_else(|| {
        ApiError::new(ErrorKind::NotFound, format!("no tenant {tenant_id:?}"))
            .with_param("tenant_id")
            .with_code("tenant_not_found")
    })
}

fn current(state: &AppState, tenant_id: &str) -> Result<Arc<Profile>, ApiError> {
    state.profiles.get(tenant_id).ok_or_else(|| {
        ApiError::new(
            ErrorKind::NotFound,
            format!("tenant {tenant_id:?} has no value profile"),
        )
        .with_code("profile_not_found")
    })
}

async fn put(
    state: &AppState,
    tenant_id: &str,
    body: ProfileFields,
    if_match: Option<u64>,
) -> Result<Versioned, ApiError> {
    let spec = ProfileSpec::from_fields(body)?;
    let entry = state
        .profiles
        .write(tenant_id, Some(spec), if_match)
        .await?;
    saved(entry)
}

fn saved(entry: HistoryEntry) -> Result<Versioned, ApiError> {
    entry
        .profile
        .map(Versioned)
        .ok_or_else(|| ApiError::internal("the store returned no profile"))
}

/// A PATCH as one read-modify-write: the change is applied to the store's newest version
/// inside the write itself, so a change committed meanwhile (another request, another
/// replica) is never lost; with If-Match, only when that newest version is the client's.
async fn patch(
    state: &AppState,
    tenant_id: &str,
    body: Value,
    if_match: Option<u64>,
) -> Result<Versioned, ApiError> {
    let change = patch_change(state, patch_body(body)?).await?;
    let entry = state
        .profiles
        .update(tenant_id, if_match, move |current| {
            let base = current.map(ProfileSpec::from_profile).unwrap_or_default();
            let patch = match &change {
                Change::Fields(p) => p.clone(),
                Change::Instruction(t) => t.as_patch(&base),
            };
            base.apply(&patch).map(Some)
        })
        .await??;
    saved(entry)
}

/// What a PATCH body asks, before it meets the current profile.
enum Change {
    Fields(ProfilePatch),
    Instruction(crate::translator::Translation),
}

/// A PATCH body: field changes, or an instruction translated into target shifts. The handler
/// reads the body as JSON and picks the variant by the `instruction` key, so each variant's
/// errors name its own fields.
#[derive(utoipa::ToSchema)]
#[serde(untagged)]
pub enum ProfilePatchBody {
    Instruction(InstructionPatch),
    Fields(ProfileFields),
}

/// `{"instruction": "..."}`: a change in words ("more caring, less about status"), translated
/// into target shifts and applied to the profile.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"instruction": "more caring, less about status"}))]
pub struct InstructionPatch {
    pub instruction: String,
}

fn patch_body(body: Value) -> Result<ProfilePatchBody, ApiError> {
    let Some(obj) = body.as_object() else {
        return Err(ApiError::new(
            ErrorKind::Unprocessable,
            "The request body must be a JSON object.",
        ));
    };
    if !obj.contains_key("instruction") {
        return typed(body).map(ProfilePatchBody::Fields);
    }
    if obj.len() > 1 {
        return Err(ApiError::invalid_request(
            "send either an instruction or field changes, not both",
        )
        .with_param("instruction"));
    }
    typed(body).map(ProfilePatchBody::Instruction)
}

/// What a PATCH asks, before it meets the current profile (the translation does not depend
/// on the profile; the shifts are applied to it in the write).
async fn patch_change(state: &AppState, body: ProfilePatchBody) -> Result<Change, ApiError> {
    match body {
        ProfilePatchBody::Instruction(i) => {
            Ok(Change::Instruction(state.translate(&i.instruction).await?))
        }
        ProfilePatchBody::Fields(fields) => {
            let patch = ProfilePatch::from_fields(fields)?;
            if patch.is_empty() {
                return Err(
                    ApiError::invalid_request("the patch changes nothing").with_param("values")
                );
            }
            Ok(Change::Fields(patch))
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct HistoryQuery {
    /// At most this many versions, newest first.
    pub limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/profile", tag = "profiles",
    params(("tenant_id" = String, Path, description = "Tenant id from the config")),
    responses(
        (status = 200, description = "The tenant's current profile", body = Profile, headers(("ETag" = String, description = "The version, quoted: what If-Match names")), example = json!({"values":{"benevolence":{"target":0.8,"weight":1.0,"tolerance":0.15},"power":{"target":0.1,"weight":2.0,"tolerance":0.1}},"action":"rewrite","fallback":"original","stream_mode":"window","version":3,"updated_at":1764320000})),
        (status = 401, description = "No or wrong admin key", body = crate::server::openapi::ErrorResponse),
        (status = 403, description = "A tenant key on a route that needs the admin key", body = crate::server::openapi::ErrorResponse),
        (status = 404, description = "Unknown tenant (`tenant_not_found`) or no profile yet (`profile_not_found`)", body = crate::server::openapi::ErrorResponse,
            example = json!({"error":{"message":"tenant \"acme\" has no value profile","type":"invalid_request_error","param":null,"code":"profile_not_found"}})),
    ),
    security(("admin" = [])))]
pub async fn admin_get(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
) -> Result<Versioned, ApiError> {
    tenant_exists(&state, &tenant_id)?;
    Ok(Versioned((*current(&state, &tenant_id)?).clone()))
}

#[utoipa::path(put, path = "/v1/tenants/{tenant_id}/profile", tag = "profiles",
    params(("tenant_id" = String, Path, description = "Tenant id from the config"), ("If-Match" = Option<String>, Header, description = "The version this write replaces, as the ETag header gave it (`\"3\"`; `\"0\"`: no profile yet). When the profile is at another version nothing is written and the answer is 412.")),
    request_body(content = ProfileFields, description = "A whole profile: `values` (value id -> {target, weight?, tolerance?}), `action`, `fallback`, `stream_mode`, `steer`, `max_added_ms`, `audit_sample` (with `action: audit`, the share of answers measured after they were sent), `log_decisions` (`changes` or `all`: which decisions `GET /v1/decisions` keeps) and `log_text` (`none`, `hash` or `full`: what text of an answer it keeps). Omitted fields take their defaults; `version` and `updated_at` are ignored.",
        example = json!({"values":{"benevolence":{"target":0.8},"power":{"target":0.1,"weight":2}},"action":"rewrite"})),
    responses(
        (status = 200, description = "Saved; the new version", body = Profile, headers(("ETag" = String, description = "The version, quoted: what If-Match names"))),
        (status = 412, description = "If-Match names a version the profile is no longer (or not yet) at; nothing was written", body = crate::server::openapi::ErrorResponse),
        (status = 400, description = "Body is not JSON, or If-Match is not a version", body = crate::server::openapi::ErrorResponse),
        (status = 401, description = "No or wrong admin key", body = crate::server::openapi::ErrorResponse),
        (status = 403, description = "A tenant key on a route that needs the admin key", body = crate::server::openapi::ErrorResponse),
        (status = 404, description = "Unknown tenant", body = crate::server::openapi::ErrorResponse),
        (status = 422, description = "A field is invalid; `param` names it and nothing was written", body = crate::server::openapi::ErrorResponse,
            example = json!({"error":{"message":"'values.power.target' must be in [0, 1], got 1.5","type":"invalid_request_error","param":"values.power.target","code":"invalid_type"}})),
    ),
    security(("admin" = [])))]
pub async fn admin_put(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    IfMatch(if_match): IfMatch,
    TypedBody(body): TypedBody<ProfileFields>,
) -> Result<Versioned, ApiError> {
    tenant_exists(&state, &tenant_id)?;
    put(&state, &tenant_id, body, if_match).await
}

#[utoipa::path(patch, path = "/v1/tenants/{tenant_id}/profile", tag = "profiles",
    params(("tenant_id" = String, Path, description = "Tenant id from the config"), ("If-Match" = Option<String>, Header, description = "The version this write replaces, as the ETag header gave it (`\"3\"`; `\"0\"`: no profile yet). When the profile is at another version nothing is written and the answer is 412.")),
    request_body(content = ProfilePatchBody, description = "Either field changes (`values.<id>` merged, `null` removes a constraint; `action`, `fallback`, `stream_mode`, `steer`; `max_added_ms` and `audit_sample`, where `null` clears them; `log_decisions`, `log_text`), or `{\"instruction\": \"...\"}`, which is translated into target changes and applied.",
        example = json!({"instruction": "more caring, less about status"})),
    responses(
        (status = 200, description = "Saved; the new version", body = Profile, headers(("ETag" = String, description = "The version, quoted: what If-Match names"))),
        (status = 412, description = "If-Match names a version the profile is no longer (or not yet) at; nothing was written", body = crate::server::openapi::ErrorResponse),
        (status = 400, description = "Not JSON, an empty patch, both an instruction and field changes, or If-Match is not a version", body = crate::server::openapi::ErrorResponse),
        (status = 401, description = "No or wrong admin key", body = crate::server::openapi::ErrorResponse),
        (status = 403, description = "A tenant key on a route that needs the admin key", body = crate::server::openapi::ErrorResponse),
        (status = 404, description = "Unknown tenant", body = crate::server::openapi::ErrorResponse),
        (status = 422, description = "A field is invalid, or the instruction is empty or names no value; nothing was written", body = crate::server::openapi::ErrorResponse),
        (status = 429, description = "The encoder's queue is full (instructions only)", body = crate::server::openapi::ErrorResponse),
    ),
    security(("admin" = [])))]
pub async fn admin_patch(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    IfMatch(if_match): IfMatch,
    JsonBody(body): JsonBody<Value>,
) -> Result<Versioned, ApiError> {
    tenant_exists(&state, &tenant_id)?;
    patch(&state, &tenant_id, body, if_match).await
}

#[utoipa::path(delete, path = "/v1/tenants/{tenant_id}/profile", tag = "profiles",
    params(("tenant_id" = String, Path, description = "Tenant id from the config"), ("If-Match" = Option<String>, Header, description = "The version this write replaces, as the ETag header gave it (`\"3\"`; `\"0\"`: no profile yet). When the profile is at another version nothing is written and the answer is 412.")),
    responses(
        (status = 200, description = "Deleted; the deletion is a version in the history", body = Deleted, example = json!({"tenant_id":"acme","deleted":true,"version":4})),
        (status = 412, description = "If-Match names a version the profile is no longer (or not yet) at; nothing was written", body = crate::server::openapi::ErrorResponse),
        (status = 400, description = "If-Match is not a version", body = crate::server::openapi::ErrorResponse),
        (status = 401, description = "No or wrong admin key", body = crate::server::openapi::ErrorResponse),
        (status = 403, description = "A tenant key on a route that needs the admin key", body = crate::server::openapi::ErrorResponse),
        (status = 404, description = "Unknown tenant, or no profile to delete", body = crate::server::openapi::ErrorResponse),
    ),
    security(("admin" = [])))]
pub async fn admin_delete(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    IfMatch(if_match): IfMatch,
) -> Result<Json<Deleted>, ApiError> {
    tenant_exists(&state, &tenant_id)?;
    current(&state, &tenant_id)?;
    let entry = state.profiles.write(&tenant_id, None, if_match).await?;
    Ok(Json(Deleted {
        tenant_id,
        deleted: true,
        version: entry.version,
    }))
}

/// What a deletion answers.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Deleted {
    pub tenant_id: String,
    /// Always true.
    pub deleted: bool,
    /// The version the deletion is.
    pub version: u64,
}

/// A profile's versions, newest first.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct History {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<HistoryEntry>,
}

/// One of the 10 values, for people.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ValueInfo {
    pub id: ValueId,
    pub name: &'static str,
    pub definition: &'static str,
}

/// The 10 values in circumplex order.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ValueList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<ValueInfo>,
}

#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/profile/history", tag = "profiles",
    params(("tenant_id" = String, Path, description = "Tenant id from the config"), HistoryQuery),
    responses(
        (status = 200, description = "Versions, newest first; `profile` is null for a deletion", body = History,
            example = json!({"object":"list","data":[{"version":2,"updated_at":1764320100,"profile":null},{"version":1,"updated_at":1764320000,"profile":{"values":{"power":{"target":0.1,"weight":1.0,"tolerance":0.15}},"action":"audit","fallback":"original","stream_mode":"window","version":1,"updated_at":1764320000}}]})),
        (status = 401, description = "No or wrong admin key", body = crate::server::openapi::ErrorResponse),
        (status = 403, description = "A tenant key on a route that needs the admin key", body = crate::server::openapi::ErrorResponse),
        (status = 400, description = "A query parameter of the wrong type (`limit`)", body = crate::server::openapi::ErrorResponse),
        (status = 404, description = "Unknown tenant", body = crate::server::openapi::ErrorResponse),
    ),
    security(("admin" = [])))]
pub async fn admin_history(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    QueryParams(q): QueryParams<HistoryQuery>,
) -> Result<Json<History>, ApiError> {
    tenant_exists(&state, &tenant_id)?;
    history(&state, &tenant_id, q.limit).await
}

#[utoipa::path(get, path = "/v1/profile/history", tag = "profiles",
    params(HistoryQuery),
    responses(
        (status = 200, description = "The calling tenant's own versions, newest first; a deletion is a version with `profile: null`", body = History),
        (status = 401, description = "No or unknown tenant key", body = crate::server::openapi::ErrorResponse),
        (status = 400, description = "A query parameter of the wrong type (`limit`)", body = crate::server::openapi::ErrorResponse),
    ),
    security(("bearer" = [])))]
pub async fn tenant_history(
    State(state): State<AppState>,
    Extension(tenant): Extension<Arc<Tenant>>,
    QueryParams(q): QueryParams<HistoryQuery>,
) -> Result<Json<History>, ApiError> {
    history(&state, &tenant.id, q.limit).await
}

async fn history(
    state: &AppState,
    tenant_id: &str,
    limit: Option<usize>,
) -> Result<Json<History>, ApiError> {
    let max = state.config.profiles.history_limit;
    let limit = limit.unwrap_or(max).clamp(1, max);
    let data: Vec<HistoryEntry> = state.profiles.history(tenant_id, limit).await?;
    Ok(Json(History {
        object: "list",
        data,
    }))
}

#[utoipa::path(get, path = "/v1/profile", tag = "profiles",
    responses(
        (status = 200, description = "The calling tenant's own profile", body = Profile, headers(("ETag" = String, description = "The version, quoted: what If-Match names"))),
        (status = 401, description = "No or unknown tenant key", body = crate::server::openapi::ErrorResponse),
        (status = 404, description = "No profile yet", body = crate::server::openapi::ErrorResponse),
    ),
    security(("bearer" = [])))]
pub async fn tenant_get(
    State(state): State<AppState>,
    Extension(tenant): Extension<Arc<Tenant>>,
) -> Result<Versioned, ApiError> {
    Ok(Versioned((*current(&state, &tenant.id)?).clone()))
}

#[utoipa::path(put, path = "/v1/profile", tag = "profiles",
    params(("If-Match" = Option<String>, Header, description = "The version this write replaces, as the ETag header gave it (`\"3\"`; `\"0\"`: no profile yet). When the profile is at another version nothing is written and the answer is 412.")),
    request_body(content = ProfileFields, description = "A whole profile, as for the admin route"),
    responses(
        (status = 200, description = "Saved; the new version", body = Profile, headers(("ETag" = String, description = "The version, quoted: what If-Match names"))),
        (status = 412, description = "If-Match names a version the profile is no longer (or not yet) at; nothing was written", body = crate::server::openapi::ErrorResponse),
        (status = 401, description = "No or unknown tenant key", body = crate::server::openapi::ErrorResponse),
        (status = 400, description = "The body is empty or not JSON, or If-Match is not a version", body = crate::server::openapi::ErrorResponse),
        (status = 403, description = "This tenant may not manage its own profile (`self_manage_profile = false`)", body = crate::server::openapi::ErrorResponse),
        (status = 422, description = "A field is invalid; nothing was written", body = crate::server::openapi::ErrorResponse),
    ),
    security(("bearer" = [])))]
pub async fn tenant_put(
    State(state): State<AppState>,
    Extension(tenant): Extension<Arc<Tenant>>,
    IfMatch(if_match): IfMatch,
    TypedBody(body): TypedBody<ProfileFields>,
) -> Result<Versioned, ApiError> {
    may_self_manage(&tenant)?;
    put(&state, &tenant.id, body, if_match).await
}

fn may_self_manage(tenant: &Tenant) -> Result<(), ApiError> {
    if tenant.self_manage_profile {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorKind::Forbidden,
        format!(
            "tenant {} may not change its own profile; ask an admin",
            tenant.id
        ),
    ))
}

#[utoipa::path(patch, path = "/v1/profile", tag = "profiles",
    params(("If-Match" = Option<String>, Header, description = "The version this write replaces, as the ETag header gave it (`\"3\"`; `\"0\"`: no profile yet). When the profile is at another version nothing is written and the answer is 412.")),
    request_body(content = ProfilePatchBody, description = "Field changes or `{\"instruction\": \"...\"}`, as for the admin route's PATCH",
        example = json!({"values": {"power": {"target": 0.1}}})),
    responses(
        (status = 200, description = "Saved; the new version", body = Profile, headers(("ETag" = String, description = "The version, quoted: what If-Match names"))),
        (status = 412, description = "If-Match names a version the profile is no longer (or not yet) at; nothing was written", body = crate::server::openapi::ErrorResponse),
        (status = 400, description = "Not JSON, an empty patch, both an instruction and field changes, or If-Match is not a version", body = crate::server::openapi::ErrorResponse),
        (status = 401, description = "No or unknown tenant key", body = crate::server::openapi::ErrorResponse),
        (status = 403, description = "This tenant may not manage its own profile (`self_manage_profile = false`)", body = crate::server::openapi::ErrorResponse),
        (status = 422, description = "A field is invalid, or the instruction is empty or names no value; nothing was written", body = crate::server::openapi::ErrorResponse),
        (status = 429, description = "The encoder's queue is full (instructions only)", body = crate::server::openapi::ErrorResponse),
    ),
    security(("bearer" = [])))]
pub async fn tenant_patch(
    State(state): State<AppState>,
    Extension(tenant): Extension<Arc<Tenant>>,
    IfMatch(if_match): IfMatch,
    JsonBody(body): JsonBody<Value>,
) -> Result<Versioned, ApiError> {
    may_self_manage(&tenant)?;
    patch(&state, &tenant.id, body, if_match).await
}

#[utoipa::path(get, path = "/v1/values", tag = "values",
    responses((status = 200, description = "The 10 values in circumplex order, with ids and definitions", body = ValueList,
        example = json!({"object":"list","data":[{"id":"self_direction","name":"Self-Direction","definition":"Independent thought and action: choosing, creating, exploring; freedom and curiosity."}]})),
        (status = 401, description = "No or unknown key", body = crate::server::openapi::ErrorResponse)),
    security(("bearer" = []), ("admin" = [])))]
pub async fn list_values() -> Json<ValueList> {
    let data = ValueId::ALL
        .iter()
        .map(|v| ValueInfo {
            id: *v,
            name: v.display_name(),
            definition: v.definition(),
        })
        .collect();
    Json(ValueList {
        object: "list",
        data,
    })
}
