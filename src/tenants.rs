//! Tenants: who a key belongs to, which upstreams it may use, and its live limits.
//!
//! Lookups and counters live in DashMaps keyed by key hash and tenant id, so concurrent requests
//! of different tenants never wait on one global lock.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{Config, TenantLimits, decode_sha256, hash_key};
use crate::error::{ApiError, ErrorKind};

type DirectLimiter = RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    DefaultClock,
    governor::middleware::NoOpMiddleware,
>;

/// One tenant and its live state.
pub struct Tenant {
    pub id: String,
    pub upstreams: Vec<String>,
    pub limits: TenantLimits,
    pub self_manage_profile: bool,
    concurrency: Option<Arc<Semaphore>>,
    rate: Option<DirectLimiter>,
    in_flight: Arc<AtomicU64>,
    served: AtomicU64,
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Held for the life of one admitted request (its response body included).
#[derive(Debug)]
pub struct Admission {
    _permit: Option<OwnedSemaphorePermit>,
    _lease: Option<crate::limits::Lease>,
    in_flight: Arc<AtomicU64>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Tenant {
    fn new(
        id: String,
        upstreams: Vec<String>,
        limits: TenantLimits,
        self_manage_profile: bool,
    ) -> Self {
        let concurrency = limits
            .max_concurrent
            .map(|n| Arc::new(Semaphore::new(n as usize)));
        let rate = limits
            .requests_per_minute
            .and_then(NonZeroU32::new)
            .map(|n| RateLimiter::direct(Quota::per_minute(n)));
        Self {
            id,
            upstreams,
            limits,
            self_manage_profile,
            concurrency,
            rate,
            in_flight: Arc::new(AtomicU64::new(0)),
            served: AtomicU64::new(0),
        }
    }

    /// Admit one request under this replica's own limits, or say why not (429 with a
    /// retry-after).
    pub fn admit(&self) -> Result<Admission, ApiError> {
        let permit = match &self.concurrency {
            Some(sem) => Some(sem.clone().try_acquire_owned().map_err(|_| self.busy())?),
            None => None,
        };
        if let Some(rate) = &self.rate
            && let Err(not_until) = rate.check()
        {
            return Err(self.over_rate(not_until.wait_time_from(DefaultClock::default().now())));
        }
        let mut admission = self.admitted(None);
        admission._permit = permit;
        Ok(admission)
    }

    /// Count an admitted request (decided here or by the shared limits).
    pub(crate) fn admitted(&self, lease: Option<crate::limits::Lease>) -> Admission {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.served.fetch_add(1, Ordering::Relaxed);
        Admission {
            _permit: None,
            _lease: lease,
            in_flight: self.in_flight.clone(),
        }
    }

    pub(crate) fn busy(&self) -> ApiError {
        ApiError::new(
            ErrorKind::TenantBusy,
            format!(
                "tenant {} already has {} requests in flight, its limit",
                self.id,
                self.limits.max_concurrent.unwrap_or_default()
            ),
        )
    }

    pub(crate) fn over_rate(&self, wait: std::time::Duration) -> ApiError {
        ApiError::new(
            ErrorKind::RateLimited { retry_after: wait },
            format!(
                "tenant {} is over its limit of {} requests per minute",
                self.id,
                self.limits.requests_per_minute.unwrap_or_default()
            ),
        )
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn admitted_total(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// The default upstream: the first one listed.
    pub fn default_upstream(&self) -> &str {
        self.upstreams
            .first()
            .map(String::as_str)
            .unwrap_or_default()
    }
}

/// All tenants, by id and by key hash.
#[derive(Default)]
pub struct TenantRegistry {
    by_id: DashMap<String, Arc<Tenant>>,
    by_key: DashMap<[u8; 32], Arc<Tenant>>,
}

impl TenantRegistry {
    pub fn from_config(config: &Config) -> Result<Self, crate::config::ConfigError> {
        let registry = Self::default();
        for (i, t) in config.tenants.iter().enumerate() {
            let tenant = Arc::new(Tenant::new(
                t.id.clone(),
                t.upstreams.clone(),
                t.limits.clone(),
                t.self_manage_profile,
            ));
            for (k, h) in t.api_key_sha256.iter().enumerate() {
                let digest = decode_sha256(h).map_err(|m| crate::config::ConfigError {
                    field: format!("tenants[{i}].api_key_sha256[{k}]"),
                    message: m,
                })?;
                registry.by_key.insert(digest, tenant.clone());
            }
            if let Some(digest) = t.env_key_hash {
                registry.by_key.insert(digest, tenant.clone());
            }
            registry.by_id.insert(t.id.clone(), tenant);
        }
        Ok(registry)
    }

    /// The tenant owning this plain API key, if any. Only the key's hash is compared.
    pub fn authenticate(&self, key: &str) -> Option<Arc<Tenant>> {
        self.by_key.get(&hash_key(key)).map(|t| t.clone())
    }

    pub fn get(&self, id: &str) -> Option<Arc<Tenant>> {
        self.by_id.get(id).map(|t| t.clone())
    }

    /// Every tenant, sorted by id.
    pub fn list(&self) -> Vec<Arc<Tenant>> {
        let mut all: Vec<_> = self.by_id.iter().map(|e| e.value().clone()).collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(limits: TenantLimits) -> Tenant {
        Tenant::new("t".into(), vec!["u".into()], limits, false)
    }

    #[test]
    fn concurrency_limit_is_released_on_drop() {
        let t = tenant(TenantLimits {
            max_concurrent: Some(1),
            requests_per_minute: None,
        });
        let a = t.admit().unwrap();
        assert_eq!(t.in_flight(), 1);
        let e = t.admit().unwrap_err();
        assert_eq!(e.kind, ErrorKind::TenantBusy);
        drop(a);
        assert_eq!(t.in_flight(), 0);
        assert!(t.admit().is_ok());
    }

    #[test]
    fn rate_limit_answers_with_a_wait() {
        let t = tenant(TenantLimits {
            max_concurrent: None,
            requests_per_minute: Some(2),
        });
        t.admit().unwrap();
        t.admit().unwrap();
        let e = t.admit().unwrap_err();
        match e.kind {
            ErrorKind::RateLimited { retry_after } => {
                assert!(retry_after.as_secs_f64() > 1.0 && retry_after.as_secs_f64() <= 30.0)
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
