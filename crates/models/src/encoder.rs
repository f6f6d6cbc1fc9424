//! The sentence encoder: a BERT encoder (all-MiniLM-L6-v2 by default) in candle with its
//! `tokenizers` tokenizer, mean pooling and L2 normalisation. Serving embeds through the packed
//! path over the same weights (`packed_bert`); this candle code is the training path (plain
//! differentiable ops) and the reference the packed path is tested against.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::bert::{Bert, BertConfig, mean_pool_normalize};
use super::packed_bert::PackedBert;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
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
