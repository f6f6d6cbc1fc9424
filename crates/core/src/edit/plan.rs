//! The edit plan: from an answer's per-sentence value scores and the tenant's profile, the
//! places to edit, strongest gap first. An answer expresses a value as much as its most
//! value-laden sentence (the detector's aggregate is the maximum), so a value above its band is
//! lowered where it is, in every sentence over the band, and a value below its band is raised
//! in one place: the sentence closest to it, or one inserted sentence.

use serde::Serialize;

use visa_values::profile::Profile;
use visa_values::{ValueId, ValueVector};

/// What a site asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteKind {
    /// A sentence carries values above their bands: rewrite it without them, or drop it.
    Lower,
    /// A value is below its band in the whole answer: rewrite the sentence closest to it
    /// toward it, or insert a sentence that expresses it.
    Raise,
}

/// One place to edit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Site {
    pub kind: SiteKind,
    /// The sentence to edit (lower) or the one closest to the value (raise); `None` when no
    /// sentence was scored.
    pub sentence: Option<usize>,
    /// The values the site moves, most weighted gap first.
    pub values: Vec<ValueId>,
    /// Weighted distance outside the band; sites run in decreasing order of it.
    pub priority: f32,
}

/// The accepted range of a constrained value: target minus and plus tolerance.
pub fn band(profile: &Profile, v: ValueId) -> Option<(f32, f32)> {
    profile
        .values
        .get(&v)
        .map(|t| (t.target - t.tolerance, t.target + t.tolerance))
}

/// Per value, the maximum over the sentences (and over `prior`, the text released before).
pub fn aggregate(sentences: &[ValueVector], prior: Option<&ValueVector>) -> ValueVector {
    let mut out = prior.copied().unwrap_or_default();
    for s in sentences {
        for (a, b) in out.0.iter_mut().zip(s.0) {
            *a = a.max(b);
        }
    }
    out
}

/// The sites for an answer whose sentences score `sentences`. `raise` = false plans only the
/// lowering sites (a stream window, whose missing values are added at the end of the stream).
pub fn plan(
    profile: &Profile,
    sentences: &[ValueVector],
    prior: Option<&ValueVector>,
    raise: bool,
) -> Vec<Site> {
    let whole = aggregate(sentences, prior);
    let mut lower: Vec<Site> = Vec::new();
    let mut raises: Vec<Site> = Vec::new();
    for (v, t) in &profile.values {
        let (lo, hi) = (t.target - t.tolerance, t.target + t.tolerance);
        let score = whole.get(*v);
        if score > hi + 1e-6 {
            for (i, s) in sentences.iter().enumerate() {
                let x = s.get(*v);
                if x > hi + 1e-6 {
                    let gap = t.weight * (x - hi);
                    match lower.iter_mut().find(|site| site.sentence == Some(i)) {
                        Some(site) => {
                            site.values.push(*v);
                            site.priority += gap;
                        }
                        None => lower.push(Site {
                            kind: SiteKind::Lower,
                            sentence: Some(i),
                            values: vec![*v],
                            priority: gap,
                        }),
                    }
                }
            }
        } else if raise && score < lo - 1e-6 {
            let closest = sentences
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.get(*v).total_cmp(&b.1.get(*v)))
                .map(|(i, _)| i);
            raises.push(Site {
                kind: SiteKind::Raise,
                sentence: closest,
                values: vec![*v],
                priority: t.weight * (lo - score),
            });
        }
    }
    // Within a lowering site, the value furthest over its band first.
    for site in &mut lower {
        if let Some(i) = site.sentence {
            site.values.sort_by(|a, b| {
                let over = |v: &ValueId| {
                    let t = profile.values[v];
                    t.weight * (sentences[i].get(*v) - t.target - t.tolerance)
                };
                over(b).total_cmp(&over(a))
            });
        }
    }
    let mut sites: Vec<Site> = lower.into_iter().chain(raises).collect();
    sites.sort_by(|a, b| b.priority.total_cmp(&a.priority));
    sites
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use visa_values::profile::ProfileSpec;

    fn vector(pairs: &[(ValueId, f32)]) -> ValueVector {
        let mut v = ValueVector::default();
        for (id, x) in pairs {
            v.set(*id, *x);
        }
        v
    }

    #[test]
    fn lowers_every_sentence_over_the_band_and_raises_once() {
        let spec = ProfileSpec::from_json(&json!({
            "values": {"power": {"target": 0.1, "tolerance": 0.15, "weight": 2},
                       "benevolence": {"target": 0.9, "tolerance": 0.1}},
            "action": "rewrite"
        }))
        .unwrap();
        let p = Profile::from_spec(spec, 1, 0);
        use ValueId::{Benevolence, Power};
        let s = [
            vector(&[(Power, 0.1), (Benevolence, 0.3)]),
            vector(&[(Power, 0.9), (Benevolence, 0.1)]),
            vector(&[(Power, 0.5), (Benevolence, 0.6)]),
        ];
        let sites = plan(&p, &s, None, true);
        assert_eq!(sites.len(), 3, "{sites:?}");
        // Power weighs 2: sentence 1 (0.9 - 0.25) x 2 = 1.3 first, then 2 ((0.5 - 0.25) x 2 =
        // 0.5), then raising benevolence (0.8 - 0.6 = 0.2) at its closest sentence, 2.
        assert_eq!(
            (sites[0].kind, sites[0].sentence),
            (SiteKind::Lower, Some(1))
        );
        assert_eq!(
            (sites[1].kind, sites[1].sentence),
            (SiteKind::Lower, Some(2))
        );
        assert_eq!(
            (sites[2].kind, sites[2].sentence),
            (SiteKind::Raise, Some(2))
        );
        assert!((sites[0].priority - 1.3).abs() < 1e-5);
        // A stream window plans no raise; text released before counts toward the maximum.
        assert!(
            plan(&p, &s, None, false)
                .iter()
                .all(|x| x.kind == SiteKind::Lower)
        );
        let prior = vector(&[(Benevolence, 0.85)]);
        assert!(
            plan(&p, &s, Some(&prior), true)
                .iter()
                .all(|x| x.kind == SiteKind::Lower)
        );
        // Within tolerance: nothing to do.
        let fine = [vector(&[(Power, 0.2), (Benevolence, 0.85)])];
        assert!(plan(&p, &fine, None, true).is_empty());
    }
}
