//! Upstreams: the LLM APIs the proxy forwards to, how a tenant's model name picks one, and
//! what an upstream answer looks like to the rest of the proxy.

pub mod headers;
pub mod http;
pub mod local;
pub mod passthrough;
pub mod sse;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::config::{Config, UpstreamConfig, UpstreamKind};
use crate::error::{ApiError, ErrorKind};
use crate::metrics::Metrics;
use crate::models::llm::LlmEngine;
use crate::tenants::Tenant;
pub use http::{ChatCall, HttpUpstream, UpstreamTimer};
pub use local::LocalUpstream;
use sse::{EventStream, StreamEvent};

/// A complete JSON answer (success statuses only).
pub struct JsonReply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A stream whose first event already arrived.
pub struct StreamReply {
    pub headers: HeaderMap,
    pub first: StreamEvent,
    pub rest: EventStream,
}

/// A stream forwarded as bytes: everything up to its first event, and the rest.
pub struct RawStreamReply {
    pub headers: HeaderMap,
    pub first: Bytes,
    pub rest: passthrough::ByteStream,
}

/// Why no answer can be given: the proxy's own error, or the upstream's OpenAI-shaped error
/// passed through with its status.
#[derive(Debug)]
pub enum UpstreamError {
    Api(ApiError),
    Passthrough {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
}

impl From<ApiError> for UpstreamError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl From<crate::models::error::ModelError> for UpstreamError {
    fn from(e: crate::models::error::ModelError) -> Self {
        Self::Api(e.into())
    }
}

impl IntoResponse for UpstreamError {
    fn into_response(self) -> Response {
        match self {
            Self::Api(e) => e.into_response(),
            Self::Passthrough {
                status,
                mut headers,
                body,
            } => {
                headers.insert(
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderValue::from_static("application/json"),
                );
                (status, headers, body).into_response()
            }
        }
    }
}

/// One upstream: an OpenAI-compatible HTTP API or the local model.
pub enum Upstream {
    Http(Box<HttpUpstream>),
    Local(LocalUpstream),
}

impl Upstream {
    pub fn name(&self) -> &str {
        match self {
            Self::Http(u) => u.name(),
            Self::Local(u) => u.name(),
        }
    }

    pub fn config(&self) -> &UpstreamConfig {
        match self {
            Self::Http(u) => &u.config,
            Self::Local(u) => &u.config,
        }
    }

    pub async fn chat_json(&self, call: ChatCall) -> Result<JsonReply, UpstreamError> {
        match self {
            Self::Http(u) => u.chat_json(call).await,
            Self::Local(u) => u.chat_json(call).await,
        }
    }

    pub async fn chat_stream(&self, call: ChatCall) -> Result<StreamReply, UpstreamError> {
        match self {
            Self::Http(u) => u.chat_stream(call).await,
            Self::Local(u) => u.chat_stream(call),
        }
    }

    /// A stream for a request no stage looks at: the upstream's bytes as they came (HTTP), or
    /// the local model's events encoded once.
    pub async fn chat_stream_bytes(&self, call: ChatCall) -> Result<RawStreamReply, UpstreamError> {
        match self {
            Self::Http(u) => u.chat_stream_raw(call).await,
            Self::Local(u) => {
                use futures_util::StreamExt;
                let reply = u.chat_stream(call)?;
                Ok(RawStreamReply {
                    headers: reply.headers,
                    first: sse::encode(&Ok(reply.first)),
                    rest: reply
                        .rest
                        .map(|item| item.map(|ev| sse::encode(&Ok(ev))))
                        .boxed(),
                })
            }
        }
    }

    pub async fn list_models(&self) -> Result<Vec<serde_json::Value>, String> {
        match self {
            Self::Http(u) => u.list_models().await,
            Self::Local(u) => Ok(u.list_models()),
        }
    }

    /// Reachability for `/readyz` (the local model is loaded before the server starts).
    pub async fn probe(&self) -> Result<(), String> {
        match self {
            Self::Http(u) => u.probe().await,
            Self::Local(_) => Ok(()),
        }
    }
}

/// The remote rewriter (`[rewriter] backend = "remote"`) asks an upstream for candidates through
/// this: `visa-core` knows no HTTP.
impl visa_core::rewriter::ChatEndpoint for Upstream {
    fn name(&self) -> &str {
        Upstream::name(self)
    }

    fn chat(
        &self,
        body: Bytes,
    ) -> futures_util::future::BoxFuture<'_, Result<Bytes, crate::models::error::ModelError>> {
        Box::pin(async move {
            let call = ChatCall {
                body,
                stream: false,
                request_id: format!("rewrite-{}", uuid::Uuid::new_v4().simple()),
                timer: UpstreamTimer::default(),
            };
            match self.chat_json(call).await {
                Ok(reply) => Ok(reply.body),
                Err(UpstreamError::Api(e)) => Err(e.into_model_error()),
                Err(UpstreamError::Passthrough { status, body, .. }) => {
                    Err(crate::models::error::ModelError::bad_gateway(format!(
                        "the remote rewriter answered {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    )))
                }
            }
        })
    }
}

/// Where one request goes.
pub struct Route {
    pub upstream: Arc<Upstream>,
    /// The model name to send, when an alias mapped it.
    pub model: Option<String>,
}

/// All configured upstreams, sharing one pooled HTTP client.
pub struct Upstreams {
    by_name: HashMap<String, Arc<Upstream>>,
    order: Vec<String>,
}

impl Upstreams {
    pub fn from_config(
        config: &Config,
        metrics: Arc<Metrics>,
        llm: Option<Arc<LlmEngine>>,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(
                config.server.upstream_connect_timeout_ms,
            ))
            .pool_max_idle_per_host(config.server.upstream_pool_max_idle_per_host)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            // A proxy passes redirects back instead of following them with the tenant's body.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("visa-proxy/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let mut by_name = HashMap::new();
        let mut order = Vec::new();
        for (i, u) in config.upstreams.iter().enumerate() {
            if u.kind == UpstreamKind::Local {
                let engine = llm.clone().ok_or_else(|| {
                    anyhow::anyhow!("upstreams[{i}]: a local upstream needs [llm] enabled")
                })?;
                order.push(u.name.clone());
                by_name.insert(
                    u.name.clone(),
                    Arc::new(Upstream::Local(LocalUpstream::new(u.clone(), engine))),
                );
                continue;
            }
            let key = match &u.api_key_env {
                Some(var) => Some(std::env::var(var).map_err(|_| {
                    anyhow::anyhow!(
                        "upstreams[{i}].api_key_env: environment variable {var} is not set"
                    )
                })?),
                None => None,
            };
            let up = HttpUpstream::new(u.clone(), key, client.clone(), metrics.clone())
                .map_err(|m| anyhow::anyhow!("upstreams[{i}]: {m}"))?;
            order.push(u.name.clone());
            by_name.insert(u.name.clone(), Arc::new(Upstream::Http(Box::new(up))));
        }
        Ok(Self { by_name, order })
    }

    pub fn get(&self, name: &str) -> Option<Arc<Upstream>> {
        self.by_name.get(name).cloned()
    }

    /// Every upstream in configuration order.
    pub fn all(&self) -> Vec<Arc<Upstream>> {
        self.order.iter().filter_map(|n| self.get(n)).collect()
    }

    /// The upstream for `model` among the tenant's: the one that defines it as an alias, else
    /// the tenant's first upstream with the model name unchanged.
    pub fn route(&self, tenant: &Tenant, model: &str) -> Result<Route, ApiError> {
        for name in &tenant.upstreams {
            if let Some(up) = self.by_name.get(name)
                && let Some(mapped) = up.config().models.get(model)
            {
                return Ok(Route {
                    upstream: up.clone(),
                    model: Some(mapped.clone()),
                });
            }
        }
        let default = tenant.default_upstream();
        self.by_name
            .get(default)
            .map(|up| Route {
                upstream: up.clone(),
                model: None,
            })
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::Internal,
                    format!(
                        "tenant {} names upstream {default:?}, which does not exist",
                        tenant.id
                    ),
                )
            })
    }
}
