//! The seam between "the upstream answered" and "the client receives": a [`ResponseStage`]
//! sees every JSON answer and every stream before the client does. Value enforcement plugs in
//! here (`enforce::EnforceStage`).

use std::sync::Arc;

use axum::http::HeaderMap;
use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::error::ApiError;
use crate::tenants::Tenant;
use crate::upstream::sse::{EventStream, StreamEvent};

/// How one request goes through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The stage changes the request or looks at the answer on the way.
    Stage,
    /// Neither: request and answer are forwarded as bytes (the gateway's fast path).
    PassThrough,
    /// Forwarded as bytes, and a copy of the answer goes to [`ResponseStage::sampled`].
    Sample,
}

/// An answer that passed through, to be looked at after it was sent.
pub struct Sampled {
    pub tenant_id: String,
    pub request_id: String,
    pub answer: SampledAnswer,
}

pub enum SampledAnswer {
    /// A JSON answer's body.
    Json(Bytes),
    /// A stream's bytes as the client received them.
    Stream(Bytes),
    /// A stream too long to keep a copy of.
    TooLarge,
    /// The content text of each choice, already read (a stream audit's).
    Texts(std::collections::BTreeMap<usize, String>),
}

/// What a stage knows about the request it works on.
#[derive(Clone)]
pub struct StageContext {
    pub tenant: Arc<Tenant>,
    pub request_id: String,
    /// The client's request body as sent upstream (after alias mapping).
    pub request: Arc<serde_json::Value>,
    /// The client asked for the `visa` report (`x-visa-metadata: true`).
    pub metadata: bool,
}

/// A stream as a stage receives and returns it: the first event plus the rest.
pub struct StageStream {
    pub first: StreamEvent,
    pub rest: EventStream,
    /// Headers to add to the client's response (e.g. what the stage decided).
    pub headers: HeaderMap,
}

/// A stage's JSON result: the body and headers to add.
pub struct StageJson {
    pub body: Bytes,
    pub headers: HeaderMap,
}

pub trait ResponseStage: Send + Sync + 'static {
    /// How this tenant's next request is handled. The default: the stage sees it.
    fn plan(&self, _tenant: &Tenant) -> Plan {
        Plan::Stage
    }

    /// Take an answer that passed through under [`Plan::Sample`], to look at after it was
    /// sent. Must not wait (a full queue drops it).
    fn sampled(&self, _sample: Sampled) {}

    /// Change the request before it goes upstream (e.g. a steering system message); the
    /// default leaves it alone.
    fn prepare(&self, _tenant: &Tenant, _body: &mut serde_json::Map<String, serde_json::Value>) {}

    /// A complete, successful JSON answer (already checked to be JSON).
    fn json(
        &self,
        ctx: StageContext,
        body: Bytes,
    ) -> BoxFuture<'static, Result<StageJson, ApiError>>;

    /// A stream; the stage may hold, change or end events. An `Err` item ends the stream with
    /// an error event.
    fn stream(
        &self,
        ctx: StageContext,
        stream: StageStream,
    ) -> BoxFuture<'static, Result<StageStream, ApiError>>;
}
