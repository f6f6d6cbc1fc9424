//! Value endpoints: detect the values a text expresses, and translate an instruction into a
//! shift of a profile's targets.

use std::time::Instant;

use axum::Extension;
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::AppState;
use super::auth::Caller;
use super::extract::TypedBody;
use crate::error::{ApiError, ErrorKind};
use crate::values::ValueId;
use crate::values::profile::{ProfileFields, ProfileSpec};

fn unprocessable(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::Unprocessable, message).with_param(param)
}

/// `POST /v1/values/detect`: one text or several.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"text": "We must protect the vulnerable and treat everyone fairly."}))]
pub struct DetectRequest {
    /// One text (send this or `texts`); at most `models.max_text_chars` characters.
    pub text: Option<String>,
    /// Several texts, at most `models.max_texts`, each as `text`.
    pub texts: Option<Vec<String>>,
}

/// `text` or `texts`, checked against the configured limits.
fn texts_of(state: &AppState, body: DetectRequest) -> Result<Vec<String>, ApiError> {
    let limit = state.config.models.max_text_chars;
    let check = |t: String, param: &str| -> Result<String, ApiError> {
        if t.trim().is_empty() {
            return Err(unprocessable(param, format!("'{param}' must not be empty")));
        }
        if t.chars().count() > limit {
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                format!("'{param}' is longer than {limit} characters"),
            )
            .with_param(param)
            .with_code("text_too_long"));
        }
        Ok(t)
    };
    match (body.text, body.texts) {
        (Some(_), Some(_)) => {
            Err(ApiError::invalid_request("send 'text' or 'texts', not both").with_param("texts"))
        }
        (Some(t), None) => Ok(vec![check(t, "text")?]),
        (None, Some(items)) => {
            if items.is_empty() {
                return Err(unprocessable(
                    "texts",
                    "'texts' must hold at least one text",
                ));
            }
            if items.len() > state.config.models.max_texts {
                return Err(ApiError::invalid_request(format!(
                    "'texts' holds more than {} texts",
                    state.config.models.max_texts
                ))
                .with_param("texts"));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, t)| check(t, &format!("texts[{i}]")))
                .collect()
        }
        (None, None) => Err(ApiError::invalid_request("send 'text' or 'texts'").with_param("text")),
    }
}

/// What `POST /v1/values/detect` answers.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"object":"list","data":[{"index":0,"values":{"self_direction":0.02,"stimulation":0.01,"hedonism":0.0,"achievement":0.03,"power":0.02,"security":0.21,"conformity":0.05,"tradition":0.01,"benevolence":0.64,"universalism":0.88},"labels":["benevolence","universalism"],"categories":{"Universalism: concern":0.91},"windows":1,"sentences":[{"start":0,"end":38,"text":"We must protect the rivers for everyone.","values":{"universalism":0.88}}]}],"timing":{"queued_ms":0.1,"compute_ms":9.8,"total_ms":10.2}}))]
pub struct DetectResponse {
    /// Always `list`.
    pub object: &'static str,
    /// One per text, in the order sent.
    pub data: Vec<DetectedText>,
    pub timing: DetectTimingMs,
}

/// One text's value scores.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DetectedText {
    pub index: usize,
    /// Per value, the calibrated probability that the text expresses it (the maximum over
    /// its sentences).
    pub values: crate::values::ValueVector,
    /// Values whose score reaches their category threshold.
    pub labels: Vec<ValueId>,
    /// The 20 category scores (gated), by the data set's names.
    #[schema(value_type = std::collections::BTreeMap<String, f64>)]
    pub categories: serde_json::Map<String, Value>,
    /// Sentences scored.
    pub windows: usize,
    /// Each scored sentence with its byte offsets and scores.
    pub sentences: Vec<crate::detector::SentenceScore>,
}

/// Where a detect request's time went, in ms.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DetectTimingMs {
    pub queued_ms: f64,
    pub compute_ms: f64,
    pub total_ms: f64,
}

#[utoipa::path(post, path = "/v1/values/detect", tag = "values",
    request_body(content = DetectRequest, description = "`{\"text\": \"...\"}` or `{\"texts\": [\"...\", ...]}`"),
    responses(
        (status = 200, description = "A value vector per text (score in [0, 1] per value: the calibrated probability that the value is expressed; per value the maximum over the text's sentences), the values labelled present (per-category thresholds), the 20 category scores (gated), the number of sentences scored (`windows`) and each scored sentence with its byte offsets and scores (`sentences`), and timing", body = DetectResponse),
        (status = 400, description = "Neither or both of text/texts, too many texts, or a text over models.max_text_chars (`text_too_long`)", body = crate::server::openapi::ErrorResponse),
        (status = 401, description = "No or unknown key", body = crate::server::openapi::ErrorResponse),
        (status = 422, description = "A text that is empty or not a string; `param` names it", body = crate::server::openapi::ErrorResponse),
        (status = 429, description = "The encoder's queue is full", body = crate::server::openapi::ErrorResponse),
        (status = 503, description = "Value models disabled", body = crate::server::openapi::ErrorResponse),
    ),
    security(("bearer" = []), ("admin" = [])))]
pub async fn detect(
    State(state): State<AppState>,
    TypedBody(body): TypedBody<DetectRequest>,
) -> Result<Json<DetectResponse>, ApiError> {
    let started = Instant::now();
    let texts = texts_of(&state, body)?;
    let models = state.models()?;
    let (detections, timing) = models.detector.detect(&texts).await?;
    let data = detections
        .into_iter()
        .enumerate()
        .map(|(index, d)| DetectedText {
            index,
            values: d.values,
            labels: d.labels,
            categories: d
                .categories
                .iter()
                .map(|(n, p)| {
                    (
                        n.clone(),
                        json!(crate::values::short_f64((p * 1e4).round() / 1e4)),
                    )
                })
                .collect(),
            windows: d.windows,
            sentences: d.sentences,
        })
        .collect();
    Ok(Json(DetectResponse {
        object: "list",
        data,
        timing: DetectTimingMs {
            queued_ms: timing.queued.as_secs_f64() * 1e3,
            compute_ms: timing.compute.as_secs_f64() * 1e3,
            total_ms: started.elapsed().as_secs_f64() * 1e3,
        },
    }))
}

/// `POST /v1/profiles/translate`: an instruction, and what it starts from.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"instruction": "more caring, less about status"}))]
pub struct TranslateRequest {
    /// What to change, in words ("more caring, less about status").
    pub instruction: String,
    /// A profile to start from (as `PUT /v1/profile` takes it); default: the calling tenant's
    /// own, or an empty one for the admin.
    pub profile: Option<ProfileFields>,
    /// A text whose detected values are the starting point for values the profile does not
    /// constrain.
    pub text: Option<String>,
}

/// What `POST /v1/profiles/translate` answers: the translation, and the profile it leads to.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TranslateResponse {
    #[serde(flatten)]
    pub translation: crate::translator::Translation,
    /// The profile with the shifts applied (not saved).
    pub profile: TranslatedProfile,
    /// The detected values of `text`, when one was sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<crate::values::ValueVector>,
}

/// The part of a profile a translation changes, and its action settings.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TranslatedProfile {
    pub values: std::collections::BTreeMap<ValueId, crate::values::ValueTarget>,
    pub action: crate::values::Action,
    pub fallback: crate::values::Fallback,
    pub stream_mode: crate::values::StreamMode,
}

#[utoipa::path(post, path = "/v1/profiles/translate", tag = "profiles",
    request_body(content = TranslateRequest, description = "`instruction` (required); optionally `profile` (a profile to start from; default: the calling tenant's own, or an empty one for the admin) and `text` (whose detected values are the starting point for values the profile does not constrain). Nothing is saved."),
    responses(
        (status = 200, description = "The shifts with their evidence, and the resulting profile (not saved)", body = TranslateResponse,
            example = json!({"instruction":"more caring, less about status","shifts":[{"value":"benevolence","delta":0.2,"evidence":{"phrase":"more caring","matched":"caring for others","similarity":0.71,"cue":"more"}},{"value":"power","delta":-0.2,"evidence":{"phrase":"less about status","matched":"status and prestige","similarity":0.62,"cue":"less"}}],"unmatched":[],"unrelated":false,"profile":{"values":{"benevolence":{"target":0.7,"weight":1.0,"tolerance":0.15},"power":{"target":0.3,"weight":1.0,"tolerance":0.15}},"action":"audit","fallback":"original","stream_mode":"window"}})),
        (status = 401, description = "No or unknown key", body = crate::server::openapi::ErrorResponse),
        (status = 400, description = "The body is empty or not JSON", body = crate::server::openapi::ErrorResponse),
        (status = 422, description = "Empty or missing instruction, or an invalid `profile`", body = crate::server::openapi::ErrorResponse),
        (status = 429, description = "The encoder's queue is full", body = crate::server::openapi::ErrorResponse),
        (status = 503, description = "Value models disabled", body = crate::server::openapi::ErrorResponse),
    ),
    security(("bearer" = []), ("admin" = [])))]
pub async fn translate(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    TypedBody(body): TypedBody<TranslateRequest>,
) -> Result<Json<TranslateResponse>, ApiError> {
    let limit = state.config.models.max_text_chars;
    for (field, value) in [
        ("instruction", Some(&body.instruction)),
        ("text", body.text.as_ref()),
    ] {
        if let Some(t) = value
            && t.chars().count() > limit
        {
            return Err(ApiError::invalid_request(format!(
                "'{field}' is longer than {limit} characters"
            ))
            .with_param(field)
            .with_code("text_too_long"));
        }
    }
    let instruction = body.instruction;
    let base = match &body.profile {
        Some(p) => ProfileSpec::from_fields(p.clone()).map_err(|e| e.within("profile"))?,
        None => match &caller {
            Caller::Tenant(t) => state
                .profiles
                .get(&t.id)
                .map(|p| ProfileSpec::from_profile(&p))
                .unwrap_or_default(),
            Caller::Admin => ProfileSpec::default(),
        },
    };
    let models = state.models()?;
    let start = match &body.text {
        Some(t) => {
            let (d, _) = models.detector.detect(std::slice::from_ref(t)).await?;
            d.into_iter().next().map(|d| d.values)
        }
        None => None,
    };
    let translation = models.translator.translate(&instruction).await?;
    let patch = translation.as_patch_from(&base, start.as_ref());
    let result = base.apply(&patch)?;
    Ok(Json(TranslateResponse {
        translation,
        profile: TranslatedProfile {
            values: result.values,
            action: result.action,
            fallback: result.fallback,
            stream_mode: result.stream_mode,
        },
        start,
    }))
}
