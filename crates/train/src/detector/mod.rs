//! The detector of `visa-core`, with its training (`train-detector`), calibration
//! (`calibrate-detector`), evaluation (`eval-detector`) and the Touché23 files they read.

pub use visa_core::detector::*;

pub mod calibrate;
pub mod data;
pub mod eval;
pub mod train;
