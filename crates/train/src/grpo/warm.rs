//! The supervised warm start before GRPO (rejection-sampling fine-tuning): sample many rewrites
//! per prompt from the base, keep the best one the serving shield accepts, and fit the adapters
//! to the kept ones by maximum likelihood. GRPO can only reinforce what its groups contain; with
//! a small base, rewrites that move the values *and* keep the meaning are rare in a group of 4,
//! so the warm start makes them the policy's habit first.

use super::sample::{Group, SampleConfig, sample_group};
use super::trainer::Trainer;

/// Settings of the warm start.
#[derive(Debug, Clone, Copy)]
pub struct WarmConfig {
    /// Completions sampled per prompt to choose from.
    pub samples: usize,
    /// Passes over the kept pairs.
    pub epochs: usize,
    /// Pairs per supervised step.
    pub batch: usize,
    pub learning_rate: f64,
}

/// One prompt to sample for: its token ids and the most new tokens its rewrite may take.
pub struct WarmPrompt {
    pub ids: Vec<u32>,
    pub max_new_tokens: usize,
}

/// A kept completion: the prompt it answers (an index into the prompts) and its tokens.
#[derive(Debug, Clone)]
pub struct Pick {
    pub prompt: usize,
    pub completion: Vec<u32>,
}

/// Picks what to fit from a prompt's sampled group (see [`collect`]).
pub type Choose<'a> = dyn FnMut(usize, &Group) -> anyhow::Result<Option<Vec<u32>>> + 'a;

/// Sample `samples` completions for each prompt from the current policy and keep what
/// `choose(prompt_index, group)` returns, if anything: the tokens to fit, which may be one of
/// the completions or a cleaned-up version of one (the rewrite without the preambles and notes
/// the serving rewriter strips, so the policy learns to leave them out). `sample` gives
/// temperature, top-p and stop tokens; each prompt's own token limit replaces its
/// `max_new_tokens`. `stop()` is asked before each prompt; when it says so, the picks so far
/// come back.
pub fn collect(
    trainer: &mut Trainer,
    prompts: &[WarmPrompt],
    samples: usize,
    sample: &SampleConfig,
    choose: &mut Choose<'_>,
    stop: &dyn Fn() -> bool,
) -> anyhow::Result<Vec<Pick>> {
    anyhow::ensure!(
        samples > 0,
        "the warm start needs at least one sample per prompt"
    );
    trainer.model.prepare_sampling()?;
    let mut picks = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        if stop() {
            break;
        }
        let cfg = SampleConfig {
            max_new_tokens: p.max_new_tokens,
            ..sample.clone()
        };
        let group = sample_group(&trainer.model, &p.ids, samples, &cfg, &mut trainer.rng)?;
        if let Some(completion) = choose(i, &group)? {
            anyhow::ensure!(!completion.is_empty(), "an empty completion to fit");
            picks.push(Pick {
                prompt: i,
                completion,
            });
        }
    }
    Ok(picks)
}

/// Fit the adapters to the picks: `cfg.epochs` passes in a seeded order, `cfg.batch` pairs per
/// step, with an optimizer of its own (GRPO's starts fresh afterwards). Returns each step's loss
/// (mean negative log-likelihood per completion token).
pub fn fit(
    trainer: &mut Trainer,
    prompts: &[WarmPrompt],
    picks: &[Pick],
    cfg: &WarmConfig,
    seed: u64,
) -> anyhow::Result<Vec<f32>> {
    if picks.is_empty() {
        return Ok(Vec::new());
    }
    let mut opt = trainer.optimizer(cfg.learning_rate)?;
    let mut losses = Vec::new();
    for epoch in 0..cfg.epochs {
        let mut order: Vec<usize> = (0..picks.len()).collect();
        super::data::shuffle(&mut order, seed ^ (epoch as u64 + 1));
        for chunk in order.chunks(cfg.batch.max(1)) {
            let pairs: Vec<(Vec<u32>, Vec<u32>)> = chunk
                .iter()
                .map(|k| {
                    let p = &picks[*k];
                    (prompts[p.prompt].ids.clone(), p.completion.clone())
                })
                .collect();
            losses.push(trainer.supervised_step(&pairs, &mut opt)?);
        }
    }
    Ok(losses)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpo::trainer::tests::{config, sevens, tiny_model};

    /// Rejection sampling on the verifiable reward of the GRPO test (share of token 7): keep
    /// each prompt's best completion, fit, and the policy's samples score higher than before.
    #[test]
    fn fitting_the_best_samples_raises_the_reward() {
        let mut t = Trainer::new(tiny_model(), config(), 7).unwrap();
        let prompts: Vec<WarmPrompt> = [vec![1u32, 2, 3], vec![4, 5]]
            .into_iter()
            .map(|ids| WarmPrompt {
                ids,
                max_new_tokens: 6,
            })
            .collect();
        let sample = config().sample;
        let mean_reward = |t: &mut Trainer| -> f32 {
            let mut sum = 0.0;
            let mut n = 0.0;
            t.model.prepare_sampling().unwrap();
            for p in &prompts {
                let g = sample_group(&t.model, &p.ids, 16, &sample, &mut t.rng).unwrap();
                let r = sevens(0, &g).unwrap();
                sum += r.iter().sum::<f32>();
                n += r.len() as f32;
            }
            sum / n
        };
        let before = mean_reward(&mut t);
        let mut choose = |_: usize, g: &Group| -> anyhow::Result<Option<Vec<u32>>> {
            let r = sevens(0, g)?;
            let best = (0..r.len()).max_by(|a, b| r[*a].total_cmp(&r[*b]));
            Ok(best
                .filter(|b| r[*b] > 0.0)
                .map(|b| g.completions[b].clone()))
        };
        // Asked to stop before the first prompt: nothing is sampled.
        let asked = std::cell::Cell::new(0);
        let stop_now = || {
            asked.set(asked.get() + 1);
            true
        };
        assert!(
            collect(&mut t, &prompts, 16, &sample, &mut choose, &stop_now)
                .unwrap()
                .is_empty()
        );
        assert_eq!(asked.get(), 1);
        let picks = collect(&mut t, &prompts, 16, &sample, &mut choose, &|| false).unwrap();
        // This random model never writes a 7 after [1, 2, 3]: that prompt has no pick.
        assert_eq!(picks.len(), 1, "{picks:?}");
        assert_eq!(picks[0].prompt, 1);
        let cfg = WarmConfig {
            samples: 16,
            epochs: 8,
            batch: 2,
            learning_rate: 0.02,
        };
        let losses = fit(&mut t, &prompts, &picks, &cfg, 3).unwrap();
        assert_eq!(losses.len(), 8 * picks.len().div_ceil(2));
        assert!(losses.last().unwrap() < &(0.5 * losses[0]), "{losses:?}");
        let after = mean_reward(&mut t);
        assert!(after > before + 0.15, "reward {before} -> {after}");
        // Nothing kept, nothing fitted.
        assert!(fit(&mut t, &prompts, &[], &cfg, 3).unwrap().is_empty());
    }
}
