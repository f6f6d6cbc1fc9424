//! The BERT encoder in candle (all-MiniLM-L6-v2's shape by default): embeddings, layers, mean
//! pooling. Plain differentiable ops: the training path, and the reference the packed serving
//! path (`packed_bert`) reads its weights from and is tested against.

use candle_core::{D, DType, Module, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
}

pub(crate) struct LayerNorm {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
    pub(crate) eps: f64,
}

impl LayerNorm {
    fn new(size: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            bias: vb.get(size, "bias")?,
            eps,
        })
    }

    /// Fused kernel for inference; differentiable ops when training.
    fn forward(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if !train && x.is_contiguous() {
            return candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps as f32);
        }
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

pub(crate) struct Layer {
    pub(crate) query: Linear,
    pub(crate) key: Linear,
    pub(crate) value: Linear,
    pub(crate) attn_out: Linear,
    pub(crate) attn_norm: LayerNorm,
    pub(crate) intermediate: Linear,
    pub(crate) output: Linear,
    pub(crate) out_norm: LayerNorm,
    pub(crate) heads: usize,
    pub(crate) head_dim: usize,
}

impl Layer {
    fn new(c: &BertConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let h = c.hidden_size;
        let att = vb.pp("attention");
        Ok(Self {
            query: candle_nn::linear(h, h, att.pp("self").pp("query"))?,
            key: candle_nn::linear(h, h, att.pp("self").pp("key"))?,
            value: candle_nn::linear(h, h, att.pp("self").pp("value"))?,
            attn_out: candle_nn::linear(h, h, att.pp("output").pp("dense"))?,
            attn_norm: LayerNorm::new(h, c.layer_norm_eps, att.pp("output").pp("LayerNorm"))?,
            intermediate: candle_nn::linear(
                h,
                c.intermediate_size,
                vb.pp("intermediate").pp("dense"),
            )?,
            output: candle_nn::linear(c.intermediate_size, h, vb.pp("output").pp("dense"))?,
            out_norm: LayerNorm::new(h, c.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            heads: c.num_attention_heads,
            head_dim: h / c.num_attention_heads,
        })
    }

    /// `mask_bias`: [B, 1, 1, T], 0 for tokens and a large negative number for padding.
    fn forward(&self, x: &Tensor, mask_bias: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let split = |y: Tensor| -> candle_core::Result<Tensor> {
            y.reshape((b, t, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.query.forward(x)?)?;
        let k = split(self.key.forward(x)?)?;
        let v = split(self.value.forward(x)?)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(mask_bias)?;
        let probs = if train {
            candle_nn::ops::softmax(&scores, D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))?;
        let x = self
            .attn_norm
            .forward(&(self.attn_out.forward(&ctx)? + x)?, train)?;
        let ff = self.intermediate.forward(&x)?.gelu_erf()?;
        self.out_norm
            .forward(&(self.output.forward(&ff)? + x)?, train)
    }
}

/// A BERT encoder.
pub struct Bert {
    pub(crate) word: Embedding,
    pub(crate) position: Embedding,
    pub(crate) token_type: Embedding,
    pub(crate) emb_norm: LayerNorm,
    pub(crate) layers: Vec<Layer>,
    pub config: BertConfig,
}

impl Bert {
    pub fn new(config: BertConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let h = config.hidden_size;
        let e = vb.pp("embeddings");
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::new(&config, vb.pp(format!("encoder.layer.{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            word: candle_nn::embedding(config.vocab_size, h, e.pp("word_embeddings"))?,
            position: candle_nn::embedding(
                config.max_position_embeddings,
                h,
                e.pp("position_embeddings"),
            )?,
            token_type: candle_nn::embedding(
                config.type_vocab_size,
                h,
                e.pp("token_type_embeddings"),
            )?,
            emb_norm: LayerNorm::new(h, config.layer_norm_eps, e.pp("LayerNorm"))?,
            layers,
            config,
        })
    }

    /// Token states [B, T, H] for ids and mask [B, T] (u32).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let x = self.embed_tokens(ids, train)?;
        self.run_layers(&x, mask, 0, self.layers.len(), train)
    }

    /// Embedding layer output [B, T, H].
    pub fn embed_tokens(&self, ids: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let positions = Tensor::arange(0u32, t as u32, ids.device())?
            .unsqueeze(0)?
            .broadcast_as((b, t))?;
        let types = ids.zeros_like()?;
        let x = (self.word.forward(ids)? + self.position.forward(&positions)?)?;
        let x = (x + self.token_type.forward(&types)?)?;
        self.emb_norm.forward(&x, train)
    }

    /// Run layers `from..to` on states `x` (fine-tuning runs the frozen bottom once and
    /// trains only the top).
    pub fn run_layers(
        &self,
        x: &Tensor,
        mask: &Tensor,
        from: usize,
        to: usize,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        let (b, t) = mask.dims2()?;
        let mask_bias = ((mask.to_dtype(DType::F32)? - 1.0)? * 1e9)?.reshape((b, 1, 1, t))?;
        let mut x = x.clone();
        for layer in &self.layers[from..to.min(self.layers.len())] {
            x = layer.forward(&x, &mask_bias, train)?;
        }
        Ok(x)
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }
}

/// Mean over real tokens, then L2 normalisation: [B, T, H] -> [B, H].
pub fn mean_pool_normalize(states: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    let summed = states.broadcast_mul(&m)?.sum(1)?;
    let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?;
    let mean = summed.broadcast_div(&counts)?;
    let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    mean.broadcast_div(&norm)
}
