//! The sentence encoder: a BERT encoder (all-MiniLM-L6-v2 by default) in candle with its
//! `tokenizers` tokenizer, mean pooling and L2 normalisation. Serving embeds through the packed
//! path over the same weights (`packed_bert`); this candle code is the training path (plain
//! differentiable ops) and the reference the packed path is tested against.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::packed_bert::PackedBert;
use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};
use serde::Deserialize;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

pub type Result<T> = std::result::Result<T, EncoderError>;

#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    #[error("encoder files: {0}")]
    Files(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("encoder: {0}")]
    Candle(#[from] candle_core::Error),
}

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

/// Where the encoder's files are.
#[derive(Debug, Clone)]
pub struct EncoderFiles {
    pub dir: PathBuf,
}

impl EncoderFiles {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn weights(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }
    pub fn tokenizer(&self) -> PathBuf {
        self.dir.join("tokenizer.json")
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.json")
    }
}

/// Tokenizer + BERT + pooling: texts in, unit vectors out. Synchronous; callers run it on
/// their own threads.
pub struct SentenceEncoder {
    pub bert: Bert,
    /// The inference path over `bert`'s weights (see `packed_bert`).
    packed: PackedBert,
    tokenizer: Tokenizer,
    pub device: Device,
    pub max_tokens: usize,
    /// SHA-256 of the weights file, for cards and checks.
    pub weights_sha256: String,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        EncoderError::Files(format!(
            "{}: {e} (run scripts/fetch-models.sh to fetch the model files)",
            path.display()
        ))
    })
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

impl SentenceEncoder {
    /// Load from a folder with `model.safetensors`, `tokenizer.json` and `config.json`.
    pub fn load(files: &EncoderFiles, max_tokens: usize) -> Result<Self> {
        Self::load_with_delta(files, None, max_tokens)
    }

    /// Load, then replace the tensors a fine-tuning delta file holds (stored as f16).
    pub fn load_with_delta(
        files: &EncoderFiles,
        delta: Option<&Path>,
        max_tokens: usize,
    ) -> Result<Self> {
        let weights = read(&files.weights())?;
        let weights_sha256 = sha256_hex(&weights);
        let mut tensors = candle_core::safetensors::load_buffer(&weights, &Device::Cpu)?;
        if let Some(path) = delta {
            let bytes = read(path)?;
            for (name, t) in candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)? {
                if !tensors.contains_key(&name) {
                    return Err(EncoderError::Files(format!(
                        "{}: unknown tensor {name}",
                        path.display()
                    )));
                }
                tensors.insert(name, t.to_dtype(DType::F32)?);
            }
        }
        Self::from_tensors(files, tensors, max_tokens, weights_sha256)
    }

    /// Build from already loaded tensors (fine-tuned layers may replace some of them).
    pub fn from_tensors(
        files: &EncoderFiles,
        tensors: HashMap<String, Tensor>,
        max_tokens: usize,
        weights_sha256: String,
    ) -> Result<Self> {
        let device = Device::Cpu;
        let config: BertConfig = serde_json::from_slice(&read(&files.config())?)
            .map_err(|e| EncoderError::Files(format!("{}: {e}", files.config().display())))?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let bert = Bert::new(config, vb)?;
        let packed = PackedBert::new(&bert)?;
        let mut tokenizer = Tokenizer::from_file(files.tokenizer()).map_err(|e| {
            EncoderError::Tokenizer(format!("{}: {e}", files.tokenizer().display()))
        })?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| EncoderError::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        Ok(Self {
            bert,
            packed,
            tokenizer,
            device,
            max_tokens,
            weights_sha256,
        })
    }

    /// Token ids and mask for a batch, padded to its longest text.
    pub fn tokenize(&self, texts: &[&str]) -> Result<(Tensor, Tensor)> {
        let enc = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EncoderError::Tokenizer(e.to_string()))?;
        let t = enc.first().map(|e| e.len()).unwrap_or(0);
        let mut ids = Vec::with_capacity(texts.len() * t);
        let mut mask = Vec::with_capacity(texts.len() * t);
        for e in &enc {
            ids.extend_from_slice(e.get_ids());
            mask.extend_from_slice(e.get_attention_mask());
        }
        Ok((
            Tensor::from_vec(ids, (texts.len(), t), &self.device)?,
            Tensor::from_vec(mask, (texts.len(), t), &self.device)?,
        ))
    }

    /// Number of tokens (with special tokens, after truncation) of one text.
    pub fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(self
            .tokenizer
            .encode(text, true)
            .map_err(|e| EncoderError::Tokenizer(e.to_string()))?
            .len())
    }

    /// Token ids of each text (with special tokens, truncated, not padded).
    pub fn token_ids(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let enc = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EncoderError::Tokenizer(e.to_string()))?;
        Ok(enc
            .iter()
            .map(|e| {
                e.get_ids()
                    .iter()
                    .zip(e.get_attention_mask())
                    .filter(|(_, m)| **m == 1)
                    .map(|(id, _)| *id)
                    .collect()
            })
            .collect())
    }

    /// Unit-length sentence embeddings [B, H] through candle's padded batch (the reference for
    /// the packed path, and what `cargo bench --bench encoder` compares it with).
    pub fn embed(&self, texts: &[&str]) -> Result<Tensor> {
        let (ids, mask) = self.tokenize(texts)?;
        let states = self.bert.forward(&ids, &mask, false)?;
        Ok(mean_pool_normalize(&states, &mask)?)
    }

    /// Unit-length sentence embeddings as plain vectors, through the packed inference path.
    pub fn embed_vecs(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let ids = self.token_ids(texts)?;
        Ok(self.packed.embed(&self.bert, &ids)?)
    }
}

/// Cosine similarity of two unit vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoder() -> SentenceEncoder {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/minilm");
        SentenceEncoder::load(&EncoderFiles::new(dir), 256)
            .expect("run scripts/fetch-models.sh first")
    }

    /// Scores all-MiniLM-L6-v2 is published with in the sentence-transformers documentation.
    #[test]
    fn matches_published_similarities() {
        let enc = encoder();
        let pairs = [
            (
                "The new movie is awesome",
                "The new movie is so great",
                0.8939,
            ),
            (
                "The cat sits outside",
                "The cat plays in the garden",
                0.6788,
            ),
            ("I love pasta", "Do you like pizza?", 0.5096),
        ];
        for (a, b, want) in pairs {
            let v = enc.embed_vecs(&[a, b]).unwrap();
            let got = cosine(&v[0], &v[1]);
            assert!(
                (got - want).abs() < 0.002,
                "{a} / {b}: got {got}, published {want}"
            );
            let norm: f32 = v[0].iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4);
        }
    }

    #[test]
    fn padding_does_not_change_embeddings() {
        let enc = encoder();
        let alone = enc.embed_vecs(&["short text"]).unwrap();
        let batched = enc
            .embed_vecs(&[
                "short text",
                "a much longer text that forces the first one to be padded a lot",
            ])
            .unwrap();
        let sim = cosine(&alone[0], &batched[0]);
        assert!(sim > 0.9999, "{sim}");
    }

    /// The packed path (serving) against candle's padded batch (reference), on texts of very
    /// different lengths in one batch, an empty text and one cut at the token limit.
    #[test]
    fn packed_path_equals_candle_path() {
        let enc = encoder();
        let long = "Freedom, security and tradition all pull in different directions. ".repeat(40);
        let texts = [
            "values matter",
            "",
            "Caring for others is good, and so is being honest with them about hard news.",
            long.as_str(),
        ];
        let packed = enc.embed_vecs(&texts).unwrap();
        let reference = enc.embed(&texts).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(enc.token_ids(&[long.as_str()]).unwrap()[0].len(), 256);
        for (p, r) in packed.iter().zip(&reference) {
            let diff = p
                .iter()
                .zip(r)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 2e-5, "max difference {diff}");
        }
    }

    #[test]
    fn training_path_equals_inference_path() {
        let enc = encoder();
        let (ids, mask) = enc
            .tokenize(&["values matter", "caring for others is good"])
            .unwrap();
        let a = enc.bert.forward(&ids, &mask, false).unwrap();
        let b = enc.bert.forward(&ids, &mask, true).unwrap();
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-3, "{diff}");
    }
}
