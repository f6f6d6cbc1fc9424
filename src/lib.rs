//! visa-proxy: an OpenAI-compatible proxy that enforces per-tenant value profiles on LLM answers.
//!
//! The binary in `main.rs` only parses the command line; everything else lives here so that
//! tests and benchmarks drive the same code.

pub mod cli;
pub mod config;
pub mod config_models;
pub mod decisions;
pub mod detector;
pub mod edit;
pub mod enforce;
pub mod error;
pub mod grpo;
pub mod limits;
pub mod metrics;
pub mod models;
pub mod rewriter;
pub mod score;
pub mod server;
pub mod stage;
pub mod stats;
pub mod store;
pub mod telemetry;
pub mod tenants;
pub mod translator;
pub mod upstream;
pub mod values;
