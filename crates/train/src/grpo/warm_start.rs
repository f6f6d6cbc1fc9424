//! The warm start as `train-rewriter --warm-start N` runs it on the real base: sample rewrites
//! of the first N items, keep each item's best candidate that the serving screening and shield
//! accept, write them to `OUT/warm.jsonl`, and fit the adapters to them (the algorithm itself,
//! model-agnostic and tested on a tiny model, is `warm.rs`).

use std::time::Instant;

use serde_json::json;

use super::data::Item;
use super::options::TrainOptions;
use super::prompt::prompt_text;
use super::sample::Group;
use super::screening::{Screened, screen_and_score};
use super::trainer::Trainer;
use super::warm::{self, WarmConfig, WarmPrompt};
use crate::Settings;
use crate::models::gguf_tokenizer::GgufTokenizer;
use crate::rewriter::shield;
use crate::score::Scorer;

/// The supervised warm start (`--warm-start N`): sample rewrites of the first N items, keep
/// each item's best candidate that passes the serving screening and shield, write them to
/// `OUT/warm.jsonl`, fit the adapters to them, and return a summary for the card; `None` when
/// `stop()` (Ctrl-C) interrupted the sampling, before anything was fitted.
#[expect(
    clippy::too_many_arguments,
    reason = "the run, its model, tokenizer, scorer and options, each borrowed from the command"
)]
pub fn warm_start(
    o: &TrainOptions,
    config: &Settings,
    scorer: &Scorer,
    tokenizer: &GgufTokenizer,
    trainer: &mut Trainer,
    items: &[(Item, crate::values::ValueVector)],
    rt: &tokio::runtime::Runtime,
    stop: &dyn Fn() -> bool,
) -> anyhow::Result<Option<serde_json::Value>> {
    let started = Instant::now();
    let chosen = &items[..o.warm_start.min(items.len())];
    let prompts: Vec<WarmPrompt> = chosen
        .iter()
        .map(|(item, d)| {
            Ok(WarmPrompt {
                ids: tokenizer.encode(&prompt_text(item, d))?,
                max_new_tokens: crate::rewriter::max_tokens(&config.rewriter, &item.text)
                    .min(o.max_new_tokens),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let mut kept = Vec::new();
    let end_of_turn = tokenizer
        .tokenizer
        .token_to_id("<|im_end|>")
        .unwrap_or(tokenizer.eos);
    let mut choose = |k: usize, g: &Group| -> anyhow::Result<Option<Vec<u32>>> {
        let (item, _) = &chosen[k];
        let Screened {
            texts,
            slots,
            scored,
        } = screen_and_score(config, tokenizer, scorer, rt, item, g)?;
        let mut best: Option<(usize, usize, crate::score::CandidateScore)> = None;
        if let Some(scored) = scored {
            for (n, (j, s)) in slots.iter().zip(scored.candidates).enumerate() {
                if shield(&config.rewriter, scored.original.distance, &s).is_ok()
                    && best.as_ref().is_none_or(|b| s.reward > b.2.reward)
                {
                    best = Some((*j, n, s));
                }
            }
        }
        eprintln!(
            "warm start {}/{}: {} of {} candidates screened in, {}",
            k + 1,
            chosen.len(),
            texts.len(),
            g.completions.len(),
            match &best {
                Some((_, _, s)) => format!(
                    "kept one (progress {:.2}, integrity {:.2})",
                    s.progress, s.integrity
                ),
                None => "none passes the shield".to_owned(),
            }
        );
        // Fit the screened text (what serving would return) and the end of the turn, not
        // the raw sample with whatever preamble or notes the screening stripped.
        let Some((j, n, s)) = best else {
            return Ok(None);
        };
        let mut tokens = tokenizer.encode(&texts[n])?;
        tokens.push(end_of_turn);
        kept.push(json!({
                "id": item.id,
                "original": item.text,
                "target": item.target,
                "rewrite": texts[n],
                "reward": s.reward,
                "progress": s.progress,
                "integrity": s.integrity,
                "distance": s.fit.distance,
                "raw": tokenizer.decode(&g.completions[j])?,
        }));
        Ok(Some(tokens))
    };
    let sample = trainer.config.sample.clone();
    let picks = warm::collect(
        trainer,
        &prompts,
        o.warm_start_samples,
        &sample,
        &mut choose,
        stop,
    )?;
    if stop() {
        return Ok(None);
    }
    let sampled_s = started.elapsed().as_secs_f64();
    let mut out = String::new();
    for k in &kept {
        out.push_str(&serde_json::to_string(k)?);
        out.push('\n');
    }
    std::fs::write(o.out.join("warm.jsonl"), out)?;
    let cfg = WarmConfig {
        samples: o.warm_start_samples,
        epochs: o.warm_start_epochs,
        batch: o.warm_start_batch,
        learning_rate: o.warm_start_lr,
    };
    let losses = warm::fit(trainer, &prompts, &picks, &cfg, o.seed)?;
    let mean_of = |key: &str| {
        kept.iter().filter_map(|k| k[key].as_f64()).sum::<f64>() / kept.len().max(1) as f64
    };
    eprintln!(
        "warm start: kept {} of {} items; {} supervised steps, loss {:.3} -> {:.3}; {:.0} s",
        picks.len(),
        prompts.len(),
        losses.len(),
        losses.first().copied().unwrap_or(0.0),
        losses.last().copied().unwrap_or(0.0),
        started.elapsed().as_secs_f64()
    );
    Ok(Some(json!({
        "items": prompts.len(),
        "samples_per_item": o.warm_start_samples,
        "kept": picks.len(),
        "kept_mean_progress": mean_of("progress"),
        "kept_mean_integrity": mean_of("integrity"),
        "epochs": o.warm_start_epochs,
        "batch": o.warm_start_batch,
        "learning_rate": o.warm_start_lr,
        "loss_per_step": losses,
        "sampling_seconds": sampled_s,
        "seconds": started.elapsed().as_secs_f64(),
        "kept_rewrites": "warm.jsonl",
    })))
}
