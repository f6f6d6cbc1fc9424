//! Enforcement on streamed answers. `window` mode holds text until a window (sentence or clause
//! boundary, a small first window for a low time to first token) is complete, checks it, and
//! releases it, its rewrite, or nothing (the stream then ends with `content_filter`), so no byte
//! the profile rewrites or blocks reaches the client. `buffer` mode holds the whole answer.
//! `audit` profiles pass the stream through untouched and score it at the end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::http::HeaderValue;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde_json::{Map, Value, json};

use super::{
    ACTION_HEADER, Decide, Enforcer, Outcome, REFUSAL, Report, STREAM_MODE_HEADER, VisaAction,
    user_request, visa_headers,
};
use crate::edit::Scope;
use crate::error::ApiError;
use crate::stage::{StageContext, StageStream};
use crate::upstream::sse::StreamEvent;
use crate::values::ValueVector;
use crate::values::profile::{Action, Profile, StreamMode};

type Item = Result<StreamEvent, ApiError>;

/// Where to cut a window off the front of `buf`: just after the first sentence or clause
/// boundary (`.`, `!`, `?`, `;`, `:` or a newline, with the whitespace after it) that leaves the
/// window at least `min` bytes long; at the last space before `max` when no boundary comes.
pub fn cut_point(buf: &str, min: usize, max: usize) -> Option<usize> {
    let bytes = buf.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let boundary = c == b'\n'
            || (matches!(c, b'.' | b'!' | b'?' | b';' | b':')
                && bytes.get(i + 1).is_some_and(u8::is_ascii_whitespace));
        if boundary {
            // Take the whitespace that follows, so the next window starts with a word.
            let mut end = i + 1;
            while end < bytes.len() && bytes[end].is_ascii_whitespace() {
                end += 1;
            }
            if end >= min && end < bytes.len() {
                return Some(end);
            }
            if end >= min && end == bytes.len() {
                // The boundary is at the very end: more whitespace may follow, but the window
                // is complete.
                return Some(end);
            }
            i = end;
            continue;
        }
        i += 1;
    }
    if buf.len() >= max {
        let mut cut = max.min(buf.len());
        while !buf.is_char_boundary(cut) {
            cut -= 1;
        }
        let at_space = buf[..cut]
            .rfind(' ')
            .map(|s| s + 1)
            .filter(|s| *s > min / 2);
        return Some(at_space.unwrap_or(cut));
    }
    None
}

/// The parts of an upstream chunk that enforcement cares about.
#[derive(Debug, PartialEq)]
enum Piece {
    Content {
        index: usize,
        text: String,
    },
    /// A delta without content (role, tool calls, refusal): passes untouched.
    Other {
        index: usize,
        delta: Value,
    },
    Finish {
        index: usize,
        reason: Value,
    },
    Usage(Value),
    /// Anything else (an error object, an unknown shape): passes as it came.
    Raw(String),
}

fn pieces(data: &str) -> Vec<Piece> {
    let Ok(Value::Object(chunk)) = serde_json::from_str::<Value>(data) else {
        return vec![Piece::Raw(data.to_owned())];
    };
    let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
        return vec![Piece::Raw(data.to_owned())];
    };
    let mut out = Vec::new();
    for (k, c) in choices.iter().enumerate() {
        let index = c.get("index").and_then(Value::as_u64).unwrap_or(k as u64) as usize;
        if let Some(Value::Object(delta)) = c.get("delta") {
            let mut rest = Map::new();
            let mut content = None;
            for (key, v) in delta {
                if key == "content" {
                    content = v.as_str().filter(|t| !t.is_empty());
                } else if !v.is_null() {
                    rest.insert(key.clone(), v.clone());
                }
            }
            // The role comes before the text it introduces.
            if !rest.is_empty() {
                out.push(Piece::Other {
                    index,
                    delta: Value::Object(rest),
                });
            }
            if let Some(t) = content {
                out.push(Piece::Content {
                    index,
                    text: t.to_owned(),
                });
            }
        }
        if let Some(r) = c.get("finish_reason").filter(|r| !r.is_null()) {
            out.push(Piece::Finish {
                index,
                reason: r.clone(),
            });
        }
    }
    if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
        out.push(Piece::Usage(u.clone()));
    }
    out
}

/// The id, created and model of the upstream's chunks, reused for the chunks the proxy makes.
#[derive(Clone, Default)]
struct Template {
    fields: Map<String, Value>,
}

impl Template {
    fn learn(&mut self, data: &str) {
        if !self.fields.is_empty() {
            return;
        }
        if let Ok(Value::Object(c)) = serde_json::from_str::<Value>(data) {
            for k in ["id", "object", "created", "model", "system_fingerprint"] {
                if let Some(v) = c.get(k) {
                    self.fields.insert(k.into(), v.clone());
                }
            }
        }
    }

    fn chunk(&self, choices: Value, extra: Option<(&str, Value)>) -> Item {
        let mut c = self.fields.clone();
        c.entry("object")
            .or_insert_with(|| Value::String("chat.completion.chunk".into()));
        c.insert("choices".into(), choices);
        if let Some((k, v)) = extra {
            c.insert(k.into(), v);
        }
        Ok(StreamEvent::Data(Value::Object(c).to_string()))
    }

    fn content(&self, index: usize, text: &str) -> Item {
        self.chunk(
            json!([{"index": index, "delta": {"content": text}, "finish_reason": null}]),
            None,
        )
    }

    fn finish(&self, index: usize, reason: &Value) -> Item {
        self.chunk(
            json!([{"index": index, "delta": {}, "finish_reason": reason}]),
            None,
        )
    }
}

pub async fn enforce_stream(
    enforcer: Arc<Enforcer>,
    ctx: StageContext,
    stream: StageStream,
) -> Result<StageStream, ApiError> {
    let Some(profile) = enforcer.profile_for(&ctx.tenant.id)? else {
        return Ok(stream);
    };
    let mut headers = visa_headers(None, &profile);
    headers.extend(stream.headers);
    let upstream = futures_util::stream::once(async move { Ok(stream.first) })
        .chain(stream.rest)
        .boxed();
    let state = Windows {
        context: user_request(&ctx.request),
        tenant: ctx.tenant.id.clone(),
        metadata: ctx.metadata,
        enforcer,
        profile,
        template: Template::default(),
        choices: BTreeMap::new(),
        reports: Vec::new(),
        usage: None,
        upstream_chars: 0,
        delivered_chars: 0,
        changed: false,
        worst: VisaAction::Passed,
        started: Instant::now(),
    };
    let (mode, mut out): (&str, BoxStream<'static, Item>) = match state.profile.action {
        Action::Audit => {
            headers.insert(ACTION_HEADER, HeaderValue::from_static("passed"));
            ("audit", audit(state, upstream))
        }
        _ if state.profile.stream_mode == StreamMode::Buffer => {
            let (action, events) = buffer(state, upstream).await?;
            headers.insert(ACTION_HEADER, HeaderValue::from_static(action.as_str()));
            (
                "buffer",
                futures_util::stream::iter(events.into_iter().map(Ok)).boxed(),
            )
        }
        _ => ("window", windows(state, upstream)),
    };
    headers.insert(STREAM_MODE_HEADER, HeaderValue::from_static(mode));
    // The response starts with the first event the client may see.
    let first = match out.next().await {
        Some(Ok(ev)) => ev,
        Some(Err(e)) => return Err(e),
        None => return Err(ApiError::bad_gateway("the upstream stream was empty")),
    };
    Ok(StageStream {
        first,
        rest: out,
        headers,
    })
}

#[derive(Default)]
struct ChoiceBuf {
    /// Held text not yet checked.
    held: String,
    /// When the oldest held character arrived.
    since: Option<Instant>,
    /// Text released to the client so far.
    released: String,
    /// The values of the released text (per value, the maximum over its sentences).
    released_values: Option<ValueVector>,
    windows: usize,
    finished: bool,
    /// A window of it was blocked: it is finished, and nothing more of it is sent.
    blocked: bool,
}

struct Windows {
    enforcer: Arc<Enforcer>,
    profile: Arc<Profile>,
    tenant: String,
    context: Option<String>,
    metadata: bool,
    template: Template,
    choices: BTreeMap<usize, ChoiceBuf>,
    reports: Vec<Report>,
    usage: Option<Value>,
    upstream_chars: usize,
    delivered_chars: usize,
    changed: bool,
    worst: VisaAction,
    started: Instant,
}

impl Windows {
    /// Check one window and say what to send; `Ok(None)` means blocked.
    async fn window(&mut self, index: usize, text: String) -> Result<Option<String>, ApiError> {
        if text.trim().is_empty() {
            // Whitespace carries no value: released as it came, without a check or a report.
            self.upstream_chars += text.chars().count();
            self.delivered_chars += text.chars().count();
            if let Some(b) = self.choices.get_mut(&index) {
                b.released.push_str(&text);
            }
            return Ok(Some(text));
        }
        let buf = self.choices.entry(index).or_default();
        buf.windows += 1;
        if let Some(since) = buf.since.take() {
            self.enforcer
                .metrics
                .stage(&self.tenant, "hold_back_wait", since.elapsed());
        }
        let tail = tail_chars(&buf.released, 300);
        let context = match (&self.context, tail.is_empty()) {
            (Some(c), false) => Some(format!("{c}\n(The answer so far: {tail})")),
            (Some(c), true) => Some(c.clone()),
            (None, false) => Some(format!("(The answer so far: {tail})")),
            (None, true) => None,
        };
        let held_from = Instant::now();
        let prior = buf.released_values;
        let deadline = self
            .enforcer
            .budget(&self.profile)
            .map(|b| tokio::time::Instant::now() + b);
        let Outcome {
            action,
            text: new_text,
            report,
            ..
        } = self
            .enforcer
            .decide(
                &self.tenant,
                &self.profile,
                index,
                text.trim(),
                Decide {
                    context: context.as_deref(),
                    deadline,
                    prior,
                    scope: Scope::LowerOnly,
                },
            )
            .await?;
        self.enforcer.metrics.added("window", held_from.elapsed());
        let released_values = report
            .after
            .as_ref()
            .filter(|_| action == VisaAction::Rewritten)
            .unwrap_or(&report.before)
            .values;
        self.enforcer
            .metrics
            .stage(&self.tenant, "hold_back", held_from.elapsed());
        self.enforcer
            .metrics
            .held_back(&self.tenant, text.chars().count());
        self.worst = self.worst.max(action);
        self.reports.push(report);
        self.upstream_chars += text.chars().count();
        let out = match (action, new_text) {
            (VisaAction::Blocked, _) => None,
            (VisaAction::Rewritten, Some(t)) => {
                self.changed = true;
                // Keep the whitespace that separated this window from the next.
                let trailing = &text[text.trim_end().len()..];
                let lead = &text[..text.len() - text.trim_start().len()];
                Some(format!("{lead}{t}{trailing}"))
            }
            _ => Some(text),
        };
        if let Some(t) = &out {
            self.delivered_chars += t.chars().count();
            if let Some(b) = self.choices.get_mut(&index) {
                b.released.push_str(t);
                b.released_values = Some(released_values);
            }
        }
        Ok(out)
    }

    /// At the end of a choice: when the profile rewrites and the released answer lacks a value
    /// it asks for, one sentence that expresses it, to append (the text before was sent
    /// already, so the end is the only place left). `None`: nothing to add.
    async fn append_at_end(&mut self, index: usize) -> Result<Option<Item>, ApiError> {
        // Only sentence edits can add to what was sent; the whole-text rewriter cannot.
        let edits = self.enforcer.editor.is_some()
            && self.enforcer.mode == crate::config::RewriteMode::Edits;
        if self.profile.action != Action::Rewrite || !edits {
            return Ok(None);
        }
        let Some(buf) = self.choices.get(&index) else {
            return Ok(None);
        };
        if buf.released.trim().is_empty() {
            return Ok(None);
        }
        let released = buf.released.clone();
        let started = Instant::now();
        let deadline = self
            .enforcer
            .budget(&self.profile)
            .map(|b| tokio::time::Instant::now() + b);
        let outcome = self
            .enforcer
            .decide(
                &self.tenant,
                &self.profile,
                index,
                &released,
                Decide {
                    context: self.context.as_deref(),
                    deadline,
                    prior: None,
                    scope: Scope::AppendOnly,
                },
            )
            .await?;
        // Nothing was missing: no report, nothing to add.
        if outcome.action == VisaAction::Passed {
            return Ok(None);
        }
        self.enforcer.metrics.added("stream_end", started.elapsed());
        self.worst = self.worst.max(outcome.action);
        let mut report = outcome.report;
        // A failed append cannot withhold what was sent: it is reported, not blocked.
        if report.action == VisaAction::Blocked {
            report.action = VisaAction::Fallback;
        }
        self.reports.push(report);
        let appended = outcome
            .appended
            .filter(|_| outcome.action == VisaAction::Rewritten);
        if let Some(b) = self.choices.get_mut(&index) {
            b.windows += 1;
            if let Some(t) = &appended {
                b.released.push_str(t);
            }
        }
        let live = self.window_report(index, 0);
        Ok(match appended {
            Some(t) => {
                self.changed = true;
                self.delivered_chars += t.chars().count();
                Some(self.template.chunk(
                    json!([{"index": index, "delta": {"content": t}, "finish_reason": null}]),
                    live,
                ))
            }
            None => live.map(|r| self.template.chunk(json!([]), Some(r))),
        })
    }

    /// The `visa_window` field for the window just decided, when metadata was asked for.
    fn window_report(&self, index: usize, held_chars: usize) -> Option<(&'static str, Value)> {
        if !self.metadata {
            return None;
        }
        let mut report = serde_json::to_value(self.reports.last()?).ok()?;
        report["window"] = json!(self.choices.get(&index).map_or(0, |b| b.windows));
        report["held_chars"] = json!(held_chars);
        Some(("visa_window", report))
    }

    /// Cut and check every complete window of one choice (all of it when `all`).
    async fn release(&mut self, index: usize, all: bool) -> Result<(Vec<Item>, bool), ApiError> {
        let mut items = Vec::new();
        while let Some(buf) = self.choices.get_mut(&index) {
            let cfg = &self.enforcer.config;
            let min = if buf.windows == 0 {
                cfg.first_window_chars
            } else {
                cfg.window_chars
            };
            let cut = match cut_point(&buf.held, min, cfg.max_window_chars) {
                Some(c) => c,
                None if all && !buf.held.is_empty() => buf.held.len(),
                None => break,
            };
            let window: String = buf.held.drain(..cut).collect();
            if !buf.held.is_empty() {
                buf.since = Some(Instant::now());
            }
            let held_chars = window.chars().count();
            let blank = window.trim().is_empty();
            let released = self.window(index, window).await?;
            // With x-visa-metadata, each window's report rides on the chunk that releases it
            // (or on an empty chunk when it was blocked), so a client sees decisions live.
            let report = if blank {
                None
            } else {
                self.window_report(index, held_chars)
            };
            match released {
                Some(t) => items.push(self.template.chunk(
                    json!([{"index": index, "delta": {"content": t}, "finish_reason": null}]),
                    report,
                )),
                None => {
                    if report.is_some() {
                        items.push(self.template.chunk(json!([]), report));
                    }
                    return Ok((items, true));
                }
            }
        }
        Ok((items, false))
    }

    /// [`Windows::release`]; a blocked window ends its own choice with `content_filter` (the
    /// other choices go on, and the usage still comes at the end), a failed check ends the
    /// stream with an error event. `true`: nothing may follow.
    async fn release_or_end(&mut self, index: usize, all: bool) -> (Vec<Item>, bool) {
        match self.release(index, all).await {
            Ok((items, false)) => (items, false),
            Ok((mut items, true)) => {
                items.extend(self.end_blocked(index));
                (items, false)
            }
            Err(e) => (vec![Err(e)], true),
        }
    }

    /// After a block: end that choice with `content_filter`; whatever the upstream still sends
    /// for it is dropped.
    fn end_blocked(&mut self, index: usize) -> Vec<Item> {
        let reason = Value::String("content_filter".into());
        let buf = self.choices.entry(index).or_default();
        buf.held.clear();
        buf.blocked = true;
        if buf.finished {
            return Vec::new();
        }
        buf.finished = true;
        vec![self.template.finish(index, &reason)]
    }

    fn is_blocked(&self, index: usize) -> bool {
        self.choices.get(&index).is_some_and(|b| b.blocked)
    }

    /// The `visa` chunk, the usage chunk and `[DONE]`.
    fn tail(&mut self) -> Vec<Item> {
        let mut items = Vec::new();
        if self.metadata {
            items.push(self.template.chunk(
                json!([]),
                Some((
                    "visa",
                    json!({
                        "action": self.worst,
                        "profile_version": self.profile.version,
                        "windows": self.reports,
                        "total_ms": super::ms(self.started.elapsed()),
                    }),
                )),
            ));
        }
        if let Some(mut usage) = self.usage.take() {
            if self.changed {
                adjust_usage(&mut usage, self.upstream_chars, self.delivered_chars);
            }
            items.push(self.template.chunk(json!([]), Some(("usage", usage))));
        }
        items.push(Ok(StreamEvent::Done));
        items
    }
}

/// When text changed, scale completion tokens by delivered / upstream characters (the proxy
/// cannot know the upstream's tokenizer); the totals follow.
pub(crate) fn adjust_usage(usage: &mut Value, upstream_chars: usize, delivered_chars: usize) {
    if upstream_chars == 0 {
        return;
    }
    if let Some(c) = usage.get("completion_tokens").and_then(Value::as_u64) {
        let scaled = (c as f64 * delivered_chars as f64 / upstream_chars as f64).round() as u64;
        let prompt = usage
            .get("prompt_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        usage["completion_tokens"] = json!(scaled);
        usage["total_tokens"] = json!(prompt + scaled);
    }
}

fn tail_chars(s: &str, n: usize) -> String {
    let count = s.chars().count();
    s.chars().skip(count.saturating_sub(n)).collect()
}

fn windows(mut state: Windows, mut upstream: BoxStream<'static, Item>) -> BoxStream<'static, Item> {
    async_stream::stream! {
        while let Some(item) = upstream.next().await {
            let data = match item {
                Ok(StreamEvent::Data(d)) => d,
                Ok(StreamEvent::Done) => break,
                Err(e) => {
                    // Held text is dropped: it was never checked.
                    yield Err(e);
                    return;
                }
            };
            state.template.learn(&data);
            for piece in pieces(&data) {
                match piece {
                    Piece::Content { index, .. } | Piece::Other { index, .. } | Piece::Finish { index, .. }
                        if state.is_blocked(index) => {}
                    Piece::Content { index, text } => {
                        let buf = state.choices.entry(index).or_default();
                        if buf.since.is_none() {
                            buf.since = Some(Instant::now());
                        }
                        buf.held.push_str(&text);
                        let (items, stop) = state.release_or_end(index, false).await;
                        for it in items { yield it; }
                        if stop { return; }
                    }
                    Piece::Other { index, delta } => {
                        // Text held before a tool call or refusal is checked first.
                        let has_held = state.choices.get(&index).is_some_and(|b| !b.held.is_empty());
                        if has_held {
                            let (items, stop) = state.release_or_end(index, true).await;
                            for it in items { yield it; }
                            if stop { return; }
                        }
                        state.choices.entry(index).or_default();
                        yield state.template.chunk(
                            json!([{"index": index, "delta": delta, "finish_reason": null}]),
                            None,
                        );
                    }
                    Piece::Finish { index, reason } => {
                        let (items, stop) = state.release_or_end(index, true).await;
                        for it in items { yield it; }
                        if stop { return; }
                        match state.append_at_end(index).await {
                            Ok(Some(it)) => yield it,
                            Ok(None) => {}
                            Err(e) => { yield Err(e); return; }
                        }
                        state.choices.entry(index).or_default().finished = true;
                        yield state.template.finish(index, &reason);
                    }
                    Piece::Usage(u) => state.usage = Some(u),
                    Piece::Raw(raw) => yield Ok(StreamEvent::Data(raw)),
                }
            }
        }
        // The upstream ended: check what is still held.
        let open: Vec<usize> = state.choices.iter().filter(|(_, b)| !b.finished && !b.blocked).map(|(i, _)| *i).collect();
        for index in open {
            let (items, stop) = state.release_or_end(index, true).await;
            for it in items { yield it; }
            if stop { return; }
            match state.append_at_end(index).await {
                Ok(Some(it)) => yield it,
                Ok(None) => {}
                Err(e) => { yield Err(e); return; }
            }
        }
        for it in state.tail() { yield it; }
    }
    .boxed()
}

/// `buffer` mode: read the whole answer, decide each choice, then send the result.
async fn buffer(
    mut state: Windows,
    mut upstream: BoxStream<'static, Item>,
) -> Result<(VisaAction, Vec<StreamEvent>), ApiError> {
    let mut texts: BTreeMap<usize, String> = BTreeMap::new();
    let mut others: Vec<Item> = Vec::new();
    let mut finishes: BTreeMap<usize, Value> = BTreeMap::new();
    let limit = state.enforcer.config.max_buffer_chars;
    let mut held = 0usize;
    while let Some(item) = upstream.next().await {
        let data = match item? {
            StreamEvent::Data(d) => d,
            StreamEvent::Done => break,
        };
        state.template.learn(&data);
        for piece in pieces(&data) {
            match piece {
                Piece::Content { index, text } => {
                    held += text.chars().count();
                    if held > limit {
                        return Err(ApiError::bad_gateway(format!(
                            "the upstream's answer is longer than the {limit} characters buffer mode holds (enforce.max_buffer_chars)"
                        ))
                        .with_code("upstream_answer_too_large"));
                    }
                    texts.entry(index).or_default().push_str(&text)
                }
                Piece::Other { index, delta } => others.push(state.template.chunk(
                    json!([{"index": index, "delta": delta, "finish_reason": null}]),
                    None,
                )),
                Piece::Finish { index, reason } => {
                    finishes.insert(index, reason);
                }
                Piece::Usage(u) => state.usage = Some(u),
                Piece::Raw(raw) => others.push(Ok(StreamEvent::Data(raw))),
            }
        }
    }
    let held_from = Instant::now();
    let deadline = state
        .enforcer
        .budget(&state.profile)
        .map(|b| tokio::time::Instant::now() + b);
    let outcomes = futures_util::future::join_all(texts.iter().map(|(index, text)| {
        let (enforcer, profile, tenant, context) = (
            state.enforcer.clone(),
            state.profile.clone(),
            state.tenant.clone(),
            state.context.clone(),
        );
        let (index, text) = (*index, text.clone());
        async move {
            if text.trim().is_empty() {
                return Ok(None);
            }
            enforcer
                .decide(
                    &tenant,
                    &profile,
                    index,
                    &text,
                    Decide::whole(context.as_deref(), deadline),
                )
                .await
                .map(Some)
        }
    }))
    .await;
    state.enforcer.metrics.added("buffer", held_from.elapsed());
    let mut events: Vec<Item> = others;
    for ((index, text), outcome) in texts.iter().zip(outcomes) {
        let outcome = outcome?;
        let (action, new_text) = match outcome {
            Some(o) => {
                state.reports.push(o.report);
                (o.action, o.text)
            }
            None => (VisaAction::Passed, None),
        };
        state.worst = state.worst.max(action);
        state.upstream_chars += text.chars().count();
        match action {
            VisaAction::Blocked => {
                events.push(state.template.chunk(
                    json!([{"index": index, "delta": {"refusal": REFUSAL}, "finish_reason": null}]),
                    None,
                ));
                finishes.insert(*index, Value::String("content_filter".into()));
            }
            _ => {
                let sent = new_text.unwrap_or_else(|| text.clone());
                state.changed |= action == VisaAction::Rewritten;
                state.delivered_chars += sent.chars().count();
                events.push(state.template.content(*index, &sent));
            }
        }
    }
    for (index, reason) in &finishes {
        events.push(state.template.finish(*index, reason));
    }
    events.extend(state.tail());
    let worst = state.worst;
    let events = events.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok((worst, events))
}

/// `audit`: everything passes at once; the text is scored after the upstream finished.
fn audit(mut state: Windows, mut upstream: BoxStream<'static, Item>) -> BoxStream<'static, Item> {
    async_stream::stream! {
        let mut texts: BTreeMap<usize, String> = BTreeMap::new();
        while let Some(item) = upstream.next().await {
            match item {
                Ok(StreamEvent::Done) => break,
                Ok(StreamEvent::Data(d)) => {
                    for p in pieces(&d) {
                        if let Piece::Content { index, text } = p {
                            texts.entry(index).or_default().push_str(&text);
                        }
                    }
                    state.template.learn(&d);
                    yield Ok(StreamEvent::Data(d));
                }
                Err(e) => { yield Err(e); return; }
            }
        }
        let wants_report = state.metadata;
        let score = async move {
            for (index, text) in &texts {
                if text.trim().is_empty() { continue; }
                match state.enforcer.decide(&state.tenant, &state.profile, *index, text, Decide::whole(None, None)).await {
                    Ok(o) => state.reports.push(o.report),
                    Err(e) => tracing::warn!(error = %e.message, "audit scoring failed"),
                }
            }
            state
        };
        if wants_report {
            let mut state = score.await;
            // Usage passed through unchanged already; only the report is added.
            state.usage = None;
            for it in state.tail() { yield it; }
        } else {
            // Scores only feed metrics: do not hold [DONE] for them.
            tokio::spawn(async move { let _ = score.await; });
            yield Ok(StreamEvent::Done);
        }
    }
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_at_boundaries_after_the_minimum() {
        assert_eq!(cut_point("Hi. There is more", 10, 100), None);
        let s = "Short one. A second sentence follows. Third";
        assert_eq!(cut_point(s, 5, 100), Some(11));
        assert_eq!(
            &s[..cut_point(s, 15, 100).unwrap()],
            "Short one. A second sentence follows. "
        );
        // A boundary needs the whitespace after it: "2.5" is not one.
        assert_eq!(cut_point("Version 2.5 is out", 1, 100), None);
        assert_eq!(cut_point("Line one\nline two", 3, 100), Some(9));
        // No boundary: cut at the last space before the maximum.
        assert_eq!(cut_point("aaaa bbbb cccc dddd", 4, 12), Some(10));
        assert_eq!(cut_point("Ends here.", 3, 100), None);
        assert_eq!(cut_point("Ends here. ", 3, 100), Some(11));
    }

    #[test]
    fn splits_chunks_into_pieces() {
        let p = pieces(
            r#"{"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null},{"index":1,"delta":{"tool_calls":[{"id":"t"}]},"finish_reason":"tool_calls"}],"usage":null}"#,
        );
        assert_eq!(
            p,
            vec![
                Piece::Other {
                    index: 0,
                    delta: json!({"role": "assistant"})
                },
                Piece::Content {
                    index: 0,
                    text: "Hi".into()
                },
                Piece::Other {
                    index: 1,
                    delta: json!({"tool_calls": [{"id": "t"}]})
                },
                Piece::Finish {
                    index: 1,
                    reason: json!("tool_calls")
                },
            ]
        );
        assert_eq!(
            pieces(r#"{"choices":[],"usage":{"completion_tokens":3}}"#),
            vec![Piece::Usage(json!({"completion_tokens": 3}))]
        );
        assert_eq!(
            pieces(r#"{"error":{}}"#),
            vec![Piece::Raw(r#"{"error":{}}"#.into())]
        );
    }

    #[test]
    fn usage_scales_with_delivered_text() {
        let mut u = json!({"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30});
        adjust_usage(&mut u, 100, 150);
        assert_eq!(
            u,
            json!({"prompt_tokens": 10, "completion_tokens": 30, "total_tokens": 40})
        );
    }
}
