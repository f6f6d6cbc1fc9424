//! The value-injection bank (`assets/edit/bank.json`): short sentences that each express one
//! value and state no fact, embedded once at start with the semantic encoder. When an answer
//! lacks a value, the sentences of that value closest to the answer are candidates for
//! insertion; the detector must still confirm that the chosen one expresses the value.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use visa_models::service::EncoderService;
use visa_values::ValueId;

#[derive(Deserialize)]
struct File {
    values: BTreeMap<ValueId, Vec<(String, String)>>,
}

/// One sentence of the bank.
#[derive(Debug, Clone)]
pub struct Entry {
    pub value: ValueId,
    /// The topic it suits (`work`, `food`, `general`, ...).
    pub context: String,
    pub text: String,
    /// Its semantic embedding (L2-normalised).
    pub vector: Vec<f32>,
}

#[derive(Default)]
pub struct Bank {
    pub entries: Vec<Entry>,
}

impl Bank {
    /// Read the file and embed its sentences. Every sentence must pass the insertion screening
    /// (no numbers, names or negations; one sentence).
    pub async fn load(path: &Path, encoder: &EncoderService) -> Result<Self, String> {
        let raw = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file: File =
            serde_json::from_str(&raw).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut entries = Vec::new();
        for (value, list) in file.values {
            for (context, text) in list {
                if let Some(why) = super::screen::check_insertion(&text, true, &text) {
                    return Err(format!(
                        "{}: {value}: {text:?} is not a valid insertion ({why:?})",
                        path.display()
                    ));
                }
                entries.push(Entry {
                    value,
                    context,
                    text,
                    vector: Vec::new(),
                });
            }
        }
        if !entries.is_empty() {
            let texts: Vec<String> = entries.iter().map(|e| e.text.clone()).collect();
            let embedded = encoder
                .embed(texts)
                .await
                .map_err(|e| format!("{}: embedding the bank: {}", path.display(), e.message))?;
            for (e, v) in entries.iter_mut().zip(embedded.vectors) {
                e.vector = v;
            }
        }
        Ok(Self { entries })
    }

    /// The `n` sentences of `value` closest to `target` (an embedding of the answer), closest
    /// first, with their similarity.
    pub fn closest(&self, value: ValueId, target: &[f32], n: usize) -> Vec<(&Entry, f32)> {
        let mut scored: Vec<(&Entry, f32)> = self
            .entries
            .iter()
            .filter(|e| e.value == value)
            .map(|e| {
                (
                    e,
                    e.vector.iter().zip(target).map(|(a, b)| a * b).sum::<f32>(),
                )
            })
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        scored.truncate(n);
        scored
    }
}
