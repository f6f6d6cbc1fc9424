//! Enforcement as small, checkable edits: score each sentence of an answer, plan edits where
//! the values are (`plan`), make candidates for each site (a model rewrite of the one sentence,
//! the sentence without a clause, dropping it when no fact is lost, or inserting one sentence
//! that expresses a missing value), screen them (`screen`), score them with the one scorer,
//! keep the best that passes a per-sentence shield, reassemble the answer with every other
//! byte untouched, detect it again and let the whole-answer shield decide. Everything runs
//! under a time budget; what was changed is listed edit by edit.

pub mod bank;
pub mod cut;
pub mod plan;
pub mod prompt;
pub mod screen;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::config::{DropRule, RewriterConfig};
use crate::rewriter::{Decision, RewriteBackend, shield};
use crate::score::{CandidateScore, EditScore, Scorer, ValueFit, facts};
use bank::Bank;
pub use plan::{Site, SiteKind};
pub use screen::EditRejection;
use visa_models::encoder::cosine;
use visa_models::error::ModelError;
use visa_models::llm::{ChatMessage, Sampling};
use visa_values::profile::Profile;
use visa_values::sentences::{Sentence, splice};
use visa_values::{ValueId, ValueVector};

/// What an edit did.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EditKind {
    Rewritten,
    Dropped,
    Inserted,
}

/// Where a candidate came from.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Written by the rewriter model.
    Model,
    /// The sentence without one of its clauses.
    Clause,
    /// The sentence removed.
    Drop,
    /// A sentence of the injection bank.
    Bank,
}

/// One candidate for a site.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub kind: EditKind,
    pub source: Source,
    /// The new text (empty for a drop).
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<EditRejection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<EditScore>,
    /// Whether it passed the per-sentence checks when its site was decided.
    pub passed: bool,
    /// Why it did not pass (or what it achieved), in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A site with its candidates and the choice made.
#[derive(Debug, Clone, Serialize)]
pub struct SiteReport {
    #[serde(flatten)]
    pub site: Site,
    /// The sentence the site is about (lower: the one to edit; raise: the closest one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentence_text: Option<String>,
    pub candidates: Vec<Candidate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chosen: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One edit applied to the answer.
#[derive(Debug, Clone, Serialize)]
pub struct Edit {
    pub kind: EditKind,
    pub source: Source,
    /// Index of the sentence among the answer's scored sentences (for an insertion: the
    /// sentence it follows; none: at the end).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentence: Option<usize>,
    /// Byte range in the original answer (an insertion: an empty range where it goes).
    pub start: usize,
    pub end: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// For an insertion: what separates it from the text before it (a space, or a blank line
    /// at the end of an answer whose last line has no sentence mark).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub separator: Option<String>,
    /// The values the edit moves.
    pub values: Vec<ValueId>,
    /// Their scores before (the sentence's; for an insertion, the answer's) and after (the new
    /// sentence's; none for a drop).
    pub before: BTreeMap<ValueId, f32>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub after: BTreeMap<ValueId, f32>,
    /// Encoder similarity of the new sentence to the one it replaces (a rewrite) or follows
    /// (an insertion from the bank).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f32>,
    /// Why, in words.
    pub reason: String,
}

/// Times, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timing {
    /// The budget this edit ran under (none: unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_ms: Option<f64>,
    pub spent_ms: f64,
    pub generate_ms: f64,
    pub score_ms: f64,
}

/// The result of editing one text.
#[derive(Debug, Clone, Serialize)]
pub struct EditOutcome {
    pub decision: Decision,
    /// The edited text when `decision` is `rewritten`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// For an append-only edit (the end of a stream): what was appended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub appended: Option<String>,
    /// The text the edits made, also when the whole-answer shield refused it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assembled: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The original's fit (with text released before, for a stream window).
    pub original: ValueFit,
    /// The whole edited text's scores (fit, similarity, facts, integrity).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<CandidateScore>,
    /// The edits made (only when rewritten).
    pub edits: Vec<Edit>,
    pub sites: Vec<SiteReport>,
    /// Sentences scored in the original.
    pub sentences: usize,
    /// Candidates the model generated.
    pub generated: usize,
    pub timing: Timing,
    /// Whether the budget ran out before every site had its candidates.
    pub budget_exhausted: bool,
}

/// Which sites an edit may work on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Lower and raise: a whole answer.
    Full,
    /// Only lower: a stream window (values missing from the answer are added at its end).
    LowerOnly,
    /// Only raise, by appending one sentence at the end: the end of a stream, whose text was
    /// sent already.
    AppendOnly,
}

pub struct EditRequest<'a> {
    pub profile: &'a Profile,
    pub text: &'a str,
    /// The request the answer responds to.
    pub context: Option<&'a str>,
    pub deadline: Option<Instant>,
    /// The values of text released before this one (a stream), which count toward the maximum.
    pub prior: Option<ValueVector>,
    pub scope: Scope,
}

/// A text detected sentence by sentence, with its edit plan.
pub struct Assessment {
    pub units: Vec<Sentence>,
    /// Each scored sentence's calibrated values.
    pub vectors: Vec<ValueVector>,
    /// The text's fit (with `prior`).
    pub original: ValueFit,
    /// The edit sites; empty when the text needs no edit for the scope.
    pub sites: Vec<Site>,
    pub prior: Option<ValueVector>,
    pub detect: Duration,
}

/// Time kept back from the budget for the final detection and the shield.
const RESERVE: Duration = Duration::from_millis(400);

/// A sentence may be dropped only when the detector finds it more likely than not to express
/// each value it is dropped for: one just over its band gets a smaller edit or none.
pub const DROP_MIN_SCORE: f32 = 0.5;

/// Bank sentences tried per missing value, closest to the answer first: the closest in topic
/// is not always the one the detector reads as expressing the value, so it chooses among them.
const BANK_CANDIDATES: usize = 16;

pub struct Editor {
    /// Where model candidates come from (none: only cuts, drops and the bank).
    pub backend: Option<Arc<RewriteBackend>>,
    pub scorer: Scorer,
    pub bank: Arc<Bank>,
    pub config: RewriterConfig,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// The scores of `values` in `v`.
fn pick(v: &ValueVector, values: &[ValueId]) -> BTreeMap<ValueId, f32> {
    values.iter().map(|x| (*x, v.get(*x))).collect()
}

/// A site's state while sites are decided one after another.
#[derive(Clone)]
struct Working {
    /// Per sentence: its current vector (`None`: dropped).
    vectors: Vec<Option<ValueVector>>,
    /// Per sentence: whether an edit touched it.
    touched: Vec<bool>,
    inserted: Vec<ValueVector>,
    /// Sentences an inserted sentence follows (they may not be dropped).
    anchors: Vec<usize>,
    prior: Option<ValueVector>,
}

impl Working {
    fn aggregate(&self) -> ValueVector {
        let all: Vec<ValueVector> = self
            .vectors
            .iter()
            .flatten()
            .copied()
            .chain(self.inserted.iter().copied())
            .collect();
        plan::aggregate(&all, self.prior.as_ref())
    }
}

/// Per constrained value, how far a vector is from its target.
fn off(profile: &Profile, v: &ValueVector, id: ValueId) -> f32 {
    profile
        .values
        .get(&id)
        .map_or(0.0, |t| (v.get(id) - t.target).abs())
}

/// The first constrained value that `after` moves away from its target (beyond its tolerance
/// and beyond where `before` had it).
fn harms(profile: &Profile, before: &ValueVector, after: &ValueVector) -> Option<ValueId> {
    profile.values.iter().find_map(|(id, t)| {
        let (b, a) = (off(profile, before, *id), off(profile, after, *id));
        (a > b.max(t.tolerance) + 1e-3).then_some(*id)
    })
}

/// Room for a model edit of a sentence of `chars` characters, in tokens.
pub fn max_tokens(chars: usize) -> usize {
    ((chars as f32 * 2.0 / 3.5) as usize + 16).clamp(24, 96)
}

/// What the model is asked for one site: the kind of edit, the sentence it replaces (a
/// rewrite), the messages, and the length that sizes its sampling.
#[derive(Debug, Clone)]
pub struct SitePrompt {
    pub kind: EditKind,
    pub original: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub chars: usize,
}

/// A planned generation: which site, what kind, the messages.
struct Job {
    site: usize,
    kind: EditKind,
    original: Option<String>,
    messages: Vec<ChatMessage>,
    sampling: Sampling,
}

impl Editor {
    /// Serving's sampling of a model edit for a sentence of `chars` characters (the first
    /// candidate greedy).
    pub fn sampling(&self, chars: usize, greedy: bool) -> Sampling {
        Sampling {
            temperature: if greedy { 0.0 } else { self.config.temperature },
            top_p: self.config.top_p,
            max_tokens: max_tokens(chars),
            stop: vec!["\n".into()],
            logprobs: None,
        }
    }

    /// The model prompts of one site, as serving sends them (training builds its tasks from
    /// the same): a lower site asks for its sentence rewritten with less of the values; a
    /// raise site for the closest sentence rewritten with more (not at the end of a stream,
    /// whose text was sent) and, with insertions on, for one new sentence after it.
    pub fn site_prompts(
        &self,
        site: &Site,
        units: &[Sentence],
        text: &str,
        context: Option<&str>,
        scope: Scope,
    ) -> Vec<SitePrompt> {
        let Some(i) = site.sentence else {
            return Vec::new();
        };
        let body = units[i].body(text);
        let before_text = i.checked_sub(1).map(|j| units[j].text(text));
        let chars = body.chars().count();
        let rewrite = |lower: &[ValueId], raise: &[ValueId]| SitePrompt {
            kind: EditKind::Rewritten,
            original: Some(body.to_owned()),
            messages: prompt::rewrite_messages(body, before_text, context, lower, raise),
            chars,
        };
        match site.kind {
            SiteKind::Lower => vec![rewrite(&site.values, &[])],
            SiteKind::Raise => {
                let mut out = Vec::new();
                if scope != Scope::AppendOnly {
                    out.push(rewrite(&[], &site.values));
                }
                if self.config.insert {
                    let anchor = match scope {
                        Scope::AppendOnly => units.last().map_or(body, |u| u.body(text)),
                        _ => body,
                    };
                    out.push(SitePrompt {
                        kind: EditKind::Inserted,
                        original: None,
                        messages: prompt::insert_messages(anchor, site.values[0]),
                        chars: 120,
                    });
                }
                out
            }
        }
    }

    /// Whether candidate `c` would pass for `site` of an unedited answer, by the checks serving
    /// applies when it decides a site: (the edit kind's bonus, the edit's score, what it
    /// achieved) or why not. `semantic` holds the answer's embedding, then each sentence's.
    pub fn judge(
        &self,
        profile: &Profile,
        text: &str,
        assessed: &Assessment,
        semantic: &[Vec<f32>],
        site: &Site,
        c: &Candidate,
    ) -> Result<(f32, f32, String), String> {
        let state = Working {
            vectors: assessed.vectors.iter().copied().map(Some).collect(),
            touched: vec![false; assessed.units.len()],
            inserted: Vec::new(),
            anchors: Vec::new(),
            prior: assessed.prior,
        };
        let aggregate = state.aggregate();
        self.check(
            profile,
            text,
            &assessed.units,
            semantic,
            site,
            c,
            &state,
            &aggregate,
            (
                self.config.min_value_move,
                self.config.min_sentence_similarity,
            ),
            Scope::Full,
        )
    }

    /// Detect a text sentence by sentence and plan its edits for `scope`.
    pub async fn assess(
        &self,
        profile: &Profile,
        text: &str,
        prior: Option<ValueVector>,
        scope: Scope,
    ) -> Result<Assessment, ModelError> {
        let started = Instant::now();
        let (detections, _) = self.scorer.detector.detect(&[text.to_owned()]).await?;
        let detection = detections
            .into_iter()
            .next()
            .ok_or_else(|| ModelError::internal("the detector returned no result"))?;
        let units: Vec<Sentence> = crate::detector::units(text);
        let vectors: Vec<ValueVector> = detection.sentences.iter().map(|s| s.values).collect();
        let before = plan::aggregate(&vectors, prior.as_ref());
        let original = ValueFit::of(profile, before);
        let sites = if units.len() != vectors.len() {
            Vec::new()
        } else {
            match scope {
                Scope::Full => plan::plan(profile, &vectors, prior.as_ref(), true),
                Scope::LowerOnly => plan::plan(profile, &vectors, prior.as_ref(), false),
                Scope::AppendOnly => plan::plan(profile, &vectors, prior.as_ref(), true)
                    .into_iter()
                    .filter(|s| s.kind == SiteKind::Raise)
                    .collect(),
            }
        };
        Ok(Assessment {
            units,
            vectors,
            original,
            sites,
            prior,
            detect: started.elapsed(),
        })
    }

    /// Edit one text toward the profile, from its assessment.
    pub async fn edit(
        &self,
        req: EditRequest<'_>,
        assessed: Assessment,
    ) -> Result<EditOutcome, ModelError> {
        let started = Instant::now();
        let text = req.text;
        let Assessment {
            units,
            vectors,
            original,
            sites,
            ..
        } = assessed;
        let mut outcome = EditOutcome {
            decision: Decision::Passed,
            text: None,
            appended: None,
            assembled: None,
            reason: None,
            original: original.clone(),
            after: None,
            edits: Vec::new(),
            sites: Vec::new(),
            sentences: units.len(),
            generated: 0,
            timing: Timing {
                budget_ms: req
                    .deadline
                    .map(|d| ms(d.saturating_duration_since(started))),
                ..Timing::default()
            },
            budget_exhausted: false,
        };
        if sites.is_empty() {
            outcome.timing.spent_ms = ms(started.elapsed());
            return Ok(outcome);
        }
        let mut score_time = Duration::ZERO;
        let mut reports: Vec<SiteReport> = sites
            .iter()
            .map(|s| SiteReport {
                site: s.clone(),
                sentence_text: s.sentence.map(|i| units[i].text(text).to_owned()),
                candidates: Vec::new(),
                chosen: None,
                reason: None,
            })
            .collect();

        // Candidates that need no model: clause cuts and drops, sentences of the bank.
        let t = Instant::now();
        let semantic = {
            let mut all = vec![text.to_owned()];
            all.extend(units.iter().map(|u| u.body(text).to_owned()));
            self.scorer.encoder.embed(all).await?.vectors
        };
        let mut cheap: Vec<(usize, Candidate, Option<String>)> = Vec::new();
        for (k, site) in sites.iter().enumerate() {
            match site.kind {
                SiteKind::Lower => {
                    let Some(i) = site.sentence else { continue };
                    let body = units[i].body(text);
                    for trim in cut::clause_trims(body) {
                        cheap.push((
                            k,
                            candidate(EditKind::Rewritten, Source::Clause, trim),
                            Some(body.to_owned()),
                        ));
                    }
                    if self.config.drop != DropRule::Never {
                        cheap.push((
                            k,
                            candidate(EditKind::Dropped, Source::Drop, String::new()),
                            None,
                        ));
                    }
                }
                SiteKind::Raise if self.config.insert => {
                    for (entry, _) in
                        self.bank
                            .closest(site.values[0], &semantic[0], BANK_CANDIDATES)
                    {
                        cheap.push((
                            k,
                            candidate(EditKind::Inserted, Source::Bank, entry.text.clone()),
                            None,
                        ));
                    }
                }
                SiteKind::Raise => {}
            }
        }
        let to_score: Vec<(Option<String>, String)> = cheap
            .iter()
            .filter(|(_, c, _)| c.source != Source::Drop)
            .map(|(_, c, o)| (o.clone(), c.text.clone()))
            .collect();
        let mut scores = self.scorer.score_edits(&to_score).await?.into_iter();
        for (k, mut c, _) in cheap {
            if c.source != Source::Drop {
                c.score = scores.next();
            }
            reports[k].candidates.push(c);
        }
        score_time += t.elapsed();

        // Model candidates, strongest site first, while the budget lasts.
        let generate_started = Instant::now();
        let model_candidates = self.config.edit_model_candidates;
        if let (Some(backend), true) = (&self.backend, model_candidates > 0) {
            let mut jobs: Vec<Job> = Vec::new();
            for (k, site) in sites.iter().enumerate() {
                let prompts = self.site_prompts(site, &units, text, req.context, req.scope);
                for n in 0..model_candidates {
                    for p in &prompts {
                        jobs.push(Job {
                            site: k,
                            kind: p.kind,
                            original: p.original.clone(),
                            messages: p.messages.clone(),
                            sampling: self.sampling(p.chars, n == 0),
                        });
                    }
                }
            }
            let limit = req.deadline.map(|d| d.checked_sub(RESERVE).unwrap_or(d));
            let generated = self
                .generate_all(backend, &jobs, limit, &mut outcome.budget_exhausted)
                .await;
            let mut items: Vec<(usize, Candidate, Option<String>)> = Vec::new();
            for (job, out) in jobs.iter().zip(generated) {
                let Some((raw, finished)) = out else { continue };
                outcome.generated += 1;
                let (text, rejected) = match job.kind {
                    EditKind::Inserted => screen::screen_insertion(&raw, finished),
                    _ => screen::screen_rewrite(
                        job.original.as_deref().unwrap_or(""),
                        &raw,
                        finished,
                    ),
                };
                let mut c = candidate(job.kind, Source::Model, text);
                c.rejected = rejected;
                items.push((job.site, c, job.original.clone()));
            }
            outcome.timing.generate_ms = ms(generate_started.elapsed());
            let t = Instant::now();
            let to_score: Vec<(Option<String>, String)> = items
                .iter()
                .filter(|(_, c, _)| c.rejected.is_none())
                .map(|(_, c, o)| (o.clone(), c.text.clone()))
                .collect();
            let mut scores = self.scorer.score_edits(&to_score).await?.into_iter();
            for (k, mut c, _) in items {
                if c.rejected.is_none() {
                    c.score = scores.next();
                }
                reports[k].candidates.push(c);
            }
            score_time += t.elapsed();
        }

        // Decide the sites in order, each against the answer as the earlier choices left it.
        let mut state = Working {
            vectors: vectors.iter().copied().map(Some).collect(),
            touched: vec![false; units.len()],
            inserted: Vec::new(),
            anchors: Vec::new(),
            prior: req.prior,
        };
        let mut edits: Vec<(Range<usize>, String, Edit)> = Vec::new();
        for report in &mut reports {
            self.decide(
                req.profile,
                text,
                &units,
                &semantic,
                req.scope,
                report,
                &mut state,
                &mut edits,
            );
        }
        outcome.sites = reports;
        if edits.is_empty() {
            outcome.decision = Decision::Failed;
            outcome.reason = Some(
                outcome
                    .sites
                    .iter()
                    .find_map(|s| s.reason.clone())
                    .unwrap_or_else(|| "no edit passed the checks".into()),
            );
            outcome.timing.score_ms = ms(score_time);
            outcome.timing.spent_ms = ms(started.elapsed());
            return Ok(outcome);
        }

        // Reassemble, detect again, and let the shield decide on the whole.
        edits.sort_by_key(|(r, _, _)| (r.start, r.end));
        let ranges = match merge_ranges(
            edits
                .iter()
                .map(|(r, s, _)| (r.clone(), s.clone()))
                .collect(),
        ) {
            Ok(r) => r,
            Err(why) => {
                outcome.decision = Decision::Failed;
                outcome.reason = Some(why);
                outcome.timing.score_ms = ms(score_time);
                outcome.timing.spent_ms = ms(started.elapsed());
                return Ok(outcome);
            }
        };
        let assembled = splice(text, &ranges);
        let t = Instant::now();
        let mut whole = self
            .scorer
            .score(req.profile, text, std::slice::from_ref(&assembled))
            .await?
            .candidates
            .into_iter()
            .next()
            .ok_or_else(|| ModelError::internal("the scorer returned no result"))?;
        score_time += t.elapsed();
        if let Some(prior) = &req.prior {
            let cumulative = plan::aggregate(&[whole.fit.values], Some(prior));
            whole.fit = ValueFit::of(req.profile, cumulative);
            whole.progress = crate::score::progress(original.distance, whole.fit.distance);
        }
        let verdict = if req.scope == Scope::LowerOnly {
            // A stream window is a fragment: its meaning was checked edit by edit (facts kept,
            // similarity per sentence), so the shield asks only that it moved toward the target
            // (a window may even go entirely).
            if original.distance - whole.fit.distance < self.config.min_improvement {
                Err(format!(
                    "the edits did not move the window toward the target (distance {:.3} -> {:.3})",
                    original.distance, whole.fit.distance
                ))
            } else {
                Ok(())
            }
        } else if assembled.trim().is_empty() {
            Err("the edits left no text".to_owned())
        } else {
            shield(&self.config, original.distance, &whole)
        };
        match verdict {
            Ok(()) => {
                outcome.decision = Decision::Rewritten;
                if req.scope == Scope::AppendOnly {
                    outcome.appended = assembled.strip_prefix(text).map(str::to_owned);
                }
                outcome.text = Some(assembled.clone());
                outcome.edits = edits.into_iter().map(|(_, _, e)| e).collect();
            }
            Err(reason) => {
                outcome.decision = Decision::Failed;
                outcome.reason = Some(reason);
            }
        }
        if outcome.decision != Decision::Rewritten {
            outcome.assembled = Some(assembled);
        } else {
            outcome.assembled = outcome.text.clone();
        }
        outcome.after = Some(whole);
        outcome.timing.score_ms = ms(score_time);
        outcome.timing.spent_ms = ms(started.elapsed());
        Ok(outcome)
    }

    /// Run the generations: one after another for the local model (it was slower batched on
    /// CPU), all at once for a remote one; none starts, and a running one is cut, at `limit`.
    async fn generate_all(
        &self,
        backend: &RewriteBackend,
        jobs: &[Job],
        limit: Option<Instant>,
        exhausted: &mut bool,
    ) -> Vec<Option<(String, bool)>> {
        let run = |job: &Job| {
            let fut = backend.generate(job.messages.clone(), job.sampling.clone());
            async move {
                match limit {
                    Some(l) => match tokio::time::timeout_at(l, fut).await {
                        Ok(r) => r.map(Some),
                        Err(_) => Ok(None),
                    },
                    None => fut.await.map(Some),
                }
            }
        };
        let results: Vec<Result<Option<(String, bool)>, ModelError>> = if backend.is_remote() {
            futures_util::future::join_all(jobs.iter().map(run)).await
        } else {
            let mut out = Vec::with_capacity(jobs.len());
            for job in jobs {
                if limit.is_some_and(|l| Instant::now() >= l) {
                    out.push(Ok(None));
                    continue;
                }
                out.push(run(job).await);
            }
            out
        };
        results
            .into_iter()
            .map(|r| match r {
                Ok(Some(x)) => Some(x),
                Ok(None) => {
                    *exhausted = true;
                    None
                }
                Err(e) => {
                    // A busy or failing model costs this candidate, not the answer.
                    tracing::debug!(error = %e.message, "an edit candidate could not be generated");
                    None
                }
            })
            .collect()
    }

    /// Check every candidate of one site against the current state, keep the best that
    /// passes, and apply it.
    #[expect(
        clippy::too_many_arguments,
        reason = "one site's candidates with the texts and scores they are judged against"
    )]
    fn decide(
        &self,
        profile: &Profile,
        text: &str,
        units: &[Sentence],
        semantic: &[Vec<f32>],
        scope: Scope,
        report: &mut SiteReport,
        state: &mut Working,
        edits: &mut Vec<(Range<usize>, String, Edit)>,
    ) {
        let site = report.site.clone();
        let aggregate = state.aggregate();
        let min_move = self.config.min_value_move;
        let floor = self.config.min_sentence_similarity;
        if site.kind == SiteKind::Lower && site.sentence.is_some_and(|i| state.touched[i]) {
            report.reason = Some("the sentence was already edited".into());
            return;
        }
        let mut best: Option<(usize, f32)> = None;
        for (c_idx, c) in report.candidates.iter_mut().enumerate() {
            let verdict = self.check(
                profile,
                text,
                units,
                semantic,
                &site,
                c,
                state,
                &aggregate,
                (min_move, floor),
                scope,
            );
            match verdict {
                Ok((bonus, reward, note)) => {
                    c.passed = true;
                    c.note = Some(note);
                    let total = reward + bonus;
                    if best.is_none_or(|(_, b)| total > b) {
                        best = Some((c_idx, total));
                    }
                }
                Err(why) => {
                    c.passed = false;
                    c.note = Some(why);
                }
            }
        }
        let Some((chosen, _)) = best else {
            report.reason = Some(match site.kind {
                SiteKind::Lower => "no candidate lowered the sentence's values while keeping its facts and meaning".into(),
                SiteKind::Raise if report.candidates.is_empty() && !self.config.insert => {
                    "insertions are off (`[rewriter] insert = false`) and no model rewrote the closest sentence toward the value".into()
                }
                SiteKind::Raise => "no candidate added the missing value without adding facts or moving other values away".into(),
            });
            return;
        };
        report.chosen = Some(chosen);
        let c = &report.candidates[chosen];
        let new_vector = c.score.as_ref().map(|s| s.values);
        let values = site.values.clone();
        match (site.kind, c.kind) {
            (_, EditKind::Rewritten) => {
                let Some(i) = site.sentence else { return };
                let old = state.vectors[i].unwrap_or_default();
                state.vectors[i] = new_vector;
                state.touched[i] = true;
                let u = units[i];
                edits.push((
                    u.body_range(),
                    c.text.clone(),
                    Edit {
                        kind: EditKind::Rewritten,
                        source: c.source,
                        sentence: Some(i),
                        start: u.body,
                        end: u.end,
                        original: Some(u.body(text).to_owned()),
                        text: Some(c.text.clone()),
                        separator: None,
                        before: pick(&old, &values),
                        after: new_vector.map(|v| pick(&v, &values)).unwrap_or_default(),
                        similarity: c.score.as_ref().and_then(|s| s.similarity),
                        reason: c.note.clone().unwrap_or_default(),
                        values,
                    },
                ));
            }
            (_, EditKind::Dropped) => {
                let Some(i) = site.sentence else { return };
                state.vectors[i] = None;
                state.touched[i] = true;
                let u = units[i];
                edits.push((
                    cut::drop_range(text, units, i),
                    String::new(),
                    Edit {
                        kind: EditKind::Dropped,
                        source: Source::Drop,
                        sentence: Some(i),
                        start: u.start,
                        end: u.end,
                        original: Some(u.text(text).to_owned()),
                        text: None,
                        separator: None,
                        before: BTreeMap::new(),
                        after: BTreeMap::new(),
                        similarity: None,
                        reason: c.note.clone().unwrap_or_default(),
                        values,
                    },
                ));
            }
            (_, EditKind::Inserted) => {
                let Some(v) = new_vector else { return };
                // After the kept sentence closest in meaning, or at the very end; with a bank
                // sentence, how close it is, for the audit (the bank's sentences are general
                // advice, and the reading in the README found most foreign to their answers).
                let (anchor, similarity) = match scope {
                    Scope::AppendOnly => (None, None),
                    _ => self
                        .anchor_for(c, &site, semantic, units, text, state)
                        .map_or((None, None), |(a, sim)| (Some(a), sim)),
                };
                let at = anchor.map_or(text.trim_end().len(), |a| units[a].end);
                // At the end after a line without a sentence mark (a list, a heading): a
                // paragraph of its own.
                let ends_sentence = text[..at]
                    .trim_end_matches(['"', '\'', ')', '*', '\u{201d}'])
                    .ends_with(['.', '!', '?']);
                let sep = if anchor.is_none() && !ends_sentence {
                    "\n\n"
                } else {
                    " "
                };
                state.inserted.push(v);
                state.anchors.extend(anchor);
                edits.push((
                    at..at,
                    format!("{sep}{}", c.text),
                    Edit {
                        kind: EditKind::Inserted,
                        source: c.source,
                        sentence: anchor,
                        start: at,
                        end: at,
                        original: None,
                        text: Some(c.text.clone()),
                        separator: Some(sep.to_owned()),
                        before: pick(&aggregate, &values),
                        after: pick(&v, &values),
                        similarity,
                        reason: c.note.clone().unwrap_or_default(),
                        values,
                    },
                ));
            }
        }
    }
}

impl Editor {
    /// Whether candidate `c` passes for `site` given the answer as earlier choices left it:
    /// (a bonus for the kind of edit, the reward, what it achieved) or why not. The reward is
    /// the value moved (the share of the way to the band, at most 1) weighed against the
    /// similarity kept; the bonus prefers, at equal reward, what keeps more of the answer: a
    /// rewrite by the model, then a clause cut, then a drop; for a missing value a rewrite of
    /// the closest sentence before an insertion.
    #[expect(
        clippy::too_many_arguments,
        reason = "one site's candidates with the texts and scores they are judged against"
    )]
    fn check(
        &self,
        profile: &Profile,
        text: &str,
        units: &[Sentence],
        semantic: &[Vec<f32>],
        site: &Site,
        c: &Candidate,
        state: &Working,
        aggregate: &ValueVector,
        (min_move, floor): (f32, f32),
        scope: Scope,
    ) -> Result<(f32, f32, String), String> {
        if let Some(r) = c.rejected {
            return Err(format!("screened out: {}", serde_name(&r)));
        }
        let vw = self.config.value_weight;
        let band = |v: ValueId| plan::band(profile, v).unwrap_or((0.0, 1.0));
        let kept_facts = |s: &EditScore| -> Result<(), String> {
            if s.facts.fraction() < 1.0 {
                Err(format!(
                    "changes facts (lost {:?}, added {:?})",
                    s.facts.missing, s.facts.added
                ))
            } else {
                Ok(())
            }
        };
        let similar = |s: &EditScore| -> Result<f32, String> {
            let sim = s.similarity.unwrap_or(0.0);
            if sim < floor {
                Err(format!(
                    "strays from the sentence's meaning (similarity {sim:.2} < {floor})"
                ))
            } else {
                Ok(sim)
            }
        };
        let no_harm = |next: &Working| -> Result<(), String> {
            match harms(profile, aggregate, &next.aggregate()) {
                Some(w) => Err(format!("would move {w} away from its target")),
                None => Ok(()),
            }
        };
        match (site.kind, c.kind) {
            (SiteKind::Lower, EditKind::Rewritten) => {
                let i = site.sentence.ok_or("no sentence")?;
                let old = state.vectors[i].ok_or("the sentence was dropped")?;
                let s = c.score.as_ref().ok_or("not scored")?;
                kept_facts(s)?;
                let sim = similar(s)?;
                let mut progress = 0.0;
                let mut moved = Vec::new();
                for v in &site.values {
                    let (o, n) = (old.get(*v), s.values.get(*v));
                    // Into the band, or down by at least the minimum move.
                    if n > o - min_move && n > band(*v).1 {
                        return Err(format!(
                            "{v} {o:.2} -> {n:.2}: neither within the band nor lowered by {min_move}"
                        ));
                    }
                    progress += ((o - n) / (o - band(*v).1).max(0.05)).min(1.0);
                    moved.push(format!("{v} {o:.2} -> {n:.2}"));
                }
                let mut next = state.clone();
                next.vectors[i] = Some(s.values);
                no_harm(&next)?;
                let progress = progress / site.values.len().max(1) as f32;
                let bonus = if c.source == Source::Model { 0.15 } else { 0.1 };
                Ok((bonus, vw * progress + (1.0 - vw) * sim, moved.join(", ")))
            }
            (SiteKind::Lower, EditKind::Dropped) => {
                let i = site.sentence.ok_or("no sentence")?;
                let old = state.vectors[i].ok_or("the sentence was dropped")?;
                // A stream window may go entirely (the answer goes on around it); an answer may
                // not.
                if scope != Scope::LowerOnly && state.vectors.iter().flatten().count() <= 1 {
                    return Err("it is the answer's only sentence".into());
                }
                if state.anchors.contains(&i) {
                    return Err("an inserted sentence follows it".into());
                }
                if let Some(v) = site.values.iter().find(|v| old.get(**v) < DROP_MIN_SCORE) {
                    return Err(format!(
                        "{v} {:.2} in it: a sentence goes only when it more likely than not expresses the value (at least {DROP_MIN_SCORE})",
                        old.get(*v)
                    ));
                }
                // The rest of the answer as it now stands, without this sentence.
                let mut gone: Vec<(Range<usize>, String)> = state
                    .vectors
                    .iter()
                    .enumerate()
                    .filter(|(j, v)| v.is_none() || *j == i)
                    .map(|(j, _)| (units[j].start..units[j].end, String::new()))
                    .collect();
                gone.sort_by_key(|(r, _)| r.start);
                let rest = splice(text, &gone);
                let f = facts::check(units[i].text(text), &rest);
                if f.kept < f.total {
                    return Err(format!(
                        "holds facts the rest of the answer lacks ({:?})",
                        f.missing
                    ));
                }
                let mut covered_by = None;
                if self.config.drop == DropRule::Covered {
                    // Its meaning must be in another kept sentence (a near-repeat): dropping a
                    // sentence that says something of its own changes what the answer says.
                    let me = semantic.get(i + 1).ok_or("not embedded")?;
                    let best = (0..units.len())
                        .filter(|j| *j != i && state.vectors[*j].is_some())
                        .filter_map(|j| {
                            semantic
                                .get(j + 1)
                                .map(|v| (j, v.iter().zip(me).map(|(a, b)| a * b).sum::<f32>()))
                        })
                        .max_by(|a, b| a.1.total_cmp(&b.1));
                    match best {
                        Some((j, sim)) if sim >= self.config.drop_covered_similarity => {
                            covered_by = Some((j, sim))
                        }
                        Some((_, sim)) => {
                            return Err(format!(
                                "says something no other sentence says (closest similarity {sim:.2} < {})",
                                self.config.drop_covered_similarity
                            ));
                        }
                        None => return Err("no other sentence covers it".into()),
                    }
                }
                let mut next = state.clone();
                next.vectors[i] = None;
                no_harm(&next)?;
                let moved: Vec<String> = site
                    .values
                    .iter()
                    .map(|v| format!("{v} {:.2} in this sentence", old.get(*v)))
                    .collect();
                let covered = covered_by.map_or(String::new(), |(j, sim)| {
                    format!(", and sentence {j} says the same (similarity {sim:.2})")
                });
                Ok((
                    0.0,
                    vw,
                    format!(
                        "dropped: {}; every fact is elsewhere in the answer{covered}",
                        moved.join(", ")
                    ),
                ))
            }
            (SiteKind::Raise, EditKind::Inserted) => {
                let v = site.values[0];
                let s = c.score.as_ref().ok_or("not scored")?;
                if !screen::adds_no_facts(&c.text) {
                    return Err("states a number, a name or a negation".into());
                }
                let (cur, new) = (aggregate.get(v), s.values.get(v));
                if new < cur + min_move && new < band(v).0 {
                    return Err(format!(
                        "{v} {new:.2}: neither within the band nor above the answer's {cur:.2} by {min_move}"
                    ));
                }
                let mut next = state.clone();
                next.inserted.push(s.values);
                no_harm(&next)?;
                let progress = ((new - cur) / (band(v).0 - cur).max(0.05)).min(1.0);
                // An insertion leaves every original sentence as it was; among insertions that
                // move the value alike, the one closer to the answer's topic wins.
                let relevance = self
                    .bank
                    .entries
                    .iter()
                    .find(|e| e.text == c.text)
                    .and_then(|e| {
                        semantic
                            .first()
                            .map(|a| a.iter().zip(&e.vector).map(|(x, y)| x * y).sum::<f32>())
                    })
                    .unwrap_or(0.5)
                    .clamp(0.0, 1.0);
                Ok((
                    0.0,
                    vw * progress + (1.0 - vw) * (0.5 + 0.5 * relevance),
                    format!("{v} {cur:.2} -> {new:.2}"),
                ))
            }
            (SiteKind::Raise, EditKind::Rewritten) => {
                let v = site.values[0];
                let j = site.sentence.ok_or("no sentence")?;
                if state.touched[j] {
                    return Err("the sentence was edited for another value".into());
                }
                let s = c.score.as_ref().ok_or("not scored")?;
                kept_facts(s)?;
                let sim = similar(s)?;
                let (cur, new) = (aggregate.get(v), s.values.get(v));
                if new < cur + min_move && new < band(v).0 {
                    return Err(format!(
                        "{v} {new:.2}: neither within the band nor above the answer's {cur:.2} by {min_move}"
                    ));
                }
                let mut next = state.clone();
                next.vectors[j] = Some(s.values);
                no_harm(&next)?;
                let progress = ((new - cur) / (band(v).0 - cur).max(0.05)).min(1.0);
                Ok((
                    0.15,
                    vw * progress + (1.0 - vw) * sim,
                    format!("{v} {cur:.2} -> {new:.2}"),
                ))
            }
            _ => Err("not an edit for this site".into()),
        }
    }

    /// Where an inserted sentence goes: after the kept sentence closest in meaning to it (a
    /// bank sentence) or after the sentence it was written for (a model's), else at the end.
    fn anchor_for(
        &self,
        c: &Candidate,
        site: &Site,
        semantic: &[Vec<f32>],
        units: &[Sentence],
        text: &str,
        state: &Working,
    ) -> Option<(usize, Option<f32>)> {
        // A kept sentence that ends with a sentence mark, so the insertion stays a sentence of
        // its own when the answer is split again.
        let kept = |i: usize| {
            state.vectors.get(i).is_some_and(Option::is_some)
                && units.get(i).is_some_and(|u| {
                    let t = u
                        .text(text)
                        .trim_end_matches(['"', '\'', ')', '*', '\u{201d}']);
                    t.ends_with(['.', '!', '?'])
                })
        };
        if c.source == Source::Model {
            return site.sentence.filter(|i| kept(*i)).map(|i| (i, None));
        }
        let vector = &self.bank.entries.iter().find(|e| e.text == c.text)?.vector;
        (0..units.len())
            .filter(|i| kept(*i))
            .filter_map(|i| Some((i, cosine(semantic.get(i + 1)?, vector))))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, sim)| (i, Some(sim)))
    }
}

/// A unit enum's serde name (`inserted`, `bank`, a screening rejection's).
pub fn serde_name(x: &impl Serialize) -> String {
    serde_json::to_value(x)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Sorted edit ranges with overlapping drops merged into one (two dropped neighbours can both
/// claim the blank line between them). Any other overlap is an error: the edit list must say
/// exactly what the text holds.
fn merge_ranges(edits: Vec<(Range<usize>, String)>) -> Result<Vec<(Range<usize>, String)>, String> {
    let mut out: Vec<(Range<usize>, String)> = Vec::with_capacity(edits.len());
    for (r, s) in edits {
        match out.last_mut() {
            Some((last, ls)) if r.start < last.end => {
                if s.is_empty() && ls.is_empty() {
                    last.end = last.end.max(r.end);
                } else {
                    return Err(format!(
                        "two edits overlap (bytes {}..{} and {}..{})",
                        last.start, last.end, r.start, r.end
                    ));
                }
            }
            _ => out.push((r, s)),
        }
    }
    Ok(out)
}

pub fn candidate(kind: EditKind, source: Source, text: String) -> Candidate {
    Candidate {
        kind,
        source,
        text,
        rejected: None,
        score: None,
        passed: false,
        note: None,
    }
}
