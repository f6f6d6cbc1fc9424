//! Per-tenant enforcement statistics as JSON (`GET /v1/stats`, read by the web console): what
//! was done to answers per tenant and per value, and how long each stage took (count, mean and
//! percentiles over recent samples). `/metrics` holds the same counts for Prometheus; this
//! keeps them per tenant so a tenant key sees only its own.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use dashmap::DashMap;
use serde::Serialize;

/// Most recent samples kept per tenant and stage for the percentiles.
const RECENT: usize = 512;

#[derive(Default)]
struct Samples {
    count: u64,
    sum_s: f64,
    recent: VecDeque<f64>,
}

impl Samples {
    fn add(&mut self, s: f64) {
        self.count += 1;
        self.sum_s += s;
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(s);
    }

    fn summary(&self) -> StageSummary {
        let mut sorted: Vec<f64> = self.recent.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let pct = |p: f64| -> f64 {
            if sorted.is_empty() {
                return 0.0;
            }
            let i = ((sorted.len() - 1) as f64 * p).round() as usize;
            round_ms(sorted[i.min(sorted.len() - 1)])
        };
        StageSummary {
            count: self.count,
            mean_ms: if self.count == 0 {
                0.0
            } else {
                round_ms(self.sum_s / self.count as f64)
            },
            p50_ms: pct(0.5),
            p95_ms: pct(0.95),
            max_ms: round_ms(sorted.last().copied().unwrap_or(0.0)),
        }
    }
}

fn round_ms(s: f64) -> f64 {
    (s * 1e4).round() / 10.0
}

#[derive(Default)]
struct TenantStats {
    actions: BTreeMap<String, u64>,
    values: BTreeMap<String, BTreeMap<String, u64>>,
    stages: BTreeMap<String, Samples>,
    held_back_chars: u64,
}

/// Time spent in one stage.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct StageSummary {
    pub count: u64,
    pub mean_ms: f64,
    /// Over the most recent samples (up to 512).
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub max_ms: f64,
}

/// One tenant's figures.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct TenantSummary {
    pub tenant_id: String,
    /// Answers (JSON choices and stream windows) by action: passed, rewritten, fallback,
    /// blocked; `audited` counts answers outside tolerance that an audit profile let through.
    pub actions: BTreeMap<String, u64>,
    /// Per value outside tolerance: what was done.
    pub values: BTreeMap<String, BTreeMap<String, u64>>,
    /// Time per enforcement stage (detect, rewrite, hold_back, hold_back_wait).
    pub stages: BTreeMap<String, StageSummary>,
    pub held_back_chars: u64,
}

#[derive(Default)]
pub struct Stats {
    tenants: DashMap<String, TenantStats>,
}

impl Stats {
    fn with<R>(&self, tenant: &str, f: impl FnOnce(&mut TenantStats) -> R) -> R {
        if let Some(mut t) = self.tenants.get_mut(tenant) {
            return f(&mut t);
        }
        f(&mut self.tenants.entry(tenant.to_owned()).or_default())
    }

    pub fn action(&self, tenant: &str, action: &str, values: &[crate::values::ValueId]) {
        self.with(tenant, |t| {
            *t.actions.entry(action.to_owned()).or_default() += 1;
            for v in values {
                *t.values
                    .entry(v.as_str().to_owned())
                    .or_default()
                    .entry(action.to_owned())
                    .or_default() += 1;
            }
        });
    }

    pub fn stage(&self, tenant: &str, stage: &str, took: Duration) {
        self.with(tenant, |t| {
            t.stages
                .entry(stage.to_owned())
                .or_default()
                .add(took.as_secs_f64());
        });
    }

    pub fn held_back(&self, tenant: &str, chars: usize) {
        self.with(tenant, |t| t.held_back_chars += chars as u64);
    }

    /// The figures of one tenant (zeros when nothing was recorded yet).
    pub fn tenant(&self, tenant: &str) -> TenantSummary {
        let empty = TenantStats::default();
        let entry = self.tenants.get(tenant);
        let t = entry.as_deref().unwrap_or(&empty);
        TenantSummary {
            tenant_id: tenant.to_owned(),
            actions: t.actions.clone(),
            values: t.values.clone(),
            stages: t
                .stages
                .iter()
                .map(|(k, s)| (k.clone(), s.summary()))
                .collect(),
            held_back_chars: t.held_back_chars,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::ValueId;

    #[test]
    fn counts_per_tenant_and_value_and_summarises_stages() {
        let s = Stats::default();
        s.action("a", "rewritten", &[ValueId::Power, ValueId::Benevolence]);
        s.action("a", "rewritten", &[ValueId::Power]);
        s.action("a", "passed", &[]);
        s.action("b", "blocked", &[ValueId::Power]);
        for ms in [10, 20, 30, 40, 1000] {
            s.stage("a", "detect", Duration::from_millis(ms));
        }
        s.held_back("a", 120);
        let a = s.tenant("a");
        assert_eq!(a.actions["rewritten"], 2);
        assert_eq!(a.actions["passed"], 1);
        assert!(!a.actions.contains_key("blocked"), "b's counts stay b's");
        assert_eq!(a.values["power"]["rewritten"], 2);
        assert_eq!(a.values["benevolence"]["rewritten"], 1);
        let d = &a.stages["detect"];
        assert_eq!(d.count, 5);
        assert_eq!(d.mean_ms, 220.0);
        assert_eq!(d.p50_ms, 30.0);
        assert_eq!(d.max_ms, 1000.0);
        assert_eq!(a.held_back_chars, 120);
        assert_eq!(s.tenant("b").values["power"]["blocked"], 1);
        let none = s.tenant("c");
        assert!(none.actions.is_empty() && none.stages.is_empty());
    }

    #[test]
    fn keeps_only_recent_samples_for_percentiles() {
        let mut x = Samples::default();
        for _ in 0..RECENT {
            x.add(1.0);
        }
        for _ in 0..RECENT {
            x.add(0.001);
        }
        let s = x.summary();
        assert_eq!(s.count, 2 * RECENT as u64);
        assert_eq!(s.p95_ms, 1.0);
        assert!((s.mean_ms - 500.5).abs() < 0.01);
    }
}
