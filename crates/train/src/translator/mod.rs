//! The translator of `visa-core`, with its evaluation (`eval-translator`).

pub use visa_core::translator::*;

pub mod eval;
