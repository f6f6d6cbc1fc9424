//! Body and query extractors whose every rejection is an OpenAI-shaped error: 413 over the
//! size limit, 400 for bytes that are not JSON or a bad query string, 422 for JSON of the wrong
//! shape.

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorKind};

/// `Json<T>` with OpenAI-shaped rejections.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        parse(&bytes).map(JsonBody)
    }
}

/// A body deserialized into its typed request struct (the same type is the operation's OpenAPI
/// schema; unknown fields are rejected by `#[serde(deny_unknown_fields)]` on it). Bytes that are
/// not JSON get [`JsonBody`]'s 400; JSON of the wrong shape a 422 whose `param` names the field
/// (`texts[1]`, `profile`, or the unknown or missing field's name).
pub struct TypedBody<T>(pub T);

impl<S, T> FromRequest<S> for TypedBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let JsonBody(value) = JsonBody::<serde_json::Value>::from_request(req, state).await?;
        // serde would also read a struct from an array of its fields.
        if !value.is_object() {
            return Err(ApiError::new(
                ErrorKind::Unprocessable,
                "The request body must be a JSON object.",
            ));
        }
        typed(value).map(TypedBody)
    }
}

/// `value` as the typed body `T`, with [`TypedBody`]'s 422 naming the field at fault: for
/// handlers that look at a body before choosing its type.
pub fn typed<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    crate::values::fields::from_value(value).map_err(ApiError::from)
}

/// The body's bytes, unparsed, with [`JsonBody`]'s rejections for size and read errors: for
/// handlers that read a few fields and forward the rest as it came.
pub struct RawBody(pub Bytes);

impl<S> FromRequest<S> for RawBody
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        ErrorKind::PayloadTooLarge,
                        "The request body is larger than this proxy accepts (server.max_body_bytes).",
                    )
                } else {
                    ApiError::invalid_request(format!(
                        "Could not read the request body: {rejection}"
                    ))
                }
            })
    }
}

/// Parse bytes as `T`, classifying errors the way [`JsonBody`] does.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            ErrorKind::InvalidJson,
            "The request body is empty; send a JSON object.",
        ));
    }
    serde_json::from_slice(bytes).map_err(json_error)
}

/// A body's parse error as the client sees it: 422 for JSON of the wrong shape, else 400.
pub fn json_error(e: serde_json::Error) -> ApiError {
    match e.classify() {
        serde_json::error::Category::Data => ApiError::new(
            ErrorKind::Unprocessable,
            format!("The request body has the wrong shape: {e}"),
        ),
        _ => ApiError::new(
            ErrorKind::InvalidJson,
            format!("We could not parse the JSON body of your request: {e}"),
        ),
    }
}

/// `Query<T>` with an OpenAI-shaped rejection: 400 naming the query string's problem.
pub struct QueryParams<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for QueryParams<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| QueryParams(q.0))
            .map_err(|e| {
                let detail = e.body_text();
                let message = detail
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&detail)
                    .to_owned();
                // The field comes first ("limit: invalid digit ..."). ("limit: invalid digit ...").
                let param = message
                    .split_once(':')
                    .map(|(p, _)| p.trim().to_owned())
                    .filter(|p| !p.is_empty() && !p.contains(' '));
                let mut err =
                    ApiError::invalid_request(format!("Invalid query parameters: {message}"))
                        .with_code("invalid_query");
                if let Some(p) = param {
                    err = err.with_param(p);
                }
                err
            })
    }
}

/// The `If-Match` precondition of a profile write: the version (`"3"`, as `ETag` gives it, or
/// `3`) the client read and means to replace; `"0"` for "no profile yet". Absent: no
/// precondition. Anything else is a 400 naming the header.
pub struct IfMatch(pub Option<u64>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(axum::http::header::IF_MATCH) else {
            return Ok(IfMatch(None));
        };
        value
            .to_str()
            .ok()
            .map(str::trim)
            .map(|v| {
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v)
            })
            .and_then(|v| v.parse::<u64>().ok())
            .map(|v| IfMatch(Some(v)))
            .ok_or_else(|| {
                ApiError::invalid_request(
                    "If-Match must name one profile version, as the ETag header gives it: \"3\"",
                )
                .with_param("If-Match")
                .with_code("invalid_if_match")
            })
    }
}
