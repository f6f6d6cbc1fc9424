//! The closed loop on `/v1/chat/completions` answers: each choice (or stream window) decided
//! against the tenant's profile by `visa_core::enforce` (pass, rewrite shielded, fall back or
//! block); what was done reported in headers and, on request, in a `visa` object, and kept in
//! the decision log. Streams are handled in `stream`.

pub mod deferred;
pub mod steering;
pub mod stream;

pub use steering::steering_message;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};

use crate::config::EnforceConfig;
use crate::error::{ApiError, ErrorKind};
use crate::metrics::Metrics;
use crate::stage::{Plan, ResponseStage, Sampled, StageContext, StageJson, StageStream};
use crate::store::Profiles;
use crate::values::profile::{Action, Profile};

pub const ACTION_HEADER: HeaderName = HeaderName::from_static("x-visa-action");
pub const VERSION_HEADER: HeaderName = HeaderName::from_static("x-visa-profile-version");
pub const STREAM_MODE_HEADER: HeaderName = HeaderName::from_static("x-visa-stream-mode");
/// A client that sends `x-visa-metadata: true` gets the `visa` report.
pub const METADATA_HEADER: &str = "x-visa-metadata";

/// What a blocked answer says instead.
pub const REFUSAL: &str =
    "This answer was withheld because it does not meet the value profile set for this service.";

pub use visa_core::enforce::{Decide, Decider, Outcome, Report, VisaAction, ms, outside};

/// The closed loop over one chat answer: the decisions on its texts ([`Decider`]), and what
/// the request path adds to them (profiles, budgets, headers, the decision log, metrics).
pub struct Enforcer {
    pub profiles: Arc<Profiles>,
    /// The models and how a text is decided.
    pub decider: Decider,
    pub config: EnforceConfig,
    pub metrics: Arc<Metrics>,
    /// Audits measured after their answer was sent (`deferred`).
    pub deferred: tokio::sync::mpsc::Sender<Sampled>,
    /// Where decisions are recorded (`[decisions] enabled`).
    pub decisions: Option<Arc<crate::decisions::DecisionLog>>,
}

/// The last user message: what the answer responds to (the rewriter's context).
pub fn user_request(request: &Value) -> Option<String> {
    request
        .get("messages")?
        .as_array()?
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| match m.get("content") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(parts)) => Some(
                parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            _ => None,
        })
}

impl Enforcer {
    /// Whether the decision log keeps a decision with this action under this profile (so the
    /// caller gathers the record, and its texts only when the profile keeps text).
    pub(crate) fn logs(&self, profile: &Profile, action: VisaAction) -> bool {
        self.decisions.is_some()
            && (action != VisaAction::Passed || profile.log_decisions.logs_passed())
    }

    /// Queue the decision on one answer for the decision log (callers ask [`Self::logs`]
    /// first, so nothing is gathered for a decision the log does not keep); never waits.
    /// `pending`'s values and reports are filled in here.
    pub(crate) fn log_decision(
        &self,
        profile: &Profile,
        reports: &[Report],
        mut pending: crate::decisions::Pending,
    ) {
        let Some(log) = &self.decisions else { return };
        for r in reports {
            for v in outside(profile, &r.before) {
                let name = v.as_str().to_owned();
                if !pending.values.contains(&name) {
                    pending.values.push(name);
                }
            }
        }
        pending.reports = serde_json::to_value(reports).unwrap_or(Value::Null);
        log.record(profile, pending);
    }

    /// The tenant's profile when it asks for anything; `Err` when it does but the models are
    /// off (failing closed rather than passing unchecked text).
    pub fn profile_for(&self, tenant: &str) -> Result<Option<Arc<Profile>>, ApiError> {
        let Some(p) = self.profiles.get(tenant) else {
            return Ok(None);
        };
        if self.decider.scorer.is_none() && p.action != Action::Audit {
            return Err(ApiError::new(
                ErrorKind::Unavailable,
                "this tenant's value profile needs the value models, which are disabled on this proxy",
            ));
        }
        Ok(Some(p))
    }

    /// The time enforcement may add under `profile` (none: no limit).
    pub fn budget(&self, profile: &Profile) -> Option<Duration> {
        let ms = profile.max_added_ms.unwrap_or(self.config.max_added_ms);
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// [`Decider::check_only`] with the API's error.
    pub async fn check_only(
        &self,
        tenant: &str,
        profile: &Profile,
        index: usize,
        field: &'static str,
        text: &str,
        lower_only: bool,
    ) -> Result<Report, ApiError> {
        Ok(self
            .decider
            .check_only(tenant, profile, index, field, text, lower_only)
            .await?)
    }

    /// [`Decider::decide`] with the API's error.
    pub async fn decide(
        &self,
        tenant: &str,
        profile: &Profile,
        index: usize,
        text: &str,
        how: Decide<'_>,
    ) -> Result<Outcome, ApiError> {
        Ok(self
            .decider
            .decide(tenant, profile, index, text, how)
            .await?)
    }

    async fn enforce_json(&self, ctx: StageContext, body: Bytes) -> Result<StageJson, ApiError> {
        let started = Instant::now();
        let Some(profile) = self.profile_for(&ctx.tenant.id)? else {
            return Ok(StageJson {
                body,
                headers: HeaderMap::new(),
            });
        };
        let mut answer: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_gateway(format!("upstream answer is not JSON: {e}")))?;
        let context = user_request(&ctx.request);
        let deadline = self
            .budget(&profile)
            .map(|b| tokio::time::Instant::from_std(started) + b);
        // The text of every choice is checked, whatever sits beside it (tool calls, a refusal
        // field): a string, or an array of text parts. A content of another shape cannot be
        // checked: blocked unless the profile only audits.
        let mut work = Vec::new();
        let mut unreadable: Vec<usize> = Vec::new();
        if let Some(choices) = answer.get("choices").and_then(Value::as_array) {
            for (k, c) in choices.iter().enumerate() {
                let index = c.get("index").and_then(Value::as_u64).unwrap_or(k as u64) as usize;
                match c
                    .get("message")
                    .and_then(|m| m.get("content"))
                    .map(content_text)
                {
                    None | Some(Some(None)) => {}
                    Some(Some(Some(text))) => {
                        if !text.trim().is_empty() {
                            work.push((k, index, text));
                        }
                    }
                    Some(None) => unreadable.push(k),
                }
            }
        }
        let outcomes = futures_util::future::join_all(work.iter().map(|(_, index, text)| {
            self.decide(
                &ctx.tenant.id,
                &profile,
                *index,
                text,
                Decide::whole(context.as_deref(), deadline),
            )
        }))
        .await;
        let mut worst = VisaAction::Passed;
        let mut reports = Vec::new();
        let (mut upstream_chars, mut delivered_chars, mut changed) = (0usize, 0usize, false);
        // Choices whose content was replaced: the fields beside it went with it.
        let mut replaced: Vec<usize> = Vec::new();
        for ((k, _, _), outcome) in work.iter().zip(outcomes) {
            let outcome = match outcome {
                Ok(o) => o,
                // Audit measures; it never fails a request (the models off, the encoder busy):
                // the answer passes and the failure is logged.
                Err(e) if profile.action == Action::Audit => {
                    tracing::warn!(tenant = %ctx.tenant.id, error = %e.message, "audit scoring failed; the answer passes");
                    continue;
                }
                Err(e) => return Err(e),
            };
            worst = worst.max(outcome.action);
            if let Some(choice) = answer.get_mut("choices").and_then(|c| c.get_mut(*k)) {
                match (outcome.action, outcome.text) {
                    (VisaAction::Rewritten, Some(t)) => {
                        upstream_chars += work_chars(&work, *k);
                        delivered_chars += t.chars().count();
                        changed = true;
                        choice["message"]["content"] = Value::String(t);
                        strip_original(choice);
                        replaced.push(*k);
                    }
                    (VisaAction::Blocked, _) => {
                        upstream_chars += work_chars(&work, *k);
                        changed = true;
                        block_choice(choice);
                        replaced.push(*k);
                    }
                    _ => {
                        let n = work_chars(&work, *k);
                        upstream_chars += n;
                        delivered_chars += n;
                    }
                }
            }
            reports.push(outcome.report);
        }
        // Text beside the content (a refusal, reasoning, an audio transcript) is checked too,
        // though not rewritten: a refusal or transcript that misses the profile blocks its
        // choice as the profile's fallback says; reasoning that expresses too much of a value is
        // removed. Audio without a transcript cannot be checked.
        let mut sides: Vec<(usize, usize, &'static str, String, bool)> = Vec::new();
        if let Some(choices) = answer.get("choices").and_then(Value::as_array) {
            for (k, c) in choices.iter().enumerate() {
                if replaced.contains(&k) {
                    continue;
                }
                let index = c.get("index").and_then(Value::as_u64).unwrap_or(k as u64) as usize;
                let Some(m) = c.get("message") else { continue };
                for (field, lower_only) in [
                    ("refusal", false),
                    ("reasoning_content", true),
                    ("reasoning", true),
                ] {
                    match m.get(field) {
                        None | Some(Value::Null) => {}
                        Some(Value::String(t)) if t.trim().is_empty() => {}
                        Some(Value::String(t)) => {
                            sides.push((k, index, field, t.clone(), lower_only));
                        }
                        // A shape the proxy cannot read: removed, never passed as checked.
                        Some(_) if lower_only => sides.push((k, index, field, String::new(), true)),
                        Some(_) => unreadable.push(k),
                    }
                }
                match m.get("audio") {
                    None | Some(Value::Null) => {}
                    Some(a) => match a.get("transcript").and_then(Value::as_str) {
                        Some(t) if !t.trim().is_empty() => {
                            sides.push((k, index, "audio.transcript", t.to_owned(), false));
                        }
                        _ => unreadable.push(k),
                    },
                }
            }
        }
        if !sides.is_empty() {
            let checks = futures_util::future::join_all(sides.iter().map(
                |(_, index, field, text, lower)| {
                    let tenant = &ctx.tenant.id;
                    let profile = &profile;
                    async move {
                        if text.is_empty() {
                            return Ok(None);
                        }
                        self.check_only(tenant, profile, *index, field, text, *lower)
                            .await
                            .map(Some)
                    }
                },
            ))
            .await;
            for ((k, _, field, _, _), check) in sides.iter().zip(checks) {
                let report = match check {
                    Ok(r) => r,
                    Err(e) if profile.action == Action::Audit => {
                        tracing::warn!(tenant = %ctx.tenant.id, error = %e.message, "audit scoring failed; the answer passes");
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let Some(choice) = answer.get_mut("choices").and_then(|c| c.get_mut(*k)) else {
                    continue;
                };
                let action = match &report {
                    Some(r) => r.action,
                    None if profile.action == Action::Audit => continue,
                    None => VisaAction::Blocked,
                };
                if action == VisaAction::Blocked {
                    if field.starts_with("reasoning") {
                        if let Some(m) = choice.get_mut("message").and_then(Value::as_object_mut) {
                            m.remove(*field);
                        }
                    } else {
                        block_choice(choice);
                        changed = true;
                        worst = worst.max(VisaAction::Blocked);
                    }
                } else if field.starts_with("reasoning") {
                    // Reasoning does not decide the answer's action: a withheld reasoning is
                    // reported, the answer is what the client asked for.
                } else {
                    worst = worst.max(action);
                }
                reports.extend(report);
            }
        }
        if profile.action != Action::Audit {
            for k in &unreadable {
                if let Some(choice) = answer.get_mut("choices").and_then(|c| c.get_mut(*k)) {
                    block_choice(choice);
                    changed = true;
                    worst = worst.max(VisaAction::Blocked);
                }
            }
        }
        // Usage counts what the client receives, as streams do.
        if changed && let Some(usage) = answer.get_mut("usage") {
            stream::adjust_usage(usage, upstream_chars, delivered_chars);
        }
        let total = started.elapsed();
        if !work.is_empty() {
            self.metrics.added("json", total);
        }
        if !reports.is_empty() && self.logs(&profile, worst) {
            let keep_text = profile.log_text != crate::values::profile::LogText::None;
            let texts = work
                .iter()
                .filter(|_| keep_text)
                .map(|(k, index, original)| {
                    let blocked = reports
                        .iter()
                        .any(|r| r.index == *index && r.action == VisaAction::Blocked);
                    let sent = answer
                        .get("choices")
                        .and_then(|c| c.get(*k))
                        .and_then(|c| c.get("message"))
                        .and_then(|m| m.get("content"))
                        .and_then(content_text)
                        .flatten()
                        .filter(|_| !blocked);
                    (*index, original.clone(), sent)
                })
                .collect();
            self.log_decision(
                &profile,
                &reports,
                crate::decisions::Pending {
                    tenant: ctx.tenant.id.clone(),
                    request_id: ctx.request_id.clone(),
                    kind: "json",
                    action: worst.as_str(),
                    values: Vec::new(),
                    total_ms: ms(total),
                    reports: Value::Null,
                    texts,
                },
            );
        }
        if ctx.metadata {
            answer["visa"] = json!({
                "action": worst,
                "profile_version": profile.version,
                "choices": reports,
                "budget_ms": self.budget(&profile).map(|b| b.as_millis() as u64),
                "total_ms": ms(total),
            });
        }
        let body = serde_json::to_vec(&answer)
            .map_err(|e| ApiError::internal(format!("could not encode the answer: {e}")))?;
        Ok(StageJson {
            body: Bytes::from(body),
            headers: visa_headers(Some(worst), &profile),
        })
    }
}

/// A message content as text: `Some(Some(text))` for a string or an array of text parts,
/// `Some(None)` for null, `None` for a shape the proxy cannot read as text.
pub(super) fn content_text(content: &Value) -> Option<Option<String>> {
    match content {
        Value::Null => Some(None),
        Value::String(s) => Some(Some(s.clone())),
        Value::Array(parts) => {
            let mut out = String::new();
            for p in parts {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text") | None, Some(t)) => out.push_str(t),
                    _ => return None,
                }
            }
            Some(Some(out))
        }
        _ => None,
    }
}

fn work_chars(work: &[(usize, usize, String)], k: usize) -> usize {
    work.iter()
        .find(|(j, _, _)| *j == k)
        .map_or(0, |(_, _, t)| t.chars().count())
}

/// Fields of a choice that carry the upstream's own text (token log-probabilities, reasoning,
/// an audio transcript): removed when the text was rewritten or blocked.
fn strip_original(choice: &mut Value) {
    if let Some(c) = choice.as_object_mut() {
        c.remove("logprobs");
    }
    if let Some(m) = choice.get_mut("message").and_then(Value::as_object_mut) {
        for k in ["reasoning_content", "reasoning", "audio"] {
            m.remove(k);
        }
    }
}

/// A choice replaced by the refusal.
fn block_choice(choice: &mut Value) {
    strip_original(choice);
    choice["message"]["content"] = Value::Null;
    choice["message"]["refusal"] = Value::String(REFUSAL.into());
    if let Some(m) = choice.get_mut("message").and_then(Value::as_object_mut) {
        m.remove("tool_calls");
    }
    choice["finish_reason"] = Value::String("content_filter".into());
}

pub fn visa_headers(action: Option<VisaAction>, profile: &Profile) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(a) = action {
        h.insert(ACTION_HEADER, HeaderValue::from_static(a.as_str()));
    }
    if let Ok(v) = HeaderValue::from_str(&profile.version.to_string()) {
        h.insert(VERSION_HEADER, v);
    }
    h
}

impl Enforcer {
    /// Queue an audit to be measured after its answer was sent; never waits (a full queue
    /// drops it, counted in `visa_deferred_audits_total{outcome="dropped"}`).
    pub fn defer(&self, audit: Sampled) {
        if self.deferred.try_send(audit).is_err() {
            self.metrics.deferred_audit("dropped");
        }
    }
}

/// The response stage that enforces profiles.
pub struct EnforceStage(pub Arc<Enforcer>);

impl ResponseStage for EnforceStage {
    fn prepare(&self, tenant: &crate::tenants::Tenant, body: &mut serde_json::Map<String, Value>) {
        let Some(profile) = self.0.profiles.get(&tenant.id) else {
            return;
        };
        if !profile.steer {
            return;
        }
        if let (Some(text), Some(Value::Array(messages))) =
            (steering_message(&profile), body.get_mut("messages"))
        {
            messages.insert(0, json!({"role": "system", "content": text}));
        }
    }

    /// A tenant without a profile: nothing to steer, detect or rewrite. An audit with
    /// `audit_sample`: nothing on the way, and a draw decides whether the answer is measured
    /// after it was sent. (A profile saved while a request is in flight applies from the next
    /// request on.)
    fn plan(&self, tenant: &crate::tenants::Tenant) -> Plan {
        match self.0.profiles.get(&tenant.id) {
            None => Plan::PassThrough,
            Some(p) if p.action == Action::Audit => match p.audit_sample {
                None => Plan::Stage,
                Some(share) if deferred::draw() < share => Plan::Sample,
                Some(_) => Plan::PassThrough,
            },
            Some(_) => Plan::Stage,
        }
    }

    fn sampled(&self, sample: Sampled) {
        self.0.defer(sample);
    }

    fn json(
        &self,
        ctx: StageContext,
        body: Bytes,
    ) -> BoxFuture<'static, Result<StageJson, ApiError>> {
        let enforcer = self.0.clone();
        Box::pin(async move { enforcer.enforce_json(ctx, body).await })
    }

    fn stream(
        &self,
        ctx: StageContext,
        stream: StageStream,
    ) -> BoxFuture<'static, Result<StageStream, ApiError>> {
        let enforcer = self.0.clone();
        Box::pin(async move { stream::enforce_stream(enforcer, ctx, stream).await })
    }
}
