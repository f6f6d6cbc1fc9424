//! Audit by sampling: answers of an audit profile with `audit_sample` pass through as bytes,
//! and the share drawn is measured after it was sent, by one background task behind a
//! bounded queue (full: the sample is dropped and counted, never waited for).

use std::convert::Infallible;
use std::sync::Arc;

use axum::http::HeaderMap;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::Enforcer;
use crate::stage::{Sampled, SampledAnswer, StageContext, StageStream};
use crate::upstream::sse::{StreamEvent, classify};
use crate::values::profile::Action;

/// Samples waiting to be measured; more are dropped.
pub const QUEUE: usize = 256;

/// A uniform draw in [0, 1).
pub fn draw() -> f64 {
    let (bits, _) = uuid::Uuid::new_v4().as_u64_pair();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Start the task that measures samples; the sender feeds it.
pub fn spawn(enforcer: Arc<Enforcer>) -> mpsc::Sender<Sampled> {
    let (tx, mut rx) = mpsc::channel::<Sampled>(QUEUE);
    // One at a time: measured on this 2-core machine, 4 at once measured no more samples
    // per second (174 against 165 in 4 s at c=16) and cost the fast path a third of its
    // throughput; the encoder is the bound either way.
    tokio::spawn(async move {
        while let Some(job) = rx.recv().await {
            measure(&enforcer, job).await;
        }
    });
    tx
}

/// Decode a whole SSE body into events; None when it did not end with `[DONE]`.
async fn events(body: bytes::Bytes) -> Option<Vec<StreamEvent>> {
    let mut decoded =
        futures_util::stream::iter(std::iter::once(Ok::<_, Infallible>(body))).eventsource();
    let mut out = Vec::new();
    while let Some(Ok(ev)) = decoded.next().await {
        let ev = classify(&ev.data, &ev.event, &ev.id).ok()?;
        let done = ev == StreamEvent::Done;
        out.push(ev);
        if done {
            return Some(out);
        }
    }
    None
}

/// Run the audit on one sample as the request path would have; its figures go to the
/// metrics and `/v1/stats`, its report nowhere (the answer is gone).
async fn measure(enforcer: &Arc<Enforcer>, job: Sampled) {
    // A profile changed since: a sample of an audit is not measured as a rewrite.
    if !enforcer
        .profiles
        .get(&job.tenant.id)
        .is_some_and(|p| p.action == Action::Audit)
    {
        enforcer.metrics.audit_sample("skipped");
        return;
    }
    let request = serde_json::from_slice(&job.request).unwrap_or(serde_json::Value::Null);
    let ctx = StageContext {
        tenant: job.tenant,
        request_id: job.request_id,
        request: Arc::new(request),
        metadata: false,
    };
    let outcome = match job.answer {
        SampledAnswer::Json(body) => enforcer.enforce_json(ctx, body).await.map(drop),
        SampledAnswer::TooLarge => {
            enforcer.metrics.audit_sample("too_large");
            return;
        }
        SampledAnswer::Stream(body) => {
            let Some(mut evs) = events(body).await else {
                enforcer.metrics.audit_sample("incomplete");
                return;
            };
            let first = evs.remove(0);
            let stream = StageStream {
                first,
                rest: futures_util::stream::iter(evs.into_iter().map(Ok)).boxed(),
                headers: HeaderMap::new(),
            };
            match super::stream::enforce_stream(enforcer.clone(), ctx, stream).await {
                Ok(out) => {
                    out.rest.count().await;
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
    };
    match outcome {
        Ok(()) => enforcer.metrics.audit_sample("measured"),
        Err(e) => {
            tracing::debug!(error = %e.message, "a sampled answer could not be measured");
            enforcer.metrics.audit_sample("failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_in_the_unit_interval_and_spread() {
        let draws: Vec<f64> = (0..2000).map(|_| draw()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let below = draws.iter().filter(|d| **d < 0.25).count();
        assert!((400..600).contains(&below), "{below} of 2000 below 0.25");
    }

    #[tokio::test]
    async fn a_stream_body_is_decoded_only_when_it_finished() {
        let done = bytes::Bytes::from_static(b": c\n\ndata: {\"a\":1}\n\ndata: [DONE]\n\n");
        let evs = events(done).await.unwrap();
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[1], StreamEvent::Done);
        let cut = bytes::Bytes::from_static(b"data: {\"a\":1}\n\n");
        assert!(events(cut).await.is_none());
    }
}
