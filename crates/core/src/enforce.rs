//! The decision on one answer text, below HTTP: detect it against the tenant's profile, then
//! pass it, edit it sentence by sentence (or rewrite it whole) behind the shield, fall back or
//! block, as the profile says, within the time budget; and the report of what was done. The
//! proxy's `enforce` module runs it over JSON choices and stream windows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use visa_models::error::{ErrorKind, ModelError};
use visa_values::ValueId;
use visa_values::ValueVector;
use visa_values::profile::{Action, Fallback, Profile};

use crate::config::RewriteMode;
use crate::edit::{Edit, EditRequest, Editor, Scope, serde_name};
use crate::rewriter::{Decision, Rewriter};
use crate::score::{Scorer, ValueFit};

/// Where the decisions' figures go (the proxy's Prometheus metrics and `/v1/stats`).
pub trait EnforceMetrics: Send + Sync {
    /// Time spent in a stage (`detect`, `rewrite`).
    fn stage(&self, tenant: &str, stage: &str, took: Duration);
    /// One answer decided (`passed`, `audited`, `rewritten`, `fallback`, `blocked`), with the
    /// values outside tolerance.
    fn action(&self, tenant: &str, action: &str, values: &[ValueId]);
    /// One sentence edit made, by kind and source.
    fn edit(&self, kind: &str, source: &str);
    /// A decision whose time budget ran out.
    fn budget_exhausted(&self, tenant: &str);
}

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

/// The models a decision uses and how it uses them.
pub struct Decider {
    /// None when the value models are disabled.
    pub scorer: Option<Scorer>,
    /// The whole-text rewriter (`[rewriter] mode = "whole"`), when a model is configured.
    pub rewriter: Option<Arc<Rewriter>>,
    /// The sentence editor (`[rewriter] mode = "edits"`), whenever the value models are on.
    pub editor: Option<Arc<Editor>>,
    pub mode: RewriteMode,
    /// Longest text the value models check (`models.max_text_chars`).
    pub max_text_chars: usize,
    pub metrics: Arc<dyn EnforceMetrics>,
}

/// A duration in ms, rounded to 0.1 ms, as reports give it.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

pub fn outside(profile: &Profile, fit: &ValueFit) -> Vec<ValueId> {
    profile
        .gaps(&fit.values)
        .into_iter()
        .map(|(v, _)| v)
        .collect()
}

impl Decider {
    /// Whether edits are what this proxy makes (`[rewriter] mode = "edits"` with the editor).
    pub fn edits(&self) -> bool {
        self.editor.is_some() && self.mode == RewriteMode::Edits
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
    ) -> Result<Report, ModelError> {
        let started = Instant::now();
        let chars = text.chars().count();
        if chars > self.max_text_chars {
            return Err(ModelError::bad_gateway(format!(
                "the upstream's {field} has {chars} characters, more than the {} the value models check (models.max_text_chars)",
                self.max_text_chars
            ))
            .with_code("upstream_answer_too_large"));
        }
        let Some(scorer) = &self.scorer else {
            return Err(ModelError::new(
                ErrorKind::Unavailable,
                "the value models are disabled on this proxy",
            ));
        };
        let (mut fits, detect) = scorer.fit(profile, &[text.to_owned()]).await?;
        self.metrics.stage(tenant, "detect", detect);
        let fit = fits
            .pop()
            .ok_or_else(|| ModelError::internal("the detector returned nothing"))?;
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
    ) -> Result<Outcome, ModelError> {
        let chars = text.chars().count();
        if chars > self.max_text_chars {
            // Too long to check: never passed as checked (audit, which never fails a request,
            // logs it and passes).
            return Err(ModelError::bad_gateway(format!(
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
    ) -> Result<Outcome, ModelError> {
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
    ) -> Result<Outcome, ModelError> {
        let started = tokio::time::Instant::now();
        let scorer = self.scorer.as_ref().ok_or_else(|| {
            ModelError::new(ErrorKind::Unavailable, "the value models are disabled")
        })?;
        let (fits, detect) = scorer.fit(profile, &[text.to_owned()]).await?;
        self.metrics.stage(tenant, "detect", detect);
        let mut before = fits
            .into_iter()
            .next()
            .ok_or_else(|| ModelError::internal("the detector returned no result"))?;
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
                ModelError::new(
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Counted(std::sync::Mutex<Vec<String>>);

    impl EnforceMetrics for Counted {
        fn stage(&self, _: &str, stage: &str, _: Duration) {
            self.0.lock().unwrap().push(format!("stage {stage}"));
        }
        fn action(&self, _: &str, action: &str, _: &[ValueId]) {
            self.0.lock().unwrap().push(format!("action {action}"));
        }
        fn edit(&self, kind: &str, _: &str) {
            self.0.lock().unwrap().push(format!("edit {kind}"));
        }
        fn budget_exhausted(&self, _: &str) {
            self.0.lock().unwrap().push("budget".into());
        }
    }

    fn decider(mode: RewriteMode, metrics: Arc<Counted>) -> Decider {
        Decider {
            scorer: None,
            rewriter: None,
            editor: None,
            mode,
            max_text_chars: 10,
            metrics,
        }
    }

    fn profile() -> Profile {
        let spec = visa_values::profile::ProfileSpec::from_json(
            &serde_json::json!({"values": {"power": {"target": 0.1}}, "action": "rewrite"}),
        )
        .unwrap();
        Profile::from_spec(spec, 1, 0)
    }

    /// Without models a decision fails closed with errors a caller can map (never "passed"),
    /// and a text over the limit is refused before any model work, with its own code.
    #[tokio::test]
    async fn decisions_without_models_or_over_the_limit_fail_closed() {
        let metrics = Arc::new(Counted::default());
        let profile = profile();
        for mode in [RewriteMode::Edits, RewriteMode::Whole] {
            let d = decider(mode, metrics.clone());
            assert!(!d.edits());
            let e = d
                .decide("t", &profile, 0, "short", Decide::whole(None, None))
                .await
                .err()
                .unwrap();
            assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
            let e = d
                .decide(
                    "t",
                    &profile,
                    0,
                    "far too long a text",
                    Decide::whole(None, None),
                )
                .await
                .err()
                .unwrap();
            assert_eq!(
                (e.kind, e.code),
                (ErrorKind::BadGateway, Some("upstream_answer_too_large"))
            );
            let e = d
                .check_only("t", &profile, 0, "refusal", "far too long a text", false)
                .await
                .unwrap_err();
            assert_eq!(e.code, Some("upstream_answer_too_large"));
            let e = d
                .check_only("t", &profile, 0, "refusal", "short", false)
                .await
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::Unavailable);
        }
        assert!(
            metrics.0.lock().unwrap().is_empty(),
            "nothing was decided, so nothing was counted"
        );
    }
}
