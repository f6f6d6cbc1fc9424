//! Server-Sent Events as OpenAI streams them: decoding an upstream's byte stream into checked
//! events, and encoding events (and a final error) back into `data: ...` lines for the client.

use bytes::Bytes;
use futures_util::stream::BoxStream;

use crate::error::ApiError;

/// One event of a chat-completions stream.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A `data:` payload that is a JSON value (a chunk, or an upstream's `{"error":..}`).
    Data(String),
    /// `data: [DONE]`, the end of a stream that finished normally.
    Done,
}

/// Events after the first one; an `Err` item is the last item and is sent as an error event.
pub type EventStream = BoxStream<'static, Result<StreamEvent, ApiError>>;

/// Check one decoded SSE `data` payload: `[DONE]` or JSON.
pub fn classify_data(data: &str) -> Result<StreamEvent, ApiError> {
    let trimmed = data.trim();
    if trimmed == "[DONE]" {
        return Ok(StreamEvent::Done);
    }
    match serde_json::from_str::<serde::de::IgnoredAny>(trimmed) {
        Ok(_) => Ok(StreamEvent::Data(trimmed.to_owned())),
        Err(e) => Err(ApiError::bad_gateway(format!(
            "upstream sent a malformed stream event (not JSON: {e})"
        ))),
    }
}

/// `data: <payload>\n\n`; a payload of several lines (JSON an upstream sent pretty-printed over
/// several `data:` lines) gets `data: ` on every line, so the client decodes the same payload.
pub fn encode_data(payload: &str) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() + 8);
    for line in payload.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.strip_suffix('\r').unwrap_or(line).as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    Bytes::from(out)
}

pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// Encode one item of an event stream for the client.
pub fn encode(item: &Result<StreamEvent, ApiError>) -> Bytes {
    match item {
        Ok(StreamEvent::Data(d)) => encode_data(d),
        Ok(StreamEvent::Done) => Bytes::from_static(DONE),
        Err(e) => {
            let body = e.body_bytes();
            encode_data(std::str::from_utf8(&body).unwrap_or("{}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_done_json_and_garbage() {
        assert_eq!(classify_data("[DONE]").unwrap(), StreamEvent::Done);
        assert_eq!(
            classify_data(r#"{"a":1}"#).unwrap(),
            StreamEvent::Data(r#"{"a":1}"#.into())
        );
        assert!(classify_data("{not json").is_err());
    }

    #[test]
    fn encodes_openai_lines() {
        assert_eq!(
            &encode(&Ok(StreamEvent::Data("{}".into())))[..],
            b"data: {}\n\n"
        );
        assert_eq!(&encode(&Ok(StreamEvent::Done))[..], b"data: [DONE]\n\n");
        // Every line of a multi-line payload is a data line.
        assert_eq!(
            &encode(&Ok(StreamEvent::Data("{\n  \"a\": 1\n}".into())))[..],
            b"data: {\ndata:   \"a\": 1\ndata: }\n\n"
        );
        let e = encode(&Err(ApiError::bad_gateway("boom")));
        let text = std::str::from_utf8(&e).unwrap();
        assert!(
            text.starts_with("data: {\"error\":{\"message\":\"boom\""),
            "{text}"
        );
        assert!(text.ends_with("\n\n"));
    }
}
