//! Tenant limits shared by every replica through Redis: one atomic script per admission checks
//! `max_concurrent` (leases in a sorted set, so a crashed replica's leases expire) and
//! `requests_per_minute` (GCRA on Redis' clock, a burst of one minute's worth, as the local
//! limiter). When Redis cannot answer, admission falls back to the replica's own limits for a
//! moment, counted in a metric and shown in `/readyz`; a request never fails because Redis is
//! down.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;

use crate::config::{LimitsBackend, LimitsConfig};
use crate::error::ApiError;
use crate::tenants::{Admission, Tenant};

/// KEYS[1]: the rate key, KEYS[2]: the lease set. ARGV: requests per minute (0: none), max
/// concurrent (0: none), lease ms, lease id. Returns {0} admitted, {1, wait_ms} over the rate,
/// {2} at the concurrency limit. Concurrency is checked first, so a busy refusal spends no rate.
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm = tonumber(ARGV[1])
local maxc = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
if maxc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= maxc then return {2, 0} end
end
if rpm > 0 then
  local interval = 60000 / rpm
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - 60000
  if now < allow_at then return {1, math.ceil(allow_at - now)} end
  redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1)
end
if maxc > 0 then
  redis.call('ZADD', KEYS[2], now + lease, ARGV[4])
  redis.call('PEXPIRE', KEYS[2], lease)
end
return {0, 0}
";

/// How long admission uses the replica's own limits after Redis failed to answer.
const FALLBACK_FOR: Duration = Duration::from_secs(1);

/// Where a tenant's limits are counted now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitsState {
    Local,
    Redis,
    /// Redis is configured but did not answer lately: per-replica limits.
    RedisUnreachable,
}

impl LimitsState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Redis => "redis",
            Self::RedisUnreachable => "redis unreachable: per-replica limits",
        }
    }
}

/// Admission under the configured limits.
pub struct Limits {
    redis: Option<RedisLimits>,
}

struct RedisLimits {
    conn: ConnectionManager,
    script: redis::Script,
    prefix: String,
    lease: Duration,
    timeout: Duration,
    epoch: Instant,
    /// Milliseconds since `epoch` until which Redis is not asked (0: ask).
    skip_until_ms: AtomicU64,
    unreachable: AtomicBool,
    fallbacks: Counter,
    release: mpsc::UnboundedSender<(String, String)>,
}

/// A concurrency lease in Redis, given back when the request's admission ends.
#[derive(Debug)]
pub struct Lease {
    key: String,
    id: String,
    release: mpsc::UnboundedSender<(String, String)>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        // The releaser task removes it; if that is gone (shutdown), the lease expires.
        let _ = self
            .release
            .send((std::mem::take(&mut self.key), std::mem::take(&mut self.id)));
    }
}

impl Limits {
    /// Per-replica limits only.
    pub fn local() -> Self {
        Self { redis: None }
    }

    /// From `[limits]`; with `backend = "redis"` the connection is made lazily, so a proxy
    /// starts (on its own limits) while Redis is down. Needs a Tokio runtime.
    pub fn from_config(
        config: &LimitsConfig,
        fallbacks: Counter,
        background: &crate::background::Background,
    ) -> anyhow::Result<Self> {
        if config.backend == LimitsBackend::Local {
            return Ok(Self::local());
        }
        let url = config.redis_url()?;
        let client = redis::Client::open(url.as_str())
            .map_err(|e| anyhow::anyhow!("limits.url: not a Redis URL: {e}"))?;
        let timeout = Duration::from_millis(config.timeout_ms);
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|e| anyhow::anyhow!("limits.url: {e}"))?;
        let (release, mut releases) = mpsc::unbounded_channel::<(String, String)>();
        let mut releaser = conn.clone();
        background.spawn("redis lease releases", async move {
            while let Some((key, id)) = releases.recv().await {
                let done: redis::RedisResult<i64> = redis::cmd("ZREM")
                    .arg(&key)
                    .arg(&id)
                    .query_async(&mut releaser)
                    .await;
                if let Err(e) = done {
                    tracing::debug!(error = %e, "releasing a concurrency lease failed; it expires");
                }
            }
        });
        Ok(Self {
            redis: Some(RedisLimits {
                conn,
                script: redis::Script::new(ADMIT),
                prefix: config.key_prefix.clone(),
                lease: Duration::from_secs(config.lease_seconds),
                timeout,
                epoch: Instant::now(),
                skip_until_ms: AtomicU64::new(0),
                unreachable: AtomicBool::new(false),
                fallbacks,
                release,
            }),
        })
    }

    pub fn state(&self) -> LimitsState {
        match &self.redis {
            None => LimitsState::Local,
            Some(r) if r.unreachable.load(Ordering::Relaxed) => LimitsState::RedisUnreachable,
            Some(_) => LimitsState::Redis,
        }
    }

    /// Admit one request of this tenant or say why not (429 with a retry-after).
    pub async fn admit(&self, tenant: &Tenant) -> Result<Admission, ApiError> {
        let limits = &tenant.limits;
        let unlimited =
            limits.max_concurrent.is_none() && limits.requests_per_minute.is_none_or(|n| n == 0);
        match &self.redis {
            Some(redis) if !unlimited => match redis.admit(tenant).await {
                Some(result) => result,
                None => tenant.admit(),
            },
            _ => tenant.admit(),
        }
    }
}

impl RedisLimits {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// `None`: Redis did not answer; the caller uses the local limits.
    async fn admit(&self, tenant: &Tenant) -> Option<Result<Admission, ApiError>> {
        if self.now_ms() < self.skip_until_ms.load(Ordering::Relaxed) {
            self.fallbacks.inc();
            return None;
        }
        let rate_key = format!("{}:rate:{}", self.prefix, tenant.id);
        let lease_key = format!("{}:leases:{}", self.prefix, tenant.id);
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut conn = self.conn.clone();
        let mut call = self.script.prepare_invoke();
        call.key(&rate_key)
            .key(&lease_key)
            .arg(tenant.limits.requests_per_minute.unwrap_or(0))
            .arg(tenant.limits.max_concurrent.unwrap_or(0))
            .arg(self.lease.as_millis() as u64)
            .arg(&id);
        let answer: Result<Vec<i64>, String> =
            match tokio::time::timeout(self.timeout, call.invoke_async(&mut conn)).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {:?}", self.timeout)),
            };
        let answer = match answer {
            Ok(v) => {
                if self.unreachable.swap(false, Ordering::Relaxed) {
                    tracing::info!("Redis answers again: limits are shared across replicas");
                }
                v
            }
            Err(e) => {
                if !self.unreachable.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "Redis is unreachable: each replica enforces tenant limits on its own until it answers");
                }
                self.skip_until_ms.store(
                    self.now_ms() + FALLBACK_FOR.as_millis() as u64,
                    Ordering::Relaxed,
                );
                self.fallbacks.inc();
                return None;
            }
        };
        Some(match answer.first().copied() {
            Some(0) => {
                let lease = tenant.limits.max_concurrent.map(|_| Lease {
                    key: lease_key,
                    id,
                    release: self.release.clone(),
                });
                Ok(tenant.admitted(lease))
            }
            Some(1) => Err(tenant.over_rate(Duration::from_millis(
                answer.get(1).copied().unwrap_or(1000).max(1) as u64,
            ))),
            _ => Err(tenant.busy()),
        })
    }
}
