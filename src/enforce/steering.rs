//! Steering the upstream: a profile with `steer = true` puts one system message derived from
//! its targets before the client's messages, so that a capable upstream writes on-profile to
//! begin with and enforcement has less to do; and `visa-proxy eval-steering`, which measures
//! how many answers of the local upstream need an edit with and without it.

#![expect(clippy::print_stdout, reason = "`eval-steering` prints its report")]

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Config;
use crate::edit::Scope;
use crate::models::llm::{ChatMessage, LlmEngine, LlmStats, Role, Sampling};
use crate::values::profile::{Profile, ProfileSpec};

/// The system message a `steer = true` profile puts before the client's messages: what to show
/// (values with a target of at least 0.6) and what to avoid (at most 0.3), in plain words;
/// `None` when the profile asks for neither.
pub fn steering_message(profile: &Profile) -> Option<String> {
    use crate::rewriter::prompt::cue;
    let mut show = Vec::new();
    let mut avoid = Vec::new();
    for (v, t) in &profile.values {
        if t.target >= 0.6 {
            show.push(cue(*v));
        } else if t.target <= 0.3 {
            avoid.push(cue(*v));
        }
    }
    let list = |items: &[&str]| match items {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    };
    let mut parts = Vec::new();
    if !show.is_empty() {
        parts.push(format!("show {}", list(&show)));
    }
    if !avoid.is_empty() {
        parts.push(format!("avoid appeals to {}", list(&avoid)));
    }
    (!parts.is_empty()).then(|| format!("In your answer, {}.", parts.join("; ")))
}

/// `eval-steering`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct SteerEvalOptions {
    /// One prompt per line.
    #[arg(long, default_value = "tests/data/steer_prompts.txt")]
    pub prompts: PathBuf,
    #[arg(long, default_value = "config.toml")]
    pub config: PathBuf,
    /// The profile (JSON); default: the README's demo profile.
    #[arg(
        long,
        default_value = r#"{"values":{"benevolence":{"target":0.9,"tolerance":0.1},"power":{"target":0.1}},"action":"rewrite","steer":true}"#
    )]
    pub profile: String,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
}

/// Answer every prompt with the local model, greedy, without and with the steering message,
/// and count the answers the profile finds outside tolerance (that need an edit).
pub fn run(o: &SteerEvalOptions) -> anyhow::Result<()> {
    let config = Config::load(&o.config, None)
        .map_err(|e| anyhow::anyhow!("{}: {e}", o.config.display()))?;
    let spec: serde_json::Value = serde_json::from_str(&o.profile)?;
    let spec = ProfileSpec::from_json(&spec)
        .map_err(|e| anyhow::anyhow!("--profile: {}: {}", e.param, e.message))?;
    let profile = Profile::from_spec(spec, 0, 0);
    let system = steering_message(&profile).ok_or_else(|| {
        anyhow::anyhow!("--profile: no target at or above 0.6 or at or below 0.3 to steer toward")
    })?;
    let prompts: Vec<String> = std::fs::read_to_string(&o.prompts)
        .map_err(|e| anyhow::anyhow!("{}: {e}", o.prompts.display()))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let models = visa_core::value_models::ValueModels::load(&config.models, crate::models::service::ServiceStats::default()).await?;
        let editor = crate::edit::Editor {
            backend: None,
            scorer: crate::score::Scorer {
                detector: models.detector.clone(),
                encoder: models.semantic.clone(),
                value_weight: config.rewriter.value_weight,
                integrity_floor: config.rewriter.min_integrity,
            },
            bank: Arc::new(crate::edit::bank::Bank::default()),
            config: config.rewriter.clone(),
        };
        let engine = LlmEngine::load(&config.llm, LlmStats::default()).await?;
        println!("profile: {}\nsteering message: {system}\n", o.profile);
        println!("| prompt | unsteered: distance | sites | steered: distance | sites |\n|---|---|---|---|---|");
        let (mut need, mut need_steered, mut d0, mut d1) = (0usize, 0usize, 0.0f32, 0.0f32);
        let (mut s0, mut s1) = (0usize, 0usize);
        for p in &prompts {
            let mut row = Vec::new();
            for steer in [false, true] {
                let mut messages = Vec::new();
                if steer {
                    messages.push(ChatMessage::new(Role::System, system.clone()));
                }
                messages.push(ChatMessage::new(Role::User, p.clone()));
                let answer = engine
                    .complete(messages, Sampling { temperature: 0.0, top_p: 1.0, max_tokens: o.max_tokens, stop: Vec::new(), logprobs: None })
                    .await
                    .map_err(|e| anyhow::anyhow!("{}", e.message))?;
                let a = editor
                    .assess(&profile, &answer.text, None, Scope::Full)
                    .await
                    .map_err(|e| anyhow::anyhow!("{}", e.message))?;
                let needs = !a.sites.is_empty();
                if steer {
                    need_steered += usize::from(needs);
                    d1 += a.original.distance;
                    s1 += a.sites.len();
                } else {
                    need += usize::from(needs);
                    d0 += a.original.distance;
                    s0 += a.sites.len();
                }
                row.push(format!("{:.3} | {}", a.original.distance, a.sites.len()));
            }
            println!("| {p} | {} |", row.join(" | "));
        }
        let n = prompts.len().max(1) as f32;
        println!(
            "\n{} prompts: answers that need an edit: unsteered {need} ({:.0}%), steered {need_steered} ({:.0}%); mean distance to the profile {:.3} -> {:.3}; mean edit sites {:.1} -> {:.1}",
            prompts.len(),
            100.0 * need as f32 / n,
            100.0 * need_steered as f32 / n,
            d0 / n,
            d1 / n,
            s0 as f32 / n,
            s1 as f32 / n
        );
        Ok::<(), anyhow::Error>(())
    })
}
