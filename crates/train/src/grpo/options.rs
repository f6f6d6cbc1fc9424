//! `train-rewriter`'s options and the device they pick, apart from the command that runs them,
//! so the warm start and the training loop can read them without importing each other.

use std::path::PathBuf;

use candle_core::Device;
use serde::Serialize;

/// `train-rewriter`'s options (also the command line's, by `clap`).
#[derive(Debug, Clone, Serialize, clap::Args)]
pub struct TrainOptions {
    /// What the policy learns: `edit` (the sentence editor's tasks, what serving asks of the
    /// model: one sentence rewritten with less or more of a value) or `whole` (whole-text
    /// rewrites, the earlier design).
    #[arg(long, value_enum, default_value_t = TrainTask::Edit)]
    pub task: TrainTask,
    /// Touché23 folder: the premises of arguments-training.tsv are the sources.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// A JSONL of {"text", "target": {"value": score}} items (with or instead of --data).
    #[arg(long)]
    pub jsonl: Option<PathBuf>,
    /// The proxy config: value models, rewriter settings, [llm] model (the base).
    #[arg(long, default_value = "config.toml")]
    pub config: PathBuf,
    /// The base GGUF (default: the config's [llm] model).
    #[arg(long)]
    pub base: Option<PathBuf>,
    #[arg(long, default_value = "runs/rewriter")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Completions sampled per prompt (G).
    #[arg(long, default_value_t = 4)]
    pub group: usize,
    #[arg(long, default_value_t = 1)]
    pub prompts_per_step: usize,
    #[arg(long, default_value_t = 96)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 0.9)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 2e-4)]
    pub learning_rate: f64,
    /// Weight of the KL penalty to the base.
    #[arg(long, default_value_t = 0.04)]
    pub beta: f64,
    /// Clip range of the probability ratio.
    #[arg(long, default_value_t = 0.2)]
    pub clip: f64,
    /// Weight of value precision in the reward, the rest being semantic integrity (default:
    /// the config's `[rewriter] value_weight`, the serving weight). Serve the adapter with the
    /// same weight for candidate choice to match what it was trained on.
    #[arg(long)]
    pub value_weight: Option<f32>,
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long)]
    pub resume: bool,
    #[arg(long, default_value_t = 10)]
    pub checkpoint_every: usize,
    /// Prompts for a supervised warm start before GRPO (0: none): sample
    /// --warm-start-samples rewrites of each from the base, keep the best one the serving
    /// shield accepts, and fit the adapters to the kept ones (rejection-sampling fine-tuning).
    /// GRPO then starts on the items after these.
    #[arg(long, default_value_t = 0)]
    pub warm_start: usize,
    #[arg(long, default_value_t = 8)]
    pub warm_start_samples: usize,
    /// Passes over the kept rewrites.
    #[arg(long, default_value_t = 2)]
    pub warm_start_epochs: usize,
    /// Kept rewrites per supervised step.
    #[arg(long, default_value_t = 2)]
    pub warm_start_batch: usize,
    #[arg(long, default_value_t = 2e-4)]
    pub warm_start_lr: f64,
    /// Where the policy trains: `auto` (the first CUDA GPU when the binary was built with the
    /// `cuda` feature and one is present, else the CPU), `cpu`, or `cuda` (an error without
    /// the feature or a GPU).
    #[arg(long, value_enum, default_value_t = TrainDevice::Auto)]
    pub device: TrainDevice,
    #[arg(long, default_value_t = 80)]
    pub min_source_chars: usize,
    #[arg(long, default_value_t = 320)]
    pub max_source_chars: usize,
}

/// `--task`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TrainTask {
    Edit,
    Whole,
}

/// `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TrainDevice {
    Auto,
    Cpu,
    Cuda,
}

/// The device `--device` names on this binary and machine.
pub fn pick_device(wanted: TrainDevice) -> anyhow::Result<Device> {
    let built = candle_core::utils::cuda_is_available();
    match wanted {
        TrainDevice::Cpu => Ok(Device::Cpu),
        TrainDevice::Cuda => {
            anyhow::ensure!(
                built,
                "--device cuda: this binary was built without the `cuda` feature (cargo build --release --features cuda)"
            );
            Device::new_cuda(0).map_err(|e| anyhow::anyhow!("--device cuda: no usable GPU: {e}"))
        }
        TrainDevice::Auto if built => match Device::new_cuda(0) {
            Ok(d) => Ok(d),
            Err(e) => {
                eprintln!("no usable CUDA GPU ({e}); training on the CPU");
                Ok(Device::Cpu)
            }
        },
        TrainDevice::Auto => Ok(Device::Cpu),
    }
}

/// A device's name for the progress line and the card.
pub fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda:0".into(),
        Device::Metal(_) => "metal".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_is_the_cpu_unless_cuda_is_built_and_present() {
        assert!(pick_device(TrainDevice::Cpu).unwrap().is_cpu());
        if !candle_core::utils::cuda_is_available() {
            assert!(pick_device(TrainDevice::Auto).unwrap().is_cpu());
            let e = pick_device(TrainDevice::Cuda).unwrap_err().to_string();
            assert!(e.contains("`cuda` feature"), "{e}");
        } else {
            // Built with the feature: auto takes the GPU when there is one, else the CPU.
            let d = pick_device(TrainDevice::Auto).unwrap();
            assert_eq!(d.is_cuda(), Device::new_cuda(0).is_ok());
        }
    }
}
