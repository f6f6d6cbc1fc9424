//! The composite reward of the VISA method, in one place: value precision (the detected vector
//! against the profile's targets) and semantic integrity (encoder similarity to the original and
//! fact preservation). Candidate choice, the shield, GRPO training and evaluation all call this,
//! so serving and training can never disagree about what a good rewrite is.

pub mod facts;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::detector::ValueDetector;
pub use facts::FactCheck;
use visa_models::error::ModelError;
use visa_models::service::EncoderService;
use visa_values::ValueVector;
use visa_values::profile::Profile;

/// How far a vector is from a profile.
#[derive(Debug, Clone, Serialize)]
pub struct ValueFit {
    pub values: ValueVector,
    /// Weighted L2 over the constrained values ([`Profile::distance`]).
    pub distance: f32,
    pub cosine: f32,
    /// 1 - distance / the largest distance possible for this profile; in [0, 1].
    pub precision: f32,
    pub within_tolerance: bool,
}

impl ValueFit {
    pub fn of(profile: &Profile, values: ValueVector) -> Self {
        let distance = profile.distance(&values);
        let worst = profile
            .values
            .values()
            .map(|t| t.weight * t.target.max(1.0 - t.target).powi(2))
            .sum::<f32>()
            .sqrt();
        let precision = if worst > 0.0 {
            (1.0 - distance / worst).clamp(0.0, 1.0)
        } else {
            1.0
        };
        Self {
            cosine: profile.cosine(&values),
            within_tolerance: profile.within_tolerance(&values),
            values,
            distance,
            precision,
        }
    }
}

/// One candidate's scores.
#[derive(Debug, Clone, Serialize)]
pub struct CandidateScore {
    pub fit: ValueFit,
    /// Cosine similarity of the sentence embeddings of original and candidate.
    pub similarity: f32,
    pub facts: FactCheck,
    /// similarity x the smaller share of facts kept / facts supported ([`FactCheck::fraction`]).
    pub integrity: f32,
    /// Share of the original's distance to the target that the candidate closes, in [-1, 1].
    pub progress: f32,
    /// [`reward`]: value_weight x progress (no credit for progress below the integrity floor)
    /// + (1 - value_weight) x integrity.
    pub reward: f32,
}

/// One sentence edit's scores: the candidate's values (the maximum over its sentences, as the
/// detector aggregates), its similarity to the sentence it replaces (none for an inserted
/// sentence), and its facts checked both ways against that sentence (an inserted one against
/// nothing, so any number, name or negation in it counts as invented).
#[derive(Debug, Clone, Serialize)]
pub struct EditScore {
    pub values: ValueVector,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f32>,
    pub facts: FactCheck,
}

/// Scores of an original and its candidates, and what it cost.
pub struct Scored {
    pub original: ValueFit,
    pub candidates: Vec<CandidateScore>,
    pub detect: Duration,
    pub embed: Duration,
}

/// The scorer: the detector for values, the encoder for similarity.
#[derive(Clone)]
pub struct Scorer {
    pub detector: Arc<dyn ValueDetector>,
    pub encoder: Arc<EncoderService>,
    /// Weight of value progress in the reward; the rest is semantic integrity.
    pub value_weight: f32,
    /// Integrity under which moving the values earns nothing (the shield's `min_integrity`).
    pub integrity_floor: f32,
}

/// Share of the original's distance to the target that a candidate closes, in [-1, 1]
/// (negative: it moved away). An original already on target counts as 0.05 away, so any
/// drift from it is penalised rather than divided by zero.
pub fn progress(original_distance: f32, distance: f32) -> f32 {
    ((original_distance - distance) / original_distance.max(0.05)).clamp(-1.0, 1.0)
}

/// The reward from its parts: `value_weight x progress + (1 - value_weight) x integrity`,
/// where progress toward the target only counts (when positive) if integrity clears
/// `integrity_floor`. Value *progress* rather than the raw precision of the VISA paper because
/// the two differ, for one original, by a constant and a scale: within a GRPO group (and among
/// one answer's candidates) only the scale matters, and dividing by the original's distance
/// gives the value term the weight it needs against integrity, which a copy earns for free.
/// The floor mirrors the shield: a rewrite that reaches the target by losing the meaning is
/// worth no more than one that did not move.
pub fn reward(value_weight: f32, progress: f32, integrity: f32, integrity_floor: f32) -> f32 {
    let progress = if integrity < integrity_floor {
        progress.min(0.0)
    } else {
        progress
    };
    value_weight * progress + (1.0 - value_weight) * integrity
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    // The encoder's vectors are L2-normalised.
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl Scorer {
    /// Detected values of each text, fitted to the profile.
    pub async fn fit(
        &self,
        profile: &Profile,
        texts: &[String],
    ) -> Result<(Vec<ValueFit>, Duration), ModelError> {
        let started = Instant::now();
        let (detections, _) = self.detector.detect(texts).await?;
        Ok((
            detections
                .into_iter()
                .map(|d| ValueFit::of(profile, d.values))
                .collect(),
            started.elapsed(),
        ))
    }

    /// Score sentence edits: each item is (the sentence it replaces, if any; the candidate).
    /// One detector request and one encoder request for all of them.
    pub async fn score_edits(
        &self,
        items: &[(Option<String>, String)],
    ) -> Result<Vec<EditScore>, ModelError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let candidates: Vec<String> = items.iter().map(|(_, c)| c.clone()).collect();
        let pairs: Vec<String> = items
            .iter()
            .filter_map(|(o, c)| o.as_ref().map(|o| [o.clone(), c.clone()]))
            .flatten()
            .collect();
        let (detected, embedded) = tokio::try_join!(self.detector.detect(&candidates), async {
            if pairs.is_empty() {
                return Ok(None);
            }
            self.encoder.embed(pairs.clone()).await.map(Some)
        })?;
        let vectors = embedded.map(|e| e.vectors).unwrap_or_default();
        let mut pair = vectors.chunks(2);
        Ok(items
            .iter()
            .zip(detected.0)
            .map(|((original, candidate), d)| {
                let similarity = original.as_ref().map(|_| match pair.next() {
                    Some([a, b]) => cosine(a, b).clamp(0.0, 1.0),
                    _ => 0.0,
                });
                EditScore {
                    values: d.values,
                    similarity,
                    facts: facts::check(original.as_deref().unwrap_or(""), candidate),
                }
            })
            .collect())
    }

    /// Score an original and candidate rewrites of it against a profile.
    pub async fn score(
        &self,
        profile: &Profile,
        original: &str,
        candidates: &[String],
    ) -> Result<Scored, ModelError> {
        let mut texts = Vec::with_capacity(candidates.len() + 1);
        texts.push(original.to_owned());
        texts.extend(candidates.iter().cloned());
        let embed_started = Instant::now();
        let (fits, embedded) = tokio::try_join!(self.fit(profile, &texts), async {
            if candidates.is_empty() {
                return Ok(None);
            }
            self.encoder.embed(texts.clone()).await.map(Some)
        })?;
        let embed = embed_started.elapsed();
        let (mut fits, detect) = fits;
        let original_fit = fits.remove(0);
        let vectors = embedded.map(|e| e.vectors).unwrap_or_default();
        let scores = fits
            .into_iter()
            .zip(candidates)
            .enumerate()
            .map(|(i, (fit, cand))| {
                let similarity = match (vectors.first(), vectors.get(i + 1)) {
                    (Some(a), Some(b)) => cosine(a, b).clamp(0.0, 1.0),
                    _ => 0.0,
                };
                let facts = facts::check(original, cand);
                let integrity = similarity * facts.fraction();
                let progress = progress(original_fit.distance, fit.distance);
                CandidateScore {
                    reward: reward(self.value_weight, progress, integrity, self.integrity_floor),
                    progress,
                    fit,
                    similarity,
                    facts,
                    integrity,
                }
            })
            .collect();
        Ok(Scored {
            original: original_fit,
            candidates: scores,
            detect,
            embed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use visa_values::ValueId;

    #[test]
    fn precision_and_reward_follow_the_distance() {
        let spec = visa_values::profile::ProfileSpec::from_json(&json!({
            "values": {"benevolence": {"target": 0.9, "tolerance": 0.1}},
            "action": "rewrite"
        }))
        .unwrap();
        let p = Profile::from_spec(spec, 1, 0);
        let mut v = ValueVector::default();
        v.set(ValueId::Benevolence, 0.1);
        let far = ValueFit::of(&p, v);
        v.set(ValueId::Benevolence, 0.85);
        let near = ValueFit::of(&p, v);
        assert!((far.distance - 0.8).abs() < 1e-5);
        assert!((far.precision - (1.0 - 0.8 / 0.9)).abs() < 1e-5);
        assert!(near.within_tolerance && !far.within_tolerance);
        assert!(near.precision > far.precision);
    }

    #[test]
    fn reward_weighs_progress_against_integrity_with_a_floor() {
        // Closing the distance from 0.8 to 0.2 is 75% progress; moving away is negative, capped.
        assert!((progress(0.8, 0.2) - 0.75).abs() < 1e-6);
        assert!((progress(0.4, 0.6) + 0.5).abs() < 1e-6);
        assert_eq!(progress(0.1, 0.9), -1.0);
        // Already on target: drift is penalised, not divided by zero.
        assert!((progress(0.0, 0.01) + 0.2).abs() < 1e-6);
        // A copy (no progress, full integrity) vs a rewrite that moves and keeps the meaning.
        let copy = reward(0.7, 0.0, 1.0, 0.6);
        let good = reward(0.7, 0.5, 0.75, 0.6);
        assert!((copy - 0.3).abs() < 1e-6 && (good - (0.35 + 0.225)).abs() < 1e-6);
        assert!(good > copy);
        // Reaching the target by losing the meaning earns no progress credit...
        assert!((reward(0.7, 1.0, 0.3, 0.6) - 0.09).abs() < 1e-6);
        // ...but moving away is still penalised below the floor.
        assert!((reward(0.7, -0.5, 0.3, 0.6) - (-0.35 + 0.09)).abs() < 1e-6);
        assert!(reward(0.7, 0.0, 1.0, 0.6) > reward(0.7, 0.0, 0.9, 0.6));
    }
}
