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
    /// A payload with the SSE fields the upstream set beside it (`event:` other than the
    /// default, `id:`): kept on every event that passes as it came. Chunks the proxy builds
    /// carry none.
    Tagged {
        data: String,
        event: Option<String>,
        id: Option<String>,
    },
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

impl StreamEvent {
    /// The JSON payload of a data event.
    pub fn data(&self) -> Option<&str> {
        match self {
            StreamEvent::Data(d) | StreamEvent::Tagged { data: d, .. } => Some(d),
            StreamEvent::Done => None,
        }
    }
}

/// Check one decoded SSE event: its data, and the `event:` and `id:` fields beside it.
pub fn classify(data: &str, event: &str, id: &str) -> Result<StreamEvent, ApiError> {
    let ev = classify_data(data)?;
    let event = (!event.is_empty() && event != "message").then(|| event.to_owned());
    let id = (!id.is_empty()).then(|| id.to_owned());
    Ok(match ev {
        StreamEvent::Data(data) if event.is_some() || id.is_some() => {
            StreamEvent::Tagged { data, event, id }
        }
        ev => ev,
    })
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
        Ok(StreamEvent::Tagged { data, event, id }) => {
            let mut out = Vec::new();
            // A field's value ends at the line's end: a newline in it would start another.
            let one_line = |v: &str| v.replace(['\r', '\n'], " ");
            if let Some(e) = event {
                out.extend_from_slice(format!("event: {}\n", one_line(e)).as_bytes());
            }
            if let Some(i) = id {
                out.extend_from_slice(format!("id: {}\n", one_line(i)).as_bytes());
            }
            out.extend_from_slice(&encode_data(data));
            Bytes::from(out)
        }
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
        // The upstream's `event:` and `id:` fields are kept; the default event name is not one.
        let tagged = classify(r#"{"a":1}"#, "delta", "7").unwrap();
        assert_eq!(
            &encode(&Ok(tagged))[..],
            b"event: delta\nid: 7\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(
            classify("{}", "message", "").unwrap(),
            StreamEvent::Data("{}".into())
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
