//! The HTTP server: shared state, the router with its middleware, and graceful shutdown.

pub mod admin;
pub mod auth;
pub mod chat;
pub mod extract;
pub mod health;
pub mod models;
pub mod observe;
pub mod openapi;
pub mod routes;

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::stage::{PassThrough, ResponseStage};
use crate::tenants::TenantRegistry;
use crate::upstream::Upstreams;

/// Everything handlers share; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub tenants: Arc<TenantRegistry>,
    pub upstreams: Arc<Upstreams>,
    pub metrics: Arc<Metrics>,
    pub stage: Arc<dyn ResponseStage>,
    /// Global admission: requests beyond `server.max_concurrent_requests` are shed with 429.
    pub admission: Arc<Semaphore>,
    /// SHA-256 of `VISA_ADMIN_KEY`, when set.
    pub admin_key_hash: Option<[u8; 32]>,
}

impl AppState {
    pub fn from_config(config: Config) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        let tenants = TenantRegistry::from_config(&config)?;
        let upstreams = Upstreams::from_config(&config, metrics.clone())?;
        let admin_key_hash = config.admin_key.as_deref().map(crate::config::hash_key);
        Ok(Self {
            admission: Arc::new(Semaphore::new(config.server.max_concurrent_requests)),
            config: Arc::new(config),
            tenants: Arc::new(tenants),
            upstreams: Arc::new(upstreams),
            metrics,
            stage: Arc::new(PassThrough),
            admin_key_hash,
        })
    }
}

/// Serve until `shutdown` fires, then let in-flight requests finish for up to `grace`.
pub async fn serve(
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
