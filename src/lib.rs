//! visa-proxy: an OpenAI-compatible proxy that enforces per-tenant value profiles on LLM answers.
//!
//! The binary in `main.rs` only parses the command line; everything else lives here so that
//! tests and benchmarks drive the same code. This crate is the top layer (HTTP, upstreams,
//! profiles' storage, limits, enforcement on the request path, the CLI); the layers below it are
//! crates of their own (`crates/`), re-exported here under their old module names.

pub mod background;
pub mod cli;
pub mod config;
pub mod decisions;
pub mod enforce;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod server;
pub mod stage;
pub mod stats;
pub mod store;
pub mod telemetry;
pub mod tenants;
pub mod upstream;

pub use visa_core::{detector, edit, rewriter, score, translator};
pub use visa_models as models;
pub use visa_train as train;
pub use visa_train::grpo;
pub use visa_values as values;
