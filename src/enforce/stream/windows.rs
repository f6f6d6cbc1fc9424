//! `window` mode: each choice's text held until a window (a sentence or clause boundary; a
//! small first window) is complete, checked, and released as it was, edited, or not at all.

use super::*;

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

#[derive(Default)]
pub(super) struct ChoiceBuf {
    /// Held text not yet checked.
    pub(super) held: String,
    /// When the oldest held character arrived.
    pub(super) since: Option<Instant>,
    /// Text released to the client so far.
    pub(super) released: String,
    /// The upstream's text of this choice, for the decision log (kept only when the profile's
    /// `log_text` keeps text).
    pub(super) upstream: String,
    /// The values of the released text (per value, the maximum over its sentences).
    pub(super) released_values: Option<ValueVector>,
    pub(super) windows: usize,
    pub(super) finished: bool,
    /// A window of it was blocked: it is finished, and nothing more of it is sent.
    pub(super) blocked: bool,
    /// The choice's own fields beside its delta, carried on the chunks built for it.
    pub(super) extras: Map<String, Value>,
    /// Log-probabilities of held tokens, each with its length in bytes.
    pub(super) logprobs: VecDeque<(Value, usize)>,
    /// Bytes of released text the tokens taken so far do not cover yet.
    pub(super) logprobs_owed: usize,
    /// The token that straddles the last window boundary spells changed text: dropped.
    pub(super) logprobs_taint: bool,
    /// Held reasoning text, the field it came in, and whether the rest is withheld.
    pub(super) reasoning: String,
    pub(super) reasoning_field: &'static str,
    pub(super) reasoning_withheld: bool,
    /// Held refusal text.
    pub(super) refusal: String,
    /// Held audio deltas and their transcript.
    pub(super) audio: Vec<Value>,
    pub(super) audio_bytes: usize,
    pub(super) transcript: String,
}

impl ChoiceBuf {
    pub(super) fn hold_logprobs(&mut self, entries: Vec<Value>) {
        for e in entries {
            let len = e
                .get("bytes")
                .and_then(Value::as_array)
                .map(Vec::len)
                .or_else(|| e.get("token").and_then(Value::as_str).map(str::len))
                .unwrap_or(0);
            self.logprobs.push_back((e, len));
        }
    }

    /// The log-probabilities of a released window of `bytes` bytes: those of its tokens when it
    /// went out unchanged, none when it was rewritten or blocked (their tokens spell the
    /// original). A token that reaches into a changed window is dropped too.
    pub(super) fn take_logprobs(&mut self, bytes: usize, unchanged: bool) -> Vec<Value> {
        self.logprobs_owed += bytes;
        let mut out = Vec::new();
        while self
            .logprobs
            .front()
            .is_some_and(|(_, len)| *len <= self.logprobs_owed)
        {
            let Some((entry, len)) = self.logprobs.pop_front() else {
                break;
            };
            self.logprobs_owed -= len;
            if unchanged && !self.logprobs_taint {
                out.push(entry);
            }
            self.logprobs_taint = false;
        }
        if self.logprobs.is_empty() {
            // Tokens that do not add up to the text (or none were sent): nothing is owed.
            self.logprobs_owed = 0;
        }
        self.logprobs_taint |= !unchanged && self.logprobs_owed > 0;
        out
    }
}

pub(super) struct Windows {
    pub(super) enforcer: Arc<Enforcer>,
    pub(super) request_id: String,
    pub(super) profile: Arc<Profile>,
    pub(super) tenant: String,
    pub(super) context: Option<String>,
    pub(super) metadata: bool,
    pub(super) template: Template,
    pub(super) choices: BTreeMap<usize, ChoiceBuf>,
    pub(super) reports: Vec<Report>,
    pub(super) usage: Option<Value>,
    pub(super) upstream_chars: usize,
    pub(super) delivered_chars: usize,
    pub(super) changed: bool,
    pub(super) worst: VisaAction,
    pub(super) started: Instant,
}

pub(super) fn too_large(limit: usize, what: &str) -> ApiError {
    ApiError::bad_gateway(format!(
        "the upstream's {what} is longer than the {limit} characters a stream may hold (enforce.max_buffer_chars)"
    ))
    .with_code("upstream_answer_too_large")
}

impl Windows {
    /// Whether the decision log keeps this stream's text (so it is accumulated).
    pub(super) fn keeps_text(&self) -> bool {
        self.enforcer.decisions.is_some()
            && self.profile.log_text != crate::values::profile::LogText::None
    }

    /// A chunk with one choice, carrying that choice's own fields.
    pub(super) fn emit(
        &self,
        index: usize,
        delta: Value,
        finish: Option<&Value>,
        logprobs: Vec<Value>,
        extra: Option<(&str, Value)>,
    ) -> Item {
        let mut choice = Map::new();
        choice.insert("index".into(), json!(index));
        if let Some(b) = self.choices.get(&index) {
            for (k, v) in &b.extras {
                choice.insert(k.clone(), v.clone());
            }
        }
        choice.insert("delta".into(), delta);
        if !logprobs.is_empty() {
            choice.insert(
                "logprobs".into(),
                json!({"content": logprobs, "refusal": null}),
            );
        }
        choice.insert(
            "finish_reason".into(),
            finish.cloned().unwrap_or(Value::Null),
        );
        self.template
            .chunk(Value::Array(vec![Value::Object(choice)]), extra)
    }

    /// A chunk with one delta for one choice.
    pub(super) fn delta(&self, index: usize, delta: Value) -> Item {
        self.emit(index, delta, None, Vec::new(), None)
    }

    /// Check one window and say what to send (`None`: blocked) and whether it is the
    /// upstream's text unchanged.
    pub(super) async fn window(
        &mut self,
        index: usize,
        text: String,
    ) -> Result<(Option<String>, bool), ApiError> {
        if text.trim().is_empty() {
            // Whitespace carries no value: released as it came, without a check or a report.
            self.upstream_chars += text.chars().count();
            self.delivered_chars += text.chars().count();
            if let Some(b) = self.choices.get_mut(&index) {
                b.released.push_str(&text);
            }
            return Ok((Some(text), true));
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
        let (out, unchanged) = match (action, new_text) {
            (VisaAction::Blocked, _) => (None, false),
            (VisaAction::Rewritten, Some(t)) => {
                self.changed = true;
                // Keep the whitespace that separated this window from the next.
                let trailing = &text[text.trim_end().len()..];
                let lead = &text[..text.len() - text.trim_start().len()];
                (Some(format!("{lead}{t}{trailing}")), false)
            }
            _ => (Some(text), true),
        };
        if let Some(t) = &out {
            self.delivered_chars += t.chars().count();
            if let Some(b) = self.choices.get_mut(&index) {
                b.released.push_str(t);
                b.released_values = Some(released_values);
            }
        }
        Ok((out, unchanged))
    }

    /// At the end of a choice: when the profile rewrites and the released answer lacks a value
    /// it asks for, one sentence that expresses it, to append (the text before was sent
    /// already, so the end is the only place left). `None`: nothing to add.
    pub(super) async fn append_at_end(&mut self, index: usize) -> Result<Option<Item>, ApiError> {
        // Only sentence edits can add to what was sent; the whole-text rewriter cannot.
        if self.profile.action != Action::Rewrite || !self.enforcer.decider.edits() {
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
                Some(self.emit(index, json!({"content": t}), None, Vec::new(), live))
            }
            None => live.map(|r| self.template.chunk(json!([]), Some(r))),
        })
    }

    /// The `visa_window` field for the window just decided, when metadata was asked for.
    pub(super) fn window_report(
        &self,
        index: usize,
        held_chars: usize,
    ) -> Option<(&'static str, Value)> {
        if !self.metadata {
            return None;
        }
        let mut report = serde_json::to_value(self.reports.last()?).ok()?;
        report["window"] = json!(self.choices.get(&index).map_or(0, |b| b.windows));
        report["held_chars"] = json!(held_chars);
        Some(("visa_window", report))
    }

    /// Cut and check every complete window of one choice (all of it when `all`).
    pub(super) async fn release(
        &mut self,
        index: usize,
        all: bool,
    ) -> Result<(Vec<Item>, bool), ApiError> {
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
            let bytes = window.len();
            let blank = window.trim().is_empty();
            let (released, unchanged) = self.window(index, window).await?;
            let logprobs = self
                .choices
                .get_mut(&index)
                .map(|b| b.take_logprobs(bytes, unchanged))
                .unwrap_or_default();
            // With x-visa-metadata, each window's report rides on the chunk that releases it
            // (or on an empty chunk when it was blocked), so a client sees decisions live.
            let report = if blank {
                None
            } else {
                self.window_report(index, held_chars)
            };
            match released {
                Some(t) => {
                    items.push(self.emit(index, json!({"content": t}), None, logprobs, report))
                }
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
    pub(super) async fn release_or_end(&mut self, index: usize, all: bool) -> (Vec<Item>, bool) {
        match self.release(index, all).await {
            Ok((items, false)) => (items, false),
            Ok((mut items, true)) => {
                items.extend(self.end_blocked(index));
                (items, false)
            }
            Err(e) => (vec![Err(e)], true),
        }
    }

    /// Reasoning text: held in windows like content, each checked for values it expresses
    /// beyond the profile's bands; one that does is withheld, and so is the rest of it.
    pub(super) async fn release_reasoning(
        &mut self,
        index: usize,
        all: bool,
    ) -> Result<Vec<Item>, ApiError> {
        let mut items = Vec::new();
        loop {
            let cfg = &self.enforcer.config;
            let Some(buf) = self.choices.get_mut(&index) else {
                break;
            };
            if buf.reasoning_withheld {
                buf.reasoning.clear();
                break;
            }
            let cut = match cut_point(&buf.reasoning, cfg.window_chars, cfg.max_window_chars) {
                Some(c) => c,
                None if all && !buf.reasoning.is_empty() => buf.reasoning.len(),
                None => break,
            };
            let window: String = buf.reasoning.drain(..cut).collect();
            let field = buf.reasoning_field;
            if !window.trim().is_empty() {
                let report = self
                    .enforcer
                    .check_only(
                        &self.tenant,
                        &self.profile,
                        index,
                        field,
                        window.trim(),
                        true,
                    )
                    .await?;
                let withheld = report.action == VisaAction::Blocked;
                self.reports.push(report);
                if withheld {
                    if let Some(b) = self.choices.get_mut(&index) {
                        b.reasoning_withheld = true;
                        b.reasoning.clear();
                    }
                    let live = self.window_report(index, window.chars().count());
                    if let Some(r) = live {
                        items.push(self.template.chunk(json!([]), Some(r)));
                    }
                    break;
                }
            }
            items.push(self.delta(index, json!({ field: window })));
        }
        Ok(items)
    }

    /// A held refusal, checked whole: sent, or (`Ok(None)`) the choice is blocked.
    pub(super) async fn release_refusal(
        &mut self,
        index: usize,
    ) -> Result<Option<Vec<Item>>, ApiError> {
        let Some(text) = self
            .choices
            .get_mut(&index)
            .map(|b| std::mem::take(&mut b.refusal))
            .filter(|t| !t.is_empty())
        else {
            return Ok(Some(Vec::new()));
        };
        let report = self
            .enforcer
            .check_only(&self.tenant, &self.profile, index, "refusal", &text, false)
            .await?;
        let action = report.action;
        self.worst = self.worst.max(action);
        self.reports.push(report);
        if action == VisaAction::Blocked {
            return Ok(None);
        }
        let live = self.window_report(index, text.chars().count());
        Ok(Some(vec![self.emit(
            index,
            json!({"refusal": text}),
            None,
            Vec::new(),
            live,
        )]))
    }

    /// Held audio, released once its transcript is checked; audio without a transcript cannot
    /// be checked. `Ok(None)`: the choice is blocked.
    pub(super) async fn release_audio(
        &mut self,
        index: usize,
    ) -> Result<Option<Vec<Item>>, ApiError> {
        let Some((deltas, transcript)) = self
            .choices
            .get_mut(&index)
            .filter(|b| !b.audio.is_empty())
            .map(|b| {
                (
                    std::mem::take(&mut b.audio),
                    std::mem::take(&mut b.transcript),
                )
            })
        else {
            return Ok(Some(Vec::new()));
        };
        if transcript.trim().is_empty() {
            self.worst = self.worst.max(VisaAction::Blocked);
            return Ok(None);
        }
        let report = self
            .enforcer
            .check_only(
                &self.tenant,
                &self.profile,
                index,
                "audio.transcript",
                &transcript,
                false,
            )
            .await?;
        let action = report.action;
        self.worst = self.worst.max(action);
        self.reports.push(report);
        if action == VisaAction::Blocked {
            return Ok(None);
        }
        Ok(Some(
            deltas
                .into_iter()
                .map(|d| self.delta(index, json!({"audio": d})))
                .collect(),
        ))
    }

    /// Before a piece of `kind` for a choice: send what is held of another kind (reasoning,
    /// a refusal; audio waits for the end of the choice), so the order stays. `true`: nothing
    /// may follow.
    pub(super) async fn flush_before(&mut self, index: usize, kind: Kind) -> (Vec<Item>, bool) {
        let mut items = Vec::new();
        if kind != Kind::Reasoning {
            match self.release_reasoning(index, true).await {
                Ok(mut it) => items.append(&mut it),
                Err(e) => return (vec![Err(e)], true),
            }
        }
        if kind != Kind::Refusal {
            match self.release_refusal(index).await {
                Ok(Some(mut it)) => items.append(&mut it),
                Ok(None) => items.extend(self.end_blocked(index)),
                Err(e) => return (vec![Err(e)], true),
            }
        }
        if kind == Kind::Finish && !self.is_blocked(index) {
            match self.release_audio(index).await {
                Ok(Some(mut it)) => items.append(&mut it),
                Ok(None) => items.extend(self.end_blocked(index)),
                Err(e) => return (vec![Err(e)], true),
            }
        }
        (items, false)
    }

    /// Hold a refusal or audio piece (bounded by `enforce.max_buffer_chars`).
    pub(super) fn hold(&mut self, piece: Piece) -> Result<(), ApiError> {
        let limit = self.enforcer.config.max_buffer_chars;
        match piece {
            Piece::Refusal { index, text } => {
                let b = self.choices.entry(index).or_default();
                b.refusal.push_str(&text);
                if b.refusal.chars().count() > limit {
                    return Err(too_large(limit, "refusal"));
                }
            }
            Piece::Audio { index, delta } => {
                let b = self.choices.entry(index).or_default();
                if let Some(t) = delta.get("transcript").and_then(Value::as_str) {
                    b.transcript.push_str(t);
                }
                b.audio_bytes += delta.to_string().len();
                b.audio.push(delta);
                if b.audio_bytes > limit {
                    return Err(too_large(limit, "audio"));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// After a block: end that choice with `content_filter`; whatever the upstream still sends
    /// for it is dropped.
    pub(super) fn end_blocked(&mut self, index: usize) -> Vec<Item> {
        let reason = Value::String("content_filter".into());
        let buf = self.choices.entry(index).or_default();
        buf.held.clear();
        buf.reasoning.clear();
        buf.refusal.clear();
        buf.audio.clear();
        buf.logprobs.clear();
        buf.blocked = true;
        if buf.finished {
            return Vec::new();
        }
        buf.finished = true;
        vec![self.emit(index, json!({}), Some(&reason), Vec::new(), None)]
    }

    pub(super) fn is_blocked(&self, index: usize) -> bool {
        self.choices.get(&index).is_some_and(|b| b.blocked)
    }

    /// The `visa` chunk, the usage chunk and `[DONE]`; the decision goes to the log.
    pub(super) fn tail(&mut self) -> Vec<Item> {
        if !self.reports.is_empty() && self.enforcer.logs(&self.profile, self.worst) {
            let texts = self
                .choices
                .iter()
                .filter(|(_, b)| !b.upstream.is_empty())
                .map(|(i, b)| {
                    let sent = (!b.released.is_empty()).then(|| b.released.clone());
                    (*i, b.upstream.clone(), sent)
                })
                .collect();
            self.enforcer.log_decision(
                &self.profile,
                &self.reports,
                crate::decisions::Pending {
                    tenant: self.tenant.clone(),
                    request_id: self.request_id.clone(),
                    kind: "stream",
                    action: self.worst.as_str(),
                    values: Vec::new(),
                    total_ms: super::super::ms(self.started.elapsed()),
                    reports: Value::Null,
                    texts,
                },
            );
        }
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
                        "total_ms": super::super::ms(self.started.elapsed()),
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

pub(super) fn tail_chars(s: &str, n: usize) -> String {
    let count = s.chars().count();
    s.chars().skip(count.saturating_sub(n)).collect()
}

pub(super) fn windows(
    mut state: Windows,
    mut upstream: BoxStream<'static, Item>,
) -> BoxStream<'static, Item> {
    async_stream::stream! {
        while let Some(item) = upstream.next().await {
            let data = match item {
                Ok(StreamEvent::Data(d) | StreamEvent::Tagged { data: d, .. }) => d,
                Ok(StreamEvent::Done) => break,
                Err(e) => {
                    // Held text is dropped: it was never checked.
                    yield Err(e);
                    return;
                }
            };
            state.template.learn(&data);
            for piece in pieces(&data) {
                if let Some((index, kind)) = piece.at() {
                    if state.is_blocked(index) {
                        continue;
                    }
                    let (items, stop) = state.flush_before(index, kind).await;
                    for it in items { yield it; }
                    if stop { return; }
                    if state.is_blocked(index) {
                        continue;
                    }
                }
                match piece {
                    Piece::Extras { index, fields } => {
                        state.choices.entry(index).or_default().extras.extend(fields);
                    }
                    Piece::Content { index, text, logprobs } => {
                        let keep = state.keeps_text();
                        let buf = state.choices.entry(index).or_default();
                        if buf.since.is_none() {
                            buf.since = Some(Instant::now());
                        }
                        buf.hold_logprobs(logprobs);
                        buf.held.push_str(&text);
                        if keep {
                            buf.upstream.push_str(&text);
                        }
                        let (items, stop) = state.release_or_end(index, false).await;
                        for it in items { yield it; }
                        if stop { return; }
                    }
                    Piece::Reasoning { index, field, text } => {
                        let buf = state.choices.entry(index).or_default();
                        buf.reasoning_field = field;
                        if !buf.reasoning_withheld {
                            buf.reasoning.push_str(&text);
                        }
                        match state.release_reasoning(index, false).await {
                            Ok(items) => for it in items { yield it; },
                            Err(e) => { yield Err(e); return; }
                        }
                    }
                    p @ (Piece::Refusal { .. } | Piece::Audio { .. }) => {
                        if let Err(e) = state.hold(p) {
                            yield Err(e);
                            return;
                        }
                    }
                    Piece::Other { index, delta } => {
                        // Text held before a tool call is checked first.
                        let has_held = state.choices.get(&index).is_some_and(|b| !b.held.is_empty());
                        if has_held {
                            let (items, stop) = state.release_or_end(index, true).await;
                            for it in items { yield it; }
                            if stop { return; }
                            if state.is_blocked(index) {
                                continue;
                            }
                        }
                        state.choices.entry(index).or_default();
                        yield state.delta(index, delta);
                    }
                    Piece::Finish { index, reason } => {
                        let (items, stop) = state.release_or_end(index, true).await;
                        for it in items { yield it; }
                        if stop { return; }
                        if state.is_blocked(index) {
                            continue;
                        }
                        match state.append_at_end(index).await {
                            Ok(Some(it)) => yield it,
                            Ok(None) => {}
                            Err(e) => { yield Err(e); return; }
                        }
                        state.choices.entry(index).or_default().finished = true;
                        yield state.emit(index, json!({}), Some(&reason), Vec::new(), None);
                    }
                    Piece::Usage(u) => state.usage = Some(u),
                    Piece::Raw(raw) => yield Ok(StreamEvent::Data(raw)),
                }
            }
        }
        // The upstream ended: check what is still held.
        let open: Vec<usize> = state.choices.iter().filter(|(_, b)| !b.finished && !b.blocked).map(|(i, _)| *i).collect();
        for index in open {
            let (items, stop) = state.flush_before(index, Kind::Finish).await;
            for it in items { yield it; }
            if stop { return; }
            if state.is_blocked(index) {
                continue;
            }
            let (items, stop) = state.release_or_end(index, true).await;
            for it in items { yield it; }
            if stop { return; }
            if state.is_blocked(index) {
                continue;
            }
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

/// The refusal in place of a blocked buffered choice's text, once.
pub(super) fn refuse_once(
    state: &Windows,
    placed: &mut Vec<usize>,
    events: &mut Vec<Item>,
    index: usize,
) {
    if !placed.contains(&index) {
        placed.push(index);
        events.push(state.delta(index, json!({"refusal": REFUSAL})));
    }
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
    fn logprobs_go_out_only_with_unchanged_text() {
        let mut b = ChoiceBuf::default();
        let tok = |t: &str| json!({"token": t, "logprob": -0.1});
        b.hold_logprobs(vec![
            tok("One"),
            tok(" two"),
            tok(". Th"),
            tok("ree"),
            tok(" four."),
        ]);
        // "One two. " unchanged: its whole tokens go out; ". Th" reaches into the next window.
        assert_eq!(
            b.take_logprobs("One two. ".len(), true),
            vec![tok("One"), tok(" two")]
        );
        // "Three four." changed: none of its tokens, nor the one straddling into it.
        assert_eq!(
            b.take_logprobs("Three four.".len(), false),
            Vec::<Value>::new()
        );
        assert!(b.logprobs.is_empty());
        // A token straddling out of a changed window is dropped in the next one too.
        let mut b = ChoiceBuf::default();
        b.hold_logprobs(vec![tok("Bad. Go"), tok("od")]);
        assert!(b.take_logprobs("Bad. ".len(), false).is_empty());
        assert_eq!(b.take_logprobs("Good".len(), true), vec![tok("od")]);
    }
}
