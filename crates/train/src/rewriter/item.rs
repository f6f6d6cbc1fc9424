//! What `eval-rewriter` records per item and the success thresholds it reads them against,
//! shared by the evaluation (`eval.rs`) and its paired comparison (`compare.rs`).

use serde::{Deserialize, Serialize};

/// The paper's thresholds: L2 below this and consistency above [`JSR_CONSISTENCY`].
pub const JSR_L2: f32 = 0.8;
pub const JSR_CONSISTENCY: f32 = 0.3;
/// Stricter success: consistency above this and at least half the distance closed.
pub const STRICT_CONSISTENCY: f32 = 0.6;
pub const STRICT_CLOSED: f32 = 0.5;

/// One item under one rewriter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ItemResult {
    pub id: String,
    pub text: String,
    pub target: std::collections::BTreeMap<crate::values::ValueId, f32>,
    pub rewrite: String,
    /// Why the screening refused the candidate (the output is then the original).
    pub rejected: Option<String>,
    pub l2_before: f32,
    pub l2: f32,
    pub cosine: f32,
    pub closed: f32,
    pub consistency: f32,
    pub shield_passed: bool,
    pub length_ratio: f32,
    pub generate_ms: f64,
    /// The same distances by the independent second scorer ([`LexicalScorer`](crate::score::lexical::LexicalScorer)).
    pub second_l2_before: f32,
    pub second_l2: f32,
    pub second_closed: f32,
    /// `single` or `multi`.
    #[serde(default)]
    pub kind: String,
    /// Sentence edits in the candidate (0 for whole-text rewrites).
    #[serde(default)]
    pub edits: usize,
    /// The time enforcement took for the item (detection included), in ms.
    #[serde(default)]
    pub added_ms: f64,
    /// The chosen edits, as `kind/source` (`inserted/bank`, `dropped/drop`, ...), in site order.
    #[serde(default)]
    pub applied: Vec<String>,
}
