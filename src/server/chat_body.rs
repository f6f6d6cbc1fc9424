//! The few fields of a chat-completions body the proxy reads (`model`, `messages`' shape,
//! `stream`, `stream_options`), taken from the raw bytes with a borrowed parse instead of a
//! JSON tree, and the model name replaced by splicing bytes, so that a request forwards as it
//! came.

use std::ops::Range;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::extract::{json_error, parse};
use crate::error::{ApiError, ErrorKind};

/// What the proxy reads of a chat request; everything else is forwarded untouched.
#[derive(Debug)]
pub struct ChatFields {
    pub model: String,
    pub stream: bool,
    /// Where the `model` value (quotes included) sits in the body.
    model_span: Range<usize>,
}

/// The fields as they appear in the body. A field given twice is an error (serde's
/// `duplicate field`), so the proxy and the upstream cannot read different models.
#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    messages: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream_options: Option<&'a RawValue>,
}

/// What a JSON value is, from its first byte (the value is already known to be valid JSON).
fn kind(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        _ => "a number",
    }
}

fn wrong_type(field: &str, expected: &str, got: &RawValue) -> ApiError {
    ApiError::new(
        ErrorKind::Unprocessable,
        format!("'{field}' must be {expected}, not {}", kind(got)),
    )
    .with_param(field)
}

/// Where `part` (a slice of `whole`) starts and ends in `whole`.
fn span_in(whole: &[u8], part: &str) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize);
    start..start + part.len()
}

/// Check a chat body and read its fields. Errors are the ones a client of OpenAI's API
/// expects: 400 for bytes that are not JSON or a missing field, 422 for a field of the wrong
/// type.
pub fn read(body: &[u8]) -> Result<ChatFields, ApiError> {
    let first = body.iter().copied().find(|b| !b.is_ascii_whitespace());
    if first != Some(b'{') {
        // Empty, not JSON, or JSON that is not an object: the general parser says which. (A
        // struct would also accept an array, field by field.)
        return match parse::<serde_json::Map<String, serde_json::Value>>(body) {
            Err(e) => Err(e),
            Ok(_) => Err(ApiError::new(
                ErrorKind::Unprocessable,
                "The request body has the wrong shape: expected a JSON object",
            )),
        };
    }
    let raw: Raw<'_> = serde_json::from_slice(body).map_err(json_error)?;
    let model = match raw.model {
        None => {
            return Err(
                ApiError::invalid_request("you must provide a 'model' parameter")
                    .with_param("model"),
            );
        }
        Some(m) if m.get().starts_with('"') => m,
        Some(other) => return Err(wrong_type("model", "a string", other)),
    };
    let model_name: String = serde_json::from_str(model.get()).map_err(json_error)?;
    if model_name.is_empty() {
        return Err(ApiError::invalid_request("'model' must not be empty").with_param("model"));
    }
    match raw.messages {
        None => {
            return Err(
                ApiError::invalid_request("you must provide a 'messages' parameter")
                    .with_param("messages"),
            );
        }
        Some(m) if m.get().starts_with('[') => {
            let list: Vec<&RawValue> = serde_json::from_str(m.get()).map_err(json_error)?;
            if list.is_empty() {
                return Err(
                    ApiError::invalid_request("'messages' must hold at least one message")
                        .with_param("messages"),
                );
            }
            if let Some(i) = list.iter().position(|msg| !msg.get().starts_with('{')) {
                return Err(wrong_type(&format!("messages[{i}]"), "an object", list[i]));
            }
        }
        Some(other) => return Err(wrong_type("messages", "an array", other)),
    }
    let stream = match raw.stream.map(RawValue::get) {
        None => false,
        Some("true") => true,
        Some("false") => false,
        Some(_) => {
            let got = raw.stream.map(kind).unwrap_or("null");
            return Err(ApiError::new(
                ErrorKind::Unprocessable,
                format!("'stream' must be a boolean, not {got}"),
            )
            .with_param("stream"));
        }
    };
    match raw.stream_options {
        None => {}
        Some(o) if o.get().starts_with('{') && !stream => {
            return Err(ApiError::invalid_request(
                "'stream_options' is only allowed when 'stream' is true",
            )
            .with_param("stream_options"));
        }
        Some(o) if o.get().starts_with('{') => {}
        Some(other) => return Err(wrong_type("stream_options", "an object", other)),
    }
    Ok(ChatFields {
        model_span: span_in(body, model.get()),
        model: model_name,
        stream,
    })
}

impl ChatFields {
    /// `body` (the bytes `self` was read from) with the model name replaced by `model`.
    pub fn with_model(&self, body: &[u8], model: &str) -> Bytes {
        let Range { start, end } = self.model_span.clone();
        let quoted = serde_json::Value::String(model.to_owned()).to_string();
        let mut out = Vec::with_capacity(body.len() + quoted.len());
        out.extend_from_slice(&body[..start]);
        out.extend_from_slice(quoted.as_bytes());
        out.extend_from_slice(&body[end..]);
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn err(body: &str) -> (u16, Option<String>, String) {
        let e = read(body.as_bytes()).unwrap_err();
        (e.status().as_u16(), e.param.clone(), e.message.clone())
    }

    #[test]
    fn checks_required_fields_and_types() {
        let ok = read(br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#).unwrap();
        assert!(ok.stream);
        assert_eq!(ok.model, "m");
        let ok =
            read(br#" {"model":"m","messages":[{}],"stream":null,"stream_options":null}"#).unwrap();
        assert!(!ok.stream);

        let cases: &[(&str, u16, Option<&str>, &str)] = &[
            (
                r#"{"messages":[{"role":"user"}]}"#,
                400,
                Some("model"),
                "you must provide a 'model' parameter",
            ),
            (
                r#"{"model":null,"messages":[{}]}"#,
                400,
                Some("model"),
                "you must provide a 'model' parameter",
            ),
            (
                r#"{"model":"","messages":[{}]}"#,
                400,
                Some("model"),
                "'model' must not be empty",
            ),
            (
                r#"{"model":7,"messages":[{}]}"#,
                422,
                Some("model"),
                "'model' must be a string, not a number",
            ),
            (
                r#"{"model":"m"}"#,
                400,
                Some("messages"),
                "you must provide a 'messages' parameter",
            ),
            (
                r#"{"model":"m","messages":[]}"#,
                400,
                Some("messages"),
                "'messages' must hold at least one message",
            ),
            (
                r#"{"model":"m","messages":"hi"}"#,
                422,
                Some("messages"),
                "'messages' must be an array, not a string",
            ),
            (
                r#"{"model":"m","messages":[{},"x"]}"#,
                422,
                Some("messages[1]"),
                "'messages[1]' must be an object, not a string",
            ),
            (
                r#"{"model":"m","messages":[{}],"stream":"yes"}"#,
                422,
                Some("stream"),
                "'stream' must be a boolean, not a string",
            ),
            (
                r#"{"model":"m","messages":[{}],"stream_options":{"include_usage":true}}"#,
                400,
                Some("stream_options"),
                "'stream_options' is only allowed when 'stream' is true",
            ),
            (
                r#"{"model":"m","messages":[{}],"stream":true,"stream_options":[1]}"#,
                422,
                Some("stream_options"),
                "'stream_options' must be an object, not an array",
            ),
        ];
        for (body, status, param, message) in cases {
            let got = err(body);
            assert_eq!(
                (got.0, got.1.as_deref(), got.2.as_str()),
                (*status, *param, *message),
                "{body}"
            );
        }
    }

    #[test]
    fn bodies_that_are_not_objects_get_the_general_parse_errors() {
        assert_eq!(err("").0, 400);
        assert_eq!(err("   ").0, 400);
        assert_eq!(err("{\"model\":").0, 400);
        assert_eq!(err("not json").0, 400);
        // Valid JSON of the wrong shape: 422 (an array would otherwise fill the struct).
        assert_eq!(err(r#"["m",[{}]]"#).0, 422);
        assert_eq!(err(r#""hi""#).0, 422);
        // A field twice: the proxy and the upstream could read different models.
        let (status, _, message) = err(r#"{"model":"a","messages":[{}],"model":"b"}"#);
        assert_eq!(status, 422);
        assert!(message.contains("duplicate field `model`"), "{message}");
    }

    #[test]
    fn the_model_is_spliced_and_everything_else_kept_byte_for_byte() {
        let body = br#"{ "temperature" : 0.5,"model" :  "fast" , "messages":[{"role":"user","content":"caf\u00e9 \"x\""}], "n":1e2}"#;
        let fields = read(body).unwrap();
        assert_eq!(fields.model, "fast");
        let out = fields.with_model(body, "mock-\"small\"");
        let expected = String::from_utf8_lossy(body).replace(r#""fast""#, r#""mock-\"small\"""#);
        assert_eq!(String::from_utf8_lossy(&out), expected);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], json!("mock-\"small\""));
        // An escaped model name is read unescaped and replaced whole.
        let body = br#"{"model":"f\u0061st","messages":[{}]}"#;
        let fields = read(body).unwrap();
        assert_eq!(fields.model, "fast");
        assert_eq!(
            &fields.with_model(body, "x")[..],
            br#"{"model":"x","messages":[{}]}"#
        );
    }
}
