//! `audit` streams: everything passes at once, and the text is scored once the upstream
//! finished.

use super::*;

/// `audit`: everything passes at once; the text is scored after the upstream finished.
pub(super) fn audit(
    mut state: Windows,
    mut upstream: BoxStream<'static, Item>,
) -> BoxStream<'static, Item> {
    async_stream::stream! {
        let mut texts: BTreeMap<usize, String> = BTreeMap::new();
        while let Some(item) = upstream.next().await {
            match item {
                Ok(StreamEvent::Done) => break,
                Ok(ev) => {
                    if let Some(d) = ev.data() {
                        for p in pieces(d) {
                            if let Piece::Content { index, text, .. } = p {
                                texts.entry(index).or_default().push_str(&text);
                            }
                        }
                        state.template.learn(d);
                    }
                    yield Ok(ev);
                }
                Err(e) => { yield Err(e); return; }
            }
        }
        if state.metadata {
            for (index, text) in &texts {
                if text.trim().is_empty() { continue; }
                match state.enforcer.decide(&state.tenant, &state.profile, *index, text, Decide::whole(None, None)).await {
                    Ok(o) => state.reports.push(o.report),
                    Err(e) => tracing::warn!(error = %e.message, "audit scoring failed"),
                }
            }
            // Usage passed through unchanged already; only the report is added.
            state.usage = None;
            for it in state.tail() { yield it; }
        } else {
            // Scores only feed metrics: do not hold [DONE] for them; measured after the
            // stream ended, behind the bounded queue.
            state.enforcer.defer(Sampled {
                tenant_id: state.tenant.clone(),
                request_id: state.request_id.clone(),
                answer: SampledAnswer::Texts(texts),
            });
            yield Ok(StreamEvent::Done);
        }
    }
    .boxed()
}
