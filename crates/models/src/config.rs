//! Configuration of the model layer (`[models]`: encoder, detector files, encoder queue;
//! `[llm]`: the local language model) and the error every section's validation returns, so each
//! layer owns the settings of what it runs and the proxy's `Config` only gathers them.

use serde::Deserialize;

/// A configuration problem, always naming the field it is about.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

pub fn config_err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// Load the encoder, detector and translator. When false, /v1/values/* and
    /// /v1/profiles/translate answer 503.
    pub enabled: bool,
    /// Folder with the sentence encoder (model.safetensors, tokenizer.json, config.json).
    pub encoder_dir: String,
    /// The detector head written by `visa-proxy train-detector`.
    pub detector_head: String,
    /// Per-value calibration of the head's scores (`visa-proxy calibrate-detector`); empty:
    /// raw head scores.
    pub detector_calibration: String,
    /// Encoder requests waiting at most; beyond it: 429.
    pub encoder_queue: usize,
    /// Texts per encoder forward pass when requests are batched.
    pub encoder_max_batch: usize,
    /// Longest text accepted by /v1/values/detect, in characters.
    pub max_text_chars: usize,
    /// Most texts in one /v1/values/detect request.
    pub max_texts: usize,
}

impl ModelsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (f, v) in [
            ("models.encoder_queue", self.encoder_queue),
            ("models.encoder_max_batch", self.encoder_max_batch),
            ("models.max_text_chars", self.max_text_chars),
            ("models.max_texts", self.max_texts),
        ] {
            if v == 0 {
                return Err(config_err(f, "must be above 0"));
            }
        }
        Ok(())
    }
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            encoder_dir: "models/minilm".into(),
            detector_head: "assets/detector/head.safetensors".into(),
            detector_calibration: "assets/detector/head.calibration.json".into(),
            encoder_queue: 256,
            encoder_max_batch: 32,
            max_text_chars: 20_000,
            max_texts: 64,
        }
    }
}

/// The local language model, run by mistral.rs on its own engine thread.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmConfig {
    /// Load the model at start. Needed by `kind = "local"` upstreams and the local rewriter.
    pub enabled: bool,
    /// A GGUF file on disk (`scripts/fetch-models.sh` puts the default there).
    pub model: String,
    /// Instead of `model`: a Hugging Face repository id and `hf_file` inside it (needs internet
    /// access and, for gated models, a token in the Hugging Face cache).
    pub hf_model_id: Option<String>,
    pub hf_file: Option<String>,
    /// A Jinja chat template file (or literal template) that overrides the GGUF's own.
    pub chat_template: Option<String>,
    /// A LoRA adapter written by `visa-proxy train-rewriter` (`adapter.safetensors`), merged
    /// into a copy of `model` (`ADAPTER.merged.gguf` next to it, Q8_0), made once and reused
    /// while newer than both files.
    pub adapter: Option<String>,
    /// Load a Q8_0 copy of a local GGUF file's Q4_1 tensors (written once next to it): candle
    /// has AVX2 kernels for Q8_0 and none for Q4_1 (see the README's benchmarks).
    pub requantize_q4_1: bool,
    /// Activation dtype: `f32` (default; fastest on CPU, where F16 is emulated), `f16`, `bf16`
    /// (for GPU builds), or `auto` (mistral.rs' choice, F16 on CPU).
    pub dtype: String,
    /// Model name the local upstream reports (and answers to in `GET /v1/models`).
    pub served_name: String,
    /// Requests admitted at once (running or waiting for the engine); beyond it: 429.
    pub max_queue: usize,
    /// Sequences the engine batches together in one forward pass.
    pub max_num_seqs: usize,
    /// Defaults for requests that do not set them.
    pub temperature: f64,
    pub top_p: f64,
    pub max_tokens: usize,
    /// Longest prompt accepted, in characters (a cheap guard before tokenising).
    pub max_prompt_chars: usize,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            model: "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            hf_model_id: None,
            hf_file: None,
            chat_template: None,
            adapter: None,
            dtype: "f32".into(),
            requantize_q4_1: true,
            served_name: "smollm2-135m-instruct".into(),
            max_queue: 32,
            max_num_seqs: 8,
            temperature: 0.7,
            top_p: 0.9,
            max_tokens: 512,
            max_prompt_chars: 32_000,
        }
    }
}

impl LlmConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        match (&self.hf_model_id, &self.hf_file) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(config_err(
                    "llm.hf_model_id",
                    "hf_model_id and hf_file go together",
                ));
            }
            (None, None) if self.model.trim().is_empty() => {
                return Err(config_err("llm.model", "must name a GGUF file"));
            }
            _ => {}
        }
        if !matches!(self.dtype.as_str(), "f32" | "f16" | "bf16" | "auto") {
            return Err(config_err("llm.dtype", "must be f32, f16, bf16 or auto"));
        }
        for (f, v) in [
            ("llm.max_queue", self.max_queue),
            ("llm.max_num_seqs", self.max_num_seqs),
            ("llm.max_tokens", self.max_tokens),
            ("llm.max_prompt_chars", self.max_prompt_chars),
        ] {
            if v == 0 {
                return Err(config_err(f, "must be above 0"));
            }
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err(config_err("llm.temperature", "must be in [0, 2]"));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(config_err("llm.top_p", "must be in (0, 1]"));
        }
        Ok(())
    }
}
