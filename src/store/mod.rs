//! Profile persistence behind a trait (SQLite for one replica, PostgreSQL for several), and
//! the in-memory view the request path reads, updated only after a write has committed, here or,
//! through the store's change feed, on another replica.

#[cfg(test)]
mod contract;
pub mod postgres;
pub mod sqlite;
#[doc(hidden)]
pub mod testing;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use dashmap::DashMap;

use crate::decisions::{DecisionQuery, DecisionRecord};
use crate::values::Profile;
use crate::values::profile::{FieldError, ProfileSpec};

/// What a PATCH does to the current profile: the new one (`None` deletes), or why not.
pub type ProfileChange<'a> =
    dyn FnMut(Option<&Profile>) -> Result<Option<ProfileSpec>, FieldError> + Send + 'a;

#[derive(Debug, thiserror::Error)]
#[error("profile store: {message}")]
pub struct StoreError {
    pub message: String,
    /// Set when a write named the version it expected and the tenant is at another: this one.
    pub conflict: Option<u64>,
}

impl StoreError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            conflict: None,
        }
    }

    /// A write whose expected version is not the current one; nothing was written.
    pub fn conflict(expected: u64, current: u64) -> Self {
        Self {
            message: format!("the profile is at version {current}, not {expected}"),
            conflict: Some(current),
        }
    }
}

/// One version in a tenant's history; `profile` is `None` for a deletion.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    pub version: u64,
    pub updated_at: i64,
    pub profile: Option<Profile>,
}

/// Durable profile storage. Every change appends one version in one transaction, so a crash
/// leaves either the old or the new version, never half of one.
pub trait ProfileStore: Send + Sync + 'static {
    /// The current profile of every tenant that has one.
    fn load_current(&self) -> Result<Vec<(String, Profile)>, StoreError>;
    /// Append a version computed from the newest one in the same transaction (so no other
    /// writer, here or on another replica, can slip in between): `change` gets the current
    /// profile (none: never had one, or deleted) and returns the new one (`None` deletes it) or
    /// a field error, which writes nothing. With `expected`, only when the tenant's newest
    /// version (0: none yet) is that one; otherwise nothing is written and the error carries
    /// the current version. `change` may be called more than once (a retried connection).
    fn update(
        &self,
        tenant: &str,
        now: i64,
        expected: Option<u64>,
        change: &mut ProfileChange<'_>,
    ) -> Result<Result<HistoryEntry, FieldError>, StoreError>;
    /// Append a version: `Some` sets the profile, `None` deletes it. Returns the new version.
    /// `expected` as for [`ProfileStore::update`].
    fn append(
        &self,
        tenant: &str,
        spec: Option<&ProfileSpec>,
        now: i64,
        expected: Option<u64>,
    ) -> Result<HistoryEntry, StoreError> {
        let mut change = |_: Option<&Profile>| Ok(spec.cloned());
        self.update(tenant, now, expected, &mut change)?
            .map_err(|e| StoreError::new(e.message))
    }
    /// Newest first, at most `limit` entries.
    fn history(&self, tenant: &str, limit: usize) -> Result<Vec<HistoryEntry>, StoreError>;
    /// Append decision records in one transaction (their ids are assigned here).
    fn insert_decisions(&self, records: &[DecisionRecord]) -> Result<(), StoreError>;
    /// Newest first, as the query filters and pages them.
    fn list_decisions(&self, query: &DecisionQuery) -> Result<Vec<DecisionRecord>, StoreError>;
    /// Delete records created before this time (Unix ms); returns how many went.
    fn purge_decisions(&self, before_ms: i64) -> Result<usize, StoreError>;
    /// Start telling `sink` of commits made by other processes, when the store can. `None`: it
    /// has no change feed (SQLite, one replica per file).
    fn watch(&self, sink: Arc<dyn ChangeSink>) -> Result<Option<Watch>, StoreError> {
        let _ = sink;
        Ok(None)
    }
}

/// A stored version as the API shows it; a NULL body records a deletion.
pub(crate) fn decode_entry(
    version: i64,
    created_at: i64,
    body: Option<String>,
) -> Result<HistoryEntry, StoreError> {
    let profile = match body {
        Some(text) => Some(serde_json::from_str::<Profile>(&text).map_err(|e| {
            StoreError::new(format!(
                "version {version} holds an unreadable profile: {e}"
            ))
        })?),
        None => None,
    };
    Ok(HistoryEntry {
        version: version as u64,
        updated_at: created_at,
        profile,
    })
}

/// A version about to be appended: its number, its stored body (none: a deletion), and the
/// entry the write returns.
pub(crate) struct Next {
    pub version: i64,
    pub body: Option<String>,
    pub entry: HistoryEntry,
}

/// What a write appends on top of `newest` (the tenant's newest stored version; none when it
/// never had one), for both stores: the precondition checked, `change` applied, the body
/// encoded. `Ok(Err)`: `change` refused with a field error, and nothing is to be written.
pub(crate) fn next_version(
    newest: Option<HistoryEntry>,
    now: i64,
    expected: Option<u64>,
    change: &mut ProfileChange<'_>,
) -> Result<Result<Next, FieldError>, StoreError> {
    let current = newest.as_ref().map_or(0, |e| e.version);
    if let Some(e) = expected
        && e != current
    {
        return Err(StoreError::conflict(e, current));
    }
    let spec = match change(newest.and_then(|e| e.profile).as_ref()) {
        Ok(s) => s,
        Err(field) => return Ok(Err(field)),
    };
    let version = current + 1;
    let profile = spec.map(|s| Profile::from_spec(s, version, now));
    let body = profile
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| StoreError::new(e.to_string()))?;
    Ok(Ok(Next {
        version: version as i64,
        body,
        entry: HistoryEntry {
            version,
            updated_at: now,
            profile,
        },
    }))
}

/// The filters of a decision query as SQL: a `WHERE` clause with numbered placeholders
/// (`$1` or `?1`, as `mark` writes them) and its arguments, and the limit.
pub(crate) fn decision_filters(
    query: &DecisionQuery,
    mark: impl Fn(usize) -> String,
) -> (String, Vec<DecisionArg>) {
    let mut clauses: Vec<String> = Vec::new();
    let mut args: Vec<DecisionArg> = Vec::new();
    let mut push = |clause: &str, arg: DecisionArg| {
        args.push(arg);
        clauses.push(clause.replace('?', &mark(args.len())));
    };
    if let Some(t) = &query.tenant {
        push("tenant_id = ?", DecisionArg::Text(t.clone()));
    }
    if let Some(a) = &query.action {
        push("action = ?", DecisionArg::Text(a.clone()));
    }
    if let Some(v) = &query.value {
        push("vals LIKE ?", DecisionArg::Text(format!("%,{v},%")));
    }
    if let Some(t) = query.since {
        push("created_at >= ?", DecisionArg::Int(t));
    }
    if let Some(t) = query.until {
        push("created_at <= ?", DecisionArg::Int(t));
    }
    if let Some(id) = query.before_id {
        push("id < ?", DecisionArg::Int(id));
    }
    let filter = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    (filter, args)
}

pub(crate) enum DecisionArg {
    Text(String),
    Int(i64),
}

/// The stored form of a record: its JSON without the id, and the values as `,a,b,` (so one
/// `LIKE` finds a value).
pub(crate) fn decision_row(r: &DecisionRecord) -> Result<(String, String), StoreError> {
    let body = serde_json::to_string(r).map_err(|e| StoreError::new(e.to_string()))?;
    Ok((body, format!(",{},", r.values.join(","))))
}

pub(crate) fn decision_from_row(id: i64, body: &str) -> Result<DecisionRecord, StoreError> {
    let mut r: DecisionRecord = serde_json::from_str(body)
        .map_err(|e| StoreError::new(format!("decision {id} is unreadable: {e}")))?;
    r.id = id;
    Ok(r)
}

/// What a store's change feed calls, from a thread of its own.
pub trait ChangeSink: Send + Sync + 'static {
    /// This tenant's profile has a new version.
    fn changed(&self, tenant: &str);
    /// Changes may have been missed (a (re)connect): reload everything.
    fn resync(&self);
    /// Whether the feed is connected now.
    fn connected(&self, up: bool);
}

/// A running change feed; dropping it stops the feed's thread at its next wake-up.
pub struct Watch {
    stop: Arc<AtomicBool>,
    _thread: std::thread::JoinHandle<()>,
}

impl Watch {
    pub fn new(stop: Arc<AtomicBool>, thread: std::thread::JoinHandle<()>) -> Self {
        Self {
            stop,
            _thread: thread,
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Profiles as the proxy uses them: reads from memory, writes through the store.
pub struct Profiles {
    view: Arc<View>,
    _watch: Option<Watch>,
}

/// The memory view and what keeps it in commit order.
struct View {
    store: Arc<dyn ProfileStore>,
    current: DashMap<String, Arc<Profile>>,
    /// The newest version applied per tenant, deletions included, so a late or repeated change
    /// notice never puts an older version back.
    applied: DashMap<String, u64>,
    /// One writer at a time (local commits and applied notices), so the view follows the commit
    /// order. Held by blocking tasks and the feed's thread, never by a request's future.
    write: std::sync::Mutex<()>,
    feed_up: AtomicBool,
    has_feed: AtomicBool,
}

impl View {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, ()>, StoreError> {
        self.write
            .lock()
            .map_err(|_| StoreError::new("a profile write failed earlier"))
    }

    /// Put this entry in the view unless a newer version is already there.
    fn apply(&self, tenant: &str, entry: &HistoryEntry) {
        if self
            .applied
            .get(tenant)
            .is_some_and(|v| *v >= entry.version)
        {
            return;
        }
        self.applied.insert(tenant.to_owned(), entry.version);
        match &entry.profile {
            Some(p) => {
                self.current.insert(tenant.to_owned(), Arc::new(p.clone()));
            }
            None => {
                self.current.remove(tenant);
            }
        }
    }

    fn refresh(&self, tenant: &str) -> Result<(), StoreError> {
        let _guard = self.lock()?;
        self.catch_up(tenant)
    }

    /// Apply the store's newest version of this tenant (the caller holds the lock).
    fn catch_up(&self, tenant: &str) -> Result<(), StoreError> {
        if let Some(entry) = self.store.history(tenant, 1)?.first() {
            self.apply(tenant, entry);
        }
        Ok(())
    }

    fn reload(&self) -> Result<(), StoreError> {
        let _guard = self.lock()?;
        let loaded = self.store.load_current()?;
        let present: std::collections::HashSet<&str> =
            loaded.iter().map(|(t, _)| t.as_str()).collect();
        let gone: Vec<String> = self
            .current
            .iter()
            .map(|e| e.key().clone())
            .filter(|t| !present.contains(t.as_str()))
            .collect();
        for (tenant, profile) in &loaded {
            let entry = HistoryEntry {
                version: profile.version,
                updated_at: profile.updated_at,
                profile: Some(profile.clone()),
            };
            self.apply(tenant, &entry);
        }
        // Deleted while the feed was away: the store's newest version says so.
        for tenant in gone {
            self.catch_up(&tenant)?;
        }
        Ok(())
    }
}

impl ChangeSink for View {
    fn changed(&self, tenant: &str) {
        if let Err(e) = self.refresh(tenant) {
            tracing::warn!(tenant, error = %e, "reloading a changed profile failed");
        }
    }

    fn resync(&self) {
        match self.reload() {
            Ok(()) => tracing::info!(tenants = self.current.len(), "profiles reloaded"),
            Err(e) => tracing::warn!(error = %e, "reloading every profile failed"),
        }
    }

    fn connected(&self, up: bool) {
        if self.feed_up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!("profile change feed connected");
            } else {
                tracing::warn!(
                    "profile change feed disconnected; other replicas' changes arrive after it reconnects"
                );
            }
        }
    }
}

/// Whether another replica's change reaches this one now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedState {
    /// The store has no change feed (SQLite).
    None,
    Connected,
    Disconnected,
}

impl Profiles {
    /// Load every current profile and start the store's change feed, if it has one. Blocking:
    /// call it off the async runtime.
    pub fn open(store: Arc<dyn ProfileStore>) -> Result<Self, StoreError> {
        let view = Arc::new(View {
            store: store.clone(),
            current: DashMap::new(),
            applied: DashMap::new(),
            write: std::sync::Mutex::new(()),
            feed_up: AtomicBool::new(false),
            has_feed: AtomicBool::new(false),
        });
        view.reload()?;
        let watch = store.watch(view.clone())?;
        view.has_feed.store(watch.is_some(), Ordering::Relaxed);
        Ok(Self {
            view,
            _watch: watch,
        })
    }

    /// The tenant's current profile, from memory.
    pub fn get(&self, tenant: &str) -> Option<Arc<Profile>> {
        self.view.current.get(tenant).map(|p| p.clone())
    }

    /// How many tenants have a profile now.
    pub fn len(&self) -> usize {
        self.view.current.len()
    }

    pub fn is_empty(&self) -> bool {
        self.view.current.is_empty()
    }

    pub fn feed(&self) -> FeedState {
        match (
            self.view.has_feed.load(Ordering::Relaxed),
            self.view.feed_up.load(Ordering::Relaxed),
        ) {
            (false, _) => FeedState::None,
            (true, true) => FeedState::Connected,
            (true, false) => FeedState::Disconnected,
        }
    }

    /// Commit a change (set or delete) and publish it to readers, as one unit off the async
    /// runtime: a caller that goes away (a client that disconnects) cannot leave the commit
    /// done and the view behind it.
    pub async fn write(
        &self,
        tenant: &str,
        spec: Option<ProfileSpec>,
        expected: Option<u64>,
    ) -> Result<HistoryEntry, StoreError> {
        self.update(tenant, expected, move |_| Ok(spec.clone()))
            .await?
            .map_err(|e| StoreError::new(e.message))
    }

    /// A read-modify-write (a PATCH) as one commit: `change` is applied to the store's newest
    /// version inside the write, whatever this replica's view holds; then published.
    pub async fn update(
        &self,
        tenant: &str,
        expected: Option<u64>,
        mut change: impl FnMut(Option<&Profile>) -> Result<Option<ProfileSpec>, FieldError>
        + Send
        + 'static,
    ) -> Result<Result<HistoryEntry, FieldError>, StoreError> {
        let view = self.view.clone();
        let tenant = tenant.to_owned();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        tokio::task::spawn_blocking(move || {
            let _guard = view.lock()?;
            match view.store.update(&tenant, now, expected, &mut change) {
                Ok(Ok(entry)) => {
                    view.apply(&tenant, &entry);
                    Ok(Ok(entry))
                }
                Ok(Err(field)) => Ok(Err(field)),
                Err(e) => {
                    // Another writer got there first: the view catches up now (best effort;
                    // the change feed brings it too).
                    if e.conflict.is_some() {
                        let _ = view.catch_up(&tenant);
                    }
                    Err(e)
                }
            }
        })
        .await
        .map_err(|e| StoreError::new(format!("store task failed: {e}")))?
    }

    /// The store itself (the decision log writes through it).
    pub fn store(&self) -> Arc<dyn ProfileStore> {
        self.view.store.clone()
    }

    pub async fn decisions(&self, query: DecisionQuery) -> Result<Vec<DecisionRecord>, StoreError> {
        let store = self.view.store.clone();
        tokio::task::spawn_blocking(move || store.list_decisions(&query))
            .await
            .map_err(|e| StoreError::new(format!("store task failed: {e}")))?
    }

    pub async fn history(
        &self,
        tenant: &str,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        let store = self.view.store.clone();
        let tenant = tenant.to_owned();
        tokio::task::spawn_blocking(move || store.history(&tenant, limit))
            .await
            .map_err(|e| StoreError::new(format!("store task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_whose_caller_goes_away_still_reaches_the_view() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite::SqliteStore::open(&dir.path().join("p.sqlite")).unwrap();
        let profiles = Arc::new(Profiles::open(Arc::new(store)).unwrap());
        let spec = ProfileSpec::from_json(&json!({"values": {"power": {"target": 0.1}}})).unwrap();
        for round in 0..20u64 {
            // The caller gives up almost at once, usually while the commit is running.
            let p = profiles.clone();
            let s = spec.clone();
            let _ = tokio::time::timeout(std::time::Duration::from_micros(50), async move {
                p.write("t", Some(s), None).await
            })
            .await;
            // Whatever the store holds, the view shows, once the write is done.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                let stored = profiles.history("t", 1).await.unwrap();
                let seen = profiles.get("t").map(|p| p.version);
                if stored.first().map(|e| e.version) == seen && seen == Some(round + 1) {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "round {round}: store {stored:?}, view {seen:?}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    }
}
