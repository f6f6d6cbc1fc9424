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
    current: DashMap<String, Arc<Profile>>,
    /// One writer at a time, so the memory view follows the commit order.
    write: tokio::sync::Mutex<()>,
}

impl Profiles {
    pub fn open(store: Arc<dyn ProfileStore>) -> Result<Self, StoreError> {
        let current = DashMap::new();
        for (tenant, profile) in store.load_current()? {
            current.insert(tenant, Arc::new(profile));
        }
        Ok(Self {
            store,
            current,
            write: tokio::sync::Mutex::new(()),
        })
    }

    /// The tenant's current profile, from memory.
    pub fn get(&self, tenant: &str) -> Option<Arc<Profile>> {
        self.current.get(tenant).map(|p| p.clone())
    }

    /// Commit a change (set or delete) and then publish it to readers. The blocking store
    /// call runs off the async runtime.
    pub async fn write(
        &self,
        tenant: &str,
        spec: Option<ProfileSpec>,
    ) -> Result<HistoryEntry, StoreError> {
        let _guard = self.write.lock().await;
        let store = self.store.clone();
        let tenant_owned = tenant.to_owned();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let entry =
            tokio::task::spawn_blocking(move || store.append(&tenant_owned, spec.as_ref(), now))
                .await
                .map_err(|e| StoreError(format!("store task failed: {e}")))??;
        match &entry.profile {
            Some(p) => {
                self.current.insert(tenant.to_owned(), Arc::new(p.clone()));
            }
            None => {
                self.current.remove(tenant);
            }
        }
        Ok(entry)
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
