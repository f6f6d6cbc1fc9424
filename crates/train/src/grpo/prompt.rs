//! The chat prompt the policy is trained on for one whole-text item, built as the serving
//! rewriter builds it.

use super::data::Item;
use crate::models::gguf_tokenizer::GgufTokenizer;
use crate::rewriter::prompt;

/// The chat prompt for one item, as the serving rewriter builds it.
pub fn prompt_text(item: &Item, detected: &crate::values::ValueVector) -> String {
    let profile = item.profile();
    let gaps = profile.gaps(detected);
    let messages: Vec<(String, String)> = prompt::messages(&item.text, None, &gaps)
        .into_iter()
        .map(|m| (m.role.as_str().to_owned(), m.content))
        .collect();
    GgufTokenizer::chatml(&messages)
}
