//! The scorer of `visa-core`, with the second, independent scorer the evaluation reads (word
//! features, trained on Touché23 here; serving never uses it).

pub use visa_core::score::*;

pub mod lexical;
