//! The rewriter of `visa-core`, with the evaluation harness (`eval-rewriter`) and its paired
//! comparison of editors.

pub use visa_core::rewriter::*;

pub mod compare;
pub mod eval;
pub mod item;
