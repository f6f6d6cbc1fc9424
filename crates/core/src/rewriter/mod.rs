//! The value rewriter: render the profile's gaps into a prompt, generate k candidates (local
//! model or a remote OpenAI-compatible endpoint), reject empty, truncated and runaway ones, score
//! the rest with the composite reward, keep the best, and let the shield decide; when no
//! candidate passes, sample further rounds of k, up to `rounds` and while within
//! `round_budget_ms`.

pub mod prompt;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::RewriterConfig;
use crate::score::{CandidateScore, Scorer, ValueFit};
use visa_models::error::{ErrorKind, ModelError};
use visa_models::llm::{ChatMessage, LlmEngine, Role, Sampling};
use visa_values::profile::Profile;

/// An OpenAI-compatible server the rewriter can ask for candidates (the proxy implements it for
/// its upstreams, with their timeouts, retries and metrics).
pub trait ChatEndpoint: Send + Sync {
    /// The name it is configured under.
    fn name(&self) -> &str;
    /// Send a non-streaming chat completion body; the answer's body.
    fn chat(&self, body: bytes::Bytes) -> BoxFuture<'_, Result<bytes::Bytes, ModelError>>;
}

/// Where candidates come from.
#[derive(Clone)]
pub enum RewriteBackend {
    Local(Arc<LlmEngine>),
    Remote {
        upstream: Arc<dyn ChatEndpoint>,
        model: String,
    },
}

impl RewriteBackend {
    pub fn name(&self) -> String {
        match self {
            Self::Local(e) => format!("local:{}", e.served_name),
            Self::Remote { upstream, model } => format!("{}:{model}", upstream.name()),
        }
    }

    /// Whether candidates come from another server (and may be generated concurrently).
    pub fn is_remote(&self) -> bool {
        matches!(self, Self::Remote { .. })
    }

    /// One candidate: the text and whether it ended on its own (not cut by the length limit).
    pub async fn generate(
        &self,
        messages: Vec<ChatMessage>,
        sampling: Sampling,
    ) -> Result<(String, bool), ModelError> {
        match self {
            Self::Local(engine) => {
                // Never more than the local model's own `llm.max_tokens`.
                let mut sampling = sampling;
                sampling.max_tokens = sampling.max_tokens.min(engine.defaults.max_tokens);
                // The prompt holds the upstream's answer: a prompt the local model refuses is
                // the upstream's doing, not the client's.
                let c = engine.complete(messages, sampling).await.map_err(|e| {
                    if e.kind == ErrorKind::InvalidRequest {
                        ModelError::bad_gateway(format!(
                            "the upstream's answer cannot be rewritten by the local model: {}",
                            e.message
                        ))
                    } else {
                        e
                    }
                })?;
                Ok((c.text, c.finish_reason != "length"))
            }
            Self::Remote { upstream, model } => {
                let msgs: Vec<Value> = messages
                    .iter()
                    .map(|m| {
                        let role = match m.role {
                            Role::System => "system",
                            Role::User => "user",
                            Role::Assistant => "assistant",
                        };
                        json!({"role": role, "content": m.content})
                    })
                    .collect();
                let mut body = json!({
                    "model": model, "messages": msgs, "temperature": sampling.temperature,
                    "top_p": sampling.top_p, "max_tokens": sampling.max_tokens,
                });
                if !sampling.stop.is_empty() {
                    body["stop"] = json!(sampling.stop);
                }
                let reply = upstream.chat(bytes::Bytes::from(body.to_string())).await?;
                let v: Value = serde_json::from_slice(&reply).map_err(|e| {
                    ModelError::bad_gateway(format!("the remote rewriter sent bad JSON: {e}"))
                })?;
                let text = v
                    .pointer("/choices/0/message/content")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let finished = v
                    .pointer("/choices/0/finish_reason")
                    .and_then(Value::as_str)
                    != Some("length");
                Ok((text, finished))
            }
        }
    }
}

/// Why a candidate was not considered.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    Empty,
    Truncated,
    TooShort,
    TooLong,
    Unchanged,
}

#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Rejection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<CandidateScore>,
}

/// What the shield decided.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The original was already within tolerance: nothing to do.
    Passed,
    /// The best candidate moved toward the target and kept the meaning.
    Rewritten,
    /// No candidate passed the shield; the caller applies the profile's fallback.
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rewrite {
    pub decision: Decision,
    /// The rewrite when `decision` is `rewritten`.
    pub text: Option<String>,
    /// Why the shield failed, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub original: ValueFit,
    pub candidates: Vec<Candidate>,
    /// Index of the best-scoring candidate, when any could be scored.
    pub best: Option<usize>,
    pub generate_ms: f64,
    pub score_ms: f64,
}

pub struct Rewriter {
    pub backend: RewriteBackend,
    pub scorer: Scorer,
    pub config: RewriterConfig,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

impl Rewriter {
    /// Token budget for one candidate: room for `max_length_ratio` times the original.
    fn max_tokens(&self, original: &str) -> usize {
        max_tokens(&self.config, original)
    }
}

/// Most tokens a rewrite of `original` may take: about 3.5 characters per token in English,
/// times the length ratio; never below 32.
pub fn max_tokens(config: &RewriterConfig, original: &str) -> usize {
    ((original.len() as f32 * config.max_length_ratio / 3.5) as usize).max(32)
}

/// A raw generation made into a candidate: clean-up of preambles and commentary, the length
/// cap (a candidate cut by the token limit or longer than allowed keeps its complete sentences
/// within the cap), and rejection of empty, too short or unchanged texts. The serving rewriter
/// and GRPO training screen candidates the same way.
pub fn screen(
    config: &RewriterConfig,
    original: &str,
    raw: &str,
    finished: bool,
) -> (String, Option<Rejection>) {
    let cleaned = prompt::clean(raw);
    let max = (original.chars().count() as f32 * config.max_length_ratio) as usize + 20;
    match cap_text(&cleaned, max, finished) {
        Ok(t) => {
            let rejected = reject(config, original, &t);
            (t, rejected)
        }
        Err(why) => (cleaned, Some(why)),
    }
}

/// The shield: a scored candidate may replace the original only if it is closer to the target
/// by at least `min_improvement` and its semantic integrity is at least `min_integrity`; the
/// error says which test failed. Serving and the training warm start apply the same rule.
pub fn shield(
    config: &RewriterConfig,
    original_distance: f32,
    s: &CandidateScore,
) -> Result<(), String> {
    if original_distance - s.fit.distance < config.min_improvement {
        Err(format!(
            "the best candidate did not move toward the target (distance {:.3} -> {:.3}, needed an improvement of {})",
            original_distance, s.fit.distance, config.min_improvement
        ))
    } else if s.integrity < config.min_integrity {
        Err(format!(
            "the best candidate did not keep the meaning (integrity {:.3} < {}; facts kept {}/{}, its own facts in the original {}/{})",
            s.integrity,
            config.min_integrity,
            s.facts.kept,
            s.facts.total,
            s.facts.supported,
            s.facts.rewrite_total
        ))
    } else {
        Ok(())
    }
}

/// Keep `text` when it finished within `max` characters; else its complete sentences within
/// `max`; else reject it.
fn cap_text(text: &str, max: usize, finished: bool) -> Result<String, Rejection> {
    if finished && text.chars().count() <= max {
        return Ok(text.to_owned());
    }
    let end = text.char_indices().nth(max).map_or(text.len(), |(i, _)| i);
    let head = &text[..end];
    let cut = head
        .char_indices()
        .filter(|(i, c)| {
            matches!(c, '.' | '!' | '?')
                && head[i + 1..].chars().next().is_none_or(char::is_whitespace)
        })
        .map(|(i, _)| i + 1)
        .next_back();
    match cut {
        Some(i) => Ok(head[..i].trim_end().to_owned()),
        None if !finished => Err(Rejection::Truncated),
        None => Err(Rejection::TooLong),
    }
}

fn reject(config: &RewriterConfig, original: &str, text: &str) -> Option<Rejection> {
    let (o, t) = (original.chars().count() as f32, text.chars().count() as f32);
    if text.trim().is_empty() {
        Some(Rejection::Empty)
    } else if t < o * config.min_length_ratio {
        Some(Rejection::TooShort)
    } else if text.trim() == original.trim() {
        Some(Rejection::Unchanged)
    } else {
        None
    }
}

impl Rewriter {
    /// Rewrite `original` toward `profile`. `original_fit`, when the caller already detected
    /// the original, saves a detection.
    pub async fn rewrite(
        &self,
        profile: &Profile,
        original: &str,
        context: Option<&str>,
    ) -> Result<Rewrite, ModelError> {
        let (fits, _) = self.scorer.fit(profile, &[original.to_owned()]).await?;
        let original_fit = fits.into_iter().next().ok_or_else(|| {
            ModelError::internal("the detector returned no result for the original")
        })?;
        if original_fit.within_tolerance {
            return Ok(Rewrite {
                decision: Decision::Passed,
                text: None,
                reason: None,
                original: original_fit,
                candidates: Vec::new(),
                best: None,
                generate_ms: 0.0,
                score_ms: 0.0,
            });
        }
        self.rewrite_from(profile, original, context, original_fit)
            .await
    }

    /// Rewrite when the original's fit is known (and outside tolerance).
    pub async fn rewrite_from(
        &self,
        profile: &Profile,
        original: &str,
        context: Option<&str>,
        original_fit: ValueFit,
    ) -> Result<Rewrite, ModelError> {
        let gaps = profile.gaps(&original_fit.values);
        let messages = prompt::messages(original, context, &gaps);
        let sampling = Sampling {
            temperature: self.config.temperature,
            top_p: self.config.top_p,
            max_tokens: self.max_tokens(original),
            stop: Vec::new(),
            logprobs: None,
        };
        // The first candidate is greedy, so one is always the model's most likely rewrite; the
        // others sample. `parallel` sends a round's candidates together for the engine to
        // batch; on CPU, mistral.rs 0.8.1 was slower batched than one after another (see the
        // README). When no candidate of a round passes the shield, another round samples more.
        let sampling_for = |i: usize| {
            let mut s = sampling.clone();
            if i == 0 {
                s.temperature = 0.0;
            }
            s
        };
        let shield = |s: &CandidateScore| shield(&self.config, original_fit.distance, s);
        let k = self.config.candidates;
        let mut candidates: Vec<Candidate> = Vec::with_capacity(k);
        let (mut generate, mut score_time) = (Duration::ZERO, Duration::ZERO);
        let budget = Duration::from_millis(self.config.round_budget_ms);
        let search_started = Instant::now();
        for round in 0..self.config.rounds.max(1) {
            if round > 0 && !budget.is_zero() && search_started.elapsed() >= budget {
                break;
            }
            let started = Instant::now();
            let ids = round * k..(round + 1) * k;
            let raw = if self.config.parallel {
                futures_util::future::join_all(
                    ids.map(|i| self.backend.generate(messages.clone(), sampling_for(i))),
                )
                .await
            } else {
                let mut out = Vec::with_capacity(k);
                for i in ids {
                    out.push(
                        self.backend
                            .generate(messages.clone(), sampling_for(i))
                            .await,
                    );
                }
                out
            };
            generate += started.elapsed();
            let first_new = candidates.len();
            for r in raw {
                let (text, finished) = r?;
                let (text, rejected) = screen(&self.config, original, &text, finished);
                candidates.push(Candidate {
                    text,
                    rejected,
                    score: None,
                });
            }
            let scoring: Vec<usize> = (first_new..candidates.len())
                .filter(|i| candidates[*i].rejected.is_none())
                .collect();
            let texts: Vec<String> = scoring
                .iter()
                .map(|i| candidates[*i].text.clone())
                .collect();
            let score_started = Instant::now();
            let scored = if texts.is_empty() {
                Vec::new()
            } else {
                self.scorer
                    .score(profile, original, &texts)
                    .await?
                    .candidates
            };
            score_time += score_started.elapsed();
            for (i, s) in scoring.iter().zip(scored) {
                candidates[*i].score = Some(s);
            }
            if candidates
                .iter()
                .any(|c| c.score.as_ref().is_some_and(|s| shield(s).is_ok()))
            {
                break;
            }
        }
        let score_ms = ms(score_time);
        // The best passing candidate wins; when none passes, the best one explains why.
        let ranked = |only_passing: bool| {
            candidates
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.score.as_ref().map(|s| (i, s)))
                .filter(|(_, s)| !only_passing || shield(s).is_ok())
                .max_by(|a, b| a.1.reward.total_cmp(&b.1.reward))
        };
        let passing = ranked(true).map(|(i, _)| i);
        let overall = ranked(false);
        let best = passing.or(overall.map(|(i, _)| i));
        let verdict = match (passing, overall) {
            (Some(i), _) => Ok(i),
            (None, Some((_, s))) => Err(shield(s).err().unwrap_or_default()),
            (None, None) => Err(
                "no usable candidate (all empty, truncated, too short, too long or unchanged)"
                    .to_owned(),
            ),
        };
        let (decision, text, reason) = match verdict {
            Ok(i) => (Decision::Rewritten, Some(candidates[i].text.clone()), None),
            Err(reason) => (Decision::Failed, None, Some(reason)),
        };
        Ok(Rewrite {
            decision,
            text,
            reason,
            original: original_fit,
            candidates,
            best,
            generate_ms: ms(generate),
            score_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_or_cut_candidates_keep_whole_sentences() {
        let max = 52;
        assert_eq!(
            cap_text("A kind text.", max, true),
            Ok("A kind text.".into())
        );
        assert_eq!(
            cap_text(
                "One full sentence. Then a second that goes on and",
                max,
                false
            ),
            Ok("One full sentence.".into())
        );
        assert_eq!(
            cap_text("no sentence end at all and it keeps going", max, false),
            Err(Rejection::Truncated)
        );
        let capped = cap_text(&"First one. ".repeat(10), max, true).unwrap();
        assert!(capped.len() <= max && capped.ends_with('.'), "{capped}");
        assert_eq!(
            cap_text(&"x".repeat(80), max, true),
            Err(Rejection::TooLong)
        );
    }
}
