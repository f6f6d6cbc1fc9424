//! An upstream chunk taken apart into what enforcement checks (content, reasoning, refusal,
//! audio, finish reasons, log-probabilities, usage), and the chunks the proxy makes in the
//! upstream's own shape.

use super::*;

/// The parts of an upstream chunk that enforcement cares about.
#[derive(Debug, PartialEq)]
pub(super) enum Piece {
    /// Choice-level fields other than the delta, the finish reason and log-probabilities
    /// (`content_filter_results`, say): kept, and carried on the chunks the proxy builds.
    Extras {
        index: usize,
        fields: Map<String, Value>,
    },
    /// Content text, with the log-probabilities of its tokens.
    Content {
        index: usize,
        text: String,
        logprobs: Vec<Value>,
    },
    /// Reasoning text (`reasoning_content` or `reasoning`): checked, never rewritten.
    Reasoning {
        index: usize,
        field: &'static str,
        text: String,
    },
    /// Refusal text: checked whole, never rewritten.
    Refusal {
        index: usize,
        text: String,
    },
    /// An audio delta (audio data and its transcript): held until the transcript is checked.
    Audio {
        index: usize,
        delta: Value,
    },
    /// A delta without text (role, tool calls): passes untouched.
    Other {
        index: usize,
        delta: Value,
    },
    Finish {
        index: usize,
        reason: Value,
    },
    Usage(Value),
    /// A chunk without choices (an upstream error, a prompt filter's result): passes as it came.
    Raw(String),
}

/// What kind of text a piece is, so text of another kind held for the same choice goes out
/// before it and the order of the upstream's events stays.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Kind {
    Content,
    Reasoning,
    Refusal,
    Audio,
    Other,
    Finish,
}

impl Piece {
    pub(super) fn at(&self) -> Option<(usize, Kind)> {
        match self {
            Piece::Content { index, .. } => Some((*index, Kind::Content)),
            Piece::Reasoning { index, .. } => Some((*index, Kind::Reasoning)),
            Piece::Refusal { index, .. } => Some((*index, Kind::Refusal)),
            Piece::Audio { index, .. } => Some((*index, Kind::Audio)),
            Piece::Other { index, .. } => Some((*index, Kind::Other)),
            Piece::Finish { index, .. } => Some((*index, Kind::Finish)),
            Piece::Extras { .. } | Piece::Usage(_) | Piece::Raw(_) => None,
        }
    }
}

/// The content text of each choice of a finished stream's events, as the client read it.
pub(crate) fn content_texts(events: &[StreamEvent]) -> BTreeMap<usize, String> {
    let mut texts: BTreeMap<usize, String> = BTreeMap::new();
    for d in events.iter().filter_map(StreamEvent::data) {
        for p in pieces(d) {
            if let Piece::Content { index, text, .. } = p {
                texts.entry(index).or_default().push_str(&text);
            }
        }
    }
    texts
}

/// Split one chunk. Delta fields the proxy does not know are dropped (they may carry text it
/// cannot check), and so is a chunk without `choices` that is not an error.
pub(super) fn pieces(data: &str) -> Vec<Piece> {
    let Ok(Value::Object(chunk)) = serde_json::from_str::<Value>(data) else {
        return Vec::new();
    };
    let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
        return if chunk.contains_key("error") {
            vec![Piece::Raw(data.to_owned())]
        } else {
            Vec::new()
        };
    };
    let mut out = Vec::new();
    for (k, c) in choices.iter().enumerate() {
        let Some(c) = c.as_object() else { continue };
        let index = c.get("index").and_then(Value::as_u64).unwrap_or(k as u64) as usize;
        let extras: Map<String, Value> = c
            .iter()
            .filter(|(key, v)| {
                !v.is_null()
                    && !matches!(
                        key.as_str(),
                        "index" | "delta" | "finish_reason" | "logprobs"
                    )
            })
            .map(|(key, v)| (key.clone(), v.clone()))
            .collect();
        if !extras.is_empty() {
            out.push(Piece::Extras {
                index,
                fields: extras,
            });
        }
        let logprobs = c
            .get("logprobs")
            .and_then(|l| l.get("content"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(Value::Object(delta)) = c.get("delta") {
            let mut rest = Map::new();
            let mut texts = Vec::new();
            let mut content = String::new();
            for (key, v) in delta {
                match (key.as_str(), v) {
                    (_, Value::Null) => {}
                    ("content", Value::String(t)) => content.push_str(t),
                    ("refusal", Value::String(t)) if !t.is_empty() => texts.push(Piece::Refusal {
                        index,
                        text: t.clone(),
                    }),
                    (field @ ("reasoning_content" | "reasoning"), Value::String(t))
                        if !t.is_empty() =>
                    {
                        texts.push(Piece::Reasoning {
                            index,
                            field: if field == "reasoning" {
                                "reasoning"
                            } else {
                                "reasoning_content"
                            },
                            text: t.clone(),
                        })
                    }
                    ("audio", a) => texts.push(Piece::Audio {
                        index,
                        delta: a.clone(),
                    }),
                    ("role" | "tool_calls" | "function_call", v) => {
                        rest.insert(key.clone(), v.clone());
                    }
                    // Empty text, a content that is not a string, a field the proxy does not
                    // know: nothing it could check, so nothing is sent.
                    _ => {}
                }
            }
            // The role comes before the text it introduces.
            if !rest.is_empty() {
                out.push(Piece::Other {
                    index,
                    delta: Value::Object(rest),
                });
            }
            out.extend(texts);
            if !content.is_empty() || !logprobs.is_empty() {
                out.push(Piece::Content {
                    index,
                    text: content,
                    logprobs,
                });
            }
        }
        if let Some(r) = c.get("finish_reason").filter(|r| !r.is_null()) {
            out.push(Piece::Finish {
                index,
                reason: r.clone(),
            });
        }
    }
    match chunk.get("usage").filter(|u| !u.is_null()) {
        Some(u) => out.push(Piece::Usage(u.clone())),
        None if choices.is_empty() => out.push(Piece::Raw(data.to_owned())),
        None => {}
    }
    out
}

/// The top-level fields of the upstream's chunks (id, created, model, service tier, ...),
/// reused for the chunks the proxy makes.
#[derive(Clone, Default)]
pub(super) struct Template {
    pub(super) fields: Map<String, Value>,
}

impl Template {
    pub(super) fn learn(&mut self, data: &str) {
        if !self.fields.is_empty() {
            return;
        }
        if let Ok(Value::Object(c)) = serde_json::from_str::<Value>(data) {
            for (k, v) in c {
                // `obfuscation` pads each chunk to hide the length of its text: it belongs to
                // the upstream's chunk, not to the proxy's.
                if !matches!(k.as_str(), "choices" | "usage" | "obfuscation") {
                    self.fields.insert(k, v);
                }
            }
        }
    }

    pub(super) fn chunk(&self, choices: Value, extra: Option<(&str, Value)>) -> Item {
        let mut c = self.fields.clone();
        c.entry("object")
            .or_insert_with(|| Value::String("chat.completion.chunk".into()));
        c.insert("choices".into(), choices);
        if let Some((k, v)) = extra {
            c.insert(k.into(), v);
        }
        Ok(StreamEvent::Data(Value::Object(c).to_string()))
    }
}

/// When text changed, scale completion tokens by delivered / upstream characters (the proxy
/// cannot know the upstream's tokenizer); the totals follow.
pub(crate) fn adjust_usage(usage: &mut Value, upstream_chars: usize, delivered_chars: usize) {
    if upstream_chars == 0 {
        return;
    }
    if let Some(c) = usage.get("completion_tokens").and_then(Value::as_u64) {
        let scaled = (c as f64 * delivered_chars as f64 / upstream_chars as f64).round() as u64;
        let prompt = usage
            .get("prompt_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        usage["completion_tokens"] = json!(scaled);
        usage["total_tokens"] = json!(prompt + scaled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_chunks_into_pieces() {
        let p = pieces(
            r#"{"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null},{"index":1,"delta":{"tool_calls":[{"id":"t"}]},"finish_reason":"tool_calls"}],"usage":null}"#,
        );
        assert_eq!(
            p,
            vec![
                Piece::Other {
                    index: 0,
                    delta: json!({"role": "assistant"})
                },
                Piece::Content {
                    index: 0,
                    text: "Hi".into(),
                    logprobs: vec![]
                },
                Piece::Other {
                    index: 1,
                    delta: json!({"tool_calls": [{"id": "t"}]})
                },
                Piece::Finish {
                    index: 1,
                    reason: json!("tool_calls")
                },
            ]
        );
        assert_eq!(
            pieces(r#"{"choices":[],"usage":{"completion_tokens":3}}"#),
            vec![Piece::Usage(json!({"completion_tokens": 3}))]
        );
        assert_eq!(
            pieces(r#"{"error":{}}"#),
            vec![Piece::Raw(r#"{"error":{}}"#.into())]
        );
        // A chunk of another shape without choices, and unknown delta fields, are dropped;
        // reasoning, refusal and audio are pieces of their own; a chunk's log-probabilities
        // ride with its content; choice-level fields are kept.
        assert_eq!(pieces(r#"{"text":"Hi"}"#), vec![]);
        assert_eq!(
            pieces(r#"{"id":"c","choices":[]}"#),
            vec![Piece::Raw(r#"{"id":"c","choices":[]}"#.into())]
        );
        let p = pieces(
            r#"{"choices":[{"index":0,"delta":{"reasoning_content":"Think","refusal":"No","audio":{"transcript":"Hey"},"content":"Hi","weird":"x"},"logprobs":{"content":[{"token":"Hi"}]},"content_filter_results":{"hate":{}}}]}"#,
        );
        assert_eq!(
            p,
            vec![
                Piece::Extras {
                    index: 0,
                    fields: json!({"content_filter_results": {"hate": {}}})
                        .as_object()
                        .unwrap()
                        .clone()
                },
                Piece::Reasoning {
                    index: 0,
                    field: "reasoning_content",
                    text: "Think".into()
                },
                Piece::Refusal {
                    index: 0,
                    text: "No".into()
                },
                Piece::Audio {
                    index: 0,
                    delta: json!({"transcript": "Hey"})
                },
                Piece::Content {
                    index: 0,
                    text: "Hi".into(),
                    logprobs: vec![json!({"token": "Hi"})]
                },
            ]
        );
    }

    #[test]
    fn usage_scales_with_delivered_text() {
        let mut u = json!({"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30});
        adjust_usage(&mut u, 100, 150);
        assert_eq!(
            u,
            json!({"prompt_tokens": 10, "completion_tokens": 30, "total_tokens": 40})
        );
    }
}
