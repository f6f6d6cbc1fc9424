//! Streams that need no enforcement: the upstream's SSE bytes are split into whole events and
//! forwarded as they came, without decoding them into strings and encoding them again. Each
//! event is still checked as the decoding path checks it (its data is JSON or `[DONE]`), so a
//! broken upstream ends the stream with the same error event.

use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;

use super::sse::{StreamEvent, classify_data};
use crate::error::ApiError;

/// Bytes for the client after the first event; an `Err` item is the last and becomes an error
/// event.
pub type ByteStream = BoxStream<'static, Result<Bytes, ApiError>>;

/// What a complete event was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Only comments or fields without data (not an event a client dispatches).
    Nothing,
    /// At least one event with data.
    Data,
    /// `data: [DONE]`: the stream is over.
    Done,
}

/// Splits a byte stream into SSE events (each ends at a blank line; lines end with `\n`,
/// `\r\n` or `\r`). The buffer always starts at an event's first byte.
#[derive(Default)]
pub struct Framer {
    buf: BytesMut,
    /// Where the first line not yet scanned starts.
    scanned: usize,
}

/// Where the line that starts at `from` ends: (end of its content, start of the next line), or
/// None when its terminator has not fully arrived (a `\r` at the end may be half of `\r\n`).
fn line_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let i = from + buf[from..].iter().position(|&b| b == b'\n' || b == b'\r')?;
    if buf[i] == b'\n' {
        return Some((i, i + 1));
    }
    match buf.get(i + 1) {
        Some(b'\n') => Some((i, i + 2)),
        Some(_) => Some((i, i + 1)),
        None => None,
    }
}

/// Check one complete event (its lines, without the blank line that ended it): the data it
/// carries (several `data:` lines join with `\n`) must be JSON or `[DONE]`.
fn check_event(event: &[u8]) -> Result<Seen, ApiError> {
    let mut first: Option<&[u8]> = None;
    let mut joined: Option<Vec<u8>> = None;
    let mut pos = 0;
    while pos < event.len() {
        let (end, next) = line_end(event, pos).unwrap_or((event.len(), event.len()));
        let line = &event[pos..end];
        // The event's last terminator, when it is a lone `\r`, is not found above.
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos = next;
        let value = if line == b"data" {
            Some(&b""[..])
        } else {
            line.strip_prefix(b"data:")
                .map(|v| v.strip_prefix(b" ").unwrap_or(v))
        };
        let Some(v) = value else { continue };
        match (first, joined.as_mut()) {
            (None, _) => first = Some(v),
            (Some(f), None) => {
                let mut all = f.to_vec();
                all.push(b'\n');
                all.extend_from_slice(v);
                joined = Some(all);
            }
            (Some(_), Some(all)) => {
                all.push(b'\n');
                all.extend_from_slice(v);
            }
        }
    }
    let payload = match (&joined, first) {
        (Some(all), _) => all.as_slice(),
        (None, Some(f)) => f,
        (None, None) => return Ok(Seen::Nothing),
    };
    // An event whose data is empty is not dispatched (WHATWG HTML, "dispatch the event").
    if payload.is_empty() {
        return Ok(Seen::Nothing);
    }
    let text = std::str::from_utf8(payload)
        .map_err(|_| ApiError::bad_gateway("upstream sent a malformed stream event (not UTF-8)"))?;
    match classify_data(text)? {
        StreamEvent::Done => Ok(Seen::Done),
        _ => Ok(Seen::Data),
    }
}

impl Framer {
    /// Add bytes from the upstream.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The complete events now buffered, as one run of bytes (ending at `[DONE]` when it is
    /// among them), and the most that was seen in them; None while no event is complete. An
    /// event that fails its check is an error, returned once the events before it were taken.
    pub fn take(&mut self) -> Result<Option<(Bytes, Seen)>, ApiError> {
        let mut seen = Seen::Nothing;
        let mut event_start = 0;
        let mut cut = 0;
        let mut pos = self.scanned;
        let mut failed = None;
        while let Some((end, next)) = line_end(&self.buf, pos) {
            if end == pos {
                match check_event(&self.buf[event_start..end]) {
                    Ok(Seen::Done) => {
                        seen = Seen::Done;
                        cut = next;
                        break;
                    }
                    Ok(Seen::Data) => seen = Seen::Data,
                    Ok(Seen::Nothing) => {}
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
                cut = next;
                event_start = next;
            }
            pos = next;
        }
        if cut == 0 {
            if let Some(e) = failed {
                return Err(e);
            }
            self.scanned = pos;
            return Ok(None);
        }
        let out = self.buf.split_to(cut).freeze();
        self.scanned = if failed.is_some() || seen == Seen::Done {
            0
        } else {
            pos - cut
        };
        Ok(Some((out, seen)))
    }

    /// Nothing is buffered (no partial event is waiting).
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `input` in pieces of `step` bytes; everything taken, the last `Seen`, the error.
    fn run(input: &[u8], step: usize) -> (Vec<u8>, Vec<Seen>, Option<String>) {
        let mut framer = Framer::default();
        let (mut out, mut seen) = (Vec::new(), Vec::new());
        for piece in input.chunks(step) {
            framer.push(piece);
            loop {
                match framer.take() {
                    Ok(Some((bytes, s))) => {
                        out.extend_from_slice(&bytes);
                        seen.push(s);
                        if s == Seen::Done {
                            return (out, seen, None);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return (out, seen, Some(e.message)),
                }
            }
        }
        (out, seen, None)
    }

    #[test]
    fn events_pass_byte_for_byte_whatever_the_chunking() {
        let input: &[u8] = b": keep-alive\n\ndata: {\"a\":1}\n\nevent: delta\nid: 7\r\ndata: {\"b\":\r\ndata: 2}\r\n\r\ndata:{\"c\":3}\r\rdata: [DONE]\n\ndata: after";
        let done_at = input.windows(6).position(|w| w == b"[DONE]").unwrap() + 8;
        for step in [1, 2, 3, 7, 64, input.len()] {
            let (out, seen, err) = run(input, step);
            assert_eq!(err, None, "step {step}");
            assert_eq!(out, &input[..done_at], "step {step}");
            assert_eq!(seen.last(), Some(&Seen::Done), "step {step}");
        }
        // In one chunk: one run of bytes up to [DONE].
        let (_, seen, _) = run(input, input.len());
        assert_eq!(seen, vec![Seen::Done]);
        // The comment alone is not an event.
        let (out, seen, _) = run(b": ping\n\n", 100);
        assert_eq!(
            (out.as_slice(), seen),
            (&b": ping\n\n"[..], vec![Seen::Nothing])
        );
    }

    #[test]
    fn an_incomplete_event_waits_and_a_lone_cr_at_the_end_may_be_half_a_crlf() {
        let mut framer = Framer::default();
        framer.push(b"data: {\"a\":1}\r\n\r");
        assert!(framer.take().unwrap().is_none());
        framer.push(b"\n");
        let (bytes, seen) = framer.take().unwrap().unwrap();
        assert_eq!(
            (&bytes[..], seen),
            (&b"data: {\"a\":1}\r\n\r\n"[..], Seen::Data)
        );
        assert!(framer.is_empty());
    }

    #[test]
    fn a_malformed_event_is_an_error_after_the_good_ones_before_it() {
        for step in [1, 5, 1000] {
            let (out, seen, err) = run(b"data: {\"a\":1}\n\ndata: {not json\n\ndata: {}\n\n", step);
            assert_eq!(out, b"data: {\"a\":1}\n\n", "step {step}");
            assert_eq!(seen, vec![Seen::Data]);
            assert!(err.unwrap().contains("malformed"));
        }
        // Empty data is not dispatched, so it is not checked either.
        let (_, seen, err) = run(b"data:\n\n", 100);
        assert_eq!((seen, err), (vec![Seen::Nothing], None));
    }
}
