//! The closed loop on `/v1/chat/completions` answers: detect each choice against the tenant's
//! profile; pass it, rewrite it (shielded), or block it, as the profile says; report what was
//! done in headers and, on request, in a `visa` object. Streams are handled in `stream`.

pub mod deferred;
pub mod steering;
pub mod stream;

pub use steering::steering_message;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::{EnforceConfig, RewriteMode};
use crate::edit::{Edit, EditRequest, Editor, Scope, serde_name};
use crate::error::{ApiError, ErrorKind};
use crate::metrics::Metrics;
use crate::rewriter::{Decision, Rewriter};
use crate::score::{Scorer, ValueFit};
use crate::stage::{Plan, ResponseStage, Sampled, StageContext, StageJson, StageStream};
use crate::store::Profiles;
use crate::values::ValueId;
use crate::values::ValueVector;
use crate::values::profile::{Action, Fallback, Profile};

pub const ACTION_HEADER: HeaderName = HeaderName::from_static("x-visa-action");
pub const VERSION_HEADER: HeaderName = HeaderName::from_static("x-visa-profile-version");
pub const STREAM_MODE_HEADER: HeaderName = HeaderName::from_static("x-visa-stream-mode");
/// A client that sends `x-visa-metadata: true` gets the `visa` report.
pub const METADATA_HEADER: &str = "x-visa-metadata";

/// What a blocked answer says instead.
pub const REFUSAL: &str =
    "This answer was withheld because it does not meet the value profile set for this service.";

/// What happened to one answer (or stream window), most severe last.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum VisaAction {
    Passed,
    Rewritten,
    Fallback,
    Blocked,
}

impl VisaAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Rewritten => "rewritten",
            Self::Fallback => "fallback",
            Self::Blocked => "blocked",
        }
    }
}

/// The report on one choice or window.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub index: usize,
    /// The field checked when it is not the content (`refusal`, `reasoning_content`,
    /// `reasoning`, `audio.transcript`): text the proxy checks but cannot rewrite.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
    pub action: VisaAction,
    /// Scores of the upstream's text.
    pub before: ValueFit,
    /// Scores of the returned rewrite.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<ValueFit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub integrity: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub candidates: usize,
    pub detect_ms: f64,
    pub rewrite_ms: f64,
    /// The sentence edits made (a rewritten answer).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub edits: Vec<Edit>,
    /// The time enforcement of this text was allowed and what it took, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_ms: Option<f64>,
    pub spent_ms: f64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub budget_exhausted: bool,
}

/// A decision and the text to send (None: the original stays; for blocked, nothing is sent).
pub struct Outcome {
    pub action: VisaAction,
    pub text: Option<String>,
    /// For an append-only decision (the end of a stream): the text to append.
    pub appended: Option<String>,
    pub report: Report,
}

/// How one text is decided: the request it answers, the time budget, and for a stream the
/// values released before and which edits it may make.
#[derive(Clone, Copy)]
pub struct Decide<'a> {
    pub context: Option<&'a str>,
    pub deadline: Option<tokio::time::Instant>,
    pub prior: Option<ValueVector>,
    pub scope: Scope,
}

impl<'a> Decide<'a> {
    /// A whole answer (a JSON choice, a buffered stream).
    pub fn whole(context: Option<&'a str>, deadline: Option<tokio::time::Instant>) -> Self {
        Self {
            context,
            deadline,
            prior: None,
            scope: Scope::Full,
        }
    }
}

pub struct Enforcer {
    pub profiles: Arc<Profiles>,
    /// None when the value models are disabled.
    pub scorer: Option<Scorer>,
    /// The whole-text rewriter (`[rewriter] mode = "whole"`), when a model is configured.
    pub rewriter: Option<Arc<Rewriter>>,
    /// The sentence editor (`[rewriter] mode = "edits"`), whenever the value models are on.
    pub editor: Option<Arc<Editor>>,
    pub mode: RewriteMode,
    pub config: EnforceConfig,
    /// Longest text the value models check (`models.max_text_chars`).
    pub max_text_chars: usize,
    pub metrics: Arc<Metrics>,
    /// Audits measured after their answer was sent (`deferred`).
    pub deferred: tokio::sync::mpsc::Sender<Sampled>,
    /// Where decisions are recorded (`[decisions] enabled`).
    pub decisions: Option<Arc<crate::decisions::DecisionLog>>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
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

fn outside(profile: &Profile, fit: &ValueFit) -> Vec<ValueId> {
    profile
        .gaps(&fit.values)
        .into_iter()
        .map(|(v, _)| v)
        .collect()
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
        if self.scorer.is_none() && p.action != Action::Audit {
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

    /// Check a text the proxy cannot rewrite (reasoning, a refusal, an audio transcript):
    /// passed when it fits the profile (with `lower_only`, when no value rises above its band:
    /// reasoning is not the answer, so only what it expresses counts, not what it lacks);
    /// otherwise what the profile does when a rewrite fails: the original, reported as a
    /// fallback, or blocked. Audit profiles pass it.
    pub async fn check_only(
        &self,
        tenant: &str,
        profile: &Profile,
        index: usize,
        field: &'static str,
        text: &str,
        lower_only: bool,
    ) -> Result<Report, ApiError> {
        let started = Instant::now();
        let chars = text.chars().count();
        if chars > self.max_text_chars {
            return Err(ApiError::bad_gateway(format!(
                "the upstream's {field} has {chars} characters, more than the {} the value models check (models.max_text_chars)",
                self.max_text_chars
            ))
            .with_code("upstream_answer_too_large"));
        }
        let Some(scorer) = &self.scorer else {
            return Err(ApiError::new(
                ErrorKind::Unavailable,
                "the value models are disabled on this proxy",
            ));
        };
        let (mut fits, detect) = scorer.fit(profile, &[text.to_owned()]).await?;
        self.metrics.stage(tenant, "detect", detect);
        let fit = fits
            .pop()
            .ok_or_else(|| ApiError::internal("the detector returned nothing"))?;
        let off: Vec<ValueId> = profile
            .gaps(&fit.values)
            .into_iter()
            .filter(|(_, gap)| !lower_only || *gap < 0.0)
            .map(|(v, _)| v)
            .collect();
        let action = match (off.is_empty(), profile.action, profile.fallback) {
            (true, _, _) | (_, Action::Audit, _) => VisaAction::Passed,
            (false, Action::Block, _) | (false, Action::Rewrite, Fallback::Block) => {
                VisaAction::Blocked
            }
            (false, Action::Rewrite, Fallback::Original) => VisaAction::Fallback,
        };
        self.metrics.action(tenant, action.as_str(), &off);
        Ok(Report {
            index,
            field: Some(field),
            action,
            before: fit,
            after: None,
            integrity: None,
            reason: (!off.is_empty()).then(|| {
                format!(
                    "{field} outside the profile's tolerance ({}); the proxy does not rewrite it",
                    off.iter()
                        .map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }),
            candidates: 0,
            detect_ms: ms(detect),
            rewrite_ms: 0.0,
            edits: Vec::new(),
            budget_ms: None,
            spent_ms: ms(started.elapsed()),
            budget_exhausted: false,
        })
    }

    /// Decide one text: detect, then pass, rewrite (sentence edits, or the whole text) or
    /// block.
    pub async fn decide(
        &self,
        tenant: &str,
        profile: &Profile,
        index: usize,
        text: &str,
        how: Decide<'_>,
    ) -> Result<Outcome, ApiError> {
        let chars = text.chars().count();
        if chars > self.max_text_chars {
            // Too long to check: never passed as checked (audit, which never fails a request,
            // logs it and passes).
            return Err(ApiError::bad_gateway(format!(
                "the upstream's answer has {chars} characters, more than the {} the value models check (models.max_text_chars)",
                self.max_text_chars
            ))
            .with_code("upstream_answer_too_large"));
        }
        match (&self.editor, self.mode) {
            (Some(editor), RewriteMode::Edits) => {
                self.decide_edits(editor, tenant, profile, index, text, how)
                    .await
            }
            _ => self.decide_whole(tenant, profile, index, text, how).await,
        }
    }

    async fn decide_edits(
        &self,
        editor: &Editor,
        tenant: &str,
        profile: &Profile,
        index: usize,
        text: &str,
        how: Decide<'_>,
    ) -> Result<Outcome, ApiError> {
        let started = tokio::time::Instant::now();
        let assessed = editor.assess(profile, text, how.prior, how.scope).await?;
        self.metrics.stage(tenant, "detect", assessed.detect);
        let mut off: Vec<ValueId> = Vec::new();
        for site in &assessed.sites {
            for v in &site.values {
                if !off.contains(v) {
                    off.push(*v);
                }
            }
        }
        let mut report = Report {
            index,
            field: None,
            action: VisaAction::Passed,
            before: assessed.original.clone(),
            after: None,
            integrity: None,
            reason: None,
            candidates: 0,
            detect_ms: ms(assessed.detect),
            rewrite_ms: 0.0,
            edits: Vec::new(),
            budget_ms: how
                .deadline
                .map(|d| ms(d.saturating_duration_since(started))),
            spent_ms: 0.0,
            budget_exhausted: false,
        };
        let finish = |mut report: Report, action: VisaAction, text, appended| {
            report.action = action;
            report.spent_ms = ms(started.elapsed());
            Outcome {
                action,
                text,
                appended,
                report,
            }
        };
        if assessed.sites.is_empty() || profile.action == Action::Audit {
            if !off.is_empty() {
                self.metrics.action(tenant, "audited", &off);
            }
            self.metrics.action(tenant, "passed", &[]);
            return Ok(finish(report, VisaAction::Passed, None, None));
        }
        if profile.action == Action::Block {
            report.reason = Some(format!(
                "outside the profile's tolerance ({})",
                off.iter()
                    .map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            self.metrics.action(tenant, "blocked", &off);
            return Ok(finish(report, VisaAction::Blocked, None, None));
        }
        let edit_started = Instant::now();
        let outcome = editor
            .edit(
                EditRequest {
                    profile,
                    text,
                    context: how.context,
                    deadline: how.deadline,
                    prior: how.prior,
                    scope: how.scope,
                },
                assessed,
            )
            .await?;
        self.metrics
            .stage(tenant, "rewrite", edit_started.elapsed());
        if outcome.budget_exhausted {
            self.metrics.budget_exhausted(tenant);
        }
        report.rewrite_ms = outcome.timing.spent_ms;
        report.candidates = outcome.sites.iter().map(|s| s.candidates.len()).sum();
        report.budget_exhausted = outcome.budget_exhausted;
        if let Some(after) = &outcome.after {
            report.after = Some(after.fit.clone());
            report.integrity = Some(after.integrity);
        }
        report.reason = outcome.reason.clone();
        let action = match (outcome.decision, profile.fallback) {
            (Decision::Rewritten, _) => {
                for e in &outcome.edits {
                    self.metrics
                        .edit(&serde_name(&e.kind), &serde_name(&e.source));
                }
                report.edits = outcome.edits;
                self.metrics.action(tenant, "rewritten", &off);
                return Ok(finish(
                    report,
                    VisaAction::Rewritten,
                    outcome.text,
                    outcome.appended,
                ));
            }
            (Decision::Passed, _) => VisaAction::Passed,
            (Decision::Failed, Fallback::Original) => VisaAction::Fallback,
            (Decision::Failed, Fallback::Block) => VisaAction::Blocked,
        };
        self.metrics.action(tenant, action.as_str(), &off);
        Ok(finish(report, action, None, None))
    }

    /// The whole-text rewriter (`[rewriter] mode = "whole"`), under the same budget.
    async fn decide_whole(
        &self,
        tenant: &str,
        profile: &Profile,
        index: usize,
        text: &str,
        how: Decide<'_>,
    ) -> Result<Outcome, ApiError> {
        let started = tokio::time::Instant::now();
        let scorer = self.scorer.as_ref().ok_or_else(|| {
            ApiError::new(ErrorKind::Unavailable, "the value models are disabled")
        })?;
        let (fits, detect) = scorer.fit(profile, &[text.to_owned()]).await?;
        self.metrics.stage(tenant, "detect", detect);
        let mut before = fits
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::internal("the detector returned no result"))?;
        if let Some(prior) = &how.prior {
            before = ValueFit::of(
                profile,
                crate::edit::plan::aggregate(&[before.values], Some(prior)),
            );
        }
        let mut report = Report {
            index,
            field: None,
            action: VisaAction::Passed,
            before: before.clone(),
            after: None,
            integrity: None,
            reason: None,
            candidates: 0,
            detect_ms: ms(detect),
            rewrite_ms: 0.0,
            edits: Vec::new(),
            budget_ms: how
                .deadline
                .map(|d| ms(d.saturating_duration_since(started))),
            spent_ms: 0.0,
            budget_exhausted: false,
        };
        let off = outside(profile, &before);
        if before.within_tolerance || profile.action == Action::Audit {
            if !off.is_empty() {
                self.metrics.action(tenant, "audited", &off);
            }
            self.metrics.action(tenant, "passed", &[]);
            report.spent_ms = ms(started.elapsed());
            return Ok(Outcome {
                action: VisaAction::Passed,
                text: None,
                appended: None,
                report,
            });
        }
        let action = if profile.action == Action::Block {
            report.reason = Some("outside the profile's tolerance".into());
            VisaAction::Blocked
        } else {
            let rewriter = self.rewriter.as_ref().ok_or_else(|| {
                ApiError::new(
                    ErrorKind::Unavailable,
                    "this profile asks for rewrites but no rewriter is configured",
                )
            })?;
            let rewrite_started = Instant::now();
            let run = rewriter.rewrite_from(profile, text, how.context, before);
            let rewrite = match how.deadline {
                Some(d) => match tokio::time::timeout_at(d, run).await {
                    Ok(r) => Some(r?),
                    Err(_) => None,
                },
                None => Some(run.await?),
            };
            let took = rewrite_started.elapsed();
            self.metrics.stage(tenant, "rewrite", took);
            report.rewrite_ms = ms(took);
            match rewrite {
                None => {
                    report.budget_exhausted = true;
                    self.metrics.budget_exhausted(tenant);
                    report.reason =
                        Some("the time budget ran out before a rewrite passed the shield".into());
                    match profile.fallback {
                        Fallback::Original => VisaAction::Fallback,
                        Fallback::Block => VisaAction::Blocked,
                    }
                }
                Some(rewrite) => {
                    report.candidates = rewrite.candidates.len();
                    if let Some(best) = rewrite
                        .best
                        .and_then(|i| rewrite.candidates.get(i))
                        .and_then(|c| c.score.as_ref())
                    {
                        report.after = Some(best.fit.clone());
                        report.integrity = Some(best.integrity);
                    }
                    report.reason = rewrite.reason.clone();
                    match (rewrite.decision, profile.fallback) {
                        (Decision::Rewritten, _) => {
                            report.action = VisaAction::Rewritten;
                            report.spent_ms = ms(started.elapsed());
                            self.metrics.action(tenant, "rewritten", &off);
                            return Ok(Outcome {
                                action: VisaAction::Rewritten,
                                text: rewrite.text,
                                appended: None,
                                report,
                            });
                        }
                        (Decision::Passed, _) => VisaAction::Passed,
                        (Decision::Failed, Fallback::Original) => VisaAction::Fallback,
                        (Decision::Failed, Fallback::Block) => VisaAction::Blocked,
                    }
                }
            }
        };
        report.action = action;
        report.spent_ms = ms(started.elapsed());
        self.metrics.action(tenant, action.as_str(), &off);
        Ok(Outcome {
            action,
            text: None,
            appended: None,
            report,
        })
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
