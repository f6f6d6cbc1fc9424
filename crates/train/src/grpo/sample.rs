//! Sampling a group of completions of one prompt from the policy: the prompt is run once, its
//! key/value cache copied to every member of the group, then tokens are drawn with temperature
//! and nucleus (top-p) sampling from a seeded generator until each member ends or hits the limit.

use candle_core::{D, Result, Tensor};

use super::llama::{Cache, Llama};

#[derive(Debug, Clone)]
pub struct SampleConfig {
    pub temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: usize,
    /// Tokens that end a completion (kept as its last token).
    pub stop: Vec<u32>,
}

/// A seeded generator (SplitMix64): the same seed draws the same completions.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn state(&self) -> u64 {
        self.0
    }

    pub fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Draw one token from logits.
pub fn draw(logits: &[f32], temperature: f64, top_p: f64, rng: &mut Rng) -> u32 {
    if temperature <= 0.0 {
        return logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i as u32);
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if top_p >= 1.0 {
        // The whole distribution: no need to sort the vocabulary.
        let w: Vec<f64> = logits
            .iter()
            .map(|&l| (((l - max) as f64) / temperature).exp())
            .collect();
        let mut u = rng.next_f64() * w.iter().sum::<f64>();
        for (i, q) in w.iter().enumerate() {
            if u < *q {
                return i as u32;
            }
            u -= q;
        }
        return w.iter().rposition(|q| *q > 0.0).unwrap_or(0) as u32;
    }
    let mut p: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i, (((l - max) as f64) / temperature).exp()))
        .collect();
    let total: f64 = p.iter().map(|x| x.1).sum();
    p.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut kept = 0.0;
    let mut n = 0;
    for (_, q) in &p {
        kept += q / total;
        n += 1;
        if kept >= top_p {
            break;
        }
    }
    let p = &p[..n.max(1)];
    let mass: f64 = p.iter().map(|x| x.1).sum();
    let mut u = rng.next_f64() * mass;
    for (i, q) in p {
        if u < *q {
            return *i as u32;
        }
        u -= q;
    }
    p.last().map_or(0, |x| x.0 as u32)
}

/// A sampled group: `ids` `[G, prompt + T]` (padded with the first stop token), `mask`
/// `[G, T]` (1 up to and including each completion's stop token), and the completions.
pub struct Group {
    pub prompt_len: usize,
    pub ids: Tensor,
    pub mask: Tensor,
    pub completions: Vec<Vec<u32>>,
    /// Whether each completion ended with a stop token (not cut at the limit).
    pub finished: Vec<bool>,
}

pub fn sample_group(
    model: &Llama,
    prompt: &[u32],
    g: usize,
    cfg: &SampleConfig,
    rng: &mut Rng,
) -> Result<Group> {
    let dev = model.device().clone();
    let pad = cfg.stop.first().copied().unwrap_or(0);
    let mut cache = Cache::default();
    let p = Tensor::new(prompt, &dev)?.unsqueeze(0)?;
    let h = model.hidden_sampling(&p, &mut cache)?;
    let last = h.narrow(1, prompt.len() - 1, 1)?;
    let mut logits: Vec<Vec<f32>> = {
        let l = model
            .logits_sampling(&last)?
            .squeeze(1)?
            .squeeze(0)?
            .to_vec1::<f32>()?;
        vec![l; g]
    };
    let mut cache = cache.repeat(g)?;
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); g];
    let mut done = vec![false; g];
    for _ in 0..cfg.max_new_tokens {
        let mut next = Vec::with_capacity(g);
        for k in 0..g {
            if done[k] {
                next.push(pad);
                continue;
            }
            let t = draw(&logits[k], cfg.temperature, cfg.top_p, rng);
            out[k].push(t);
            if cfg.stop.contains(&t) {
                done[k] = true;
            }
            next.push(t);
        }
        if done.iter().all(|d| *d) {
            break;
        }
        let ids = Tensor::from_vec(next, (g, 1), &dev)?;
        let h = model.hidden_sampling(&ids, &mut cache)?;
        logits = model.logits_sampling(&h)?.squeeze(1)?.to_vec2::<f32>()?;
    }
    let t = out.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut ids = Vec::with_capacity(g * (prompt.len() + t));
    let mut mask = Vec::with_capacity(g * t);
    for c in &out {
        ids.extend_from_slice(prompt);
        ids.extend_from_slice(c);
        ids.extend(std::iter::repeat_n(pad, t - c.len()));
        mask.extend(std::iter::repeat_n(1f32, c.len()));
        mask.extend(std::iter::repeat_n(0f32, t - c.len()));
    }
    Ok(Group {
        prompt_len: prompt.len(),
        ids: Tensor::from_vec(ids, (g, prompt.len() + t), &dev)?,
        mask: Tensor::from_vec(mask, (g, t), &dev)?,
        finished: out
            .iter()
            .map(|c| c.last().is_some_and(|t| cfg.stop.contains(t)))
            .collect(),
        completions: out,
    })
}

/// Mean of `x` over the last dimension where `mask` is 1.
pub fn masked_mean(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let n = mask.sum(D::Minus1)?.clamp(1.0, f64::MAX)?;
    (x * mask)?.sum(D::Minus1)? / n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_largest_and_top_p_keeps_the_nucleus() {
        let mut rng = Rng::new(1);
        assert_eq!(draw(&[0.1, 3.0, 0.2], 0.0, 1.0, &mut rng), 1);
        // With top_p small, only the most likely token can be drawn.
        for _ in 0..50 {
            assert_eq!(draw(&[0.0, 5.0, 4.9], 1.0, 0.1, &mut rng), 1);
        }
        // With top_p 1 both likely tokens show up.
        let mut seen = [0; 3];
        for _ in 0..200 {
            seen[draw(&[0.0, 5.0, 4.9], 1.0, 1.0, &mut rng) as usize] += 1;
        }
        assert!(seen[1] > 50 && seen[2] > 50, "{seen:?}");
    }
}
