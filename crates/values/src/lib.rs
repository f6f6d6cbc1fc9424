//! Schwartz's 10 basic values, value vectors, tenant value profiles, and the one definition of
//! distance, cosine and "within tolerance" that every part of the proxy uses.

pub mod fields;
pub mod profile;
pub mod sentences;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use profile::{Action, Fallback, Profile, ProfilePatch, StreamMode, ValueTarget};

/// One of the 10 basic values, in Schwartz's circumplex order (neighbours are adjacent,
/// opposites are five steps apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ValueId {
    SelfDirection,
    Stimulation,
    Hedonism,
    Achievement,
    Power,
    Security,
    Conformity,
    Tradition,
    Benevolence,
    Universalism,
}

pub const N_VALUES: usize = 10;

impl ValueId {
    pub const ALL: [ValueId; N_VALUES] = [
        ValueId::SelfDirection,
        ValueId::Stimulation,
        ValueId::Hedonism,
        ValueId::Achievement,
        ValueId::Power,
        ValueId::Security,
        ValueId::Conformity,
        ValueId::Tradition,
        ValueId::Benevolence,
        ValueId::Universalism,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// The stable snake_case id used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ValueId::SelfDirection => "self_direction",
            ValueId::Stimulation => "stimulation",
            ValueId::Hedonism => "hedonism",
            ValueId::Achievement => "achievement",
            ValueId::Power => "power",
            ValueId::Security => "security",
            ValueId::Conformity => "conformity",
            ValueId::Tradition => "tradition",
            ValueId::Benevolence => "benevolence",
            ValueId::Universalism => "universalism",
        }
    }

    /// The name used in the literature and in the Touché23 mapping.
    pub fn display_name(self) -> &'static str {
        match self {
            ValueId::SelfDirection => "Self-Direction",
            ValueId::Stimulation => "Stimulation",
            ValueId::Hedonism => "Hedonism",
            ValueId::Achievement => "Achievement",
            ValueId::Power => "Power",
            ValueId::Security => "Security",
            ValueId::Conformity => "Conformity",
            ValueId::Tradition => "Tradition",
            ValueId::Benevolence => "Benevolence",
            ValueId::Universalism => "Universalism",
        }
    }

    /// A short definition (after Schwartz 1992/2012, in our words).
    pub fn definition(self) -> &'static str {
        match self {
            ValueId::SelfDirection => {
                "Independent thought and action: choosing, creating, exploring; freedom and curiosity."
            }
            ValueId::Stimulation => {
                "Excitement, novelty and challenge in life; variety and daring."
            }
            ValueId::Hedonism => "Pleasure and sensuous gratification for oneself; enjoying life.",
            ValueId::Achievement => {
                "Personal success through demonstrating competence by social standards; ambition."
            }
            ValueId::Power => {
                "Social status and prestige, control or dominance over people and resources; wealth."
            }
            ValueId::Security => {
                "Safety, harmony and stability of society, of relationships and of self; health and order."
            }
            ValueId::Conformity => {
                "Restraint of actions likely to upset or harm others or violate social norms and rules."
            }
            ValueId::Tradition => {
                "Respect for and acceptance of the customs and ideas of one's culture or religion."
            }
            ValueId::Benevolence => {
                "Preserving and enhancing the welfare of people one is close to; caring, honesty, loyalty."
            }
            ValueId::Universalism => {
                "Understanding, tolerance and protection of the welfare of all people and of nature; fairness."
            }
        }
    }
}

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Read as a string and parsed, not as an enum, so that an unknown name inside a map keeps its
/// key in the error's path (`values.kindness`, not `values.?`) and gets the list of names.
impl<'de> Deserialize<'de> for ValueId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for ValueId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ValueId::ALL
            .iter()
            .copied()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown value {s:?}; the values are {}",
                    ValueId::ALL.map(ValueId::as_str).join(", ")
                )
            })
    }
}

/// An f32 as the f64 with the same shortest decimal form (0.8f32 -> 0.8, not
/// 0.800000011920929), so numbers read the same whichever way JSON is produced.
pub fn short_f64(x: f32) -> f64 {
    format!("{x}").parse().unwrap_or(f64::from(x))
}

pub fn ser_short<S: serde::Serializer>(x: &f32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(short_f64(*x))
}

/// A score in [0, 1] per value: how strongly a text expresses it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ValueVector(pub [f32; N_VALUES]);

impl ValueVector {
    pub fn get(&self, v: ValueId) -> f32 {
        self.0[v.index()]
    }
    pub fn set(&mut self, v: ValueId, score: f32) {
        self.0[v.index()] = score;
    }
}

impl Serialize for ValueVector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(N_VALUES))?;
        for v in ValueId::ALL {
            // Four decimals are plenty for a calibrated probability and keep bodies small.
            m.serialize_entry(v.as_str(), &short_f64((self.get(v) * 1e4).round() / 1e4))?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for ValueVector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = std::collections::BTreeMap::<ValueId, f32>::deserialize(d)?;
        let mut out = ValueVector::default();
        for (k, v) in map {
            out.set(k, v);
        }
        Ok(out)
    }
}

impl utoipa::PartialSchema for ValueVector {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let mut obj = utoipa::openapi::ObjectBuilder::new()
            .description(Some("A score in [0, 1] per value (snake_case id -> score)"));
        for v in ValueId::ALL {
            obj = obj.property(
                v.as_str(),
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::Number)
                    .minimum(Some(0.0))
                    .maximum(Some(1.0)),
            );
        }
        utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(obj.build()))
    }
}

impl utoipa::ToSchema for ValueVector {}
