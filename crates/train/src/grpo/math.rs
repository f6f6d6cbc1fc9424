//! The GRPO objective (Shao et al., DeepSeekMath, 2024, as TRL's `GRPOTrainer` implements it):
//! group-normalised advantages, the clipped policy-gradient term per completion token, and the
//! k3 estimate of the KL divergence to the frozen reference policy.

use candle_core::{D, Result, Tensor};

/// `(r - mean) / (std + eps)` within one group of rewards; `std` is the unbiased estimate
/// (torch's default, which TRL uses).
pub fn group_advantages(rewards: &[f32], eps: f32) -> Vec<f32> {
    let n = rewards.len();
    if n == 0 {
        return Vec::new();
    }
    let mean = rewards.iter().sum::<f32>() / n as f32;
    let var = if n > 1 {
        rewards.iter().map(|r| (r - mean).powi(2)).sum::<f32>() / (n - 1) as f32
    } else {
        0.0
    };
    let std = var.sqrt();
    rewards.iter().map(|r| (r - mean) / (std + eps)).collect()
}

/// Settings of the objective.
#[derive(Debug, Clone, Copy)]
pub struct Objective {
    /// Clip range of the probability ratio: [1 - clip, 1 + clip].
    pub clip: f64,
    /// Weight of the KL penalty.
    pub beta: f64,
}

/// Parts of the loss, for the log.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossParts {
    pub loss: f32,
    /// Mean KL per completion token.
    pub kl: f32,
    /// Share of tokens whose ratio was clipped.
    pub clipped: f32,
}

/// The GRPO loss over a group. All tensors are `[G, T]` over completion tokens: `logp` the
/// policy's log-probabilities of the sampled tokens (with gradients), `logp_old` the sampling
/// policy's (detached), `logp_ref` the reference's, `mask` 1 for real tokens and 0 for padding;
/// `advantages` is `[G]`. Per token: `-(min(ratio * A, clip(ratio) * A) - beta * kl)` with
/// `kl = exp(ref - logp) - (ref - logp) - 1`; averaged over each completion's tokens, then over
/// the group.
pub fn grpo_loss(
    logp: &Tensor,
    logp_old: &Tensor,
    logp_ref: &Tensor,
    mask: &Tensor,
    advantages: &Tensor,
    o: Objective,
) -> Result<(Tensor, LossParts)> {
    let ratio = (logp - logp_old)?.exp()?;
    let adv = advantages.unsqueeze(1)?.broadcast_as(ratio.shape())?;
    let unclipped = (&ratio * &adv)?;
    let clipped_ratio = ratio.clamp(1.0 - o.clip, 1.0 + o.clip)?;
    let clipped = (&clipped_ratio * &adv)?;
    let surrogate = unclipped.minimum(&clipped)?;
    let diff = (logp_ref - logp)?;
    let kl = ((diff.exp()? - &diff)? - 1.0)?;
    let per_token = (surrogate - (&kl * o.beta)?)?.neg()?;
    let lengths = mask.sum(D::Minus1)?.clamp(1.0, f64::MAX)?;
    let per_seq = ((per_token * mask)?.sum(D::Minus1)? / &lengths)?;
    let loss = per_seq.mean_all()?;
    let tokens = mask.sum_all()?.to_scalar::<f32>()?.max(1.0);
    let kl_mean = (kl.detach() * mask)?.sum_all()?.to_scalar::<f32>()? / tokens;
    let was_clipped = ratio
        .detach()
        .ne(&clipped_ratio.detach())?
        .to_dtype(mask.dtype())?;
    let clipped_share = (was_clipped * mask)?.sum_all()?.to_scalar::<f32>()? / tokens;
    let parts = LossParts {
        loss: loss.to_scalar::<f32>()?,
        kl: kl_mean,
        clipped: clipped_share,
    };
    Ok((loss, parts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn t(v: &[f32], shape: (usize, usize)) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn advantages_are_normalised_within_the_group() {
        let a = group_advantages(&[1.0, 2.0, 3.0, 4.0], 0.0);
        // mean 2.5, unbiased std sqrt(5/3) = 1.29099
        let s = (5.0f32 / 3.0).sqrt();
        for (x, want) in a.iter().zip([-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s]) {
            assert!((x - want).abs() < 1e-5, "{a:?}");
        }
        // Equal rewards carry no signal.
        assert_eq!(
            group_advantages(&[0.7, 0.7, 0.7], 1e-4),
            vec![0.0, 0.0, 0.0]
        );
        assert!(group_advantages(&[], 1e-4).is_empty());
    }

    #[test]
    fn loss_matches_a_hand_computation() {
        // Two completions, three token slots, the second has one padding token.
        let logp = [-1.0f32, -2.0, -0.5, -1.5, -0.2, -9.0];
        let old = [-1.2f32, -2.0, -0.1, -1.5, -0.9, -9.0];
        let rf = [-1.1f32, -1.8, -0.5, -1.0, -0.2, -9.0];
        let mask = [1.0f32, 1.0, 1.0, 1.0, 1.0, 0.0];
        let adv = [1.0f32, -0.5];
        let o = Objective {
            clip: 0.2,
            beta: 0.04,
        };
        let (loss, parts) = grpo_loss(
            &t(&logp, (2, 3)),
            &t(&old, (2, 3)),
            &t(&rf, (2, 3)),
            &t(&mask, (2, 3)),
            &Tensor::from_vec(adv.to_vec(), 2, &Device::Cpu).unwrap(),
            o,
        )
        .unwrap();
        // By hand, token by token.
        let mut seq = [0.0f64; 2];
        let mut kl_sum = 0.0;
        let mut clipped = 0;
        for g in 0..2 {
            let mut n = 0.0;
            for k in 0..3 {
                let i = g * 3 + k;
                if mask[i] == 0.0 {
                    continue;
                }
                let ratio = ((logp[i] - old[i]) as f64).exp();
                let a = adv[g] as f64;
                let cr = ratio.clamp(0.8, 1.2);
                if cr != ratio {
                    clipped += 1;
                }
                let surr = (ratio * a).min(cr * a);
                let d = (rf[i] - logp[i]) as f64;
                let kl = d.exp() - d - 1.0;
                kl_sum += kl;
                seq[g] += -(surr - 0.04 * kl);
                n += 1.0;
            }
            seq[g] /= n;
        }
        let want = (seq[0] + seq[1]) / 2.0;
        assert!(
            (loss.to_scalar::<f32>().unwrap() as f64 - want).abs() < 1e-5,
            "{} vs {want}",
            loss
        );
        assert!((parts.kl as f64 - kl_sum / 5.0).abs() < 1e-5);
        assert!((parts.clipped - clipped as f32 / 5.0).abs() < 1e-6);
        assert_eq!(clipped, 3, "tokens 0, 2 and 4 leave the clip range");
    }

    #[test]
    fn gradient_pushes_up_tokens_with_positive_advantage() {
        // At ratio 1 and logp = ref, d loss / d logp = -A / n per token.
        let logp = Var::from_tensor(&t(&[-1.0, -1.0], (2, 1))).unwrap();
        let fixed = t(&[-1.0, -1.0], (2, 1));
        let mask = t(&[1.0, 1.0], (2, 1));
        let adv = Tensor::from_vec(vec![1.0f32, -1.0], 2, &Device::Cpu).unwrap();
        let o = Objective {
            clip: 0.2,
            beta: 0.1,
        };
        let (loss, _) = grpo_loss(logp.as_tensor(), &fixed, &fixed, &mask, &adv, o).unwrap();
        let grads = loss.backward().unwrap();
        let g: Vec<f32> = grads
            .get(logp.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(
            (g[0] + 0.5).abs() < 1e-6 && (g[1] - 0.5).abs() < 1e-6,
            "{g:?}"
        );
    }
}
