//! Profile persistence behind a trait (SQLite now; Postgres for several replicas later), and
//! the in-memory view the request path reads, updated only after a write has committed.

pub mod sqlite;

use std::sync::Arc;

use dashmap::DashMap;

use crate::values::Profile;
use crate::values::profile::ProfileSpec;

#[derive(Debug, thiserror::Error)]
#[error("profile store: {0}")]
pub struct StoreError(pub String);

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
    /// Append a version: `Some` sets the profile, `None` deletes it. Returns the new version.
    fn append(
        &self,
        tenant: &str,
        spec: Option<&ProfileSpec>,
        now: i64,
    ) -> Result<HistoryEntry, StoreError>;
    /// Newest first, at most `limit` entries.
    fn history(&self, tenant: &str, limit: usize) -> Result<Vec<HistoryEntry>, StoreError>;
}

/// Profiles as the proxy uses them: reads from memory, writes through the store.
pub struct Profiles {
    store: Arc<dyn ProfileStore>,
    current: Arc<DashMap<String, Arc<Profile>>>,
    /// One writer at a time, so the memory view follows the commit order. Held by the blocking
    /// task that commits and publishes, not by the request's future.
    write: Arc<std::sync::Mutex<()>>,
}

impl Profiles {
    pub fn open(store: Arc<dyn ProfileStore>) -> Result<Self, StoreError> {
        let current = DashMap::new();
        for (tenant, profile) in store.load_current()? {
            current.insert(tenant, Arc::new(profile));
        }
        Ok(Self {
            store,
            current: Arc::new(current),
            write: Arc::new(std::sync::Mutex::new(())),
        })
    }

    /// The tenant's current profile, from memory.
    pub fn get(&self, tenant: &str) -> Option<Arc<Profile>> {
        self.current.get(tenant).map(|p| p.clone())
    }

    /// Commit a change (set or delete) and publish it to readers, as one unit off the async
    /// runtime: a caller that goes away (a client that disconnects) cannot leave the commit
    /// done and the view behind it.
    pub async fn write(
        &self,
        tenant: &str,
        spec: Option<ProfileSpec>,
    ) -> Result<HistoryEntry, StoreError> {
        let (store, current, lock) = (self.store.clone(), self.current.clone(), self.write.clone());
        let tenant = tenant.to_owned();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        tokio::task::spawn_blocking(move || {
            let _guard = lock
                .lock()
                .map_err(|_| StoreError("a profile write failed earlier".into()))?;
            let entry = store.append(&tenant, spec.as_ref(), now)?;
            match &entry.profile {
                Some(p) => {
                    current.insert(tenant, Arc::new(p.clone()));
                }
                None => {
                    current.remove(&tenant);
                }
            }
            Ok(entry)
        })
        .await
        .map_err(|e| StoreError(format!("store task failed: {e}")))?
    }

    pub async fn history(
        &self,
        tenant: &str,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        let store = self.store.clone();
        let tenant = tenant.to_owned();
        tokio::task::spawn_blocking(move || store.history(&tenant, limit))
            .await
            .map_err(|e| StoreError(format!("store task failed: {e}")))?
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
                p.write("t", Some(s)).await
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
