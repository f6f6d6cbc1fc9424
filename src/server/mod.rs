//! The HTTP server: shared state, the router with its middleware, and graceful shutdown.

pub mod admin;
pub mod auth;
pub mod chat;
pub mod chat_body;
pub mod decisions;
pub mod extract;
pub mod health;
pub mod me;
pub mod models;
pub mod observe;
pub mod openapi;
pub mod profiles;
pub mod rewrite;
pub mod routes;
pub mod stats;
pub mod values;

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::background::Background;
use crate::config::Config;
use crate::config::RewriterBackend;
use crate::enforce::{EnforceStage, Enforcer};
use crate::error::{ApiError, ErrorKind};
use crate::metrics::Metrics;
use crate::models::llm::LlmEngine;
use crate::rewriter::{RewriteBackend, Rewriter};
use crate::score::Scorer;
use crate::stage::ResponseStage;
use crate::store::Profiles;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;
use crate::tenants::TenantRegistry;
use crate::translator::Translation;
use crate::upstream::Upstreams;

pub use visa_core::value_models::ValueModels;

/// Everything handlers share, behind one `Arc`: the router's layers clone the state on every
/// request, and one reference count costs less than one per field (measured under load: the
/// per-field clones and drops were ~5% of the proxy's CPU).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    pub config: Arc<Config>,
    pub tenants: Arc<TenantRegistry>,
    pub upstreams: Arc<Upstreams>,
    pub metrics: Arc<Metrics>,
    pub stage: Arc<dyn ResponseStage>,
    /// Global admission: requests beyond `server.max_concurrent_requests` are shed with 429.
    pub admission: Arc<Semaphore>,
    /// SHA-256 of `VISA_ADMIN_KEY`, when set.
    pub admin_key_hash: Option<[u8; 32]>,
    /// Value profiles: read from memory, written through the store.
    pub profiles: Arc<Profiles>,
    /// Tenant limits: this replica's own, or shared through Redis.
    pub limits: Arc<crate::limits::Limits>,
    /// The value models; `None` when `models.enabled = false`.
    pub models: Option<Arc<ValueModels>>,
    /// The local language model; `None` when `llm.enabled = false`.
    pub llm: Option<Arc<LlmEngine>>,
    /// Enforcement (profiles, scorer, rewriter); also the response stage.
    pub enforcer: Arc<Enforcer>,
    /// The background tasks (decision writer, deferred audits, lease releases), drained at
    /// shutdown.
    pub background: Arc<Background>,
    /// When the state was built (the proxy's uptime in `/v1/stats`).
    pub started: std::time::Instant,
    /// The last readiness probe: when, ready, each upstream's outcome.
    pub ready_cache: Arc<std::sync::Mutex<Option<ReadyProbe>>>,
}

/// A readiness probe's time, verdict and per-upstream outcomes.
pub type ReadyProbe = (
    std::time::Instant,
    bool,
    std::collections::BTreeMap<String, String>,
);

/// Open the configured profile store and load every current profile (blocking).
pub fn open_profiles(config: &crate::config::ProfilesConfig) -> anyhow::Result<Profiles> {
    use crate::config::StoreBackend;
    let (field, store): (&str, Arc<dyn crate::store::ProfileStore>) = match config.backend {
        StoreBackend::Sqlite => {
            let db = std::path::PathBuf::from(&config.database);
            let store =
                SqliteStore::open(&db).map_err(|e| anyhow::anyhow!("profiles.database: {e}"))?;
            ("profiles.database", Arc::new(store))
        }
        StoreBackend::Postgres => {
            let url = config.postgres_url()?;
            let store =
                PostgresStore::connect(&url).map_err(|e| anyhow::anyhow!("profiles.url: {e}"))?;
            ("profiles.url", Arc::new(store))
        }
    };
    Profiles::open(store).map_err(|e| anyhow::anyhow!("{field}: {e}"))
}

impl AppState {
    /// Build everything the server needs: tenants, upstreams, the profile store, the models.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        let tenants = TenantRegistry::from_config(&config)?;
        let llm = if config.llm.enabled {
            Some(Arc::new(
                LlmEngine::load(&config.llm, metrics.llm.clone()).await?,
            ))
        } else {
            None
        };
        let upstreams = Upstreams::from_config(&config, metrics.clone(), llm.clone())?;
        let admin_key_hash = config.admin_key.as_deref().map(crate::config::hash_key);
        let profiles_config = config.profiles.clone();
        let profiles =
            tokio::task::spawn_blocking(move || open_profiles(&profiles_config)).await??;
        let models = if config.models.enabled {
            Some(Arc::new(
                ValueModels::load(&config.models, metrics.encoder.clone()).await?,
            ))
        } else {
            None
        };
        let profiles = Arc::new(profiles);
        let scorer = models.as_ref().map(|m| Scorer {
            detector: m.detector.clone(),
            encoder: m.semantic.clone(),
            value_weight: config.rewriter.value_weight,
            integrity_floor: config.rewriter.min_integrity,
        });
        let backend = match config.rewriter.backend {
            RewriterBackend::Local => llm.clone().map(RewriteBackend::Local),
            RewriterBackend::Remote => config
                .rewriter
                .upstream
                .as_deref()
                .and_then(|n| upstreams.get(n))
                .zip(config.rewriter.model.clone())
                .map(|(upstream, model)| RewriteBackend::Remote { upstream, model }),
        };
        let editor = match (&scorer, &models) {
            (Some(scorer), Some(m)) => {
                let path = std::path::Path::new(&config.rewriter.bank);
                let bank = crate::edit::bank::Bank::load(path, &m.semantic)
                    .await
                    .map_err(|e| anyhow::anyhow!("rewriter.bank: {e}"))?;
                Some(Arc::new(crate::edit::Editor {
                    backend: backend.clone().map(Arc::new),
                    scorer: scorer.clone(),
                    bank: Arc::new(bank),
                    config: config.rewriter.clone(),
                }))
            }
            _ => None,
        };
        let rewriter = match (backend, scorer.clone()) {
            (Some(backend), Some(scorer)) => {
                tracing::info!(backend = %backend.name(), "rewriter ready");
                Some(Arc::new(Rewriter {
                    backend,
                    scorer,
                    config: config.rewriter.clone(),
                }))
            }
            _ => {
                tracing::warn!(
                    "no rewriter: it needs the value models and the local model (or a remote \
                     backend); profiles with action \"rewrite\" will answer 503"
                );
                None
            }
        };
        let background = Arc::new(Background::default());
        let (deferred, deferred_rx) = crate::enforce::deferred::queue();
        let enforcer = Arc::new(Enforcer {
            profiles: profiles.clone(),
            decider: crate::enforce::Decider {
                scorer,
                rewriter,
                editor,
                mode: config.rewriter.mode,
                max_text_chars: config.models.max_text_chars,
                metrics: metrics.clone(),
            },
            config: config.enforce.clone(),
            metrics: metrics.clone(),
            deferred,
            decisions: config.decisions.enabled.then(|| {
                crate::decisions::DecisionLog::start(
                    profiles.store(),
                    config.decisions.queue,
                    config.decisions.retention_days,
                    metrics.decisions.clone(),
                    &background,
                )
            }),
        });
        crate::enforce::deferred::spawn(Arc::downgrade(&enforcer), deferred_rx, &background);
        let limits = Arc::new(crate::limits::Limits::from_config(
            &config.limits,
            metrics.limits_fallback.clone(),
            &background,
        )?);
        Ok(Self(Arc::new(Shared {
            background,
            limits,
            stage: Arc::new(EnforceStage(enforcer.clone())),
            enforcer,
            llm,
            profiles,
            models,
            admission: Arc::new(Semaphore::new(config.server.max_concurrent_requests)),
            config: Arc::new(config),
            tenants: Arc::new(tenants),
            upstreams: Arc::new(upstreams),
            metrics,
            admin_key_hash,
            started: std::time::Instant::now(),
            ready_cache: Arc::new(std::sync::Mutex::new(None)),
        })))
    }
}

impl AppState {
    pub fn models(&self) -> Result<&Arc<ValueModels>, ApiError> {
        self.models.as_ref().ok_or_else(|| {
            ApiError::new(
                ErrorKind::Unavailable,
                "the value models are disabled on this proxy (models.enabled = false)",
            )
        })
    }

    pub async fn translate(&self, instruction: &str) -> Result<Translation, ApiError> {
        Ok(self.models()?.translator.translate(instruction).await?)
    }
}

/// Serve until `shutdown` fires, then let in-flight requests finish for up to `grace`, then let
/// the background work drain its queues (decisions still to be written, leases to release) for
/// up to `grace` again.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let background = state.background.clone();
    let result = serve_requests(state, listener, shutdown, grace).await;
    // The server and with it every clone of the state are gone, so the queues' senders are
    // dropped and each task ends once it has handled what its queue still holds.
    let left = background.drain(grace).await;
    if left.is_empty() {
        tracing::info!("background work drained");
    } else {
        tracing::warn!(tasks = ?left, "grace period over; background work stopped before it drained");
    }
    result
}

async fn serve_requests(
    state: AppState,
    listener: TcpListener,
    shutdown: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let admission = state.admission.clone();
    let capacity = state.config.server.max_concurrent_requests;
    let app = routes::router(state);
    // Small SSE chunks must leave at once, not wait for Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future();
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result.map_err(Into::into),
        () = shutdown.cancelled() => {}
    }
    let in_flight = capacity.saturating_sub(admission.available_permits());
    tracing::info!(
        in_flight,
        grace_ms = grace.as_millis() as u64,
        "shutting down: no new connections, waiting for in-flight requests"
    );
    match tokio::time::timeout(grace, &mut server).await {
        Ok(result) => {
            tracing::info!("all requests finished; stopped");
            result.map_err(Into::into)
        }
        Err(_) => {
            let left = capacity.saturating_sub(admission.available_permits());
            tracing::warn!(
                in_flight = left,
                "grace period over; stopping with requests still in flight"
            );
            Ok(())
        }
    }
}
