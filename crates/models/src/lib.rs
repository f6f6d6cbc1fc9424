//! Local models, the layer above `visa-values`: the sentence encoder (candle + tokenizers) behind
//! the detector, the translator and semantic similarity, its bounded service thread, the local
//! language model (mistral.rs), the GGUF helpers and the trained adapter's file format. No HTTP.

pub mod adapter;
pub mod approx;
pub mod bert;
pub mod config;
pub mod encoder;
pub mod error;
pub mod gguf_convert;
pub mod gguf_tokenizer;
pub mod llm;
pub mod packed_bert;
pub mod service;

/// Where `scripts/fetch-models.sh` puts the encoder by default.
pub const DEFAULT_ENCODER_DIR: &str = "models/minilm";
