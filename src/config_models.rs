//! Configuration of the local language model, the rewriter and enforcement (`[llm]`,
//! `[rewriter]`, `[enforce]`), kept apart from the gateway's own settings in `config`.

use serde::Deserialize;

use crate::config::{ConfigError, config_err};

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

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RewriterBackend {
    /// The local model of `[llm]`.
    #[default]
    Local,
    /// An OpenAI-compatible endpoint: one of the `[[upstreams]]` (e.g. a GPU server with the
    /// trained rewriter).
    Remote,
}

/// How rewrites are generated, scored and shielded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewriterConfig {
    pub backend: RewriterBackend,
    /// For `remote`: the upstream's name and the model to ask for.
    pub upstream: Option<String>,
    pub model: Option<String>,
    /// Candidates generated per rewrite (the best one is kept); the first is greedy.
    pub candidates: usize,
    /// Rounds of candidates: when no candidate of a round passes the shield, `candidates` more
    /// are sampled, up to this many rounds; the first round holding a passing candidate ends
    /// the search (its best passing candidate is kept).
    pub rounds: usize,
    /// No further round starts once the rewrite has taken this long (0: no limit), so that a
    /// long answer the shield keeps refusing costs about one round more than this, not
    /// `rounds` rounds.
    pub round_budget_ms: u64,
    /// Generate candidates concurrently (the engine batches them) rather than one by one.
    pub parallel: bool,
    pub temperature: f64,
    pub top_p: f64,
    /// A candidate longer than this many times the original (in characters) is cut off as a
    /// runaway; shorter than `min_length_ratio` times the original is rejected as truncated.
    pub max_length_ratio: f32,
    pub min_length_ratio: f32,
    /// Shield: the rewrite's distance to the target must be below the original's by at least
    /// this much...
    pub min_improvement: f32,
    /// ...and its semantic integrity (see `score`) at least this.
    pub min_integrity: f32,
    /// Weight of value precision against semantic integrity in the composite reward.
    pub value_weight: f32,
    /// Longest text `POST /v1/values/rewrite` accepts, in characters.
    pub max_text_chars: usize,
    /// `edits` (default): sentence-level edits where the values are (a model rewrite of one
    /// sentence, the sentence without a clause, a drop when no fact is lost, one inserted
    /// sentence for a missing value); `whole`: rewrite the whole answer (the earlier design,
    /// kept for comparison).
    pub mode: RewriteMode,
    /// Model candidates per edit site (the first greedy, the others sampled); 0: only cuts,
    /// drops and the injection bank.
    pub edit_model_candidates: usize,
    /// An edited sentence must keep at least this encoder similarity to the one it replaces.
    pub min_sentence_similarity: f32,
    /// An edit must move its sentence's value (or the answer's, for an insertion) by at least
    /// this much.
    pub min_value_move: f32,
    /// Whether a value below its band may be raised by inserting a sentence (from the bank, or
    /// written by the model when it writes candidates). Off by default: read by hand, the
    /// accepted insertions did not belong to the answers they were put into (README).
    pub insert: bool,
    /// The value-injection bank: short fact-free sentences per value.
    pub bank: String,
    /// When a sentence that carries a value above its band may be dropped: `covered` (default)
    /// when its facts are elsewhere in the answer and another sentence says the same (encoder
    /// similarity at least `drop_covered_similarity`: a near-repeat); `facts` when its facts
    /// are elsewhere (it may say something the rest does not); `never`. In every case only a
    /// sentence the detector finds more likely than not to express the value.
    pub drop: DropRule,
    pub drop_covered_similarity: f32,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DropRule {
    #[default]
    Covered,
    Facts,
    Never,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RewriteMode {
    #[default]
    Edits,
    Whole,
}

impl Default for RewriterConfig {
    fn default() -> Self {
        Self {
            backend: RewriterBackend::Local,
            upstream: None,
            model: None,
            candidates: 2,
            rounds: 3,
            round_budget_ms: 20_000,
            parallel: false,
            temperature: 0.5,
            top_p: 0.95,
            max_length_ratio: 2.0,
            min_length_ratio: 0.3,
            min_improvement: 0.02,
            min_integrity: 0.6,
            value_weight: 0.5,
            max_text_chars: 8_000,
            mode: RewriteMode::Edits,
            edit_model_candidates: 0,
            min_sentence_similarity: 0.6,
            min_value_move: 0.1,
            insert: false,
            bank: "assets/edit/bank.json".into(),
            drop: DropRule::Covered,
            drop_covered_similarity: 0.75,
        }
    }
}

impl RewriterConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.candidates == 0 || self.candidates > 16 {
            return Err(config_err("rewriter.candidates", "must be in 1..=16"));
        }
        if self.rounds == 0 || self.rounds > 8 {
            return Err(config_err("rewriter.rounds", "must be in 1..=8"));
        }
        if self.max_length_ratio.is_nan() || self.max_length_ratio <= 1.0 {
            return Err(config_err("rewriter.max_length_ratio", "must be above 1"));
        }
        if !(0.0..1.0).contains(&self.min_length_ratio) {
            return Err(config_err("rewriter.min_length_ratio", "must be in [0, 1)"));
        }
        if !(0.0..=1.0).contains(&self.value_weight) {
            return Err(config_err("rewriter.value_weight", "must be in [0, 1]"));
        }
        if !(-1.0..=1.0).contains(&self.min_improvement) {
            return Err(config_err("rewriter.min_improvement", "must be in [-1, 1]"));
        }
        if !(0.0..=1.5).contains(&self.min_integrity) {
            return Err(config_err(
                "rewriter.min_integrity",
                "must be in [0, 1] (above 1 always falls back, for tests)",
            ));
        }
        if self.backend == RewriterBackend::Remote && self.model.is_none() {
            return Err(config_err(
                "rewriter.model",
                "a remote rewriter needs the model name to ask for",
            ));
        }
        if self.max_text_chars == 0 {
            return Err(config_err("rewriter.max_text_chars", "must be above 0"));
        }
        if self.edit_model_candidates > 8 {
            return Err(config_err(
                "rewriter.edit_model_candidates",
                "must be in 0..=8",
            ));
        }
        if !(0.0..=1.0).contains(&self.min_sentence_similarity) {
            return Err(config_err(
                "rewriter.min_sentence_similarity",
                "must be in [0, 1]",
            ));
        }
        if !(0.0..=1.0).contains(&self.drop_covered_similarity) {
            return Err(config_err(
                "rewriter.drop_covered_similarity",
                "must be in [0, 1]",
            ));
        }
        if !(0.0..=1.0).contains(&self.min_value_move) {
            return Err(config_err("rewriter.min_value_move", "must be in [0, 1]"));
        }
        Ok(())
    }
}

/// Enforcement of profiles on `/v1/chat/completions` answers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnforceConfig {
    /// Streams in `window` mode: the first window is released once it holds this many
    /// characters and ends at a sentence or clause boundary (small: low time to first token)...
    pub first_window_chars: usize,
    /// ...later windows once they hold this many.
    pub window_chars: usize,
    /// A window with no boundary is cut at this size anyway.
    pub max_window_chars: usize,
    /// The time enforcement may add to a JSON answer, and to each stream window, in ms
    /// (a profile's `max_added_ms` overrides it; 0: no limit). When it runs out, the best
    /// result that passes the shield by then is returned, else the fallback.
    pub max_added_ms: u64,
    /// Streams in `buffer` mode hold at most this many characters of an answer; beyond it the
    /// stream fails with a 502 rather than holding without bound.
    pub max_buffer_chars: usize,
}

impl Default for EnforceConfig {
    fn default() -> Self {
        Self {
            first_window_chars: 40,
            window_chars: 160,
            max_window_chars: 600,
            max_added_ms: 10_000,
            max_buffer_chars: 1_000_000,
        }
    }
}

impl EnforceConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.first_window_chars == 0 || self.window_chars == 0 {
            return Err(config_err("enforce.window_chars", "must be above 0"));
        }
        if self.max_buffer_chars == 0 {
            return Err(config_err("enforce.max_buffer_chars", "must be above 0"));
        }
        if self.max_window_chars < 16 {
            return Err(config_err(
                "enforce.max_window_chars",
                "must be at least 16 (a window cut inside a character could not advance)",
            ));
        }
        if self.max_window_chars < self.window_chars.max(self.first_window_chars) {
            return Err(config_err(
                "enforce.max_window_chars",
                "must be at least window_chars and first_window_chars",
            ));
        }
        Ok(())
    }
}
