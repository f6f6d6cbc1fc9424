//! A tenant's value profile: per-value targets, weights and tolerances, what to do when an
//! answer misses them, and its version. Parsing here names the offending field on every error.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::{ValueId, ValueVector};

pub const DEFAULT_WEIGHT: f32 = 1.0;
pub const DEFAULT_TOLERANCE: f32 = 0.15;
pub const MAX_WEIGHT: f32 = 10.0;

/// The constraint on one value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ValueTarget {
    /// Desired score in [0, 1].
    #[serde(serialize_with = "super::ser_short")]
    pub target: f32,
    /// Relative importance in (0, 10]; default 1.
    #[serde(serialize_with = "super::ser_short")]
    pub weight: f32,
    /// Largest accepted |score - target| in [0, 1]; default 0.15.
    #[serde(serialize_with = "super::ser_short")]
    pub tolerance: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Measure and annotate only.
    #[default]
    Audit,
    /// Rewrite answers outside tolerance toward the targets.
    Rewrite,
    /// Refuse answers outside tolerance.
    Block,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Return the original answer, marked as a fallback.
    #[default]
    Original,
    /// Refuse the answer.
    Block,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StreamMode {
    /// Release streamed text window by window.
    #[default]
    Window,
    /// Hold the whole answer, then stream the result.
    Buffer,
}

/// Which decisions the decision log keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogDecisions {
    /// Every decision other than `passed`.
    #[default]
    Changes,
    /// Every decision, `passed` included.
    All,
}

impl LogDecisions {
    pub fn logs_passed(self) -> bool {
        self == Self::All
    }
}

/// What text the decision log keeps of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogText {
    /// No text: scores, actions, edit kinds and positions only.
    #[default]
    None,
    /// SHA-256 of each text (the upstream's, the client's, each edited sentence).
    Hash,
    /// The full texts.
    Full,
}

/// A profile as stored and returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Profile {
    /// Constrained values; values not named are unconstrained.
    #[schema(example = json!({"benevolence": {"target": 0.8, "weight": 1.0, "tolerance": 0.15}, "power": {"target": 0.1, "weight": 2.0, "tolerance": 0.1}}))]
    pub values: BTreeMap<ValueId, ValueTarget>,
    pub action: Action,
    pub fallback: Fallback,
    pub stream_mode: StreamMode,
    /// Add a system message derived from the profile to the upstream request, so a capable
    /// upstream writes on-profile to begin with. Off by default.
    #[serde(default)]
    pub steer: bool,
    /// The time enforcement may add to an answer (JSON) or to each stream window, in ms; none:
    /// the proxy's `[enforce] max_added_ms`; 0: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_added_ms: Option<u64>,
    /// With `action: "audit"`, the share of answers measured, in (0, 1]; none: every answer,
    /// measured before it is returned (and reported in its headers). With a share, the
    /// answers drawn are measured after they were sent, off the request path, and the others
    /// pass as bytes without any model work; the figures appear in `/v1/stats` and `/metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_sample: Option<f64>,
    /// Which decisions `GET /v1/decisions` keeps: `changes` (all but `passed`) or `all`.
    #[serde(default)]
    pub log_decisions: LogDecisions,
    /// What text of an answer the decision log keeps: `none`, `hash` or `full`.
    #[serde(default)]
    pub log_text: LogText,
    /// Increases by one on every change, deletions included.
    pub version: u64,
    /// Unix seconds of the change that made this version.
    pub updated_at: i64,
}

pub use crate::fields::FieldError;

fn err(param: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError::new(param, message)
}

/// The editable part of a profile (what PUT takes).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProfileSpec {
    pub values: BTreeMap<ValueId, ValueTarget>,
    pub action: Action,
    pub fallback: Fallback,
    pub stream_mode: StreamMode,
    pub steer: bool,
    pub max_added_ms: Option<u64>,
    pub audit_sample: Option<f64>,
    pub log_decisions: LogDecisions,
    pub log_text: LogText,
}

/// Largest `max_added_ms` a profile may set (10 minutes).
pub const MAX_ADDED_MS: u64 = 600_000;

/// A partial change (what PATCH takes): `None` leaves a field alone; in `values`, `None`
/// removes a constraint and `Some` merges into it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProfilePatch {
    pub values: BTreeMap<ValueId, Option<PartialTarget>>,
    pub action: Option<Action>,
    pub fallback: Option<Fallback>,
    pub stream_mode: Option<StreamMode>,
    pub steer: Option<bool>,
    /// `Some(None)` clears it (back to the proxy's default).
    pub max_added_ms: Option<Option<u64>>,
    /// `Some(None)` clears it (every answer is audited).
    pub audit_sample: Option<Option<f64>>,
    pub log_decisions: Option<LogDecisions>,
    pub log_text: Option<LogText>,
}

/// A profile's fields as requests send them: the body of `PUT` (applied to an empty profile,
/// so every named value needs a target) and of `PATCH` (only the fields sent change; `null`
/// removes a value's constraint or clears `max_added_ms` / `audit_sample`), and the inline
/// `profile` of the translate and rewrite endpoints. This type is the schema those operations
/// document; unknown fields are rejected, and every error names the field at fault.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"values": {"benevolence": {"target": 0.8}, "power": {"target": 0.1, "weight": 2}}, "action": "rewrite"}))]
pub struct ProfileFields {
    /// Value id -> its constraint (fields not sent keep their current or default values);
    /// `null` removes the constraint.
    #[serde(default)]
    #[schema(value_type = BTreeMap<ValueId, PartialTarget>)]
    pub values: BTreeMap<ValueId, Option<PartialTarget>>,
    pub action: Option<Action>,
    pub fallback: Option<Fallback>,
    pub stream_mode: Option<StreamMode>,
    /// Add a system message derived from the profile to the upstream request.
    pub steer: Option<bool>,
    /// The time enforcement may add, in ms, in [0, 600000] (0: no limit); `null`: the proxy's
    /// `[enforce] max_added_ms`.
    #[serde(default, deserialize_with = "added_ms")]
    #[schema(value_type = Option<u64>, maximum = 600000)]
    pub max_added_ms: Option<Option<u64>>,
    /// With `action: "audit"`, the share of answers measured after they were sent, in (0, 1];
    /// `null`: every answer, before it is returned.
    #[serde(default, deserialize_with = "audit_share")]
    #[schema(value_type = Option<f64>, exclusive_minimum = 0.0, maximum = 1.0)]
    pub audit_sample: Option<Option<f64>>,
    pub log_decisions: Option<LogDecisions>,
    pub log_text: Option<LogText>,
    /// Accepted and ignored by `PUT`, so a profile as `GET` returns it can be sent back edited;
    /// a `PATCH` refuses it (send the version you read as `If-Match`).
    #[schema(read_only)]
    pub version: Option<u64>,
    /// As `version`.
    #[schema(read_only)]
    pub updated_at: Option<i64>,
}

/// One value's constraint as a request sends it; a field not sent keeps its current value (or
/// its default: weight 1, tolerance 0.15; a new constraint needs a target).
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PartialTarget {
    /// Desired score in [0, 1].
    #[serde(default, deserialize_with = "unit")]
    #[schema(value_type = f32, minimum = 0.0, maximum = 1.0)]
    pub target: Option<f32>,
    /// Relative importance in (0, 10].
    #[serde(default, deserialize_with = "weight")]
    #[schema(value_type = f32, exclusive_minimum = 0.0, maximum = 10.0)]
    pub weight: Option<f32>,
    /// Largest accepted |score - target|, in [0, 1].
    #[serde(default, deserialize_with = "unit")]
    #[schema(value_type = f32, minimum = 0.0, maximum = 1.0)]
    pub tolerance: Option<f32>,
}

fn in_range<E: serde::de::Error>(x: f64, lo: f64, hi: f64, lo_open: bool) -> Result<f32, E> {
    let below = if lo_open { x <= lo } else { x < lo };
    if !x.is_finite() || below || x > hi {
        let lo_br = if lo_open { "(" } else { "[" };
        return Err(E::custom(format!("must be in {lo_br}{lo}, {hi}], got {x}")));
    }
    Ok(x as f32)
}

fn unit<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f32>, D::Error> {
    in_range(f64::deserialize(d)?, 0.0, 1.0, false).map(Some)
}

fn weight<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f32>, D::Error> {
    in_range(f64::deserialize(d)?, 0.0, f64::from(MAX_WEIGHT), true).map(Some)
}

fn added_ms<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    match Option::<serde_json::Number>::deserialize(d)? {
        None => Ok(Some(None)),
        Some(n) => n
            .as_u64()
            .filter(|m| *m <= MAX_ADDED_MS)
            .map(|m| Some(Some(m)))
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "must be a whole number of milliseconds in [0, {MAX_ADDED_MS}] (0: no limit), or null; got {n}"
                ))
            }),
    }
}

fn audit_share<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<f64>>, D::Error> {
    match Option::<f64>::deserialize(d)? {
        None => Ok(Some(None)),
        Some(a) if a > 0.0 && a <= 1.0 => Ok(Some(Some(a))),
        Some(a) => Err(serde::de::Error::custom(format!(
            "must be a share of answers in (0, 1], or null (every answer); got {a}"
        ))),
    }
}

impl ProfileFields {
    /// Parse a JSON object, with errors that name the field (`values.power.target`).
    pub fn from_json(body: &Value) -> Result<Self, FieldError> {
        if !body.is_object() {
            return Err(err("profile", "'profile' must be an object"));
        }
        crate::fields::from_value(body.clone())
    }
}

impl ProfileSpec {
    /// A full profile (PUT) from its fields: applied to an empty profile, so every named
    /// value needs a target; `version` and `updated_at` are ignored.
    pub fn from_fields(fields: ProfileFields) -> Result<Self, FieldError> {
        ProfileSpec::default().apply(&ProfilePatch::changes(fields))
    }

    /// [`ProfileSpec::from_fields`] from JSON.
    pub fn from_json(body: &Value) -> Result<Self, FieldError> {
        Self::from_fields(ProfileFields::from_json(body)?)
    }

    pub fn from_profile(p: &Profile) -> Self {
        Self {
            values: p.values.clone(),
            action: p.action,
            fallback: p.fallback,
            stream_mode: p.stream_mode,
            steer: p.steer,
            max_added_ms: p.max_added_ms,
            audit_sample: p.audit_sample,
            log_decisions: p.log_decisions,
            log_text: p.log_text,
        }
    }

    /// Apply a patch; the result is a complete spec (a new constraint needs a target).
    pub fn apply(&self, patch: &ProfilePatch) -> Result<Self, FieldError> {
        let mut out = self.clone();
        for (id, change) in &patch.values {
            match change {
                None => {
                    out.values.remove(id);
                }
                Some(part) => {
                    let current = out.values.get(id).copied();
                    let target = part.target.or(current.map(|c| c.target)).ok_or_else(|| {
                        err(
                            format!("values.{id}.target"),
                            format!(
                                "'values.{id}.target' is required: {id} is not constrained yet"
                            ),
                        )
                    })?;
                    out.values.insert(
                        *id,
                        ValueTarget {
                            target,
                            weight: part
                                .weight
                                .or(current.map(|c| c.weight))
                                .unwrap_or(DEFAULT_WEIGHT),
                            tolerance: part
                                .tolerance
                                .or(current.map(|c| c.tolerance))
                                .unwrap_or(DEFAULT_TOLERANCE),
                        },
                    );
                }
            }
        }
        if let Some(a) = patch.action {
            out.action = a;
        }
        if let Some(f) = patch.fallback {
            out.fallback = f;
        }
        if let Some(m) = patch.stream_mode {
            out.stream_mode = m;
        }
        if let Some(b) = patch.steer {
            out.steer = b;
        }
        if let Some(m) = patch.max_added_ms {
            out.max_added_ms = m;
        }
        if let Some(a) = patch.audit_sample {
            out.audit_sample = a;
        }
        if let Some(l) = patch.log_decisions {
            out.log_decisions = l;
        }
        if let Some(l) = patch.log_text {
            out.log_text = l;
        }
        Ok(out)
    }
}

impl ProfilePatch {
    /// A PATCH body's field changes (an `instruction` is handled by the caller). `version` and
    /// `updated_at` are refused: a patch applies to the newest version unless `If-Match` says
    /// otherwise.
    pub fn from_fields(fields: ProfileFields) -> Result<Self, FieldError> {
        for (name, sent) in [
            ("version", fields.version.is_some()),
            ("updated_at", fields.updated_at.is_some()),
        ] {
            if sent {
                return Err(err(
                    name,
                    format!(
                        "'{name}' cannot be changed; to apply a patch only to the version you read, send it as If-Match"
                    ),
                ));
            }
        }
        Ok(Self::changes(fields))
    }

    /// [`ProfilePatch::from_fields`] from JSON.
    pub fn from_json(body: &Value) -> Result<Self, FieldError> {
        Self::from_fields(ProfileFields::from_json(body)?)
    }

    fn changes(f: ProfileFields) -> Self {
        Self {
            values: f.values,
            action: f.action,
            fallback: f.fallback,
            stream_mode: f.stream_mode,
            steer: f.steer,
            max_added_ms: f.max_added_ms,
            audit_sample: f.audit_sample,
            log_decisions: f.log_decisions,
            log_text: f.log_text,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
            && self.action.is_none()
            && self.fallback.is_none()
            && self.stream_mode.is_none()
            && self.steer.is_none()
            && self.max_added_ms.is_none()
            && self.audit_sample.is_none()
            && self.log_decisions.is_none()
            && self.log_text.is_none()
    }
}

impl Profile {
    pub fn from_spec(spec: ProfileSpec, version: u64, updated_at: i64) -> Self {
        Self {
            values: spec.values,
            action: spec.action,
            fallback: spec.fallback,
            stream_mode: spec.stream_mode,
            steer: spec.steer,
            max_added_ms: spec.max_added_ms,
            audit_sample: spec.audit_sample,
            log_decisions: spec.log_decisions,
            log_text: spec.log_text,
            version,
            updated_at,
        }
    }

    /// Weighted L2 distance over the constrained values: sqrt(sum w (score - target)^2).
    /// With unit weights this is the plain L2 the VISA paper reports. 0 when nothing is
    /// constrained.
    pub fn distance(&self, v: &ValueVector) -> f32 {
        self.values
            .iter()
            .map(|(id, t)| t.weight * (v.get(*id) - t.target).powi(2))
            .sum::<f32>()
            .sqrt()
    }

    /// Cosine similarity between the scores and the targets over the constrained values
    /// (each dimension scaled by sqrt(weight)). When either side is all zeros it is 1 if both
    /// are, else 0. With a single constrained value it only says whether both are non-zero,
    /// so use it next to [`Profile::distance`], not instead of it.
    pub fn cosine(&self, v: &ValueVector) -> f32 {
        let (mut dot, mut a2, mut b2) = (0.0f32, 0.0f32, 0.0f32);
        for (id, t) in &self.values {
            let (a, b) = (v.get(*id), t.target);
            dot += t.weight * a * b;
            a2 += t.weight * a * a;
            b2 += t.weight * b * b;
        }
        if a2 <= f32::EPSILON || b2 <= f32::EPSILON {
            return if a2 <= f32::EPSILON && b2 <= f32::EPSILON {
                1.0
            } else {
                0.0
            };
        }
        dot / (a2.sqrt() * b2.sqrt())
    }

    /// Every constrained value within its tolerance.
    pub fn within_tolerance(&self, v: &ValueVector) -> bool {
        self.values
            .iter()
            .all(|(id, t)| (v.get(*id) - t.target).abs() <= t.tolerance + 1e-6)
    }

    /// Constrained values outside tolerance, largest weighted gap first, with signed gaps
    /// (target - score: positive means "express more").
    pub fn gaps(&self, v: &ValueVector) -> Vec<(ValueId, f32)> {
        let mut out: Vec<(ValueId, f32, f32)> = self
            .values
            .iter()
            .filter(|(id, t)| (v.get(**id) - t.target).abs() > t.tolerance + 1e-6)
            .map(|(id, t)| {
                (
                    *id,
                    t.target - v.get(*id),
                    t.weight * (t.target - v.get(*id)).abs(),
                )
            })
            .collect();
        out.sort_by(|a, b| b.2.total_cmp(&a.2));
        out.into_iter().map(|(id, g, _)| (id, g)).collect()
    }

    /// The targets as a full vector (unconstrained values take the given scores).
    pub fn target_vector(&self, base: &ValueVector) -> ValueVector {
        let mut out = *base;
        for (id, t) in &self.values {
            out.set(*id, t.target);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn profile(v: Value) -> Profile {
        Profile::from_spec(ProfileSpec::from_json(&v).unwrap(), 1, 0)
    }

    #[test]
    fn parses_with_defaults_and_round_trips() {
        let p = profile(json!({"values": {"benevolence": {"target": 0.8}}, "action": "rewrite"}));
        let t = p.values[&ValueId::Benevolence];
        assert_eq!(
            (t.target, t.weight, t.tolerance),
            (0.8, DEFAULT_WEIGHT, DEFAULT_TOLERANCE)
        );
        assert_eq!(p.action, Action::Rewrite);
        assert_eq!(p.fallback, Fallback::Original);
        let back = serde_json::to_value(&p).unwrap();
        let again = ProfileSpec::from_json(&back).unwrap();
        assert_eq!(again, ProfileSpec::from_profile(&p));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                json!({"values": {"kindness": {"target": 0.5}}}),
                "values.kindness",
            ),
            (
                json!({"values": {"power": {"target": 1.5}}}),
                "values.power.target",
            ),
            (
                json!({"values": {"power": {"target": 0.5, "weight": 0}}}),
                "values.power.weight",
            ),
            (
                json!({"values": {"power": {"target": 0.5, "tolerance": -0.1}}}),
                "values.power.tolerance",
            ),
            (
                json!({"values": {"power": {"weight": 2}}}),
                "values.power.target",
            ),
            (
                json!({"values": {"power": {"target": "high"}}}),
                "values.power.target",
            ),
            (
                json!({"values": {"power": {"target": 0.5, "colour": 1}}}),
                "values.power.colour",
            ),
            (json!({"action": "shout"}), "action"),
            (json!({"fallback": "rewrite"}), "fallback"),
            (json!({"stream_mode": "chunks"}), "stream_mode"),
            (json!({"steer": "yes"}), "steer"),
            (json!({"max_added_ms": -1}), "max_added_ms"),
            (json!({"max_added_ms": 600001}), "max_added_ms"),
            (json!({"max_added_ms": 1.5}), "max_added_ms"),
            (json!({"audit_sample": 0}), "audit_sample"),
            (json!({"audit_sample": 1.5}), "audit_sample"),
            (json!({"audit_sample": "half"}), "audit_sample"),
            (json!({"nonsense": 1}), "nonsense"),
            (json!([1]), "profile"),
        ];
        for (body, param) in cases {
            let e = ProfileSpec::from_json(&body).unwrap_err();
            assert_eq!(e.param, param, "{body}: {}", e.message);
        }
    }

    #[test]
    fn patch_merges_removes_and_requires_targets_for_new_values() {
        let base =
            ProfileSpec::from_json(&json!({"values": {"power": {"target": 0.2, "weight": 2}}}))
                .unwrap();
        let patch = ProfilePatch::from_json(&json!({"values": {"power": {"tolerance": 0.05}, "benevolence": {"target": 0.9}}, "action": "block"})).unwrap();
        let out = base.apply(&patch).unwrap();
        assert_eq!(
            out.values[&ValueId::Power],
            ValueTarget {
                target: 0.2,
                weight: 2.0,
                tolerance: 0.05
            }
        );
        assert_eq!(out.values[&ValueId::Benevolence].target, 0.9);
        assert_eq!(out.action, Action::Block);
        let removed = out
            .apply(&ProfilePatch::from_json(&json!({"values": {"power": null}})).unwrap())
            .unwrap();
        assert!(!removed.values.contains_key(&ValueId::Power));
        let e = base
            .apply(
                &ProfilePatch::from_json(&json!({"values": {"hedonism": {"weight": 1}}})).unwrap(),
            )
            .unwrap_err();
        assert_eq!(e.param, "values.hedonism.target");
    }

    #[test]
    fn distance_cosine_tolerance_and_gaps() {
        let p = profile(
            json!({"values": {"benevolence": {"target": 0.8, "tolerance": 0.1}, "power": {"target": 0.0, "weight": 4, "tolerance": 0.1}}}),
        );
        let mut v = ValueVector::default();
        v.set(ValueId::Benevolence, 0.8);
        assert!(p.within_tolerance(&v));
        assert!(p.distance(&v).abs() < 1e-6);
        assert!((p.cosine(&v) - 1.0).abs() < 1e-6);
        v.set(ValueId::Power, 0.5);
        // sqrt(4 * 0.25) = 1
        assert!((p.distance(&v) - 1.0).abs() < 1e-6);
        assert!(!p.within_tolerance(&v));
        // cosine: a=(0.8, 0.5) b=(0.8, 0) with weights (1, 4): dot=0.64, |a|=sqrt(0.64+1), |b|=0.8
        let expect = 0.64 / ((0.64f32 + 1.0).sqrt() * 0.8);
        assert!((p.cosine(&v) - expect).abs() < 1e-6);
        v.set(ValueId::Benevolence, 0.5);
        let gaps = p.gaps(&v);
        assert_eq!(
            gaps[0].0,
            ValueId::Power,
            "the weighted gap of power (4 * 0.5) leads"
        );
        assert!((gaps[0].1 + 0.5).abs() < 1e-6);
        assert!((gaps[1].1 - 0.3).abs() < 1e-6);
    }
}
