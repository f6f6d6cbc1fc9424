//! Local models. `encoder` is the sentence encoder (candle + tokenizers) behind the detector,
//! the translator and semantic similarity.

pub mod approx;
pub mod encoder;
pub mod gguf_convert;
pub mod gguf_tokenizer;
pub mod llm;
pub mod packed_bert;
pub mod service;

/// Where `scripts/fetch-models.sh` puts the encoder by default.
pub const DEFAULT_ENCODER_DIR: &str = "models/minilm";
