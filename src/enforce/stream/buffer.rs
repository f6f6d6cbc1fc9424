//! `buffer` mode: the whole answer held, each choice decided, and the result sent with the
//! upstream's events in their order.

use super::*;

/// What a buffered choice becomes.
pub(super) enum Fate {
    Pass,
    Replace(String),
    Block,
}

/// `buffer` mode: read the whole answer, decide each choice, then send the result with the
/// upstream's events in their order: a choice that passed comes back chunk for chunk; a
/// rewritten one sends its new text where its text began; a blocked one the refusal.
pub(super) async fn buffer(
    mut state: Windows,
    mut upstream: BoxStream<'static, Item>,
) -> Result<(VisaAction, Vec<StreamEvent>), ApiError> {
    let mut log: Vec<Piece> = Vec::new();
    let mut texts: BTreeMap<usize, String> = BTreeMap::new();
    let mut reasoning: BTreeMap<usize, (&'static str, String)> = BTreeMap::new();
    let mut refusals: BTreeMap<usize, String> = BTreeMap::new();
    let mut audio: BTreeMap<usize, String> = BTreeMap::new();
    let limit = state.enforcer.config.max_buffer_chars;
    let mut held = 0usize;
    while let Some(item) = upstream.next().await {
        let data = match item? {
            StreamEvent::Data(d) | StreamEvent::Tagged { data: d, .. } => d,
            StreamEvent::Done => break,
        };
        state.template.learn(&data);
        for piece in pieces(&data) {
            match &piece {
                Piece::Content { index, text, .. } => {
                    held += text.chars().count();
                    texts.entry(*index).or_default().push_str(text);
                }
                Piece::Reasoning { index, field, text } => {
                    held += text.chars().count();
                    let r = reasoning.entry(*index).or_insert((field, String::new()));
                    r.1.push_str(text);
                }
                Piece::Refusal { index, text } => {
                    held += text.chars().count();
                    refusals.entry(*index).or_default().push_str(text);
                }
                Piece::Audio { index, delta } => {
                    held += delta.to_string().len();
                    let t = audio.entry(*index).or_default();
                    if let Some(s) = delta.get("transcript").and_then(Value::as_str) {
                        t.push_str(s);
                    }
                }
                Piece::Extras { index, fields } => {
                    state
                        .choices
                        .entry(*index)
                        .or_default()
                        .extras
                        .extend(fields.clone());
                    continue;
                }
                Piece::Usage(u) => {
                    state.usage = Some(u.clone());
                    continue;
                }
                _ => {}
            }
            if held > limit {
                return Err(too_large(limit, "answer"));
            }
            log.push(piece);
        }
    }
    let held_from = Instant::now();
    let deadline = state
        .enforcer
        .budget(&state.profile)
        .map(|b| tokio::time::Instant::now() + b);
    let outcomes = futures_util::future::join_all(texts.iter().map(|(index, text)| {
        let (enforcer, profile, tenant, context) = (
            state.enforcer.clone(),
            state.profile.clone(),
            state.tenant.clone(),
            state.context.clone(),
        );
        let (index, text) = (*index, text.clone());
        async move {
            if text.trim().is_empty() {
                return Ok(None);
            }
            enforcer
                .decide(
                    &tenant,
                    &profile,
                    index,
                    &text,
                    Decide::whole(context.as_deref(), deadline),
                )
                .await
                .map(Some)
        }
    }))
    .await;
    state.enforcer.metrics.added("buffer", held_from.elapsed());
    let mut fates: BTreeMap<usize, Fate> = BTreeMap::new();
    for ((index, text), outcome) in texts.iter().zip(outcomes) {
        let (action, new_text) = match outcome? {
            Some(o) => {
                state.reports.push(o.report);
                (o.action, o.text)
            }
            None => (VisaAction::Passed, None),
        };
        state.worst = state.worst.max(action);
        state.upstream_chars += text.chars().count();
        let fate = match (action, new_text) {
            (VisaAction::Blocked, _) => Fate::Block,
            (VisaAction::Rewritten, Some(t)) => {
                state.changed = true;
                state.delivered_chars += t.chars().count();
                Fate::Replace(t)
            }
            _ => {
                state.delivered_chars += text.chars().count();
                Fate::Pass
            }
        };
        if state.keeps_text() {
            let b = state.choices.entry(*index).or_default();
            b.upstream = text.clone();
            b.released = match &fate {
                Fate::Replace(t) => t.clone(),
                Fate::Pass => text.clone(),
                Fate::Block => String::new(),
            };
        }
        fates.insert(*index, fate);
    }
    // Text beside the content: checked, not rewritten. A refusal or transcript that misses
    // the profile blocks its choice; reasoning that expresses too much is withheld, and so is
    // the reasoning of a choice whose content changed.
    let mut withheld: Vec<usize> = Vec::new();
    let mut sides: Vec<(usize, &'static str, String, bool)> = Vec::new();
    for (index, (field, t)) in &reasoning {
        sides.push((*index, field, t.clone(), true));
    }
    for (index, t) in &refusals {
        sides.push((*index, "refusal", t.clone(), false));
    }
    for (index, t) in &audio {
        if t.trim().is_empty() {
            // Audio without a transcript cannot be checked.
            fates.insert(*index, Fate::Block);
            state.worst = state.worst.max(VisaAction::Blocked);
        } else {
            sides.push((*index, "audio.transcript", t.clone(), false));
        }
    }
    for (index, field, text, lower_only) in sides {
        if text.trim().is_empty() {
            continue;
        }
        let report = state
            .enforcer
            .check_only(
                &state.tenant,
                &state.profile,
                index,
                field,
                &text,
                lower_only,
            )
            .await?;
        let action = report.action;
        state.reports.push(report);
        if action == VisaAction::Blocked {
            if lower_only {
                withheld.push(index);
            } else {
                fates.insert(index, Fate::Block);
            }
        }
        if !lower_only {
            state.worst = state.worst.max(action);
        }
    }
    for (index, fate) in &fates {
        if !matches!(fate, Fate::Pass) {
            withheld.push(*index);
            if matches!(fate, Fate::Block) {
                state.worst = state.worst.max(VisaAction::Blocked);
            }
        }
    }
    let mut events: Vec<Item> = Vec::new();
    let mut placed: Vec<usize> = Vec::new();
    let blocked =
        |fates: &BTreeMap<usize, Fate>, i: usize| matches!(fates.get(&i), Some(Fate::Block));
    for piece in log {
        match piece {
            Piece::Content {
                index,
                text,
                logprobs,
            } => match fates.get(&index) {
                Some(Fate::Replace(t)) => {
                    if !placed.contains(&index) {
                        placed.push(index);
                        events.push(state.delta(index, json!({"content": t})));
                    }
                }
                Some(Fate::Block) => {
                    refuse_once(&state, &mut placed, &mut events, index);
                }
                _ => events.push(state.emit(index, json!({"content": text}), None, logprobs, None)),
            },
            Piece::Reasoning { index, field, text } => {
                if !withheld.contains(&index) {
                    events.push(state.delta(index, json!({ field: text })));
                }
            }
            Piece::Refusal { index, text } => {
                if blocked(&fates, index) {
                    refuse_once(&state, &mut placed, &mut events, index);
                } else {
                    events.push(state.delta(index, json!({"refusal": text})));
                }
            }
            Piece::Audio { index, delta } => {
                if !blocked(&fates, index) {
                    events.push(state.delta(index, json!({"audio": delta})));
                }
            }
            Piece::Other { index, mut delta } => {
                // A blocked choice keeps its role, not its tool calls.
                if blocked(&fates, index)
                    && let Some(d) = delta.as_object_mut()
                {
                    d.remove("tool_calls");
                    d.remove("function_call");
                }
                if delta.as_object().is_some_and(|d| !d.is_empty()) {
                    events.push(state.delta(index, delta));
                }
            }
            Piece::Finish { index, reason } => {
                if blocked(&fates, index) {
                    refuse_once(&state, &mut placed, &mut events, index);
                    let reason = Value::String("content_filter".into());
                    events.push(state.emit(index, json!({}), Some(&reason), Vec::new(), None));
                } else {
                    events.push(state.emit(index, json!({}), Some(&reason), Vec::new(), None));
                }
            }
            Piece::Raw(raw) => events.push(Ok(StreamEvent::Data(raw))),
            Piece::Extras { .. } | Piece::Usage(_) => {}
        }
    }
    events.extend(state.tail());
    let worst = state.worst;
    let events = events.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok((worst, events))
}
