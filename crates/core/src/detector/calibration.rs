//! Calibration of the detector's value scores: the head was trained with positives up-weighted
//! on arguments that nearly all express some value, so its raw probabilities run high, also on
//! neutral text. Per value, Platt scaling (`sigmoid(a logit(p) + b)`) fitted on data the head
//! was not trained on turns a sentence's raw score into the probability that the value is
//! expressed; expected calibration error and reliability tables say how well that holds.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use visa_values::{ValueId, ValueVector};

/// One value's scaling.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Platt {
    pub a: f32,
    pub b: f32,
}

impl Platt {
    pub const IDENTITY: Platt = Platt { a: 1.0, b: 0.0 };

    pub fn apply(&self, p: f32) -> f32 {
        sigmoid(self.a * logit(p) + self.b)
    }
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// log(p / (1 - p)), with p kept away from 0 and 1.
pub fn logit(p: f32) -> f32 {
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    (p / (1.0 - p)).ln()
}

/// The calibration file (`assets/detector/head.calibration.json`): a scaling per value and what it
/// was fitted on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Calibration {
    pub method: String,
    pub values: BTreeMap<ValueId, Platt>,
    /// What the scaling was fitted on and how well it does there (free-form, for the card).
    #[serde(default)]
    pub fitted_on: serde_json::Value,
}

impl Calibration {
    pub fn identity() -> Self {
        Self {
            method: "identity".into(),
            values: ValueId::ALL.iter().map(|v| (*v, Platt::IDENTITY)).collect(),
            fitted_on: serde_json::Value::Null,
        }
    }

    pub fn apply(&self, raw: &ValueVector) -> ValueVector {
        let mut out = *raw;
        for v in ValueId::ALL {
            let p = self.values.get(&v).copied().unwrap_or(Platt::IDENTITY);
            out.set(v, p.apply(raw.get(v)));
        }
        out
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "{}: {e} (fit one with `visa-proxy calibrate-detector`)",
                path.display()
            )
        })?;
        let c: Self =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for (v, p) in &c.values {
            if !(p.a.is_finite() && p.b.is_finite()) {
                return Err(format!("{}: {v}: a and b must be finite", path.display()));
            }
        }
        Ok(c)
    }

    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Fit Platt scaling of raw probabilities `p` to 0/1 `labels` by Newton's method on the
/// log-loss, with Platt's smoothed targets ((n+ + 1) / (n+ + 2) and 1 / (n- + 2)) so a
/// separable sample does not drive the slope to infinity.
pub fn fit_platt(p: &[f32], labels: &[bool]) -> Platt {
    let pos = labels.iter().filter(|l| **l).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return Platt::IDENTITY;
    }
    let hi = (pos + 1.0) / (pos + 2.0);
    let lo = 1.0 / (neg + 2.0);
    let x: Vec<f64> = p.iter().map(|v| f64::from(logit(*v))).collect();
    let t: Vec<f64> = labels.iter().map(|l| if *l { hi } else { lo }).collect();
    let loss = |a: f64, b: f64| -> f64 {
        x.iter()
            .zip(&t)
            .map(|(xi, ti)| {
                let z = a * xi + b;
                // log(1 + e^z) - t z, stable for large |z|.
                z.max(0.0) + (-z.abs()).exp().ln_1p() - ti * z
            })
            .sum::<f64>()
    };
    let (mut a, mut b) = (1.0f64, 0.0f64);
    let mut current = loss(a, b);
    for _ in 0..100 {
        // Gradient and Hessian of the log-loss in (a, b), with a tiny ridge.
        let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 1e-9, 0.0, 1e-9);
        for (xi, ti) in x.iter().zip(&t) {
            let q = 1.0 / (1.0 + (-(a * xi + b)).exp());
            let d = q - ti;
            let w = (q * (1.0 - q)).max(1e-12);
            ga += d * xi;
            gb += d;
            haa += w * xi * xi;
            hab += w * xi;
            hbb += w;
        }
        let det = haa * hbb - hab * hab;
        if det.abs() < 1e-18 {
            break;
        }
        let da = (hbb * ga - hab * gb) / det;
        let db = (haa * gb - hab * ga) / det;
        // Backtracking: halve the Newton step until the loss goes down.
        let mut step = 1.0;
        let mut moved = false;
        while step > 1e-6 {
            let (na, nb) = (a - step * da, b - step * db);
            let l = loss(na, nb);
            if l < current {
                (a, b, current) = (na, nb, l);
                moved = true;
                break;
            }
            step /= 2.0;
        }
        if !moved || (step * da).abs().max((step * db).abs()) < 1e-9 {
            break;
        }
    }
    Platt {
        a: a as f32,
        b: b as f32,
    }
}

/// One bin of a reliability table.
#[derive(Debug, Clone, Serialize)]
pub struct Bin {
    pub lo: f32,
    pub hi: f32,
    pub count: usize,
    /// Mean predicted probability in the bin.
    pub predicted: f32,
    /// Share of positives in the bin.
    pub observed: f32,
}

/// `bins` equal-width bins over [0, 1].
pub fn reliability(p: &[f32], labels: &[bool], bins: usize) -> Vec<Bin> {
    let mut out: Vec<Bin> = (0..bins)
        .map(|i| Bin {
            lo: i as f32 / bins as f32,
            hi: (i + 1) as f32 / bins as f32,
            count: 0,
            predicted: 0.0,
            observed: 0.0,
        })
        .collect();
    for (x, l) in p.iter().zip(labels) {
        let k = ((x * bins as f32) as usize).min(bins - 1);
        out[k].count += 1;
        out[k].predicted += x;
        out[k].observed += f32::from(u8::from(*l));
    }
    for b in &mut out {
        if b.count > 0 {
            b.predicted /= b.count as f32;
            b.observed /= b.count as f32;
        }
    }
    out
}

/// Expected calibration error: the count-weighted mean gap between predicted and observed.
pub fn ece(p: &[f32], labels: &[bool], bins: usize) -> f32 {
    let n = p.len().max(1) as f32;
    reliability(p, labels, bins)
        .iter()
        .map(|b| b.count as f32 / n * (b.predicted - b.observed).abs())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platt_scaling_corrects_overconfident_scores() {
        // Scores that run high: the true rate of positives is about a quarter of what the raw
        // score says, everywhere.
        let mut p = Vec::new();
        let mut l = Vec::new();
        let mut seed: u64 = 42;
        for i in 0..4000 {
            let raw = 0.2 + 0.79 * (i % 100) as f32 / 100.0;
            p.push(raw);
            // Labels drawn with probability raw / 4 (a linear congruential generator).
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (seed >> 33) as f32 / (1u64 << 31) as f32;
            l.push(u < raw / 4.0);
        }
        let before = ece(&p, &l, 10);
        let fit = fit_platt(&p, &l);
        let q: Vec<f32> = p.iter().map(|x| fit.apply(*x)).collect();
        let after = ece(&q, &l, 10);
        assert!(before > 0.3, "{before}");
        assert!(after < 0.05, "{after} with {fit:?}");
        // Monotone: the order of scores is kept.
        assert!(fit.a > 0.0);
        assert!(q.windows(2).take(98).all(|w| w[0] <= w[1] + 1e-6));
    }

    #[test]
    fn identity_and_degenerate_samples() {
        assert!((Platt::IDENTITY.apply(0.3) - 0.3).abs() < 1e-5);
        assert_eq!(fit_platt(&[0.2, 0.9], &[true, true]), Platt::IDENTITY);
        let bins = reliability(&[0.05, 0.95, 0.97], &[false, true, false], 10);
        assert_eq!(bins[0].count, 1);
        assert_eq!(bins[9].count, 2);
        assert!((bins[9].observed - 0.5).abs() < 1e-6);
        let c = Calibration::identity();
        let mut v = ValueVector::default();
        v.set(ValueId::Power, 0.4);
        assert!((c.apply(&v).get(ValueId::Power) - 0.4).abs() < 1e-5);
    }
}
