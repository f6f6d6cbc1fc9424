//! Training and held-out items for the rewriter: source texts (the premises of Touché23's
//! training split, or a user's JSONL of `{text, target}`) with target vectors made the way the
//! paper makes them from a translated instruction: the source's detected vector shifted on one
//! or two values, up or down, by a small to large step.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::sample::Rng;
use crate::values::profile::{Action, Fallback, Profile, ProfileSpec, StreamMode, ValueTarget};
use crate::values::{ValueId, ValueVector};

/// Shift sizes drawn for targets.
pub const STEPS: [f32; 3] = [0.2, 0.35, 0.5];
/// Tolerance of every constrained value in a generated target.
pub const TOLERANCE: f32 = 0.1;

/// One item: a text and the values it should move to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Item {
    pub id: String,
    pub text: String,
    /// Target scores of the constrained values.
    pub target: BTreeMap<ValueId, f32>,
}

impl Item {
    /// The profile the scorer and the prompt use for this item.
    pub fn profile(&self) -> Profile {
        let values = self
            .target
            .iter()
            .map(|(v, t)| {
                (
                    *v,
                    ValueTarget {
                        target: *t,
                        weight: 1.0,
                        tolerance: TOLERANCE,
                    },
                )
            })
            .collect();
        Profile::from_spec(
            ProfileSpec {
                values,
                action: Action::Rewrite,
                fallback: Fallback::Original,
                stream_mode: StreamMode::Window,
                steer: false,
                max_added_ms: None,
                audit_sample: None,
                ..ProfileSpec::default()
            },
            0,
            0,
        )
    }
}

/// Source texts of a Touché23 split: unique premises between `min` and `max` characters, in a
/// seeded random order.
pub fn touche_sources(
    dir: &Path,
    split: &str,
    min: usize,
    max: usize,
    seed: u64,
) -> anyhow::Result<Vec<(String, String)>> {
    let args = crate::detector::data::load_split(dir, split).map_err(|e| anyhow::anyhow!(e))?;
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<(String, String)> = args
        .into_iter()
        .filter(|a| (min..=max).contains(&a.premise.chars().count()))
        .filter(|a| seen.insert(a.premise.clone()))
        .map(|a| (a.id, a.premise))
        .collect();
    shuffle(&mut out, seed);
    Ok(out)
}

/// Fisher-Yates with the seeded generator.
pub fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut rng = Rng::new(seed);
    for i in (1..v.len()).rev() {
        let j = (rng.next_f64() * (i + 1) as f64) as usize;
        v.swap(i, j.min(i));
    }
}

/// A target for a text whose detected vector is `detected`: one or two values shifted by a
/// step from [`STEPS`], up when there is room above and down otherwise (or at random when both
/// have room), so the target is always at least a step away from where the text is.
pub fn make_target(detected: &ValueVector, rng: &mut Rng) -> BTreeMap<ValueId, f32> {
    let count = if rng.next_f64() < 0.5 { 1 } else { 2 };
    let mut ids: Vec<ValueId> = ValueId::ALL.to_vec();
    let mut out = BTreeMap::new();
    while out.len() < count && !ids.is_empty() {
        let k = ((rng.next_f64() * ids.len() as f64) as usize).min(ids.len() - 1);
        let v = ids.swap_remove(k);
        let step = STEPS[((rng.next_f64() * STEPS.len() as f64) as usize).min(STEPS.len() - 1)];
        let d = detected.get(v);
        let up_ok = d + step <= 1.0;
        let down_ok = d - step >= 0.0;
        let up = match (up_ok, down_ok) {
            (true, true) => rng.next_f64() < 0.5,
            (true, false) => true,
            (false, true) => false,
            (false, false) => d < 0.5,
        };
        let t = if up { d + step } else { d - step };
        out.insert(v, (t.clamp(0.0, 1.0) * 100.0).round() / 100.0);
    }
    out
}

/// A user's items: one JSON object per line, `{"text": "...", "target": {"benevolence": 0.8}}`
/// (an `id` is optional).
pub fn read_jsonl(path: &Path) -> anyhow::Result<Vec<Item>> {
    #[derive(Deserialize)]
    struct Line {
        id: Option<String>,
        text: String,
        target: BTreeMap<ValueId, f32>,
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let l: Line = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), n + 1))?;
        anyhow::ensure!(
            !l.target.is_empty() && l.target.values().all(|t| (0.0..=1.0).contains(t)),
            "{}:{}: 'target' needs at least one value with a score in [0, 1]",
            path.display(),
            n + 1
        );
        out.push(Item {
            id: l
                .id
                .unwrap_or_else(|| format!("{}:{}", path.display(), n + 1)),
            text: l.text,
            target: l.target,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_move_one_or_two_values_by_a_step() {
        let mut rng = Rng::new(3);
        let mut v = ValueVector::default();
        v.0[4] = 0.9; // power
        let mut sizes = [0; 3];
        for _ in 0..200 {
            let t = make_target(&v, &mut rng);
            sizes[t.len()] += 1;
            for (id, target) in &t {
                let moved = (target - v.get(*id)).abs();
                assert!(
                    STEPS.iter().any(|s| (moved - s).abs() < 0.011),
                    "{id:?} {moved}"
                );
                assert!((0.0..=1.0).contains(target));
            }
            if let Some(p) = t.get(&ValueId::Power) {
                assert!(*p < 0.9, "no room above 0.9 for a step: {p}");
            }
        }
        assert!(sizes[1] > 50 && sizes[2] > 50, "{sizes:?}");
    }

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let mut a: Vec<u32> = (0..50).collect();
        let mut b = a.clone();
        shuffle(&mut a, 9);
        shuffle(&mut b, 9);
        assert_eq!(a, b);
        assert_ne!(a, (0..50).collect::<Vec<_>>());
        a.sort();
        assert_eq!(a, (0..50).collect::<Vec<_>>());
    }
}
