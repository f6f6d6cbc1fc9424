//! The command line: `serve` and the small helpers around it.

#![expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the command line's own output: reports, the listening line, errors"
)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::server::{self, AppState};

#[derive(Parser, Debug)]
#[command(
    name = "visa-proxy",
    version,
    about = "OpenAI-compatible proxy that enforces per-tenant value profiles on LLM answers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy.
    Serve {
        /// Configuration file.
        #[arg(long, env = config::ENV_CONFIG, default_value = "config.toml")]
        config: PathBuf,
        /// Listen address, overriding `server.listen` and VISA_LISTEN (port 0 picks a free port).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Check a configuration file and exit (0 when valid).
    CheckConfig {
        #[arg(long, env = config::ENV_CONFIG, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Apply the profile store's pending schema migrations and exit (`serve` applies them too;
    /// safe to run from several replicas at once).
    Migrate {
        #[arg(long, env = config::ENV_CONFIG, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Print the SHA-256 of an API key, for `api_key_sha256` in the config.
    HashKey {
        /// The key; read from standard input when omitted.
        key: Option<String>,
    },
    /// Re-quantize a GGUF file's Q4_1 tensors to Q8_0 (candle has fast CPU kernels for Q8_0,
    /// none for Q4_1).
    ConvertGguf {
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        output: PathBuf,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// Train the value detector's head on Touché23-ValueEval and write it with a JSON card.
    TrainDetector {
        /// Folder with arguments-*.tsv and labels-*.tsv.
        #[arg(long)]
        data: PathBuf,
        /// Head file to write (its card goes next to it as .json).
        #[arg(long, default_value = "assets/detector/head.safetensors")]
        out: PathBuf,
        /// Folder with the sentence encoder's files.
        #[arg(long, default_value = crate::models::DEFAULT_ENCODER_DIR)]
        encoder: PathBuf,
        #[arg(long, default_value_t = 600)]
        epochs: usize,
        #[arg(long, default_value_t = 0.01)]
        learning_rate: f64,
        #[arg(long, default_value_t = 0.0001)]
        weight_decay: f64,
        /// Share of the training split held out to choose per-category thresholds.
        #[arg(long, default_value_t = 0.15)]
        holdout: f64,
        /// Cache of embeddings between runs ("none" to disable).
        #[arg(long, default_value = ".cache/embeddings")]
        cache: String,
        /// Fine-tune this many top encoder layers with the head (0: frozen encoder). The
        /// layers are written next to the head as HEAD.encoder.safetensors (f16).
        #[arg(long, default_value_t = 2)]
        fine_tune_layers: usize,
        #[arg(long, default_value_t = 2)]
        fine_tune_epochs: usize,
        #[arg(long, default_value_t = 0.00005)]
        fine_tune_lr: f64,
        /// Answers of the local model to neutral prompts (JSONL, `text` and `valued`): after
        /// the head, the value gate and the calibration are fitted with them and written next
        /// to it (HEAD.gate.safetensors, HEAD.calibration.json), as `calibrate-detector` does.
        /// "none": neither.
        #[arg(long, default_value = "assets/detector/neutral-fit.jsonl")]
        neutral: String,
    },
    /// Evaluate the value detector on a split: per-category and per-value precision, recall,
    /// F1, macro-F1, and latency.
    EvalDetector {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "validation")]
        split: String,
        #[arg(long, default_value = "assets/detector/head.safetensors")]
        head: PathBuf,
        #[arg(long, default_value = crate::models::DEFAULT_ENCODER_DIR)]
        encoder: PathBuf,
        /// The calibration to report on ("none": raw head scores).
        #[arg(long, default_value = "assets/detector/head.calibration.json")]
        calibration: String,
        /// Value-neutral texts (JSONL with a `text` field) to count false value calls on
        /// ("none" to skip).
        #[arg(long, default_value = "tests/data/neutral_texts.jsonl")]
        neutral: String,
        /// Value-laden sentences in an answer's style (JSONL with `value` and `text`) to check
        /// that the gate keeps real values ("none" to skip).
        #[arg(long, default_value = "tests/data/valued_texts.jsonl")]
        valued: String,
    },
    /// Fit the per-value calibration of the detector's scores (Platt scaling) on the part of
    /// the training split held out from the head and on value-neutral answers; writes it as JSON.
    CalibrateDetector {
        #[arg(long)]
        data: PathBuf,
        /// Value-neutral texts, JSONL with a `text` field (label: no value expressed).
        #[arg(long, default_value = "assets/detector/neutral-fit.jsonl")]
        neutral: PathBuf,
        /// The local model's value-laden sentences, JSONL with a `text` field (label: some value
        /// expressed), for the gate ("none": arguments only).
        #[arg(long, default_value = "assets/detector/valued-fit.jsonl")]
        valued: String,
        #[arg(long, default_value = "assets/detector/head.safetensors")]
        head: PathBuf,
        #[arg(long, default_value = crate::models::DEFAULT_ENCODER_DIR)]
        encoder: PathBuf,
        #[arg(long, default_value = "assets/detector/head.calibration.json")]
        out: PathBuf,
        /// The share of the training split held out from the head (as train-detector's).
        #[arg(long, default_value_t = 0.15)]
        holdout: f64,
    },
    /// Measure the instruction translator on a labelled set of instructions.
    EvalTranslator {
        #[arg(long, default_value = "tests/data/translator_cases.json")]
        cases: PathBuf,
        #[arg(long, default_value = crate::models::DEFAULT_ENCODER_DIR)]
        encoder: PathBuf,
    },
    /// Train the rewriter with GRPO: LoRA adapters on the base GGUF model, rewarded by the
    /// proxy's own scorer. Writes OUT/adapter.safetensors, its card OUT/adapter.json, OUT/log.jsonl
    /// and checkpoints (--resume continues; Ctrl-C stops after the current step).
    TrainRewriter(crate::train::grpo::options::TrainOptions),
    /// Compare rewriters (the base with the prompt only, and each --adapter) on the same
    /// held-out items: value L2/cosine to the target, distance closed, consistency, JSR,
    /// shield fallbacks, length, latency. Writes OUT/eval.md and OUT/eval.json.
    EvalRewriter(crate::train::rewriter::eval::EvalOptions),
    /// How well the per-sentence checks of an edit (encoder similarity, facts both ways) tell
    /// faithful rewrites from changed ones, on hand-written pairs; prints the measured floor.
    EvalSimilarity {
        #[arg(long, default_value = "tests/data/edit_pairs.jsonl")]
        pairs: PathBuf,
        #[arg(long, default_value = crate::models::DEFAULT_ENCODER_DIR)]
        encoder: PathBuf,
    },
    /// Answer a fixed set of prompts with the local model, without and with a profile's
    /// steering system message, and count the answers that need an edit.
    EvalSteering(crate::enforce::steering::SteerEvalOptions),
    /// The paired table of saved eval-rewriter runs: each rewriter against a baseline on the
    /// same items, mean differences with 95% paired-bootstrap intervals (eval-rewriter prints
    /// it against the base itself).
    CompareEval {
        /// eval.json files written by eval-rewriter on the same items; their rewriters are
        /// numbered in order.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The baseline's number among them (0 = the first file's prompt-only base).
        #[arg(long, default_value_t = 0)]
        baseline: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Merge a trained adapter into its base GGUF (re-quantized to Q8_0); the proxy does this
    /// itself for `[llm] adapter`.
    MergeAdapter {
        #[arg(long)]
        adapter: PathBuf,
        #[arg(long, default_value = "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")]
        base: PathBuf,
        #[arg(long)]
        output: PathBuf,
    },
    /// Exit 0 when GET URL answers 2xx within 3 s (for container health checks).
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
    },
}

/// Open the configured store, which applies what migrations it lacks, and say what it holds.
fn migrate(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path, None)?;
    let backend = config.profiles.backend;
    let profiles = server::open_profiles(&config.profiles)?;
    println!(
        "profile store ({backend:?}) is up to date; {} tenants have a profile",
        profiles.len()
    );
    Ok(())
}

pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve { config, listen } => serve(config, listen),
        Command::CheckConfig { config } => check_config(&config),
        Command::Migrate { config } => migrate(&config),
        Command::HashKey { key } => hash_key(key),
        Command::Openapi => {
            print!("{}", server::openapi::document());
            Ok(())
        }
        Command::Healthcheck { url } => healthcheck(&url),
        Command::TrainRewriter(o) => {
            settings(&o.config).and_then(|s| crate::train::grpo::command::run(&o, &s))
        }
        Command::EvalRewriter(o) => {
            settings(&o.config).and_then(|s| crate::train::rewriter::eval::run(&o, &s))
        }
        Command::CompareEval {
            files,
            baseline,
            seed,
        } => crate::train::rewriter::compare::run(&files, baseline, seed),
        Command::MergeAdapter {
            adapter,
            base,
            output,
        } => merge_adapter(&adapter, &base, &output),
        Command::TrainDetector {
            data,
            out,
            encoder,
            epochs,
            learning_rate,
            weight_decay,
            holdout,
            cache,
            fine_tune_layers,
            fine_tune_epochs,
            fine_tune_lr,
            neutral,
        } => crate::train::detector::train::run(&crate::train::detector::train::TrainOptions {
            neutral: none_or_path(&neutral),
            fine_tune_layers,
            fine_tune_epochs,
            fine_tune_lr,
            data,
            out,
            encoder_dir: encoder,
            epochs,
            learning_rate,
            weight_decay,
            holdout,
            cache_dir: none_or_path(&cache),
        })
        .map(|_| ()),
        Command::ConvertGguf { input, output } => convert_gguf(&input, &output),
        Command::EvalSteering(o) => crate::enforce::steering::run(&o),
        Command::EvalSimilarity { pairs, encoder } => {
            crate::train::edit::similarity_eval::run(&pairs, &encoder)
        }
        Command::EvalTranslator { cases, encoder } => {
            crate::train::translator::eval::run(&cases, &encoder)
        }
        Command::EvalDetector {
            data,
            split,
            head,
            encoder,
            calibration,
            neutral,
            valued,
        } => crate::train::detector::eval::run(
            &data,
            &split,
            &encoder,
            &head,
            none_or_path(&calibration).as_deref(),
            none_or_path(&neutral).as_deref(),
            none_or_path(&valued).as_deref(),
        ),
        Command::CalibrateDetector {
            data,
            neutral,
            valued,
            head,
            encoder,
            out,
            holdout,
        } => crate::train::detector::calibrate::run(
            &crate::train::detector::calibrate::CalibrateOptions {
                data,
                neutral,
                valued: none_or_path(&valued),
                encoder_dir: encoder,
                head,
                out,
                holdout,
            },
        )
        .map(|_| ()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("visa-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// An optional path argument: the word `none` means "not given".
fn none_or_path(arg: &str) -> Option<PathBuf> {
    (arg != "none").then(|| PathBuf::from(arg))
}

fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let c = Config::load(path, None)?;
    println!(
        "{}: valid ({} upstreams, {} tenants)",
        path.display(),
        c.upstreams.len(),
        c.tenants.len()
    );
    Ok(())
}

fn merge_adapter(
    adapter: &std::path::Path,
    base: &std::path::Path,
    output: &std::path::Path,
) -> anyhow::Result<()> {
    let a = crate::models::adapter::load(adapter)?;
    let started = std::time::Instant::now();
    let m = crate::models::adapter::merge_into_gguf(
        base,
        &a,
        output,
        candle_core::quantized::GgmlDType::Q8_0,
    )?;
    println!(
        "{}: {} tensors, {} with the adapter merged, in {:.1} s",
        output.display(),
        m.tensors,
        m.adapted,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn convert_gguf(input: &std::path::Path, output: &std::path::Path) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let c = crate::models::gguf_convert::convert(
        input,
        output,
        candle_core::quantized::GgmlDType::Q8_0,
    )
    .map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?;
    println!(
        "{}: {} tensors, {} converted from Q4_1 to Q8_0, in {:.1} s",
        output.display(),
        c.tensors,
        c.converted,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn hash_key(key: Option<String>) -> anyhow::Result<()> {
    let key = match key {
        Some(k) => k,
        None => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    anyhow::ensure!(!key.is_empty(), "the key is empty");
    println!("{}", hex::encode(config::hash_key(&key)));
    Ok(())
}

/// The HTTP runtime; `workers` 0 means one worker per CPU.
fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        builder.worker_threads(workers);
    }
    Ok(builder.enable_all().thread_name("visa-http").build()?)
}

fn serve(path: PathBuf, listen: Option<String>) -> anyhow::Result<()> {
    let config = Config::load(&path, listen)?;
    let _log_guard = crate::telemetry::init(&config.log);
    let addr = config.listen_addr()?;
    let workers = config.server.worker_threads;
    let grace = Duration::from_millis(config.server.shutdown_grace_ms);
    runtime(workers)?.block_on(async move {
        let state = AppState::build(config).await?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("server.listen: cannot listen on {addr}: {e}"))?;
        let local = listener.local_addr()?;
        // Tests and scripts read this line to find the port.
        println!("visa-proxy listening on http://{local}");
        std::io::stdout().flush()?;
        tracing::info!(%local, upstreams = state.upstreams.all().len(), tenants = state.tenants.list().len(), "listening");
        let shutdown = CancellationToken::new();
        #[expect(
            clippy::disallowed_methods,
            reason = "watches for signals for the life of the process; nothing to drain"
        )]
        let _signals = tokio::spawn(signal_watch(shutdown.clone()));
        server::serve(state, listener, shutdown, grace).await
    })
}

/// Cancel `token` on SIGINT or SIGTERM.
async fn signal_watch(token: CancellationToken) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
    token.cancel();
}

fn healthcheck(url: &str) -> anyhow::Result<()> {
    runtime(1)?.block_on(async {
        let resp = reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(3))
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "{url} answered {}",
            resp.status()
        );
        Ok(())
    })
}

/// The sections of the configuration file that training and evaluation read (the whole file is
/// loaded and validated first, as the server would).
fn settings(path: &std::path::Path) -> anyhow::Result<crate::train::Settings> {
    let config =
        Config::load(path, None).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(crate::train::Settings {
        models: config.models,
        llm: config.llm,
        rewriter: config.rewriter,
        enforce: config.enforce,
    })
}
