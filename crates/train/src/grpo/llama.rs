//! A llama-architecture decoder in candle whose projections carry LoRA adapters, for training
//! the rewriter: loaded from the GGUF file the proxy serves (weights dequantized to f32) or built
//! with random weights for tests. Forward passes with or without the adapters (policy or frozen
//! reference), with a key/value cache for sampling.

use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{D, DType, Device, Result, Tensor, Var};

use super::lora::{Linear, LoraConfig, matmul_t, seeded_normal};

#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub rope_theta: f32,
    pub rms_eps: f64,
}

impl LlamaConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
}

struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

struct Block {
    attn_norm: Tensor,
    attn: Attention,
    ffn_norm: Tensor,
    mlp: Mlp,
}

/// Keys and values of the positions seen so far, per layer: `[B, kv_heads, S, head_dim]`.
#[derive(Clone, Default)]
pub struct Cache {
    kv: Vec<Option<(Tensor, Tensor)>>,
    /// Keep the autograd graph through the cached keys and values (training a shared prompt);
    /// by default they are detached (sampling).
    pub keep_graph: bool,
}

impl Cache {
    pub fn len(&self) -> usize {
        self.kv
            .first()
            .and_then(|x| x.as_ref())
            .and_then(|(k, _)| k.dim(2).ok())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same cache for `n` sequences (after a shared prompt).
    pub fn repeat(&self, n: usize) -> Result<Self> {
        let kv = self
            .kv
            .iter()
            .map(|e| match e {
                Some((k, v)) => Ok(Some((k.repeat((n, 1, 1, 1))?, v.repeat((n, 1, 1, 1))?))),
                None => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            kv,
            keep_graph: self.keep_graph,
        })
    }
}

pub struct Llama {
    pub config: LlamaConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    /// None: tied to the embedding.
    lm_head: Option<Tensor>,
    device: Device,
    /// Sampling multiplies few-row inputs with `skinny` products instead of `gemm`.
    skinny: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Base plus adapters, with gradients.
    Policy,
    /// The frozen base.
    Reference,
    /// Base plus adapters (merged when prepared), no gradients.
    Sampling,
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    let x = x.broadcast_div(&(var + eps)?.sqrt()?)?;
    x.broadcast_mul(w)
}

/// Rotary embedding on interleaved pairs (x[2i], x[2i+1]), as GGUF llama weights expect.
/// `x`: `[B, H, T, D]`; `cos`, `sin`: `[T, D/2]`.
fn rope_interleaved(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    let x = x.reshape((b, h, t, d / 2, 2))?;
    let x0 = x.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
    let r0 = (x0.broadcast_mul(cos)? - x1.broadcast_mul(sin)?)?;
    let r1 = (x0.broadcast_mul(sin)? + x1.broadcast_mul(cos)?)?;
    Tensor::stack(&[r0, r1], D::Minus1)?.reshape((b, h, t, d))
}

impl Llama {
    /// Random weights (for tests), seeded.
    pub fn random(config: LlamaConfig, seed: u64, device: &Device) -> Result<Self> {
        let c = &config;
        let hd = c.head_dim();
        let mut s = seed;
        let mut w = |out: usize, inp: usize| {
            s += 1;
            seeded_normal(&[out, inp], 1.0 / (inp as f64).sqrt(), s, device)
        };
        let mut blocks = Vec::with_capacity(c.layers);
        for _ in 0..c.layers {
            blocks.push(Block {
                attn_norm: Tensor::ones(c.hidden, DType::F32, device)?,
                attn: Attention {
                    q: Linear::new(w(c.heads * hd, c.hidden)?),
                    k: Linear::new(w(c.kv_heads * hd, c.hidden)?),
                    v: Linear::new(w(c.kv_heads * hd, c.hidden)?),
                    o: Linear::new(w(c.hidden, c.heads * hd)?),
                },
                ffn_norm: Tensor::ones(c.hidden, DType::F32, device)?,
                mlp: Mlp {
                    gate: Linear::new(w(c.intermediate, c.hidden)?),
                    up: Linear::new(w(c.intermediate, c.hidden)?),
                    down: Linear::new(w(c.hidden, c.intermediate)?),
                },
            });
        }
        let embed = seeded_normal(&[c.vocab, c.hidden], 1.0, seed + 10_000, device)?;
        Ok(Self {
            embed,
            blocks,
            norm: Tensor::ones(c.hidden, DType::F32, device)?,
            lm_head: None,
            device: device.clone(),
            skinny: true,
            config,
        })
    }

    /// The weights of a llama-architecture GGUF file, dequantized to f32.
    pub fn from_gguf(path: &Path, device: &Device) -> anyhow::Result<Self> {
        let mut reader = std::io::BufReader::new(std::fs::File::open(path)?);
        let content = gguf_file::Content::read(&mut reader)?;
        let md = |k: &str| {
            content
                .metadata
                .get(k)
                .ok_or_else(|| anyhow::anyhow!("{}: no {k} in the GGUF metadata", path.display()))
        };
        let arch = md("general.architecture")?.to_string()?.clone();
        anyhow::ensure!(
            arch == "llama",
            "{}: architecture {arch}, not llama",
            path.display()
        );
        let u = |k: &str| -> anyhow::Result<usize> {
            Ok(md(&format!("llama.{k}"))?.to_u32()? as usize)
        };
        let heads = u("attention.head_count")?;
        let config_partial = (
            u("embedding_length")?,
            u("feed_forward_length")?,
            u("block_count")?,
            heads,
            u("attention.head_count_kv").unwrap_or(heads),
        );
        let rope_theta = md("llama.rope.freq_base")
            .and_then(|v| Ok(v.to_f32()?))
            .unwrap_or(10_000.0);
        let rms_eps = md("llama.attention.layer_norm_rms_epsilon")?.to_f32()? as f64;
        // Dequantized on the CPU (any GGUF type candle reads), then moved to the device.
        let mut get = |name: &str| -> anyhow::Result<Tensor> {
            Ok(content
                .tensor(&mut reader, name, &Device::Cpu)?
                .dequantize(&Device::Cpu)?
                .to_device(device)?)
        };
        let embed = get("token_embd.weight")?;
        let (vocab, hidden) = embed.dims2()?;
        let (h2, intermediate, layers, heads, kv_heads) = config_partial;
        anyhow::ensure!(
            hidden == h2,
            "embedding width {hidden} != embedding_length {h2}"
        );
        let mut blocks = Vec::with_capacity(layers);
        for i in 0..layers {
            let p = format!("blk.{i}");
            blocks.push(Block {
                attn_norm: get(&format!("{p}.attn_norm.weight"))?,
                attn: Attention {
                    q: Linear::new(get(&format!("{p}.attn_q.weight"))?),
                    k: Linear::new(get(&format!("{p}.attn_k.weight"))?),
                    v: Linear::new(get(&format!("{p}.attn_v.weight"))?),
                    o: Linear::new(get(&format!("{p}.attn_output.weight"))?),
                },
                ffn_norm: get(&format!("{p}.ffn_norm.weight"))?,
                mlp: Mlp {
                    gate: Linear::new(get(&format!("{p}.ffn_gate.weight"))?),
                    up: Linear::new(get(&format!("{p}.ffn_up.weight"))?),
                    down: Linear::new(get(&format!("{p}.ffn_down.weight"))?),
                },
            });
        }
        let norm = get("output_norm.weight")?;
        let lm_head = if content.tensor_infos.contains_key("output.weight") {
            Some(get("output.weight")?)
        } else {
            None
        };
        Ok(Self {
            config: LlamaConfig {
                vocab,
                hidden,
                intermediate,
                layers,
                heads,
                kv_heads,
                rope_theta,
                rms_eps,
            },
            embed,
            blocks,
            norm,
            lm_head,
            device: device.clone(),
            skinny: true,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let p = format!("blk.{i}");
            out.push((format!("{p}.attn_q"), &mut b.attn.q));
            out.push((format!("{p}.attn_k"), &mut b.attn.k));
            out.push((format!("{p}.attn_v"), &mut b.attn.v));
            out.push((format!("{p}.attn_output"), &mut b.attn.o));
            out.push((format!("{p}.ffn_gate"), &mut b.mlp.gate));
            out.push((format!("{p}.ffn_up"), &mut b.mlp.up));
            out.push((format!("{p}.ffn_down"), &mut b.mlp.down));
        }
        out
    }

    /// The projections by GGUF tensor name (without `.weight`).
    pub fn linears(&self) -> Vec<(String, &Linear)> {
        let mut out = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            let p = format!("blk.{i}");
            out.push((format!("{p}.attn_q"), &b.attn.q));
            out.push((format!("{p}.attn_k"), &b.attn.k));
            out.push((format!("{p}.attn_v"), &b.attn.v));
            out.push((format!("{p}.attn_output"), &b.attn.o));
            out.push((format!("{p}.ffn_gate"), &b.mlp.gate));
            out.push((format!("{p}.ffn_up"), &b.mlp.up));
            out.push((format!("{p}.ffn_down"), &b.mlp.down));
        }
        out
    }

    /// Put adapters on every attention and MLP projection.
    pub fn add_lora(&mut self, cfg: LoraConfig, seed: u64) -> Result<()> {
        let device = self.device.clone();
        for (k, (_, lin)) in self.linears_mut().into_iter().enumerate() {
            lin.add_lora(cfg, &device, seed.wrapping_add(k as u64 * 7919))?;
        }
        Ok(())
    }

    /// The trainable variables (the adapters' A and B), by name.
    pub fn lora_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (name, lin) in self.linears() {
            if let Some(l) = &lin.lora {
                out.push((format!("{name}.lora_a"), l.a.clone()));
                out.push((format!("{name}.lora_b"), l.b.clone()));
            }
        }
        out
    }

    fn rope_tables(&self, offset: usize, t: usize) -> Result<(Tensor, Tensor)> {
        let hd = self.config.head_dim();
        let inv: Vec<f32> = (0..hd / 2)
            .map(|i| 1.0 / self.config.rope_theta.powf(2.0 * i as f32 / hd as f32))
            .collect();
        let inv = Tensor::from_vec(inv, (1, hd / 2), &self.device)?;
        let pos: Vec<f32> = (offset..offset + t).map(|p| p as f32).collect();
        let pos = Tensor::from_vec(pos, (t, 1), &self.device)?;
        let f = pos.broadcast_mul(&inv)?;
        Ok((f.cos()?, f.sin()?))
    }

    /// Merge each adapter into a copy of its projection for sampling
    /// ([`Linear::prepare_sampling`]); the trainer does this before every step.
    pub fn prepare_sampling(&mut self) -> Result<()> {
        for (_, lin) in self.linears_mut() {
            lin.prepare_sampling()?;
        }
        Ok(())
    }

    /// Hidden states after the final norm, `[B, T, hidden]`, for `ids` `[B, T]` following what
    /// `cache` holds (which is extended when given).
    pub fn hidden(
        &self,
        ids: &Tensor,
        cache: Option<&mut Cache>,
        with_lora: bool,
    ) -> Result<Tensor> {
        let mode = if with_lora {
            Mode::Policy
        } else {
            Mode::Reference
        };
        self.hidden_in(ids, cache, mode)
    }

    /// Hidden states for sampling: the merged weights (when prepared), no gradients.
    pub fn hidden_sampling(&self, ids: &Tensor, cache: &mut Cache) -> Result<Tensor> {
        self.hidden_in(ids, Some(cache), Mode::Sampling)
    }

    /// Logits for sampling, no gradients.
    pub fn logits_sampling(&self, hidden: &Tensor) -> Result<Tensor> {
        if self.skinny {
            let head = self.lm_head.as_ref().unwrap_or(&self.embed);
            if let Some(y) = super::skinny::matmul_t(hidden, head)? {
                return Ok(y);
            }
        }
        Ok(self.logits(hidden)?.detach())
    }

    /// Whether sampling uses the skinny products for few-row inputs (on by default; the
    /// benchmark turns it off for its baseline).
    pub fn set_skinny_sampling(&mut self, on: bool) {
        self.skinny = on;
    }

    fn hidden_in(&self, ids: &Tensor, mut cache: Option<&mut Cache>, mode: Mode) -> Result<Tensor> {
        let lin = |l: &Linear, x: &Tensor| -> Result<Tensor> {
            match mode {
                Mode::Policy => l.forward(x, true),
                Mode::Reference => l.forward(x, false),
                Mode::Sampling => l.forward_sampling(x, self.skinny),
            }
        };
        let c = &self.config;
        let (b, t) = ids.dims2()?;
        let offset = cache.as_ref().map_or(0, |c| c.len());
        let (cos, sin) = self.rope_tables(offset, t)?;
        let hd = c.head_dim();
        let rep = c.heads / c.kv_heads;
        let total = offset + t;
        // Causal mask over [T, offset + T].
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| (0..total).map(move |j| if j > offset + i { -1e9 } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (t, total), &self.device)?;
        let mut x = self
            .embed
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, c.hidden))?;
        if let Some(cache) = cache.as_mut()
            && cache.kv.len() < c.layers
        {
            cache.kv.resize(c.layers, None);
        }
        for (li, blk) in self.blocks.iter().enumerate() {
            let h = rms_norm(&x, &blk.attn_norm, c.rms_eps)?;
            let q = lin(&blk.attn.q, &h)?
                .reshape((b, t, c.heads, hd))?
                .transpose(1, 2)?;
            let k = lin(&blk.attn.k, &h)?
                .reshape((b, t, c.kv_heads, hd))?
                .transpose(1, 2)?;
            let v = lin(&blk.attn.v, &h)?
                .reshape((b, t, c.kv_heads, hd))?
                .transpose(1, 2)?;
            let q = rope_interleaved(&q.contiguous()?, &cos, &sin)?;
            let k = rope_interleaved(&k.contiguous()?, &cos, &sin)?;
            let v = v.contiguous()?;
            let (k, v) = match cache.as_mut() {
                Some(cache) => {
                    let (k, v) = match cache.kv[li].take() {
                        Some((pk, pv)) => {
                            (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?)
                        }
                        None => (k, v),
                    };
                    cache.kv[li] = Some(if cache.keep_graph {
                        (k.clone(), v.clone())
                    } else {
                        (k.detach(), v.detach())
                    });
                    (k, v)
                }
                None => (k, v),
            };
            let a = if mode == Mode::Sampling && t == 1 {
                // Decoding one token: the query heads that share a key/value head attend
                // together, so keys and values are neither repeated nor copied (nothing to
                // mask either: every cached position is visible).
                let q = q.reshape((b, c.kv_heads, rep, hd))?;
                let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
                candle_nn::ops::softmax_last_dim(&scores)?
                    .matmul(&v)?
                    .reshape((b, 1, c.heads * hd))?
            } else {
                let expand = |x: Tensor| -> Result<Tensor> {
                    if rep == 1 {
                        return Ok(x);
                    }
                    let (b, kvh, s, d) = x.dims4()?;
                    x.unsqueeze(2)?
                        .expand((b, kvh, rep, s, d))?
                        .reshape((b, kvh * rep, s, d))
                };
                let k = expand(k)?;
                let v = expand(v)?;
                let scores = (q.matmul(&k.t()?.contiguous()?)? / (hd as f64).sqrt())?
                    .broadcast_add(&mask)?;
                let p = candle_nn::ops::softmax(&scores, D::Minus1)?;
                p.matmul(&v)?
                    .transpose(1, 2)?
                    .reshape((b, t, c.heads * hd))?
            };
            x = (x + lin(&blk.attn.o, &a)?)?;
            let h = rms_norm(&x, &blk.ffn_norm, c.rms_eps)?;
            let g = lin(&blk.mlp.gate, &h)?;
            let up = lin(&blk.mlp.up, &h)?;
            let act = (candle_nn::ops::sigmoid(&g)? * &g)?;
            x = (x + lin(&blk.mlp.down, &(act * up)?)?)?;
        }
        rms_norm(&x, &self.norm, c.rms_eps)
    }

    /// Logits `[B, T, vocab]` of hidden states (the head is frozen: no gradient for it).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        matmul_t(hidden, head, true)
    }

    /// Log-probabilities of a group's completions `[G, T]` after one shared prompt, `[G, T]`:
    /// the prompt runs once (its keys and values, with their gradients, are shared by the
    /// group), which is what [`Llama::token_logprobs`] on `prompt + completion` rows computes,
    /// at the cost of `P + G T` positions instead of `G (P + T)`.
    pub fn completion_logprobs(
        &self,
        prompt: &[u32],
        completions: &Tensor,
        with_lora: bool,
    ) -> Result<Tensor> {
        let (g, t) = completions.dims2()?;
        let p = Tensor::new(prompt, &self.device)?.unsqueeze(0)?;
        let mut cache = Cache {
            keep_graph: true,
            ..Default::default()
        };
        let hp = self.hidden(&p, Some(&mut cache), with_lora)?;
        let last = hp.narrow(1, prompt.len() - 1, 1)?.repeat((g, 1, 1))?;
        let h = if t > 1 {
            let mut cache = cache.repeat(g)?;
            let hc = self.hidden(
                &completions.narrow(1, 0, t - 1)?,
                Some(&mut cache),
                with_lora,
            )?;
            Tensor::cat(&[&last, &hc], 1)?
        } else {
            last
        };
        let logp = candle_nn::ops::log_softmax(&self.logits(&h)?, D::Minus1)?;
        logp.gather(&completions.unsqueeze(D::Minus1)?.contiguous()?, D::Minus1)?
            .squeeze(D::Minus1)
    }

    /// Log-probabilities of `ids[:, start..]` given everything before, `[B, T - start]`.
    pub fn token_logprobs(&self, ids: &Tensor, start: usize, with_lora: bool) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        let h = self.hidden(ids, None, with_lora)?;
        // Position p predicts token p + 1.
        let h = h.narrow(1, start - 1, t - start)?;
        let logp = candle_nn::ops::log_softmax(&self.logits(&h)?, D::Minus1)?;
        let target = ids.narrow(1, start, t - start)?.unsqueeze(D::Minus1)?;
        logp.gather(&target.contiguous()?, D::Minus1)?
            .squeeze(D::Minus1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn tiny() -> LlamaConfig {
        LlamaConfig {
            vocab: 24,
            hidden: 32,
            intermediate: 48,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            rope_theta: 10_000.0,
            rms_eps: 1e-5,
        }
    }

    #[test]
    fn cached_decoding_equals_a_full_pass() {
        let dev = Device::Cpu;
        let m = Llama::random(tiny(), 3, &dev).unwrap();
        let ids = Tensor::new(&[[1u32, 5, 7, 2, 9, 4]], &dev).unwrap();
        let full = m.hidden(&ids, None, true).unwrap();
        let mut cache = Cache::default();
        let a = m
            .hidden(&ids.narrow(1, 0, 4).unwrap(), Some(&mut cache), true)
            .unwrap();
        let b = m
            .hidden(&ids.narrow(1, 4, 1).unwrap(), Some(&mut cache), true)
            .unwrap();
        let c = m
            .hidden(&ids.narrow(1, 5, 1).unwrap(), Some(&mut cache), true)
            .unwrap();
        let stepwise = Tensor::cat(&[a, b, c], 1).unwrap();
        let d: f32 = crate::grpo::max_abs_diff(full - stepwise);
        assert!(d < 1e-4, "{d}");
        assert_eq!(cache.len(), 6);
    }

    /// The sampling path (merged adapters, skinny products, grouped decoding attention) gives
    /// the logits of the full pass with adapters, for a batch of rows decoded token by token.
    #[test]
    fn sampling_decoding_equals_a_full_pass() {
        let dev = Device::Cpu;
        let mut m = tiny_with_adapters(4);
        m.prepare_sampling().unwrap();
        let ids = Tensor::new(&[[1u32, 5, 7, 2, 9, 4], [3, 3, 8, 1, 6, 2]], &dev).unwrap();
        let full = m.logits(&m.hidden(&ids, None, true).unwrap()).unwrap();
        for skinny in [true, false] {
            m.set_skinny_sampling(skinny);
            let mut cache = Cache::default();
            let mut steps = vec![
                m.logits_sampling(
                    &m.hidden_sampling(&ids.narrow(1, 0, 3).unwrap(), &mut cache)
                        .unwrap(),
                )
                .unwrap(),
            ];
            for i in 3..6 {
                let h = m
                    .hidden_sampling(&ids.narrow(1, i, 1).unwrap(), &mut cache)
                    .unwrap();
                steps.push(m.logits_sampling(&h).unwrap());
            }
            let stepwise = Tensor::cat(&steps, 1).unwrap();
            let d = crate::grpo::max_abs_diff(&full - stepwise);
            assert!(d < 1e-4, "skinny {skinny}: {d}");
        }
    }

    /// A tiny random model with rank-2 adapters set to small random values (not the identity
    /// start), so that paths with and without them differ.
    fn tiny_with_adapters(seed: u64) -> Llama {
        use crate::grpo::lora::LoraConfig;
        let dev = Device::Cpu;
        let mut m = Llama::random(tiny(), seed, &dev).unwrap();
        m.add_lora(
            LoraConfig {
                rank: 2,
                alpha: 4.0,
            },
            1,
        )
        .unwrap();
        for (_, v) in m.lora_vars() {
            let shape = v.as_tensor().dims().to_vec();
            v.set(&seeded_normal(&shape, 0.1, 9, &dev).unwrap())
                .unwrap();
        }
        m
    }

    #[test]
    fn a_shared_prompt_gives_the_same_logprobs_and_gradients() {
        let dev = Device::Cpu;
        let m = tiny_with_adapters(6);
        let prompt = [1u32, 5, 7];
        let comp = Tensor::new(&[[2u32, 9, 4], [3, 3, 0]], &dev).unwrap();
        let rows = Tensor::new(&[[1u32, 5, 7, 2, 9, 4], [1, 5, 7, 3, 3, 0]], &dev).unwrap();
        let a = m.completion_logprobs(&prompt, &comp, true).unwrap();
        let b = m.token_logprobs(&rows, 3, true).unwrap();
        let d: f32 = crate::grpo::max_abs_diff(&a - &b);
        assert!(d < 1e-4, "{d}");
        let ga = a.sum_all().unwrap().backward().unwrap();
        let gb = b.sum_all().unwrap().backward().unwrap();
        for (name, v) in m.lora_vars() {
            let x = ga.get(v.as_tensor()).unwrap();
            let y = gb.get(v.as_tensor()).unwrap();
            let d: f32 = crate::grpo::max_abs_diff(x - y);
            assert!(d < 1e-3, "{name}: {d}");
        }
    }

    #[test]
    fn a_later_token_does_not_change_earlier_positions() {
        let dev = Device::Cpu;
        let m = Llama::random(tiny(), 4, &dev).unwrap();
        let a = m
            .hidden(&Tensor::new(&[[1u32, 2, 3]], &dev).unwrap(), None, false)
            .unwrap();
        let b = m
            .hidden(&Tensor::new(&[[1u32, 2, 9]], &dev).unwrap(), None, false)
            .unwrap();
        let d: f32 =
            crate::grpo::max_abs_diff(a.narrow(1, 0, 2).unwrap() - b.narrow(1, 0, 2).unwrap());
        assert!(d < 1e-6, "{d}");
    }
}
