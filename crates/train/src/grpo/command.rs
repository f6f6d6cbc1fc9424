//! `visa-proxy train-rewriter`: GRPO on the rewriter's base model with LoRA adapters, rewarded
//! by the proxy's own composite scorer (detector value fit + semantic integrity, after the same
//! candidate screening the serving rewriter applies). Writes the adapter, a JSON card, a JSONL
//! log of every step and checkpoints; `--resume` continues from the last checkpoint, Ctrl-C
//! stops after the current step keeping it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::adapter;
use super::data::{self, Item};
use super::edit_task::{self, EditTask};
use super::llama::Llama;
use super::lora::LoraConfig;
use super::math::Objective;
use super::options::{TrainOptions, TrainTask, device_name, pick_device};
use super::prompt::prompt_text;
use super::sample::{Group, Rng, SampleConfig};
use super::screening::screen_and_score;
use super::trainer::{StepStats, TrainConfig, Trainer};
use crate::Settings;
use crate::models::gguf_tokenizer::GgufTokenizer;
use crate::score::Scorer;

/// The training items of either task.
enum Tasks {
    Whole(Vec<(Item, crate::values::ValueVector)>),
    Edit(Vec<EditTask>, Box<crate::edit::Editor>),
}

impl Tasks {
    fn len(&self) -> usize {
        match self {
            Tasks::Whole(v) => v.len(),
            Tasks::Edit(v, _) => v.len(),
        }
    }
}

/// Token ids whose text holds a line break: serving's sentence edits stop at the first one.
fn line_break_ids(tokenizer: &GgufTokenizer) -> Vec<u32> {
    tokenizer
        .tokenizer
        .get_vocab(true)
        .into_iter()
        .filter(|(t, _)| t.contains('\u{010a}') || t.contains('\n'))
        .map(|(_, id)| id)
        .collect()
}

/// What a checkpoint remembers besides the adapter.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    step: usize,
    rng: u64,
    next_item: usize,
    rewards: Vec<f32>,
    seconds: f64,
    /// What the warm start did (absent: none has run; a resumed run does not repeat it).
    #[serde(default)]
    warm: Option<serde_json::Value>,
}

pub fn adapter_path(out: &Path) -> PathBuf {
    out.join("adapter.safetensors")
}

pub fn card_path(out: &Path) -> PathBuf {
    out.join("adapter.json")
}

fn state_path(out: &Path) -> PathBuf {
    out.join("checkpoint.json")
}

/// The optimizer's moments at the last checkpoint.
pub fn optimizer_path(out: &Path) -> PathBuf {
    out.join("optimizer.safetensors")
}

fn log_path(out: &Path) -> PathBuf {
    out.join("log.jsonl")
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// A chat as the ChatML prompt the policy is trained on.
fn chat_text(messages: &[crate::models::llm::ChatMessage]) -> String {
    let messages: Vec<(String, String)> = messages
        .iter()
        .map(|m| (m.role.as_str().to_owned(), m.content.clone()))
        .collect();
    GgufTokenizer::chatml(&messages)
}

/// The edit task's items: the serving editor (no model of its own: its plan and prompts) over
/// the training premises.
async fn edit_items(
    o: &TrainOptions,
    config: &Settings,
    scorer: &Scorer,
    need: usize,
) -> anyhow::Result<Tasks> {
    anyhow::ensure!(
        o.jsonl.is_none(),
        "--jsonl items are whole texts with targets: use them with --task whole"
    );
    let dir = o
        .data
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("--task edit needs --data (Touché23)"))?;
    let sources = data::touche_sources(
        dir,
        "training",
        o.min_source_chars,
        o.max_source_chars,
        o.seed,
    )?;
    let bank = crate::edit::bank::Bank::load(Path::new(&config.rewriter.bank), &scorer.encoder)
        .await
        .map_err(|e| anyhow::anyhow!("rewriter.bank: {e}"))?;
    let editor = crate::edit::Editor {
        backend: None,
        scorer: scorer.clone(),
        bank: Arc::new(bank),
        config: config.rewriter.clone(),
    };
    let tasks = edit_task::tasks(&editor, sources, o.seed, need.max(1)).await?;
    anyhow::ensure!(!tasks.is_empty(), "no edit tasks in {}", dir.display());
    Ok(Tasks::Edit(tasks, Box::new(editor)))
}

/// Items with their detected vectors (the training sources get their targets here).
async fn items_for(
    o: &TrainOptions,
    scorer: &Scorer,
    need: usize,
) -> anyhow::Result<Vec<(Item, crate::values::ValueVector)>> {
    let mut items: Vec<Item> = match &o.jsonl {
        Some(p) => data::read_jsonl(p)?,
        None => Vec::new(),
    };
    let mut sources = Vec::new();
    if let Some(dir) = &o.data {
        sources = data::touche_sources(
            dir,
            "training",
            o.min_source_chars,
            o.max_source_chars,
            o.seed,
        )?;
        sources.truncate(need.saturating_sub(items.len()).max(if items.is_empty() {
            1
        } else {
            0
        }));
    }
    anyhow::ensure!(
        !items.is_empty() || !sources.is_empty(),
        "no training items: give --data (Touché23) and/or --jsonl"
    );
    let texts: Vec<String> = items
        .iter()
        .map(|i| i.text.clone())
        .chain(sources.iter().map(|(_, t)| t.clone()))
        .collect();
    let mut detected = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(32) {
        let (d, _) = scorer
            .detector
            .detect(chunk)
            .await
            .map_err(|e| anyhow::anyhow!("detector: {}", e.message))?;
        detected.extend(d.into_iter().map(|d| d.values));
    }
    let mut rng = Rng::new(o.seed ^ 0x007A_2657);
    for ((id, text), d) in sources.into_iter().zip(detected.iter().skip(items.len())) {
        items.push(Item {
            id,
            text,
            target: data::make_target(d, &mut rng),
        });
    }
    Ok(items.into_iter().zip(detected).collect())
}

/// `config`: the sections of the file named by `o.config`, loaded and validated by the CLI.
pub fn run(o: &TrainOptions, config: &Settings) -> anyhow::Result<()> {
    let base = o
        .base
        .clone()
        .unwrap_or_else(|| PathBuf::from(&config.llm.model));
    anyhow::ensure!(
        base.is_file(),
        "base model {} does not exist (scripts/fetch-models.sh)",
        base.display()
    );
    std::fs::create_dir_all(&o.out)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let started = Instant::now();
    eprintln!("loading the value models (reward) ...");
    let models = rt.block_on(visa_core::value_models::ValueModels::load(
        &config.models,
        crate::models::service::ServiceStats::default(),
    ))?;
    let scorer = Scorer {
        detector: models.detector.clone(),
        encoder: models.semantic.clone(),
        value_weight: o.value_weight.unwrap_or(config.rewriter.value_weight),
        integrity_floor: config.rewriter.min_integrity,
    };
    anyhow::ensure!(
        (0.0..=1.0).contains(&scorer.value_weight),
        "--value-weight must be in [0, 1]"
    );
    eprintln!("loading the base model {} ...", base.display());
    let tokenizer = GgufTokenizer::from_gguf(&base)?;
    let device = pick_device(o.device)?;
    eprintln!("training on {}", device_name(&device));
    let mut model = Llama::from_gguf(&base, &device)?;
    let lora = LoraConfig {
        rank: o.rank,
        alpha: o.alpha,
    };
    model.add_lora(lora, o.seed)?;
    let stop = stop_tokens(&tokenizer, o.task);
    let mut trainer = Trainer::new(model, train_config(o, stop), o.seed)?;
    let mut state = if o.resume {
        resume(o, &mut trainer)?
    } else {
        State {
            step: 0,
            rng: o.seed,
            next_item: 0,
            rewards: Vec::new(),
            seconds: 0.0,
            warm: None,
        }
    };
    anyhow::ensure!(
        o.task == TrainTask::Whole || o.warm_start == 0,
        "--warm-start is for --task whole (the edit task starts GRPO from the base)"
    );
    let need = o.steps * o.prompts_per_step + o.warm_start;
    let items = match o.task {
        TrainTask::Whole => Tasks::Whole(rt.block_on(items_for(o, &scorer, need))?),
        TrainTask::Edit => rt.block_on(edit_items(o, config, &scorer, need))?,
    };
    if let Tasks::Edit(tasks, _) = &items {
        let lower = tasks
            .iter()
            .filter(|t| t.site.kind == crate::edit::SiteKind::Lower)
            .count();
        eprintln!(
            "edit tasks: {lower} lower a value in a sentence, {} raise one",
            tasks.len() - lower
        );
    }
    eprintln!(
        "{} training items; {} steps of {} prompt(s) x {} completions",
        items.len(),
        o.steps,
        o.prompts_per_step,
        o.group
    );

    let stopping = Arc::new(AtomicBool::new(false));
    {
        let s = stopping.clone();
        rt.spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\nCtrl-C: stopping after this step (the checkpoint is kept)");
                s.store(true, Ordering::SeqCst);
            }
        });
    }
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(&o.out))?;
    let about = About {
        base: base.display().to_string(),
        base_sha: sha256_file(&base)?,
        lora,
        device: device_name(&device),
        items: items.len(),
        value_weight: scorer.value_weight,
        integrity_floor: scorer.integrity_floor,
    };
    let save = |trainer: &Trainer, state: &State, finished: bool| -> anyhow::Result<()> {
        adapter::save(&trainer.model, &adapter_path(&o.out))?;
        trainer.save_optimizer(&optimizer_path(&o.out))?;
        std::fs::write(state_path(&o.out), serde_json::to_vec_pretty(state)?)?;
        let card = card(o, &about, state, finished);
        std::fs::write(card_path(&o.out), serde_json::to_vec_pretty(&card)?)?;
        Ok(())
    };

    if let (true, Tasks::Whole(items)) = (
        o.warm_start > 0 && state.warm.is_none() && !stopping.load(Ordering::SeqCst),
        &items,
    ) {
        let stop = || stopping.load(Ordering::SeqCst);
        match super::warm_start::warm_start(
            o,
            config,
            &scorer,
            &tokenizer,
            &mut trainer,
            items,
            &rt,
            &stop,
        )? {
            Some(summary) => {
                state.warm = Some(summary);
                state.next_item = o.warm_start % items.len();
                state.rng = trainer.rng.state();
                save(&trainer, &state, false)?;
            }
            None => eprintln!(
                "Ctrl-C during the warm start: nothing of it is kept (a --resume starts it again)"
            ),
        }
    }
    let mut components_sum = std::collections::BTreeMap::<String, f32>::new();
    while state.step < o.steps && !stopping.load(Ordering::SeqCst) {
        let step_started = Instant::now();
        let chosen: Vec<usize> = (0..o.prompts_per_step)
            .map(|k| (state.next_item + k) % items.len())
            .collect();
        state.next_item = (state.next_item + o.prompts_per_step) % items.len();
        let (prompts, room) = step_prompts(&items, &chosen, config, &tokenizer)?;
        trainer.config.sample.max_new_tokens = room
            .into_iter()
            .max()
            .unwrap_or(o.max_new_tokens)
            .min(o.max_new_tokens);
        components_sum.clear();
        let mut reward = |k: usize, g: &Group| -> anyhow::Result<Vec<f32>> {
            let mut add = |key: &str, v: f32| *components_sum.entry(key.into()).or_default() += v;
            match &items {
                Tasks::Whole(items) => {
                    let (item, _) = &items[chosen[k]];
                    let screened = screen_and_score(config, &tokenizer, &scorer, &rt, item, g)?;
                    let slots = &screened.slots;
                    let mut rewards = vec![0.0f32; g.completions.len()];
                    add("rejected", (g.completions.len() - slots.len()) as f32);
                    if let Some(scored) = &screened.scored {
                        for (j, s) in slots.iter().zip(&scored.candidates) {
                            rewards[*j] = s.reward;
                            add("precision", s.fit.precision);
                            add("progress", s.progress);
                            add("integrity", s.integrity);
                            add("distance", s.fit.distance);
                        }
                        add(
                            "original_distance",
                            scored.original.distance * slots.len() as f32,
                        );
                    }
                    Ok(rewards)
                }
                Tasks::Edit(tasks, editor) => {
                    let task = &tasks[chosen[k]];
                    let raw: Vec<(String, bool)> = g
                        .completions
                        .iter()
                        .zip(&g.finished)
                        .map(|(c, f)| tokenizer.decode(c).map(|t| (t, *f)))
                        .collect::<anyhow::Result<_>>()?;
                    let scored = rt.block_on(edit_task::rewards(editor, task, &raw))?;
                    for r in &scored {
                        add("rejected", f32::from(u8::from(r.rejected)));
                        if !r.rejected {
                            add("accepted", f32::from(u8::from(r.accepted)));
                            add("progress", r.progress);
                            add("sentence_progress", r.sentence_progress);
                            add("whole_progress", r.whole_progress);
                            add("integrity", r.integrity);
                        }
                    }
                    Ok(scored.iter().map(|r| r.reward).collect())
                }
            }
        };
        let mut stats: StepStats = trainer.step(&prompts, &mut reward)?;
        let n = (o.prompts_per_step * o.group) as f32;
        let scored = n - components_sum.get("rejected").copied().unwrap_or(0.0);
        for (k, v) in &components_sum {
            let denom = if k == "rejected" { n } else { scored.max(1.0) };
            stats.components.insert(k.clone(), v / denom);
        }
        state.step = trainer.steps;
        state.rng = trainer.rng.state();
        state.rewards.push(stats.reward_mean);
        state.seconds += step_started.elapsed().as_secs_f64();
        writeln!(log, "{}", serde_json::to_string(&stats)?)?;
        progress(&stats, o.steps, state.seconds);
        if state.step.is_multiple_of(o.checkpoint_every.max(1)) {
            save(&trainer, &state, false)?;
        }
    }
    let finished = state.step >= o.steps && (o.warm_start == 0 || state.warm.is_some());
    save(&trainer, &state, finished)?;
    eprintln!();
    println!(
        "wrote {} and {} after {}{} GRPO steps ({:.0} s; {:.0} s in all with loading)",
        adapter_path(&o.out).display(),
        card_path(&o.out).display(),
        match state.warm.as_ref().and_then(|w| w["seconds"].as_f64()) {
            Some(s) => format!("a warm start ({s:.0} s) and "),
            None => String::new(),
        },
        state.step,
        state.seconds,
        started.elapsed().as_secs_f64()
    );
    println!(
        "serve it with: [llm] adapter = \"{}\"",
        adapter_path(&o.out).display()
    );
    Ok(())
}

/// The tokens that end a sampled completion: the end of the turn, and for edits the first line
/// break (serving's sentence edits stop there).
fn stop_tokens(tokenizer: &GgufTokenizer, task: TrainTask) -> Vec<u32> {
    let mut stop = vec![tokenizer.eos];
    if let Some(id) = tokenizer.tokenizer.token_to_id("<|im_end|>")
        && !stop.contains(&id)
    {
        stop.push(id);
    }
    if task == TrainTask::Edit {
        for id in line_break_ids(tokenizer) {
            if !stop.contains(&id) {
                stop.push(id);
            }
        }
    }
    stop
}

fn train_config(o: &TrainOptions, stop: Vec<u32>) -> TrainConfig {
    TrainConfig {
        group: o.group,
        sample: SampleConfig {
            temperature: o.temperature,
            top_p: o.top_p,
            max_new_tokens: o.max_new_tokens,
            stop,
        },
        objective: Objective {
            clip: o.clip,
            beta: o.beta,
        },
        learning_rate: o.learning_rate,
        weight_decay: 0.0,
        max_grad_norm: 1.0,
        advantage_eps: 1e-4,
    }
}

/// `--resume`: the checkpoint's state, with its adapter, optimizer moments and sampler state
/// put back into `trainer`.
fn resume(o: &TrainOptions, trainer: &mut Trainer) -> anyhow::Result<State> {
    let sp = state_path(&o.out);
    anyhow::ensure!(
        sp.is_file(),
        "--resume: no checkpoint in {}",
        o.out.display()
    );
    let state: State = serde_json::from_str(&std::fs::read_to_string(&sp)?)?;
    adapter::restore(
        &trainer.model,
        &crate::models::adapter::load(&adapter_path(&o.out))?,
    )?;
    let op = optimizer_path(&o.out);
    if op.is_file() {
        trainer.load_optimizer(&op, state.step)?;
    } else {
        eprintln!(
            "{} is missing (a checkpoint from an older version): the optimizer restarts with zero moments",
            op.display()
        );
    }
    trainer.rng = Rng::new(state.rng);
    trainer.steps = state.step;
    eprintln!("resuming at step {}", state.step);
    Ok(state)
}

/// One step's prompts (tokens) and the room each completion may take.
fn step_prompts(
    items: &Tasks,
    chosen: &[usize],
    config: &Settings,
    tokenizer: &GgufTokenizer,
) -> anyhow::Result<(Vec<Vec<u32>>, Vec<usize>)> {
    Ok(match items {
        Tasks::Whole(items) => chosen
            .iter()
            .map(|&k| {
                let (item, d) = &items[k];
                // Room for the rewrite, as the serving rewriter allows.
                let room = crate::rewriter::max_tokens(&config.rewriter, &item.text);
                tokenizer.encode(&prompt_text(item, d)).map(|p| (p, room))
            })
            .collect::<anyhow::Result<Vec<_>>>()?
            .into_iter()
            .unzip(),
        Tasks::Edit(tasks, _) => chosen
            .iter()
            .map(|&k| {
                let t = &tasks[k];
                let room = crate::edit::max_tokens(t.prompt.chars);
                tokenizer
                    .encode(&chat_text(&t.prompt.messages))
                    .map(|p| (p, room))
            })
            .collect::<anyhow::Result<Vec<_>>>()?
            .into_iter()
            .unzip(),
    })
}

/// What the adapter card says about the run besides its options and state.
struct About {
    base: String,
    base_sha: String,
    lora: LoraConfig,
    device: String,
    items: usize,
    value_weight: f32,
    integrity_floor: f32,
}

/// The adapter's card (`card.json`): base, LoRA, data, reward, learning curve, how to serve it.
fn card(o: &TrainOptions, about: &About, state: &State, finished: bool) -> serde_json::Value {
    let first: Vec<f32> = state.rewards.iter().take(10).copied().collect();
    let last: Vec<f32> = state.rewards.iter().rev().take(10).copied().collect();
    let mean = |v: &[f32]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f32>() / v.len() as f32
        }
    };
    json!({
        "kind": "visa-proxy rewriter adapter (LoRA, GRPO)",
        "finished": finished,
        "base_model": about.base,
        "base_sha256": about.base_sha,
        "lora": {"rank": about.lora.rank, "alpha": about.lora.alpha,
                 "targets": ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]},
        "options": o,
        "device": about.device,
        "data": {
            "sources": o.data.as_ref().map(|d| format!("{}: premises of arguments-training.tsv ({}..{} characters)", d.display(), o.min_source_chars, o.max_source_chars)),
            "jsonl": o.jsonl.as_ref().map(|p| p.display().to_string()),
            "items": about.items,
            "task": o.task,
            "targets": match o.task {
                TrainTask::Whole => "the detected vector shifted on 1 or 2 values by 0.2, 0.35 or 0.5 (tolerance 0.1)",
                TrainTask::Edit => "the detected vector shifted on 1 or 2 values by 0.2, 0.35 or 0.5 (tolerance 0.1); each item is the first model edit the serving editor plans for it (one sentence with the one before it)",
            },
            "held_out": "arguments-validation.tsv is never used for training",
        },
        "reward": {
            "definition": match o.task {
                TrainTask::Whole => format!("{} x progress + {} x integrity (progress: share of the original's distance to the target closed, no credit below integrity {}); 0 for candidates the rewriter's screening rejects", about.value_weight, 1.0 - about.value_weight, about.integrity_floor),
                TrainTask::Edit => format!("{} x progress + {} x integrity (progress: mean of the edited sentence's share of the way to the value's band and the whole text's share of its distance to the target closed, no credit below integrity {}; integrity: the sentence's encoder similarity x facts kept both ways, an insertion's the whole text's), + {} when the edit passes serving's per-sentence checks; 0 for edits the editor's screening rejects", about.value_weight, 1.0 - about.value_weight, about.integrity_floor, edit_task::ACCEPTED_BONUS),
            },
            "first_10_mean": mean(&first),
            "last_10_mean": mean(&last),
            "per_step": state.rewards,
        },
        "warm_start": state.warm,
        "steps": state.step,
        "seconds": state.seconds,
        "serve": format!("[llm] adapter = \"{}\"", adapter_path(&o.out).display()),
    })
}

fn progress(s: &StepStats, total: usize, seconds: f64) {
    let width = 24;
    let done = (s.step * width / total.max(1)).min(width);
    let eta = seconds / s.step.max(1) as f64 * total.saturating_sub(s.step) as f64;
    let c = |k: &str| s.components.get(k).copied().unwrap_or(0.0);
    eprintln!(
        "[{}{}] step {}/{} reward {:.3} (progress {:.2} integrity {:.2} rejected {:.0}%{}) kl {:.4} {:.1} tok/s eta {:.0}s",
        "#".repeat(done),
        ".".repeat(width - done),
        s.step,
        total,
        s.reward_mean,
        c("progress"),
        c("integrity"),
        100.0 * c("rejected"),
        s.components
            .get("accepted")
            .map_or(String::new(), |a| format!(" accepted {:.0}%", 100.0 * a)),
        s.kl,
        s.tokens_per_s,
        eta
    );
}
