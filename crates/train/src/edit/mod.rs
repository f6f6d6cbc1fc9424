//! The sentence editor of `visa-core`, with the study of its similarity measure.

pub use visa_core::edit::*;

pub mod similarity_eval;
