//! GRPO training of the value rewriter (VISA's method): a llama-architecture policy with LoRA
//! adapters in candle, groups of sampled rewrites scored with the proxy's own composite reward,
//! group-relative advantages, the clipped objective with a KL penalty to the frozen base.

pub mod adapter;
pub mod command;
pub mod data;
pub mod llama;
pub mod lora;
pub mod math;
pub mod sample;
pub mod trainer;
