//! One GRPO update: for each prompt sample a group from the policy, reward it, normalise the
//! rewards within the group, and take an AdamW step on the LoRA parameters against the clipped
//! objective with a KL penalty to the frozen base (the same model with its adapters off).

use std::time::Instant;

use candle_core::{Tensor, Var};

use super::llama::Llama;
use super::math::{Objective, group_advantages, grpo_loss};
use super::optim::{AdamW, AdamWParams};
use super::sample::{Group, Rng, SampleConfig, sample_group};

#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Completions per prompt (G).
    pub group: usize,
    pub sample: SampleConfig,
    pub objective: Objective,
    pub learning_rate: f64,
    pub weight_decay: f64,
    /// Global gradient norm cap.
    pub max_grad_norm: f64,
    /// Added to the group's standard deviation.
    pub advantage_eps: f32,
}

/// What one step did, for the progress line and the JSONL log.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StepStats {
    pub step: usize,
    pub reward_mean: f32,
    pub reward_std: f32,
    pub loss: f32,
    pub kl: f32,
    pub clipped: f32,
    pub grad_norm: f32,
    pub completion_tokens: usize,
    /// Share of completions that ended with a stop token.
    pub finished: f32,
    pub seconds: f64,
    pub tokens_per_s: f64,
    /// Components of the reward, averaged (filled by the caller's reward function).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub components: std::collections::BTreeMap<String, f32>,
}

pub struct Trainer {
    pub model: Llama,
    vars: Vec<(String, Var)>,
    opt: AdamW,
    pub config: TrainConfig,
    pub rng: Rng,
    pub steps: usize,
}

impl Trainer {
    /// `model` must carry its adapters already ([`Llama::add_lora`]).
    pub fn new(model: Llama, config: TrainConfig, seed: u64) -> anyhow::Result<Self> {
        let vars = model.lora_vars();
        anyhow::ensure!(!vars.is_empty(), "the model has no LoRA adapters to train");
        let opt = AdamW::new(
            &vars,
            AdamWParams {
                lr: config.learning_rate,
                weight_decay: config.weight_decay,
                ..Default::default()
            },
        )?;
        Ok(Self {
            model,
            vars,
            opt,
            config,
            rng: Rng::new(seed),
            steps: 0,
        })
    }

    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// Save the optimizer's moments (for `--resume`).
    pub fn save_optimizer(&self, path: &std::path::Path) -> anyhow::Result<()> {
        self.opt.save(path)
    }

    /// Restore the optimizer's moments saved after `steps` steps.
    pub fn load_optimizer(&mut self, path: &std::path::Path, steps: usize) -> anyhow::Result<()> {
        self.opt.load(path, steps)
    }

    /// Sample a group for each prompt, reward it with `reward(prompt_index, group)`, update.
    pub fn step(
        &mut self,
        prompts: &[Vec<u32>],
        reward: &mut dyn FnMut(usize, &Group) -> anyhow::Result<Vec<f32>>,
    ) -> anyhow::Result<StepStats> {
        anyhow::ensure!(!prompts.is_empty(), "no prompts for this step");
        let started = Instant::now();
        // Sample from the current policy, its adapters merged for speed.
        self.model.prepare_sampling()?;
        let n = prompts.len() as f64;
        let mut total: Option<Tensor> = None;
        let mut all_rewards = Vec::new();
        let mut stats = StepStats {
            step: self.steps + 1,
            ..Default::default()
        };
        let mut finished = 0usize;
        let mut completions = 0usize;
        for (i, prompt) in prompts.iter().enumerate() {
            let group = sample_group(
                &self.model,
                prompt,
                self.config.group,
                &self.config.sample,
                &mut self.rng,
            )?;
            let rewards = reward(i, &group)?;
            anyhow::ensure!(
                rewards.len() == self.config.group,
                "the reward function returned {} rewards for a group of {}",
                rewards.len(),
                self.config.group
            );
            all_rewards.extend_from_slice(&rewards);
            stats.completion_tokens += group.completions.iter().map(Vec::len).sum::<usize>();
            finished += group.finished.iter().filter(|f| **f).count();
            completions += group.completions.len();
            let adv = group_advantages(&rewards, self.config.advantage_eps);
            let adv = Tensor::from_vec(adv, self.config.group, self.model.device())?;
            let completions =
                group
                    .ids
                    .narrow(1, group.prompt_len, group.ids.dim(1)? - group.prompt_len)?;
            let logp = self.model.completion_logprobs(prompt, &completions, true)?;
            // One update per sample (TRL's default): the sampling policy is the current one.
            let old = logp.detach();
            let reference = self
                .model
                .completion_logprobs(prompt, &completions, false)?
                .detach();
            let (loss, parts) = grpo_loss(
                &logp,
                &old,
                &reference,
                &group.mask,
                &adv,
                self.config.objective,
            )?;
            stats.loss += parts.loss / n as f32;
            stats.kl += parts.kl / n as f32;
            stats.clipped += parts.clipped / n as f32;
            let scaled = (loss / n)?;
            total = Some(match total {
                Some(t) => (t + scaled)?,
                None => scaled,
            });
        }
        let Some(total) = total else {
            anyhow::bail!("no loss was computed");
        };
        stats.grad_norm =
            clip_and_step(&self.vars, &mut self.opt, &total, self.config.max_grad_norm)?;
        self.steps += 1;
        let mean = all_rewards.iter().sum::<f32>() / all_rewards.len().max(1) as f32;
        stats.reward_mean = mean;
        stats.reward_std = (all_rewards.iter().map(|r| (r - mean).powi(2)).sum::<f32>()
            / all_rewards.len().max(1) as f32)
            .sqrt();
        stats.finished = finished as f32 / completions.max(1) as f32;
        stats.seconds = started.elapsed().as_secs_f64();
        stats.tokens_per_s = stats.completion_tokens as f64 / stats.seconds.max(1e-9);
        Ok(stats)
    }
}

impl Trainer {
    /// A fresh AdamW over the adapters with learning rate `lr` (the warm start's own optimizer,
    /// so GRPO later starts from zero moments at its own rate).
    pub fn optimizer(&self, lr: f64) -> anyhow::Result<AdamW> {
        Ok(AdamW::new(
            &self.vars,
            AdamWParams {
                lr,
                weight_decay: self.config.weight_decay,
                ..Default::default()
            },
        )?)
    }

    /// One supervised step of the warm start: the mean over `pairs` of each completion's mean
    /// negative log-likelihood after its prompt (adapters on), then a clipped AdamW step with
    /// `opt`. Returns the loss before the step.
    pub fn supervised_step(
        &mut self,
        pairs: &[(Vec<u32>, Vec<u32>)],
        opt: &mut AdamW,
    ) -> anyhow::Result<f32> {
        anyhow::ensure!(!pairs.is_empty(), "no pairs for this step");
        let n = pairs.len() as f64;
        let mut total: Option<Tensor> = None;
        for (prompt, completion) in pairs {
            anyhow::ensure!(
                !prompt.is_empty() && !completion.is_empty(),
                "an empty prompt or completion"
            );
            let c = Tensor::new(completion.as_slice(), self.model.device())?.unsqueeze(0)?;
            let logp = self.model.completion_logprobs(prompt, &c, true)?;
            let nll = (logp.mean_all()?.neg()? / n)?;
            total = Some(match total {
                Some(t) => (t + nll)?,
                None => nll,
            });
        }
        let Some(total) = total else {
            anyhow::bail!("no loss was computed");
        };
        let loss = total.to_scalar::<f32>()?;
        clip_and_step(&self.vars, opt, &total, self.config.max_grad_norm)?;
        Ok(loss)
    }
}

/// Backward pass of `total`, the global gradient norm clipped to `max_norm`, one AdamW step.
/// Returns the norm before clipping.
fn clip_and_step(
    vars: &[(String, Var)],
    opt: &mut AdamW,
    total: &Tensor,
    max_norm: f64,
) -> anyhow::Result<f32> {
    let mut grads = total.backward()?;
    let mut sq = 0f32;
    for (_, v) in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()?;
        }
    }
    let norm = sq.sqrt();
    anyhow::ensure!(norm.is_finite(), "the gradient is not finite (norm {norm})");
    let cap = max_norm as f32;
    if norm > cap {
        let s = (cap / (norm + 1e-6)) as f64;
        for (_, v) in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * s)?);
            }
        }
    }
    opt.step(&grads)?;
    Ok(norm)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::grpo::llama::LlamaConfig;
    use crate::grpo::lora::LoraConfig;
    use candle_core::Device;

    pub(crate) fn tiny_model() -> Llama {
        let config = LlamaConfig {
            vocab: 16,
            hidden: 32,
            intermediate: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            rope_theta: 10_000.0,
            rms_eps: 1e-5,
        };
        let mut m = Llama::random(config, 11, &Device::Cpu).unwrap();
        m.add_lora(
            LoraConfig {
                rank: 4,
                alpha: 8.0,
            },
            5,
        )
        .unwrap();
        m
    }

    pub(crate) fn config() -> TrainConfig {
        TrainConfig {
            group: 8,
            sample: SampleConfig {
                temperature: 1.0,
                top_p: 1.0,
                max_new_tokens: 6,
                stop: vec![0],
            },
            objective: Objective {
                clip: 0.2,
                beta: 0.02,
            },
            learning_rate: 0.02,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            advantage_eps: 1e-4,
        }
    }

    /// Reward: the share of a completion's tokens that are token 7.
    pub(crate) fn sevens(_: usize, g: &Group) -> anyhow::Result<Vec<f32>> {
        Ok(g.completions
            .iter()
            .map(|c| c.iter().filter(|t| **t == 7).count() as f32 / c.len().max(1) as f32)
            .collect())
    }

    #[test]
    fn mean_reward_rises_on_a_verifiable_task() {
        let mut t = Trainer::new(tiny_model(), config(), 42).unwrap();
        let prompts = vec![vec![1u32, 2, 3], vec![4u32, 5]];
        let mut curve = Vec::new();
        for _ in 0..40 {
            curve.push(t.step(&prompts, &mut sevens).unwrap().reward_mean);
        }
        let first: f32 = curve[..5].iter().sum::<f32>() / 5.0;
        let last: f32 = curve[35..].iter().sum::<f32>() / 5.0;
        assert!(last > first + 0.3 && last > 0.5, "reward curve: {curve:?}");
        println!("reward curve: {curve:?}");
    }

    #[test]
    fn supervised_steps_teach_a_completion_and_leave_the_reference() {
        let mut t = Trainer::new(tiny_model(), config(), 42).unwrap();
        let prompt = vec![1u32, 2, 3];
        let completion = vec![7u32, 9, 7, 0];
        let ids = Tensor::new(&[[1u32, 2, 3, 7, 9, 7, 0]], &Device::Cpu).unwrap();
        let ref_before = t.model.token_logprobs(&ids, 3, false).unwrap();
        let mut opt = t.optimizer(0.02).unwrap();
        let pairs = vec![(prompt.clone(), completion.clone())];
        let losses: Vec<f32> = (0..30)
            .map(|_| t.supervised_step(&pairs, &mut opt).unwrap())
            .collect();
        // A random 16-token model starts near ln 16 = 2.8 per token.
        assert!(losses[0] > 1.5, "{losses:?}");
        assert!(losses[29] < 0.3 * losses[0], "{losses:?}");
        // Greedy decoding now gives the taught completion.
        t.model.prepare_sampling().unwrap();
        let greedy = SampleConfig {
            temperature: 0.0,
            top_p: 1.0,
            max_new_tokens: 6,
            stop: vec![0],
        };
        let g = sample_group(&t.model, &prompt, 1, &greedy, &mut t.rng).unwrap();
        assert_eq!(g.completions[0], completion);
        // The reference (adapters off) is still the base.
        let ref_after = t.model.token_logprobs(&ids, 3, false).unwrap();
        assert_eq!(crate::grpo::max_abs_diff(&ref_after - &ref_before), 0.0);
        assert!(t.supervised_step(&[], &mut opt).is_err());
    }

    #[test]
    fn only_adapters_change_and_the_reference_stays_the_base() {
        let mut t = Trainer::new(tiny_model(), config(), 42).unwrap();
        let ids = Tensor::new(&[[1u32, 2, 3, 7, 7]], &Device::Cpu).unwrap();
        let base_before: Vec<Tensor> = t
            .model
            .linears()
            .iter()
            .map(|(_, l)| l.weight.copy().unwrap())
            .collect();
        let ref_before = t.model.token_logprobs(&ids, 2, false).unwrap();
        let pol_before = t.model.token_logprobs(&ids, 2, true).unwrap();
        // Steps until one had a reward signal (a group with unequal rewards).
        let mut signal = false;
        for _ in 0..10 {
            signal |= t
                .step(&[vec![1, 2, 3], vec![4, 5]], &mut sevens)
                .unwrap()
                .reward_std
                > 0.0;
            if signal {
                break;
            }
        }
        assert!(signal, "no group ever had unequal rewards");
        for ((_, l), before) in t.model.linears().iter().zip(&base_before) {
            let d: f32 = crate::grpo::max_abs_diff(&l.weight - before);
            assert_eq!(d, 0.0, "a base weight moved");
        }
        let diff = |a: &Tensor, b: &Tensor| -> f32 { crate::grpo::max_abs_diff(a - b) };
        assert_eq!(
            diff(
                &ref_before,
                &t.model.token_logprobs(&ids, 2, false).unwrap()
            ),
            0.0
        );
        assert!(
            diff(&pol_before, &t.model.token_logprobs(&ids, 2, true).unwrap()) > 1e-4,
            "the adapters learned nothing"
        );
        // Gradients reach the adapters only: the base weights are not variables.
        let logp = t.model.token_logprobs(&ids, 2, true).unwrap();
        let grads = logp.sum_all().unwrap().backward().unwrap();
        assert!(
            t.model
                .linears()
                .iter()
                .all(|(_, l)| grads.get(&l.weight).is_none())
        );
        assert!(
            t.vars()
                .iter()
                .any(|(_, v)| grads.get(v.as_tensor()).is_some())
        );
    }
}
