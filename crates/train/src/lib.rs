//! Training and evaluation: GRPO for the rewriter and the sentence editor, the detector's head,
//! gate and calibration, and the evaluation commands (`eval-detector`, `eval-rewriter`,
//! `eval-translator`, the similarity study). Builds on `visa-core`; the CLI in the proxy crate
//! parses the options and hands over the configuration sections they need ([`Settings`]).
//!
//! The modules `detector`, `edit`, `rewriter` and `translator` extend the `visa-core` module of
//! the same name with what trains or measures it, so `crate::detector::Head` is core's.

#![expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the training and evaluation commands report progress and results on the terminal"
)]

pub mod detector;
pub mod edit;
pub mod grpo;
pub mod rewriter;
pub mod score;
pub mod settings;
pub mod translator;

pub use settings::Settings;
pub use visa_core::config;
pub use visa_models as models;
pub use visa_values as values;
