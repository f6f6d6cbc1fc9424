//! GRPO training of the value rewriter (VISA's method): a llama-architecture policy with LoRA
//! adapters in candle, groups of sampled rewrites scored with the proxy's own composite reward,
//! group-relative advantages, the clipped objective with a KL penalty to the frozen base.

pub mod adapter;
pub mod command;
pub mod data;
pub mod edit_task;
pub mod llama;
pub mod lora;
pub mod math;
pub mod optim;
pub mod options;
pub mod prompt;
pub mod sample;
pub mod screening;
pub mod skinny;
pub mod trainer;
pub mod warm;
pub mod warm_start;

/// Largest absolute entry of `a - b` (tests compare tensors with it).
#[cfg(test)]
pub(crate) fn max_abs_diff(diff: candle_core::Result<candle_core::Tensor>) -> f32 {
    diff.and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
        .expect("tensors of the same shape")
}
