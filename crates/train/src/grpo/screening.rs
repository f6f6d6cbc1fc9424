//! A sampled group as the serving rewriter would see it: each completion decoded and put
//! through the serving screening, the survivors scored by the serving scorer. GRPO's reward and
//! the warm start's choice both start from it, so training sees what serving would return.

use super::data::Item;
use super::sample::Group;
use crate::Settings;
use crate::models::gguf_tokenizer::GgufTokenizer;
use crate::rewriter::screen;
use crate::score::Scorer;

/// A group's completions as the serving rewriter would see them: each decoded and put
/// through its screening; the texts that pass, the completion each came from, and their
/// scores by the serving scorer (`None` when none passes).
pub struct Screened {
    pub texts: Vec<String>,
    pub slots: Vec<usize>,
    pub scored: Option<crate::score::Scored>,
}

pub fn screen_and_score(
    config: &Settings,
    tokenizer: &GgufTokenizer,
    scorer: &Scorer,
    rt: &tokio::runtime::Runtime,
    item: &Item,
    g: &Group,
) -> anyhow::Result<Screened> {
    let mut texts = Vec::new();
    let mut slots = Vec::new();
    for (j, c) in g.completions.iter().enumerate() {
        let raw = tokenizer.decode(c)?;
        let (text, rejected) = screen(&config.rewriter, &item.text, &raw, g.finished[j]);
        if rejected.is_none() {
            texts.push(text);
            slots.push(j);
        }
    }
    let scored = if texts.is_empty() {
        None
    } else {
        Some(
            rt.block_on(scorer.score(&item.profile(), &item.text, &texts))
                .map_err(|e| anyhow::anyhow!("scorer: {}", e.message))?,
        )
    };
    Ok(Screened {
        texts,
        slots,
        scored,
    })
}
