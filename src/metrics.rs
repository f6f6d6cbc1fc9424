//! Prometheus metrics: requests by route/status/tenant, latency, upstream latency, in-flight
//! requests, load shedding, and the proxy's own overhead (total time minus upstream waiting).

use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteTenantLabels {
    pub route: String,
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EditLabels {
    pub kind: String,
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub tenant: String,
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ValueActionLabels {
    pub tenant: String,
    pub value: String,
    pub action: String,
}

fn stage_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 18,
    ))
}

fn latency_histogram() -> Histogram {
    // 100 us .. ~105 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 21,
    ))
}

fn overhead_histogram() -> Histogram {
    // 10 us .. ~10 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.00001, 2.0, 21,
    ))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteTenantLabels, Histogram, fn() -> Histogram>,
    overhead: Family<RouteLabels, Histogram, fn() -> Histogram>,
    upstream_duration: Family<UpstreamLabels, Histogram, fn() -> Histogram>,
    in_flight: Family<RouteLabels, Gauge<i64, AtomicI64>>,
    rejected: Family<ReasonLabels, Counter>,
    /// Audits measured after their answer was sent, by outcome.
    deferred_audits: Family<OutcomeLabels, Counter>,
    /// Shared with the encoder thread.
    pub encoder: crate::models::service::ServiceStats,
    /// Shared with the local language model.
    pub llm: crate::models::llm::LlmStats,
    /// Enforcement: time per stage (detect, rewrite, hold_back), actions per tenant and per
    /// value, characters held back before release.
    stage_duration: Family<StageLabels, Histogram, fn() -> Histogram>,
    actions: Family<ActionLabels, Counter>,
    value_actions: Family<ValueActionLabels, Counter>,
    held_back_chars: Counter,
    /// Time enforcement added (a JSON answer, a stream window, a buffered stream), its budget
    /// running out, and the edits made.
    added: Family<KindLabels, Histogram, fn() -> Histogram>,
    budget_exhausted: Family<TenantLabels, Counter>,
    edits: Family<EditLabels, Counter>,
    /// The same enforcement figures per tenant, as JSON for `GET /v1/stats`.
    pub stats: crate::stats::Stats,
    /// Admissions decided by a replica's own limits because Redis did not answer.
    pub limits_fallback: Counter,
    /// The decision log's queue: written, dropped (full), failed (the store).
    pub decisions: crate::decisions::DecisionStats,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("visa");
        let requests = Family::<RequestLabels, Counter>::default();
        let duration =
            Family::<RouteTenantLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            );
        let overhead = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            overhead_histogram as fn() -> Histogram,
        );
        let upstream_duration =
            Family::<UpstreamLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            );
        let in_flight = Family::<RouteLabels, Gauge<i64, AtomicI64>>::default();
        let rejected = Family::<ReasonLabels, Counter>::default();
        let deferred_audits = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "deferred_audits",
            "Audits measured after their answer was sent (sampled audits, and the full audit of a stream), by outcome: measured, dropped (queue full), skipped (profile no longer an audit), incomplete (stream did not finish), too_large (a stream over 2 MiB), failed",
            deferred_audits.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, method, status and tenant",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request to the end of the response body (streams included)",
            duration.clone(),
        );
        registry.register(
            "proxy_overhead_seconds",
            "Request time minus time spent waiting on upstreams: the proxy's own cost",
            overhead.clone(),
        );
        registry.register(
            "upstream_request_duration_seconds",
            "Time from sending a request to an upstream until its response headers, per attempt",
            upstream_duration.clone(),
        );
        registry.register(
            "http_requests_in_flight",
            "Requests being handled now, by route",
            in_flight.clone(),
        );
        registry.register(
            "rejected_requests",
            "Requests refused before reaching a handler (auth, limits, load shedding)",
            rejected.clone(),
        );
        let encoder = crate::models::service::ServiceStats::default();
        for (name, help, value) in [
            (
                "encoder_batches",
                "Forward passes of the sentence encoder",
                &encoder.batches,
            ),
            ("encoder_texts", "Texts (windows) encoded", &encoder.texts),
            (
                "encoder_rejected",
                "Encoder requests refused because the queue was full (429)",
                &encoder.rejected_full,
            ),
            (
                "encoder_cancelled",
                "Encoder requests skipped because their caller had gone",
                &encoder.skipped_cancelled,
            ),
        ] {
            registry.register(name, help, value.clone());
        }
        let llm = crate::models::llm::LlmStats::default();
        for (name, help, value) in [
            (
                "llm_requests",
                "Generations admitted by the local model",
                &llm.requests,
            ),
            (
                "llm_rejected",
                "Generations refused because llm.max_queue were in flight (429)",
                &llm.rejected_full,
            ),
            (
                "llm_cancelled",
                "Generations cancelled because their reader had gone",
                &llm.cancelled,
            ),
            (
                "llm_prompt_tokens",
                "Prompt tokens processed by the local model",
                &llm.prompt_tokens,
            ),
            (
                "llm_completion_tokens",
                "Tokens generated by the local model",
                &llm.completion_tokens,
            ),
        ] {
            registry.register(name, help, value.clone());
        }
        let stage_duration =
            Family::<StageLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                stage_histogram as fn() -> Histogram,
            );
        registry.register(
            "enforce_stage_seconds",
            "Time spent per enforcement stage: detect, rewrite, hold_back (stream windows)",
            stage_duration.clone(),
        );
        let actions = Family::<ActionLabels, Counter>::default();
        registry.register(
            "enforce_actions",
            "Answers (JSON choices and stream windows) by tenant and action: passed, rewritten, blocked, fallback",
            actions.clone(),
        );
        let value_actions = Family::<ValueActionLabels, Counter>::default();
        registry.register(
            "enforce_value_actions",
            "Per value outside tolerance: what was done (rewritten, blocked, fallback, audited)",
            value_actions.clone(),
        );
        let held_back_chars = Counter::default();
        registry.register(
            "enforce_held_back_chars",
            "Characters of streamed answers held back until their window was checked",
            held_back_chars.clone(),
        );
        let added = Family::<KindLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            stage_histogram as fn() -> Histogram,
        );
        registry.register(
            "enforce_added_seconds",
            "Time enforcement added, by kind: json (an answer), window (a stream window), buffer (a held stream), stream_end (a sentence appended at a stream's end)",
            added.clone(),
        );
        let budget_exhausted = Family::<TenantLabels, Counter>::default();
        registry.register(
            "enforce_budget_exhausted",
            "Enforcements whose time budget (max_added_ms) ran out before every edit site had its candidates",
            budget_exhausted.clone(),
        );
        let edits = Family::<EditLabels, Counter>::default();
        registry.register(
            "enforce_edits",
            "Sentence edits returned to clients, by kind (rewritten, dropped, inserted) and source (model, clause, drop, bank)",
            edits.clone(),
        );
        let limits_fallback = Counter::default();
        registry.register(
            "limits_fallback",
            "Admissions decided by this replica's own tenant limits because Redis (limits.backend = \"redis\") did not answer",
            limits_fallback.clone(),
        );
        let decisions = crate::decisions::DecisionStats::default();
        for (name, help, value) in [
            (
                "decisions_written",
                "Enforcement decisions written to the decision log",
                &decisions.written,
            ),
            (
                "decisions_dropped",
                "Enforcement decisions not logged because the log's queue was full",
                &decisions.dropped,
            ),
            (
                "decisions_failed",
                "Enforcement decisions lost because the store failed to write them",
                &decisions.failed,
            ),
        ] {
            registry.register(name, help, value.clone());
        }
        Self {
            decisions,
            limits_fallback,
            encoder,
            llm,
            added,
            budget_exhausted,
            edits,
            stage_duration,
            actions,
            value_actions,
            held_back_chars,
            stats: crate::stats::Stats::default(),
            registry,
            requests,
            duration,
            overhead,
            upstream_duration,
            in_flight,
            rejected,
            deferred_audits,
        }
    }

    pub fn finished(
        &self,
        route: &str,
        method: &str,
        status: u16,
        tenant: &str,
        total: Duration,
        upstream: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status,
                tenant: tenant.to_owned(),
            })
            .inc();
        self.duration
            .get_or_create(&RouteTenantLabels {
                route: route.to_owned(),
                tenant: tenant.to_owned(),
            })
            .observe(total.as_secs_f64());
        if !upstream.is_zero() {
            self.overhead
                .get_or_create(&RouteLabels {
                    route: route.to_owned(),
                })
                .observe(total.saturating_sub(upstream).as_secs_f64());
        }
    }

    pub fn upstream_attempt(&self, upstream: &str, outcome: &str, waited: Duration) {
        self.upstream_duration
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_owned(),
                outcome: outcome.to_owned(),
            })
            .observe(waited.as_secs_f64());
    }

    pub fn in_flight(&self, route: &str) -> Gauge<i64, AtomicI64> {
        self.in_flight
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .clone()
    }

    pub fn deferred_audit(&self, outcome: &str) {
        self.deferred_audits
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn rejected(&self, reason: &str) {
        self.rejected
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn stage(&self, tenant: &str, stage: &str, took: Duration) {
        self.stats.stage(tenant, stage, took);
        self.stage_duration
            .get_or_create(&StageLabels {
                stage: stage.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn action(&self, tenant: &str, action: &str, values: &[crate::values::ValueId]) {
        self.stats.action(tenant, action, values);
        self.actions
            .get_or_create(&ActionLabels {
                tenant: tenant.to_owned(),
                action: action.to_owned(),
            })
            .inc();
        for v in values {
            self.value_actions
                .get_or_create(&ValueActionLabels {
                    tenant: tenant.to_owned(),
                    value: v.as_str().to_owned(),
                    action: action.to_owned(),
                })
                .inc();
        }
    }

    pub fn added(&self, kind: &str, took: Duration) {
        self.added
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn budget_exhausted(&self, tenant: &str) {
        self.budget_exhausted
            .get_or_create(&TenantLabels {
                tenant: tenant.to_owned(),
            })
            .inc();
    }

    pub fn edit(&self, kind: &str, source: &str) {
        self.edits
            .get_or_create(&EditLabels {
                kind: kind.to_owned(),
                source: source.to_owned(),
            })
            .inc();
    }

    pub fn held_back(&self, tenant: &str, chars: usize) {
        self.stats.held_back(tenant, chars);
        self.held_back_chars.inc_by(chars as u64);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The figures of `visa_core::enforce`'s decisions, recorded here.
impl visa_core::enforce::EnforceMetrics for Metrics {
    fn stage(&self, tenant: &str, stage: &str, took: Duration) {
        Metrics::stage(self, tenant, stage, took);
    }
    fn action(&self, tenant: &str, action: &str, values: &[crate::values::ValueId]) {
        Metrics::action(self, tenant, action, values);
    }
    fn edit(&self, kind: &str, source: &str) {
        Metrics::edit(self, kind, source);
    }
    fn budget_exhausted(&self, tenant: &str) {
        Metrics::budget_exhausted(self, tenant);
    }
}
