//! The configuration sections training and evaluation read, handed over by the CLI after it
//! loaded and validated the whole file (the gateway's own sections stay with the proxy).

use visa_core::config::{EnforceConfig, RewriterConfig};
use visa_models::config::{LlmConfig, ModelsConfig};

#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub models: ModelsConfig,
    pub llm: LlmConfig,
    pub rewriter: RewriterConfig,
    pub enforce: EnforceConfig,
}
