//! Paired comparison of two rewriters evaluated on the same items: the mean difference per
//! item of each VISA measure with a seeded 95% paired-bootstrap interval, so a table row is
//! read against the noise of a few dozen items rather than on its own.

use serde::Serialize;

use super::item::{ItemResult, JSR_CONSISTENCY, JSR_L2, STRICT_CLOSED, STRICT_CONSISTENCY};
use crate::grpo::sample::Rng;

/// Bootstrap resamples per measure.
pub const DRAWS: usize = 5000;

/// One measure's paired difference (other minus baseline).
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    pub measure: &'static str,
    /// Mean difference per item.
    pub mean: f32,
    /// 2.5th and 97.5th percentiles of the resampled means.
    pub low: f32,
    pub high: f32,
    /// Shown in percentage points (a share or a rate) rather than as a raw number.
    pub points: bool,
}

impl Difference {
    /// Whether the interval leaves 0 out.
    pub fn beyond_noise(&self) -> bool {
        self.low > 0.0 || self.high < 0.0
    }
}

/// A rewriter against the baseline on the same items.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub rewriter: String,
    pub baseline: String,
    pub items: usize,
    pub differences: Vec<Difference>,
}

type Measure = (&'static str, bool, fn(&ItemResult) -> f32);

const MEASURES: [Measure; 6] = [
    ("distance closed", true, |x| x.closed),
    ("consistency", false, |x| x.consistency),
    ("JSR", true, |x| {
        (x.l2 < JSR_L2 && x.consistency > JSR_CONSISTENCY) as u8 as f32
    }),
    ("strict", true, |x| {
        (x.consistency > STRICT_CONSISTENCY && x.closed >= STRICT_CLOSED) as u8 as f32
    }),
    ("shield accepts", true, |x| x.shield_passed as u8 as f32),
    ("2nd scorer closed", true, |x| x.second_closed),
];

/// The paired differences of `other` from `baseline`, which must hold the same items in the
/// same order.
pub fn compare(
    baseline: (&str, &[ItemResult]),
    other: (&str, &[ItemResult]),
    draws: usize,
    seed: u64,
) -> anyhow::Result<Comparison> {
    let (b, o) = (baseline.1, other.1);
    if b.len() != o.len() || b.iter().zip(o).any(|(x, y)| x.id != y.id) {
        anyhow::bail!(
            "{} and {} were not evaluated on the same items",
            baseline.0,
            other.0
        );
    }
    let mut rng = Rng::new(seed);
    let differences = MEASURES
        .iter()
        .map(|(measure, points, f)| {
            let d: Vec<f32> = b.iter().zip(o).map(|(x, y)| f(y) - f(x)).collect();
            let (mean, low, high) = bootstrap(&d, draws, &mut rng);
            Difference {
                measure,
                mean,
                low,
                high,
                points: *points,
            }
        })
        .collect();
    Ok(Comparison {
        rewriter: other.0.to_owned(),
        baseline: baseline.0.to_owned(),
        items: b.len(),
        differences,
    })
}

/// The mean of `d` and the percentile interval of the means of `draws` resamples with
/// replacement.
fn bootstrap(d: &[f32], draws: usize, rng: &mut Rng) -> (f32, f32, f32) {
    let n = d.len();
    if n == 0 {
        return (0.0, 0.0, 0.0);
    }
    let mean = d.iter().sum::<f32>() / n as f32;
    let mut means: Vec<f32> = (0..draws.max(1))
        .map(|_| {
            (0..n)
                .map(|_| d[((rng.next_f64() * n as f64) as usize).min(n - 1)])
                .sum::<f32>()
                / n as f32
        })
        .collect();
    means.sort_by(f32::total_cmp);
    let at = |q: f64| means[((q * means.len() as f64) as usize).min(means.len() - 1)];
    (mean, at(0.025), at(0.975))
}

/// The markdown table: one row per comparison, each cell `mean [low, high]`, in bold where
/// the interval leaves 0 out.
pub fn table(rows: &[Comparison]) -> String {
    let mut s = String::from("| rewriter vs baseline | items |");
    for (m, ..) in MEASURES {
        s.push_str(&format!(" {m} |"));
    }
    s.push_str("\n|---|---|");
    s.push_str(&"---|".repeat(MEASURES.len()));
    s.push('\n');
    for c in rows {
        s.push_str(&format!(
            "| {} vs {} | {} |",
            c.rewriter, c.baseline, c.items
        ));
        for d in &c.differences {
            let (k, unit, p) = if d.points {
                (100.0, " pt", 1)
            } else {
                (1.0, "", 3)
            };
            let cell = format!(
                "{:+.p$}{unit} [{:+.p$}, {:+.p$}]",
                k * d.mean,
                k * d.low,
                k * d.high
            );
            if d.beyond_noise() {
                s.push_str(&format!(" **{cell}** |"));
            } else {
                s.push_str(&format!(" {cell} |"));
            }
        }
        s.push('\n');
    }
    s
}

/// Every rewriter of an evaluation against the first (the prompt-only base).
pub fn against_first(
    results: &[(String, Vec<ItemResult>)],
    seed: u64,
) -> anyhow::Result<Vec<Comparison>> {
    let Some((base_name, base)) = results.first() else {
        return Ok(Vec::new());
    };
    results[1..]
        .iter()
        .map(|(name, r)| compare((base_name, base), (name, r), DRAWS, seed))
        .collect()
}

/// `visa-proxy compare-eval FILE...`: the paired table of saved `eval.json` files (their
/// rewriters in order, e.g. the same items evaluated with different `--candidates/--rounds`),
/// each against the `baseline`-th.
pub fn run(files: &[std::path::PathBuf], baseline: usize, seed: u64) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct Detail {
        rewriter: String,
        items: Vec<ItemResult>,
    }
    #[derive(serde::Deserialize)]
    struct Saved {
        details: Vec<Detail>,
    }
    let mut details = Vec::new();
    for file in files {
        let saved: Saved = serde_json::from_slice(&std::fs::read(file)?).map_err(|e| {
            anyhow::anyhow!("{}: not an eval-rewriter eval.json: {e}", file.display())
        })?;
        let tag = if files.len() > 1 {
            format!(" ({})", file.display())
        } else {
            String::new()
        };
        details.extend(saved.details.into_iter().map(|d| Detail {
            rewriter: format!("{}{tag}", d.rewriter),
            items: d.items,
        }));
    }
    let Some(base) = details.get(baseline) else {
        anyhow::bail!(
            "the files hold {} rewriters; there is no rewriter {baseline}",
            details.len()
        );
    };
    let rows = details
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != baseline)
        .map(|(_, d)| {
            compare(
                (&base.rewriter, &base.items),
                (&d.rewriter, &d.items),
                DRAWS,
                seed,
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    println!("{}", table(&rows));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, closed: f32, consistency: f32, passed: bool) -> ItemResult {
        ItemResult {
            id: id.into(),
            text: "t".into(),
            target: Default::default(),
            rewrite: "u".into(),
            rejected: None,
            l2_before: 0.5,
            l2: 0.5 * (1.0 - closed),
            cosine: 0.5,
            closed,
            consistency,
            shield_passed: passed,
            length_ratio: 1.0,
            generate_ms: 1.0,
            second_l2_before: 0.5,
            second_l2: 0.5,
            second_closed: 0.0,
            kind: "single".into(),
            edits: 0,
            applied: Vec::new(),
            added_ms: 1.0,
        }
    }

    #[test]
    fn a_constant_gain_has_a_point_interval_and_noise_straddles_zero() {
        let base: Vec<_> = (0..20)
            .map(|i| item(&i.to_string(), 0.1, 0.5, false))
            .collect();
        // Every item closes 30 points more and the shield accepts every one.
        let better: Vec<_> = (0..20)
            .map(|i| item(&i.to_string(), 0.4, 0.5, true))
            .collect();
        let c = compare(("base", &base), ("better", &better), 500, 1).unwrap();
        let closed = &c.differences[0];
        assert!((closed.mean - 0.3).abs() < 1e-5, "{closed:?}");
        assert!((closed.low - 0.3).abs() < 1e-5 && (closed.high - 0.3).abs() < 1e-5);
        assert!(closed.beyond_noise());
        let accepts = &c.differences[4];
        assert_eq!((accepts.mean, accepts.low, accepts.high), (1.0, 1.0, 1.0));
        // Consistency did not change: a zero-width interval at 0 is not beyond noise.
        assert!(!c.differences[1].beyond_noise());

        // Half the items gain 0.15 of consistency, half lose it (JSR unchanged): the mean is
        // 0, the interval holds it and is about +-2 standard errors wide (0.15 / sqrt(20) =
        // 0.034 each side).
        let noisy: Vec<_> = (0..20)
            .map(|i| {
                item(
                    &i.to_string(),
                    0.1,
                    if i % 2 == 0 { 0.65 } else { 0.35 },
                    false,
                )
            })
            .collect();
        let c = compare(("base", &base), ("noisy", &noisy), 2000, 1).unwrap();
        let d = &c.differences[1];
        assert!(d.mean.abs() < 1e-6 && !d.beyond_noise(), "{d:?}");
        assert!(d.low > -0.1 && d.low < -0.035, "{d:?}");
        assert!(d.high > 0.035 && d.high < 0.1, "{d:?}");

        let md = table(&[c]);
        assert!(md.contains("| noisy vs base | 20 |"), "{md}");
        assert!(!md.contains("**"), "{md}");
    }

    #[test]
    fn different_items_are_refused() {
        let a = vec![item("1", 0.1, 0.5, true)];
        let b = vec![item("2", 0.1, 0.5, true)];
        assert!(compare(("a", &a), ("b", &b), 10, 1).is_err());
    }
}
