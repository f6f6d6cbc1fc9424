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
    /// The stage neither changes this tenant's requests nor looks at its answers, so both can
    /// be forwarded as bytes (the gateway's fast path). The default: it may do either.
    fn passes_through(&self, _tenant: &Tenant) -> bool {
        false
    }

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
