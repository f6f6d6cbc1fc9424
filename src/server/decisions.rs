//! `GET /v1/decisions`: the decision log, newest first, with filters and cursor pagination. A
//! tenant key reads its own decisions; the admin key reads any tenant's (all, or `tenant_id`).

use axum::Extension;
use axum::Json;
use axum::extract::State;
use serde::Deserialize;

use super::AppState;
use super::auth::Caller;
use super::extract::QueryParams;
use crate::decisions::DecisionQuery;
use crate::error::{ApiError, ErrorKind};
use crate::values::ValueId;

const ACTIONS: [&str; 4] = ["passed", "rewritten", "fallback", "blocked"];

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DecisionsParams {
    /// Only this action: passed, rewritten, fallback or blocked.
    pub action: Option<String>,
    /// Only decisions where this value was outside the profile's tolerance.
    pub value: Option<String>,
    /// From this time on (Unix seconds, inclusive).
    pub since: Option<i64>,
    /// Up to this time (Unix seconds, inclusive).
    pub until: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// At most this many records (default and most: `[decisions] max_page`).
    pub limit: Option<usize>,
    /// Admin only: one tenant's decisions.
    pub tenant_id: Option<String>,
}

/// One page of the decision log.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct DecisionPage {
    /// Always `list`.
    pub object: &'static str,
    /// Newest first.
    pub data: Vec<crate::decisions::DecisionRecord>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

fn invalid(param: &str, message: String) -> ApiError {
    ApiError::invalid_request(message).with_param(param)
}

#[utoipa::path(get, path = "/v1/decisions", tag = "decisions",
    params(DecisionsParams),
    responses(
        (status = 200, description = "Decisions, newest first. `next_cursor` (absent on the last page) is passed as `cursor` for the next one. Texts appear only as the profile's `log_text` kept them.", body = DecisionPage,
            example = json!({"object":"list","data":[{"id":42,"created_at":1764320000123_i64,"tenant_id":"acme","request_id":"3f1c0d2e","profile_version":3,"action":"rewritten","kind":"json","values":["power"],"total_ms":412.5,"choices":[{"index":0,"action":"rewritten","before":{"distance":0.41},"after":{"distance":0.18},"integrity":0.93,"edits":[{"kind":"dropped","source":"clause","sentence":2,"start":120,"end":171,"values":["power"]}]}]}],"next_cursor":"42"})),
        (status = 400, description = "A filter that is not one (an unknown action or value, a bad cursor, `tenant_id` from a tenant key)", body = crate::server::openapi::ErrorResponse),
        (status = 401, description = "No or unknown key", body = crate::server::openapi::ErrorResponse),
        (status = 404, description = "Admin: no such tenant", body = crate::server::openapi::ErrorResponse),
        (status = 503, description = "The decision log is off (`[decisions] enabled = false`)", body = crate::server::openapi::ErrorResponse),
    ),
    security(("bearer" = []), ("admin" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    QueryParams(p): QueryParams<DecisionsParams>,
) -> Result<Json<DecisionPage>, ApiError> {
    if !state.config.decisions.enabled {
        return Err(ApiError::new(
            ErrorKind::Unavailable,
            "the decision log is off: [decisions] enabled = false",
        ));
    }
    let tenant = match (&caller, p.tenant_id) {
        (Caller::Tenant(t), None) => Some(t.id.clone()),
        (Caller::Tenant(_), Some(_)) => {
            return Err(invalid(
                "tenant_id",
                "'tenant_id' is for the admin key; a tenant key reads its own decisions".into(),
            ));
        }
        (Caller::Admin, Some(id)) => {
            if state.tenants.get(&id).is_none() {
                return Err(
                    ApiError::new(ErrorKind::NotFound, format!("no tenant {id:?}"))
                        .with_param("tenant_id")
                        .with_code("tenant_not_found"),
                );
            }
            Some(id)
        }
        (Caller::Admin, None) => None,
    };
    if let Some(a) = &p.action
        && !ACTIONS.contains(&a.as_str())
    {
        return Err(invalid(
            "action",
            format!("'action' must be one of {}", ACTIONS.join(", ")),
        ));
    }
    let value = match &p.value {
        Some(v) => Some(
            v.parse::<ValueId>()
                .map_err(|m| invalid("value", m))?
                .as_str()
                .to_owned(),
        ),
        None => None,
    };
    let before_id = match &p.cursor {
        Some(c) => Some(c.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
            invalid(
                "cursor",
                "'cursor' must be a next_cursor this API returned".into(),
            )
        })?),
        None => None,
    };
    let max = state.config.decisions.max_page;
    let limit = p.limit.unwrap_or(max).clamp(1, max);
    let seconds = |s: Option<i64>, param: &str| -> Result<Option<i64>, ApiError> {
        s.map(|t| {
            t.checked_mul(1000)
                .ok_or_else(|| invalid(param, format!("'{param}' is out of range")))
        })
        .transpose()
    };
    let query = DecisionQuery {
        tenant,
        action: p.action,
        value,
        since: seconds(p.since, "since")?,
        until: seconds(p.until, "until")?.map(|t| t.saturating_add(999)),
        before_id,
        // One more than the page shows, to know whether another page follows.
        limit: limit + 1,
    };
    let mut data = state.profiles.decisions(query).await?;
    let next_cursor = if data.len() > limit {
        data.truncate(limit);
        data.last().map(|r| r.id.to_string())
    } else {
        None
    };
    Ok(Json(DecisionPage {
        object: "list",
        data,
        next_cursor,
    }))
}
