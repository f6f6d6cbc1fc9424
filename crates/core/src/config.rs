//! Configuration of the rewriter and of enforcement (`[rewriter]`, `[enforce]`), owned by the
//! layer that runs them; the proxy's `Config` gathers these sections.

use serde::Deserialize;

use visa_models::config::{ConfigError, config_err};

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
