//! The decision log: a record of what enforcement did to a tenant's answers and why (action,
//! edits, scores before and after, integrity, timings; the texts only as the profile says),
//! written to the profile store's database off the request path through a bounded queue that
//! drops and counts rather than ever holding a response back.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::store::ProfileStore;
use crate::values::profile::{LogText, Profile};

/// One enforcement decision, as stored and as `GET /v1/decisions` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DecisionRecord {
    /// Assigned by the store, increasing; `cursor` pages by it.
    pub id: i64,
    /// Unix milliseconds.
    pub created_at: i64,
    pub tenant_id: String,
    /// The request's `x-request-id`.
    pub request_id: String,
    pub profile_version: u64,
    /// The answer's action, most severe of its choices: passed, rewritten, fallback, blocked.
    pub action: String,
    /// `json` or `stream`.
    pub kind: String,
    /// The values outside the profile's tolerance in the upstream's answer.
    pub values: Vec<String>,
    /// Time enforcement took, in ms.
    pub total_ms: f64,
    /// Per choice (or stream window, or checked side field): the enforcement report, as the
    /// `visa` metadata has it (action, edits with the sentence they touch, scores before and
    /// after, integrity, reason, timings). Edit texts follow `texts`' rule.
    #[schema(value_type = Vec<Object>)]
    pub choices: Value,
    /// Per choice, the upstream's text and what the client received: full, as SHA-256 hashes,
    /// or absent, as the profile's `log_text` says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub texts: Vec<DecisionText>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DecisionText {
    pub index: usize,
    /// The upstream's text, or `sha256:<hex>` of it.
    pub original: String,
    /// What the client received (none for a blocked choice), or `sha256:<hex>` of it.
    #[serde(rename = "final", skip_serializing_if = "Option::is_none")]
    pub final_text: Option<String>,
}

/// What `GET /v1/decisions` asks for.
#[derive(Debug, Clone, Default)]
pub struct DecisionQuery {
    /// `None`: every tenant (the admin).
    pub tenant: Option<String>,
    pub action: Option<String>,
    pub value: Option<String>,
    /// Unix milliseconds, inclusive.
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Only ids below this (the next page of a newest-first listing).
    pub before_id: Option<i64>,
    pub limit: usize,
}

fn sha256(text: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())))
}

/// A text as the profile's `log_text` keeps it.
fn kept(mode: LogText, text: &str) -> String {
    match mode {
        LogText::Full => text.to_owned(),
        _ => sha256(text),
    }
}

/// Edit texts (the sentence replaced, the sentence written) follow the same rule as the
/// answers': removed for `none`, hashed for `hash`.
fn redact_edits(choices: &mut Value, mode: LogText) {
    if mode == LogText::Full {
        return;
    }
    let Some(reports) = choices.as_array_mut() else {
        return;
    };
    for report in reports {
        let Some(edits) = report.get_mut("edits").and_then(Value::as_array_mut) else {
            continue;
        };
        for edit in edits {
            let Some(obj) = edit.as_object_mut() else {
                continue;
            };
            for field in ["original", "text"] {
                match (mode, obj.get(field).and_then(Value::as_str).map(sha256)) {
                    (LogText::Hash, Some(h)) => {
                        obj.insert(field.into(), Value::String(h));
                    }
                    _ => {
                        obj.remove(field);
                    }
                }
            }
        }
    }
}

/// A decision about to be recorded (the store gives it its id).
pub struct Pending {
    pub tenant: String,
    pub request_id: String,
    pub kind: &'static str,
    pub action: &'static str,
    pub values: Vec<String>,
    pub total_ms: f64,
    pub reports: Value,
    /// Per choice: the upstream's text and what was sent (none: blocked).
    pub texts: Vec<(usize, String, Option<String>)>,
}

impl Pending {
    /// The record as the profile says to keep it.
    fn into_record(self, profile: &Profile, now_ms: i64) -> DecisionRecord {
        let mut choices = self.reports;
        redact_edits(&mut choices, profile.log_text);
        let texts = match profile.log_text {
            LogText::None => Vec::new(),
            mode => self
                .texts
                .into_iter()
                .map(|(index, original, sent)| DecisionText {
                    index,
                    original: kept(mode, &original),
                    final_text: sent.map(|s| kept(mode, &s)),
                })
                .collect(),
        };
        DecisionRecord {
            id: 0,
            created_at: now_ms,
            tenant_id: self.tenant,
            request_id: self.request_id,
            profile_version: profile.version,
            action: self.action.to_owned(),
            kind: self.kind.to_owned(),
            values: self.values,
            total_ms: self.total_ms,
            choices,
            texts,
        }
    }
}

/// Counters of the log's queue, shared with `/metrics`.
#[derive(Clone, Default)]
pub struct DecisionStats {
    pub written: Counter,
    /// Dropped because the queue was full.
    pub dropped: Counter,
    /// Lost because the store failed to write them.
    pub failed: Counter,
}

/// The request path's end of the log: `record` never waits.
pub struct DecisionLog {
    tx: mpsc::Sender<DecisionRecord>,
    stats: DecisionStats,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Records written per store transaction at most.
const BATCH: usize = 64;

impl DecisionLog {
    /// Start the writer (needs a Tokio runtime): it takes what the queue holds, up to a batch at
    /// a time, and writes it in one transaction off the runtime; every hour (and at start) it
    /// deletes records older than `retention_days` (0: keep everything).
    pub fn start(
        store: Arc<dyn ProfileStore>,
        queue: usize,
        retention_days: u64,
        stats: DecisionStats,
        background: &crate::background::Background,
    ) -> Arc<Self> {
        let (tx, mut rx) = mpsc::channel::<DecisionRecord>(queue.max(1));
        let writer_stats = stats.clone();
        background.spawn("decision log writer", async move {
            let mut purge = tokio::time::interval(std::time::Duration::from_secs(3600));
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                tokio::select! {
                    n = rx.recv_many(&mut batch, BATCH) => {
                        if n == 0 {
                            break;
                        }
                        let records = std::mem::take(&mut batch);
                        let count = records.len() as u64;
                        let store = store.clone();
                        match tokio::task::spawn_blocking(move || store.insert_decisions(&records)).await {
                            Ok(Ok(())) => {
                                writer_stats.written.inc_by(count);
                            }
                            Ok(Err(e)) => {
                                writer_stats.failed.inc_by(count);
                                tracing::warn!(error = %e, records = count, "writing decisions failed; they are lost");
                            }
                            Err(e) => {
                                writer_stats.failed.inc_by(count);
                                tracing::warn!(error = %e, "the decision writer failed");
                            }
                        }
                    }
                    _ = purge.tick(), if retention_days > 0 => {
                        let cutoff = now_ms() - (retention_days as i64) * 86_400_000;
                        let store = store.clone();
                        match tokio::task::spawn_blocking(move || store.purge_decisions(cutoff)).await {
                            Ok(Ok(n)) if n > 0 => tracing::info!(deleted = n, "old decisions deleted"),
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => tracing::warn!(error = %e, "deleting old decisions failed"),
                            Err(e) => tracing::warn!(error = %e, "the decision purge failed"),
                        }
                    }
                }
            }
        });
        Arc::new(Self { tx, stats })
    }

    /// Queue a decision when the profile logs it (every decision but `passed`, or all with
    /// `log_decisions: "all"`). Never waits: a full queue drops it and counts it.
    pub fn record(&self, profile: &Profile, pending: Pending) {
        if pending.action == "passed" && !profile.log_decisions.logs_passed() {
            return;
        }
        let record = pending.into_record(profile, now_ms());
        if self.tx.try_send(record).is_err() {
            self.stats.dropped.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;
    use crate::store::sqlite::SqliteStore;
    use crate::values::profile::ProfileSpec;
    use serde_json::json;

    fn profile(extra: Value) -> Profile {
        let mut body = json!({"values": {"power": {"target": 0.1}}, "action": "rewrite"});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        Profile::from_spec(ProfileSpec::from_json(&body).unwrap(), 3, 1)
    }

    fn pending(action: &'static str) -> Pending {
        Pending {
            tenant: "acme".into(),
            request_id: "req-1".into(),
            kind: "json",
            action,
            values: vec!["power".into()],
            total_ms: 12.5,
            reports: json!([{"index": 0, "action": action, "edits": [
                {"kind": "dropped", "original": "Show them who is boss.", "values": ["power"]}]}]),
            texts: vec![(0, "A. Show them who is boss.".into(), Some("A.".into()))],
        }
    }

    #[test]
    fn texts_are_kept_as_the_profile_says() {
        let none = pending("rewritten").into_record(&profile(json!({})), 5);
        assert!(none.texts.is_empty());
        assert!(none.choices[0]["edits"][0].get("original").is_none());
        assert_eq!(none.choices[0]["edits"][0]["kind"], "dropped");
        assert_eq!(none.profile_version, 3);
        let hash = pending("rewritten").into_record(&profile(json!({"log_text": "hash"})), 5);
        assert_eq!(hash.texts[0].original, sha256("A. Show them who is boss."));
        assert!(
            hash.choices[0]["edits"][0]["original"]
                .as_str()
                .unwrap()
                .starts_with("sha256:")
        );
        let full = pending("rewritten").into_record(&profile(json!({"log_text": "full"})), 5);
        assert_eq!(full.texts[0].final_text.as_deref(), Some("A."));
        assert_eq!(
            full.choices[0]["edits"][0]["original"],
            "Show them who is boss."
        );
    }

    /// A store whose writes wait until the test lets them go.
    struct Stuck {
        inner: SqliteStore,
        gate: std::sync::Mutex<()>,
    }

    impl ProfileStore for Stuck {
        fn load_current(&self) -> Result<Vec<(String, Profile)>, StoreError> {
            self.inner.load_current()
        }
        fn update(
            &self,
            tenant: &str,
            now: i64,
            expected: Option<u64>,
            change: &mut crate::store::ProfileChange<'_>,
        ) -> Result<
            Result<crate::store::HistoryEntry, crate::values::profile::FieldError>,
            StoreError,
        > {
            self.inner.update(tenant, now, expected, change)
        }
        fn history(
            &self,
            tenant: &str,
            limit: usize,
        ) -> Result<Vec<crate::store::HistoryEntry>, StoreError> {
            self.inner.history(tenant, limit)
        }
        fn insert_decisions(&self, records: &[DecisionRecord]) -> Result<(), StoreError> {
            let _open = self.gate.lock().unwrap();
            self.inner.insert_decisions(records)
        }
        fn list_decisions(&self, q: &DecisionQuery) -> Result<Vec<DecisionRecord>, StoreError> {
            self.inner.list_decisions(q)
        }
        fn purge_decisions(&self, before_ms: i64) -> Result<usize, StoreError> {
            self.inner.purge_decisions(before_ms)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_drops_and_counts_and_never_waits() {
        let store = Arc::new(Stuck {
            inner: SqliteStore::in_memory().unwrap(),
            gate: std::sync::Mutex::new(()),
        });
        let stats = DecisionStats::default();
        let background = crate::background::Background::default();
        let log = DecisionLog::start(store.clone(), 2, 0, stats.clone(), &background);
        let p = profile(json!({}));
        let held = store.gate.lock().unwrap();
        let started = std::time::Instant::now();
        for _ in 0..50 {
            log.record(&p, pending("blocked"));
        }
        // Fifty records with the writer stuck: at most two in the writer's hands and two
        // in the queue; the rest dropped, and recording took no waiting.
        assert!(started.elapsed() < std::time::Duration::from_millis(500));
        let dropped = stats.dropped.get();
        assert!((46..=48).contains(&dropped), "{dropped}");
        drop(held);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while stats.written.get() + dropped < 50 {
            assert!(
                std::time::Instant::now() < deadline,
                "written {}",
                stats.written.get()
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let q = DecisionQuery {
            limit: 100,
            ..Default::default()
        };
        assert_eq!(store.list_decisions(&q).unwrap().len() as u64, 50 - dropped);
        // A passed answer is not logged unless the profile asks for every decision.
        log.record(&p, pending("passed"));
        log.record(&profile(json!({"log_decisions": "all"})), pending("passed"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while stats.written.get() + dropped < 51 {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(stats.written.get() + dropped, 51);
    }
}
