//! Audits measured after their answer was sent: the answers drawn for an audit profile with
//! `audit_sample` (which pass through as bytes), and the full audit of a stream (which never
//! holds a stream back). One background task measures them one at a time behind a bounded
//! queue; when it is full an audit is dropped and counted, never waited for.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Weak};

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;

use super::{Decide, Enforcer};
use crate::stage::{Sampled, SampledAnswer};
use crate::upstream::sse::{StreamEvent, classify};
use crate::values::profile::Action;

/// Audits waiting to be measured; more are dropped.
pub const QUEUE: usize = 256;

/// The queue the enforcer feeds (`Enforcer::defer`) and the task's end of it.
pub fn queue() -> (mpsc::Sender<Sampled>, mpsc::Receiver<Sampled>) {
    mpsc::channel(QUEUE)
}

/// A uniform draw in [0, 1).
pub fn draw() -> f64 {
    let (bits, _) = uuid::Uuid::new_v4().as_u64_pair();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Start the task that measures what the queue holds (needs a Tokio runtime). It holds the
/// enforcer weakly, so that it ends when the enforcer (and with it the sender) goes.
pub fn spawn(
    enforcer: Weak<Enforcer>,
    mut rx: mpsc::Receiver<Sampled>,
    background: &crate::background::Background,
) {
    // One at a time: measured on this 2-core machine, 4 at once measured no more samples
    // per second (174 against 165 in 4 s at c=16) and cost the fast path a third of its
    // throughput; the encoder is the bound either way.
    background.spawn("deferred audits", async move {
        while let Some(job) = rx.recv().await {
            let Some(enforcer) = enforcer.upgrade() else {
                break;
            };
            measure(&enforcer, job).await;
        }
    });
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

/// The content text of each choice of a JSON answer; None when it is not a chat completion.
fn json_texts(body: &[u8]) -> Option<BTreeMap<usize, String>> {
    let answer: Value = serde_json::from_slice(body).ok()?;
    let mut texts = BTreeMap::new();
    for (k, c) in answer.get("choices")?.as_array()?.iter().enumerate() {
        let index = c.get("index").and_then(Value::as_u64).unwrap_or(k as u64) as usize;
        if let Some(Some(Some(text))) = c
            .get("message")
            .and_then(|m| m.get("content"))
            .map(super::content_text)
        {
            texts.insert(index, text);
        }
    }
    Some(texts)
}

/// Measure one sample as an audit on the request path would (the detector on each choice's
/// text; its figures go to the metrics and `/v1/stats`), and count how that went.
async fn measure(enforcer: &Arc<Enforcer>, job: Sampled) {
    // A profile changed since: a sample of an audit is not measured as a rewrite.
    let Some(profile) = enforcer
        .profiles
        .get(&job.tenant_id)
        .filter(|p| p.action == Action::Audit)
    else {
        enforcer.metrics.deferred_audit("skipped");
        return;
    };
    let texts = match job.answer {
        SampledAnswer::TooLarge => {
            enforcer.metrics.deferred_audit("too_large");
            return;
        }
        SampledAnswer::Texts(texts) => texts,
        SampledAnswer::Json(body) => match json_texts(&body) {
            Some(texts) => texts,
            None => {
                enforcer.metrics.deferred_audit("failed");
                return;
            }
        },
        SampledAnswer::Stream(body) => match events(body).await {
            Some(events) => super::stream::content_texts(&events),
            None => {
                enforcer.metrics.deferred_audit("incomplete");
                return;
            }
        },
    };
    for (index, text) in &texts {
        if text.trim().is_empty() {
            continue;
        }
        let how = Decide::whole(None, None);
        if let Err(e) = enforcer
            .decide(&job.tenant_id, &profile, *index, text, how)
            .await
        {
            tracing::debug!(request_id = %job.request_id, error = %e.message, "a sampled answer could not be measured");
            enforcer.metrics.deferred_audit("failed");
            return;
        }
    }
    enforcer.metrics.deferred_audit("measured");
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

    #[test]
    fn json_texts_read_each_choice_and_refuse_what_is_not_a_completion() {
        let body = br#"{"choices":[{"index":0,"message":{"content":"One."}},
            {"index":1,"message":{"content":[{"type":"text","text":"Two"},{"type":"text","text":"."}]}},
            {"index":2,"message":{"content":null,"tool_calls":[]}}]}"#;
        let texts = json_texts(body).unwrap();
        assert_eq!(texts.len(), 2);
        assert_eq!(texts[&0], "One.");
        assert_eq!(texts[&1], "Two.");
        assert!(json_texts(br#"{"error":{"message":"x"}}"#).is_none());
        assert!(json_texts(b"not json").is_none());
    }

    #[tokio::test]
    async fn stream_texts_join_each_choices_deltas() {
        let body = bytes::Bytes::from_static(
            b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Take \"}}]}\n\n\
              data: {\"choices\":[{\"index\":1,\"delta\":{\"content\":\"B\"}}]}\n\n\
              data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"control.\"}}]}\n\n\
              data: [DONE]\n\n",
        );
        let texts = crate::enforce::stream::content_texts(&events(body).await.unwrap());
        assert_eq!(texts[&0], "Take control.");
        assert_eq!(texts[&1], "B");
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
