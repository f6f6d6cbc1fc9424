//! GRPO training speed on the real rewriter base (SmolLM2-135M from the served GGUF): sampling
//! a group with the adapters merged into the weights, with `gemm` and with the skinny products
//! decoding uses, against base plus adapter per projection (the baseline, measured in the same
//! run), and the update's parts (the frozen reference pass
//! as the baseline, the pass with LoRA that keeps the graph, the backward pass).
//!
//! `cargo bench --bench train` (env: BENCH_RUNS, repetitions, default 3; BENCH_TOKENS, tokens
//! per completion, default 48; BENCH_GROUP, completions per prompt, default 4).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::disallowed_methods
)]

use std::time::Instant;

use candle_core::{Device, Tensor};
use visa_proxy::grpo::data::Item;
use visa_proxy::grpo::llama::Llama;
use visa_proxy::grpo::lora::LoraConfig;
use visa_proxy::grpo::math::{Objective, group_advantages, grpo_loss};
use visa_proxy::grpo::prompt::prompt_text;
use visa_proxy::grpo::sample::{Rng, SampleConfig, sample_group};
use visa_proxy::models::gguf_tokenizer::GgufTokenizer;
use visa_proxy::values::{ValueId, ValueVector};

const TEXT: &str = "To get ahead at work you need to be seen as the most capable person in the \
room. Take on the projects that executives notice, and make sure your name is on every success. \
Negotiate hard for each promotion and raise, and do not share credit unless you must.";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let runs = env("BENCH_RUNS", 3).max(1);
    let tokens = env("BENCH_TOKENS", 48).max(2);
    let group = env("BENCH_GROUP", 4).max(2);
    let config = visa_proxy::config::Config::load(std::path::Path::new("config.toml"), None)
        .expect("config.toml");
    let base = std::path::PathBuf::from(&config.llm.model);
    assert!(
        base.is_file(),
        "{} is missing: run scripts/fetch-models.sh",
        base.display()
    );
    let tokenizer = GgufTokenizer::from_gguf(&base).expect("tokenizer");
    let mut model = Llama::from_gguf(&base, &Device::Cpu).expect("base model");
    model
        .add_lora(
            LoraConfig {
                rank: 8,
                alpha: 16.0,
            },
            1,
        )
        .expect("LoRA adapters");
    let mut target = std::collections::BTreeMap::new();
    target.insert(ValueId::Benevolence, 0.8);
    target.insert(ValueId::Power, 0.2);
    let item = Item {
        id: "bench".into(),
        text: TEXT.into(),
        target,
    };
    let mut detected = ValueVector::default();
    detected.set(ValueId::Power, 0.8);
    let prompt = tokenizer
        .encode(&prompt_text(&item, &detected))
        .expect("prompt");
    // No stop tokens: every completion runs to the limit, so each run does the same work.
    let sample = SampleConfig {
        temperature: 0.9,
        top_p: 1.0,
        max_new_tokens: tokens,
        stop: Vec::new(),
    };
    println!(
        "GRPO training speed: SmolLM2-135M ({}), prompt {} tokens, group {group} x {tokens} tokens, {runs} run(s), median; threads: {}",
        base.display(),
        prompt.len(),
        candle_core::utils::get_num_threads()
    );

    let mut rng = Rng::new(7);
    let mut sampling = |model: &Llama| -> f64 {
        let mut secs = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            let g = sample_group(model, &prompt, group, &sample, &mut rng).expect("sampling");
            secs.push(t.elapsed().as_secs_f64());
            assert_eq!(
                g.completions.iter().map(Vec::len).sum::<usize>(),
                group * tokens
            );
        }
        median(secs)
    };
    let separate = sampling(&model);
    model.prepare_sampling().expect("merged weights");
    model.set_skinny_sampling(false);
    let merged = sampling(&model);
    model.set_skinny_sampling(true);
    let skinny = sampling(&model);
    let generated = (group * tokens) as f64;
    println!("| sampling a group | seconds | generated tokens/s |\n|---|---|---|");
    println!(
        "| base + adapter per projection, gemm (baseline) | {separate:.2} | {:.1} |",
        generated / separate
    );
    println!(
        "| adapters merged into the weights, gemm | {merged:.2} | {:.1} |",
        generated / merged
    );
    println!(
        "| merged, skinny products while decoding (what training uses) | {skinny:.2} | {:.1} |",
        generated / skinny
    );
    println!(
        "speed-up over the baseline: merged {:.2}x, merged + skinny {:.2}x",
        separate / merged,
        separate / skinny
    );

    let g = sample_group(&model, &prompt, group, &sample, &mut rng).expect("sampling");
    let completions = g
        .ids
        .narrow(1, g.prompt_len, g.ids.dim(1).unwrap() - g.prompt_len)
        .unwrap();
    let rewards: Vec<f32> = (0..group).map(|i| i as f32 / group as f32).collect();
    let adv = Tensor::from_vec(group_advantages(&rewards, 1e-4), group, &Device::Cpu).unwrap();
    let (mut reference, mut forward, mut backward) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        let logp_ref = model
            .completion_logprobs(&prompt, &completions, false)
            .unwrap()
            .detach();
        reference.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let logp = model
            .completion_logprobs(&prompt, &completions, true)
            .unwrap();
        let (loss, _) = grpo_loss(
            &logp,
            &logp.detach(),
            &logp_ref,
            &g.mask,
            &adv,
            Objective {
                clip: 0.2,
                beta: 0.04,
            },
        )
        .unwrap();
        forward.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let grads = loss.backward().unwrap();
        backward.push(t.elapsed().as_secs_f64());
        assert!(
            model
                .lora_vars()
                .iter()
                .any(|(_, v)| grads.get(v.as_tensor()).is_some())
        );
    }
    let positions = prompt.len() + group * tokens;
    println!("\n| update, {positions} positions (prompt once + group) | seconds |\n|---|---|");
    println!(
        "| reference pass, no LoRA, no graph (baseline) | {:.2} |",
        median(reference)
    );
    println!(
        "| pass with LoRA keeping the graph, and the loss | {:.2} |",
        median(forward)
    );
    println!("| backward | {:.2} |", median(backward));
}
