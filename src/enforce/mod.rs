//! The closed loop on `/v1/chat/completions` answers: detect each choice against the tenant's
//! profile; pass it, rewrite it (shielded), or block it, as the profile says; report what was
//! done in headers and, on request, in a `visa` object. Streams are handled in `stream`.

pub mod stream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::EnforceConfig;
use crate::error::{ApiError, ErrorKind};
use crate::metrics::Metrics;
use crate::rewriter::{Decision, Rewriter};
use crate::score::{Scorer, ValueFit};
use crate::stage::{ResponseStage, StageContext, StageJson, StageStream};
use crate::store::Profiles;
use crate::values::ValueId;
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
}

/// A decision and the text to send (None: the original stays; for blocked, nothing is sent).
pub struct Outcome {
    pub action: VisaAction,
    pub text: Option<String>,
    pub report: Report,
}

pub struct Enforcer {
    pub profiles: Arc<Profiles>,
    /// None when the value models are disabled.
    pub scorer: Option<Scorer>,
    pub rewriter: Option<Arc<Rewriter>>,
    pub config: EnforceConfig,
    pub metrics: Arc<Metrics>,
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

    /// Decide one text: detect, then pass, rewrite or block.
    pub async fn decide(
        &self,
        tenant: &str,
        profile: &Profile,
        index: usize,
        text: &str,
        context: Option<&str>,
    ) -> Result<Outcome, ApiError> {
        let scorer = self.scorer.as_ref().ok_or_else(|| {
            ApiError::new(ErrorKind::Unavailable, "the value models are disabled")
        })?;
        let (fits, detect) = scorer.fit(profile, &[text.to_owned()]).await?;
        self.metrics.stage(tenant, "detect", detect);
        let before = fits
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::internal("the detector returned no result"))?;
        let mut report = Report {
            index,
            action: VisaAction::Passed,
            before: before.clone(),
            after: None,
            integrity: None,
            reason: None,
            candidates: 0,
            detect_ms: ms(detect),
            rewrite_ms: 0.0,
        };
        let off = outside(profile, &before);
        if before.within_tolerance || profile.action == Action::Audit {
            if !off.is_empty() {
                self.metrics.action(tenant, "audited", &off);
            }
            self.metrics.action(tenant, "passed", &[]);
            return Ok(Outcome {
                action: VisaAction::Passed,
                text: None,
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
            let started = Instant::now();
            let rewrite = rewriter
                .rewrite_from(profile, text, context, before)
                .await?;
            let took = started.elapsed();
            self.metrics.stage(tenant, "rewrite", took);
            report.rewrite_ms = ms(took);
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
                    self.metrics.action(tenant, "rewritten", &off);
                    return Ok(Outcome {
                        action: VisaAction::Rewritten,
                        text: rewrite.text,
                        report,
                    });
                }
                (Decision::Passed, _) => VisaAction::Passed,
                (Decision::Failed, Fallback::Original) => VisaAction::Fallback,
                (Decision::Failed, Fallback::Block) => VisaAction::Blocked,
            }
        };
        report.action = action;
        self.metrics.action(tenant, action.as_str(), &off);
        Ok(Outcome {
            action,
            text: None,
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
        // Which choices carry text to check: tool calls, refusals and empty texts pass.
        let mut work = Vec::new();
        if let Some(choices) = answer.get("choices").and_then(Value::as_array) {
            for (k, c) in choices.iter().enumerate() {
                let msg = c.get("message");
                let has_tools = msg
                    .and_then(|m| m.get("tool_calls"))
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty());
                let refusal = msg
                    .and_then(|m| m.get("refusal"))
                    .is_some_and(|r| !r.is_null());
                let text = msg
                    .and_then(|m| m.get("content"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !has_tools && !refusal && !text.trim().is_empty() {
                    let index = c.get("index").and_then(Value::as_u64).unwrap_or(k as u64);
                    work.push((k, index as usize, text.to_owned()));
                }
            }
        }
        let outcomes = futures_util::future::join_all(work.iter().map(|(_, index, text)| {
            self.decide(&ctx.tenant.id, &profile, *index, text, context.as_deref())
        }))
        .await;
        let mut worst = VisaAction::Passed;
        let mut reports = Vec::new();
        for ((k, _, _), outcome) in work.iter().zip(outcomes) {
            let outcome = outcome?;
            worst = worst.max(outcome.action);
            if let Some(choice) = answer.get_mut("choices").and_then(|c| c.get_mut(*k)) {
                match (outcome.action, outcome.text) {
                    (VisaAction::Rewritten, Some(t)) => {
                        choice["message"]["content"] = Value::String(t);
                    }
                    (VisaAction::Blocked, _) => {
                        choice["message"]["content"] = Value::Null;
                        choice["message"]["refusal"] = Value::String(REFUSAL.into());
                        choice["finish_reason"] = Value::String("content_filter".into());
                    }
                    _ => {}
                }
            }
            reports.push(outcome.report);
        }
        if ctx.metadata {
            answer["visa"] = json!({
                "action": worst,
                "profile_version": profile.version,
                "choices": reports,
                "total_ms": ms(started.elapsed()),
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

/// The response stage that enforces profiles.
pub struct EnforceStage(pub Arc<Enforcer>);

impl ResponseStage for EnforceStage {
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
