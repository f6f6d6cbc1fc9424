//! Enforcement on streamed answers. `window` mode holds text until a window (sentence or clause
//! boundary, a small first window for a low time to first token) is complete, checks it, and
//! releases it, its rewrite, or nothing (the stream then ends with `content_filter`), so no byte
//! the profile rewrites or blocks reaches the client. `buffer` mode holds the whole answer.
//! `audit` profiles pass the stream through untouched and score it at the end.
//!
//! `chunks` takes upstream chunks apart and makes the proxy's own; `windows`, `buffer` and
//! `audit` are the three ways a stream goes through.

mod audit;
mod buffer;
mod chunks;
mod windows;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use axum::http::HeaderValue;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde_json::{Map, Value, json};

use super::{
    ACTION_HEADER, Decide, Enforcer, Outcome, REFUSAL, Report, STREAM_MODE_HEADER, VisaAction,
    user_request, visa_headers,
};
use crate::edit::Scope;
use crate::error::ApiError;
use crate::stage::{Sampled, SampledAnswer, StageContext, StageStream};
use crate::upstream::sse::StreamEvent;
use crate::values::ValueVector;
use crate::values::profile::{Action, Profile, StreamMode};

type Item = Result<StreamEvent, ApiError>;

use audit::audit;
use buffer::buffer;
pub(crate) use chunks::adjust_usage;
pub(crate) use chunks::content_texts;
use chunks::{Kind, Piece, Template, pieces};
pub use windows::cut_point;
use windows::{Windows, refuse_once, too_large, windows};

pub async fn enforce_stream(
    enforcer: Arc<Enforcer>,
    ctx: StageContext,
    stream: StageStream,
) -> Result<StageStream, ApiError> {
    let Some(profile) = enforcer.profile_for(&ctx.tenant.id)? else {
        return Ok(stream);
    };
    let mut headers = visa_headers(None, &profile);
    headers.extend(stream.headers);
    let upstream = futures_util::stream::once(async move { Ok(stream.first) })
        .chain(stream.rest)
        .boxed();
    let state = Windows {
        request_id: ctx.request_id.clone(),
        context: user_request(&ctx.request),
        tenant: ctx.tenant.id.clone(),
        metadata: ctx.metadata,
        enforcer,
        profile,
        template: Template::default(),
        choices: BTreeMap::new(),
        reports: Vec::new(),
        usage: None,
        upstream_chars: 0,
        delivered_chars: 0,
        changed: false,
        worst: VisaAction::Passed,
        started: Instant::now(),
    };
    let (mode, mut out): (&str, BoxStream<'static, Item>) = match state.profile.action {
        Action::Audit => {
            headers.insert(ACTION_HEADER, HeaderValue::from_static("passed"));
            ("audit", audit(state, upstream))
        }
        _ if state.profile.stream_mode == StreamMode::Buffer => {
            let (action, events) = buffer(state, upstream).await?;
            headers.insert(ACTION_HEADER, HeaderValue::from_static(action.as_str()));
            (
                "buffer",
                futures_util::stream::iter(events.into_iter().map(Ok)).boxed(),
            )
        }
        _ => ("window", windows(state, upstream)),
    };
    headers.insert(STREAM_MODE_HEADER, HeaderValue::from_static(mode));
    // The response starts with the first event the client may see.
    let first = match out.next().await {
        Some(Ok(ev)) => ev,
        Some(Err(e)) => return Err(e),
        None => return Err(ApiError::bad_gateway("the upstream stream was empty")),
    };
    Ok(StageStream {
        first,
        rest: out,
        headers,
    })
}
