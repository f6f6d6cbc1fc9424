//! One API error type, its HTTP status and its OpenAI-shaped body.
//!
//! Every failure the proxy answers with, from a malformed body to an upstream that timed out,
//! goes through [`ApiError`], so clients always get `{"error":{"message","type","param","code"}}`.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use std::time::Duration;

use crate::models::error::{ErrorKind as ModelErrorKind, ModelError};

/// What went wrong; each kind has exactly one status and one OpenAI error `type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: the body is not JSON.
    InvalidJson,
    /// 400: a required field is missing or a value is not allowed.
    InvalidRequest,
    /// 422: well-formed JSON whose fields have the wrong types.
    Unprocessable,
    /// 401: no key, or a key no tenant owns.
    Unauthorized,
    /// 403: a valid key that may not do this.
    Forbidden,
    /// 404: no such route or resource.
    NotFound,
    /// 405: the route exists but not with this method.
    MethodNotAllowed,
    /// 413: body over `server.max_body_bytes`.
    PayloadTooLarge,
    /// 412: an `If-Match` precondition that the current version does not meet.
    PreconditionFailed,
    /// 429: a tenant's requests-per-minute limit.
    RateLimited { retry_after: Duration },
    /// 429: a tenant's concurrency limit.
    TenantBusy,
    /// 429: the proxy's global concurrency limit (load shedding).
    Overloaded,
    /// 502: the upstream could not be reached or answered something unusable.
    BadGateway,
    /// 504: the upstream did not answer in time.
    GatewayTimeout,
    /// 503: shutting down or not ready.
    Unavailable,
    /// 500: a bug.
    Internal,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    pub param: Option<String>,
    /// A more specific `code` than the kind's own (e.g. `profile_not_found`).
    pub code_override: Option<&'static str>,
}

/// An OpenAI error body, the shape of every error this proxy returns.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"error":{"message":"Incorrect API key provided.","type":"authentication_error","param":null,"code":"invalid_api_key"}}))]
pub struct ErrorResponse {
    pub error: ErrorObject,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorObject {
    /// What went wrong, for people.
    pub message: String,
    /// invalid_request_error, authentication_error, permission_error, rate_limit_error,
    /// overloaded_error, upstream_error or server_error.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    /// A stable machine-readable reason, e.g. `invalid_api_key`, `rate_limit_exceeded`.
    pub code: &'static str,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            param: None,
            code_override: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code_override = Some(code);
        self
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message)
    }
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadGateway, message)
    }
    pub fn gateway_timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::GatewayTimeout, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    pub fn status(&self) -> StatusCode {
        match self.kind {
            ErrorKind::InvalidJson | ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            ErrorKind::RateLimited { .. } | ErrorKind::TenantBusy | ErrorKind::Overloaded => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ErrorKind::BadGateway => StatusCode::BAD_GATEWAY,
            ErrorKind::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `type` field.
    pub fn error_type(&self) -> &'static str {
        match self.kind {
            ErrorKind::InvalidJson
            | ErrorKind::InvalidRequest
            | ErrorKind::Unprocessable
            | ErrorKind::NotFound
            | ErrorKind::MethodNotAllowed
            | ErrorKind::PayloadTooLarge
            | ErrorKind::PreconditionFailed => "invalid_request_error",
            ErrorKind::Unauthorized => "authentication_error",
            ErrorKind::Forbidden => "permission_error",
            ErrorKind::RateLimited { .. } | ErrorKind::TenantBusy => "rate_limit_error",
            ErrorKind::Overloaded | ErrorKind::Unavailable => "overloaded_error",
            ErrorKind::BadGateway | ErrorKind::GatewayTimeout => "upstream_error",
            ErrorKind::Internal => "server_error",
        }
    }

    /// OpenAI's `code` field: a stable machine-readable reason.
    pub fn code(&self) -> &'static str {
        if let Some(code) = self.code_override {
            return code;
        }
        match self.kind {
            ErrorKind::InvalidJson => "invalid_json",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::Unprocessable => "invalid_type",
            ErrorKind::Unauthorized => "invalid_api_key",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::PreconditionFailed => "precondition_failed",
            ErrorKind::RateLimited { .. } => "rate_limit_exceeded",
            ErrorKind::TenantBusy => "concurrency_limit_exceeded",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::BadGateway => "upstream_unavailable",
            ErrorKind::GatewayTimeout => "upstream_timeout",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal_error",
        }
    }

    /// The JSON body, also used as the payload of an SSE error event.
    pub fn body_bytes(&self) -> Bytes {
        let body = ErrorResponse {
            error: ErrorObject {
                message: self.message.clone(),
                kind: self.error_type(),
                param: self.param.clone(),
                code: self.code(),
            },
        };
        // Serialising a struct of strings cannot fail; keep a fixed fallback all the same.
        serde_json::to_vec(&body)
            .map(Bytes::from)
            .unwrap_or_else(|_| Bytes::from_static(br#"{"error":{"message":"internal error","type":"server_error","param":null,"code":"internal_error"}}"#))
    }

    fn retry_after(&self) -> Option<u64> {
        match &self.kind {
            ErrorKind::RateLimited { retry_after } => {
                Some(retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0))
                    .map(|s| s.max(1))
            }
            ErrorKind::TenantBusy | ErrorKind::Overloaded => Some(1),
            _ => None,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.status().as_u16(),
            self.code(),
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

/// The one place where the model-side layers' errors become API errors.
impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        let kind = match e.kind {
            ModelErrorKind::InvalidRequest => ErrorKind::InvalidRequest,
            ModelErrorKind::Unprocessable => ErrorKind::Unprocessable,
            ModelErrorKind::Overloaded => ErrorKind::Overloaded,
            ModelErrorKind::Unavailable => ErrorKind::Unavailable,
            ModelErrorKind::BadGateway => ErrorKind::BadGateway,
            ModelErrorKind::Timeout => ErrorKind::GatewayTimeout,
            ModelErrorKind::Internal => ErrorKind::Internal,
        };
        Self {
            kind,
            message: e.message,
            param: e.param,
            code_override: e.code,
        }
    }
}

/// A request field at fault (a body of the wrong shape or a value out of range): 422 naming it.
impl From<visa_values::fields::FieldError> for ApiError {
    fn from(e: visa_values::fields::FieldError) -> Self {
        let err = ApiError::new(ErrorKind::Unprocessable, e.message);
        if e.param.is_empty() {
            err
        } else {
            err.with_param(e.param)
        }
    }
}

impl ApiError {
    /// The other way, for an upstream's failure handed to a model-side caller (the remote
    /// rewriter): [`From<ModelError>`] gives the same status back.
    pub fn into_model_error(self) -> ModelError {
        let kind = match self.kind {
            ErrorKind::InvalidJson | ErrorKind::InvalidRequest => ModelErrorKind::InvalidRequest,
            ErrorKind::Unprocessable => ModelErrorKind::Unprocessable,
            ErrorKind::RateLimited { .. } | ErrorKind::TenantBusy | ErrorKind::Overloaded => {
                ModelErrorKind::Overloaded
            }
            ErrorKind::Unavailable => ModelErrorKind::Unavailable,
            ErrorKind::BadGateway => ModelErrorKind::BadGateway,
            ErrorKind::GatewayTimeout => ModelErrorKind::Timeout,
            _ => ModelErrorKind::Internal,
        };
        ModelError {
            kind,
            message: self.message,
            param: self.param,
            code: self.code_override,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        let mut response = (self.status(), headers, self.body_bytes()).into_response();
        response.extensions_mut().insert(ErrorCode(self.code()));
        response
    }
}

/// Left on error responses so logs and metrics can tell errors apart.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// True when `body` already is an OpenAI error object, so it can be passed through as it is.
pub fn is_openai_error_body(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    #[expect(dead_code, reason = "only the shape is checked")]
    struct Shape {
        error: ShapeInner,
    }
    #[derive(serde::Deserialize)]
    #[expect(dead_code, reason = "only the shape is checked")]
    struct ShapeInner {
        message: String,
    }
    serde_json::from_slice::<Shape>(body).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_shape() {
        let e = ApiError::invalid_request("messages is required").with_param("messages");
        let v: serde_json::Value = serde_json::from_slice(&e.body_bytes()).unwrap();
        assert_eq!(v["error"]["message"], "messages is required");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "messages");
        assert_eq!(v["error"]["code"], "invalid_request");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn rate_limit_sets_retry_after_rounded_up() {
        let e = ApiError::new(
            ErrorKind::RateLimited {
                retry_after: Duration::from_millis(1500),
            },
            "slow down",
        );
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
    }

    #[test]
    fn recognises_openai_error_bodies() {
        assert!(is_openai_error_body(
            br#"{"error":{"message":"x","type":"y"}}"#
        ));
        assert!(!is_openai_error_body(b"<html>bad gateway</html>"));
        assert!(!is_openai_error_body(br#"{"detail":"x"}"#));
    }
}
