//! The local language model. mistral.rs loads a GGUF file and runs it on its own engine thread
//! (batching sequences together); this wrapper admits requests through a bounded gate (429 when
//! full, never an unbounded queue), streams text deltas back over a channel, and cancels the
//! sequence when the receiver is dropped.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use mistralrs::core::{GGUFLoaderBuilder, GGUFSpecificConfig, MistralRsBuilder, TokenSource};
use mistralrs::{
    AutoDeviceMapParams, DefaultSchedulerMethod, DeviceMapSetting, Model, ModelDType,
    RequestBuilder, Response, SamplingParams, SchedulerConfig, StopTokens, TextMessageRole,
};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::config::LlmConfig;
use crate::error::{ErrorKind, ModelError};

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// The role's name in chat templates.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// Sampling settings of one request.
#[derive(Debug, Clone)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f64,
    pub top_p: f64,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    /// Token log-probabilities, as OpenAI's `logprobs`: `None` off, `Some(n)` on with the
    /// `n` most likely alternatives of each token (`top_logprobs`).
    pub logprobs: Option<usize>,
}

/// What a generation streams back.
#[derive(Debug, Clone, PartialEq)]
pub enum GenEvent {
    /// New text.
    Delta(String),
    /// Log-probabilities of the tokens of the next `Delta` (when asked for), in OpenAI's
    /// shape (`token`, `logprob`, `bytes`, `top_logprobs`).
    Logprobs(Vec<serde_json::Value>),
    /// The end: OpenAI's finish reason (`stop`, `length`, ...) and token counts.
    Done {
        finish_reason: String,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
}

/// A running generation. Dropping it cancels the sequence in the engine.
pub struct Generation {
    rx: mpsc::Receiver<Result<GenEvent, ModelError>>,
}

impl Generation {
    pub async fn next(&mut self) -> Option<Result<GenEvent, ModelError>> {
        self.rx.recv().await
    }

    /// Read to the end: the whole text, the finish reason and token counts.
    pub async fn collect(mut self) -> Result<Completion, ModelError> {
        let mut text = String::new();
        let mut logprobs = Vec::new();
        while let Some(ev) = self.next().await {
            match ev? {
                GenEvent::Delta(d) => text.push_str(&d),
                GenEvent::Logprobs(mut l) => logprobs.append(&mut l),
                GenEvent::Done {
                    finish_reason,
                    prompt_tokens,
                    completion_tokens,
                } => {
                    return Ok(Completion {
                        text,
                        logprobs,
                        finish_reason,
                        prompt_tokens,
                        completion_tokens,
                    });
                }
            }
        }
        Err(ModelError::internal(
            "the local model stopped without finishing the answer",
        ))
    }
}

impl futures_util::Stream for Generation {
    type Item = Result<GenEvent, ModelError>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Completion {
    pub text: String,
    /// The tokens' log-probabilities, when the sampling asked for them.
    pub logprobs: Vec<serde_json::Value>,
    pub finish_reason: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// Counters for `/metrics` and benchmarks.
#[derive(Default, Clone)]
pub struct LlmStats {
    pub requests: Counter,
    pub rejected_full: Counter,
    pub cancelled: Counter,
    pub prompt_tokens: Counter,
    pub completion_tokens: Counter,
}

pub struct LlmEngine {
    model: Arc<Model>,
    gate: Arc<Semaphore>,
    capacity: usize,
    pub served_name: String,
    pub defaults: Sampling,
    max_prompt_chars: usize,
    pub stats: Arc<LlmStats>,
}

impl LlmEngine {
    /// Load the model named by the config and start mistral.rs' engine thread.
    pub async fn load(config: &LlmConfig, stats: LlmStats) -> anyhow::Result<Self> {
        let (model_id, file) = match (&config.hf_model_id, &config.hf_file) {
            (Some(id), Some(file)) => (id.clone(), file.clone()),
            _ => {
                let given = Path::new(&config.model);
                anyhow::ensure!(
                    given.is_file(),
                    "llm.model: {} does not exist (scripts/fetch-models.sh fetches the default)",
                    given.display()
                );
                let prepared;
                let path = if let Some(adapter) = &config.adapter {
                    prepared = merge_adapter(given, Path::new(adapter)).await?;
                    prepared.as_path()
                } else if config.requantize_q4_1 {
                    prepared = requantize(given).await?;
                    prepared.as_path()
                } else {
                    given
                };
                let dir = path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                let file = path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (dir.to_string_lossy().into_owned(), file)
            }
        };
        let started = Instant::now();
        let model = build_model(config, model_id, file)
            .await
            .map_err(|e| anyhow::anyhow!("llm.model: mistral.rs could not load it: {e}"))?;
        tracing::info!(
            model = %config.model,
            ms = started.elapsed().as_millis() as u64,
            "local language model loaded"
        );
        Ok(Self {
            model: Arc::new(model),
            gate: Arc::new(Semaphore::new(config.max_queue)),
            capacity: config.max_queue,
            served_name: config.served_name.clone(),
            defaults: Sampling {
                temperature: config.temperature,
                top_p: config.top_p,
                max_tokens: config.max_tokens,
                stop: Vec::new(),
                logprobs: None,
            },
            max_prompt_chars: config.max_prompt_chars,
            stats: Arc::new(stats),
        })
    }

    /// Requests admitted now (running or waiting in the engine).
    pub fn in_flight(&self) -> usize {
        self.capacity.saturating_sub(self.gate.available_permits())
    }

    /// Start a generation. Fails at once with 429 when `max_queue` requests are in flight.
    pub fn generate(
        &self,
        messages: Vec<ChatMessage>,
        sampling: Sampling,
    ) -> Result<Generation, ModelError> {
        let chars: usize = messages.iter().map(|m| m.content.len()).sum();
        if chars > self.max_prompt_chars {
            return Err(ModelError::invalid_request(format!(
                "the prompt has {chars} characters; the local model accepts at most {}",
                self.max_prompt_chars
            ))
            .with_param("messages"));
        }
        let permit = self.gate.clone().try_acquire_owned().map_err(|_| {
            self.stats.rejected_full.inc();
            ModelError::new(
                ErrorKind::Overloaded,
                "the local model is busy (llm.max_queue requests in flight); retry shortly",
            )
        })?;
        self.stats.requests.inc();
        let request = build_request(messages, &sampling);
        let (tx, rx) = mpsc::channel(64);
        let model = self.model.clone();
        let stats = self.stats.clone();
        #[expect(
            clippy::disallowed_methods,
            reason = "belongs to one generation: it ends when the engine finishes or the receiver is dropped"
        )]
        let _forward = tokio::spawn(forward(model, request, tx, permit, stats));
        Ok(Generation { rx })
    }

    /// Generate and wait for the whole text.
    pub async fn complete(
        &self,
        messages: Vec<ChatMessage>,
        sampling: Sampling,
    ) -> Result<Completion, ModelError> {
        self.generate(messages, sampling)?.collect().await
    }
}

/// True when `target` exists and is at least as new as every source.
fn up_to_date(target: &Path, sources: &[&Path]) -> bool {
    let modified =
        |p: &Path| -> Option<std::time::SystemTime> { std::fs::metadata(p).ok()?.modified().ok() };
    let Some(t) = modified(target) else {
        return false;
    };
    sources.iter().all(|s| modified(s).is_some_and(|s| t >= s))
}

/// The base GGUF with a trained LoRA adapter merged in (`ADAPTER.merged.gguf` next to the
/// adapter, Q8_0), made once and reused while newer than both.
async fn merge_adapter(base: &Path, adapter: &Path) -> anyhow::Result<std::path::PathBuf> {
    anyhow::ensure!(
        adapter.is_file(),
        "llm.adapter: {} does not exist",
        adapter.display()
    );
    let target = adapter.with_extension("merged.gguf");
    if up_to_date(&target, &[base, adapter]) {
        return Ok(target);
    }
    let (b, a, t) = (base.to_owned(), adapter.to_owned(), target.clone());
    let started = Instant::now();
    let merged = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let adapter = crate::adapter::load(&a)?;
        crate::adapter::merge_into_gguf(&b, &adapter, &t, candle_core::quantized::GgmlDType::Q8_0)
    })
    .await?
    .map_err(|e| anyhow::anyhow!("llm.adapter: could not merge {}: {e}", adapter.display()))?;
    tracing::info!(
        adapter = %adapter.display(),
        to = %target.display(),
        adapted = merged.adapted,
        ms = started.elapsed().as_millis() as u64,
        "merged the LoRA adapter into the base model"
    );
    Ok(target)
}

/// The Q8_0 copy of a GGUF file with Q4_1 tensors (`NAME.q8_0.gguf` next to it), made once
/// and reused while it is newer than the original; see `gguf_convert` for why.
async fn requantize(path: &Path) -> anyhow::Result<std::path::PathBuf> {
    let target = path.with_extension("q8_0.gguf");
    if up_to_date(&target, &[path]) {
        return Ok(target);
    }
    let (src, dst) = (path.to_owned(), target.clone());
    let started = Instant::now();
    let done = tokio::task::spawn_blocking(move || {
        super::gguf_convert::convert(&src, &dst, candle_core::quantized::GgmlDType::Q8_0)
    })
    .await?
    .map_err(|e| {
        anyhow::anyhow!(
            "llm.requantize_q4_1: could not convert {}: {e}",
            path.display()
        )
    })?;
    tracing::info!(
        from = %path.display(),
        to = %target.display(),
        converted = done.converted,
        ms = started.elapsed().as_millis() as u64,
        "re-quantized Q4_1 tensors to Q8_0 for candle's fast CPU kernels"
    );
    Ok(target)
}

/// What `GgufModelBuilder` does, with the activation dtype chosen by configuration: the
/// builder always asks for `auto`, which picks F16 on CPU, where F16 arithmetic is emulated.
async fn build_model(config: &LlmConfig, model_id: String, file: String) -> anyhow::Result<Model> {
    let dtype = match config.dtype.as_str() {
        "f32" => ModelDType::F32,
        "f16" => ModelDType::F16,
        "bf16" => ModelDType::BF16,
        _ => ModelDType::Auto,
    };
    let loader = GGUFLoaderBuilder::new(
        config.chat_template.clone(),
        None,
        model_id,
        vec![file],
        GGUFSpecificConfig { topology: None },
        false,
        None,
    )
    .build();
    // Serving stays on the CPU: the `cuda` feature builds candle's CUDA backend for training
    // only, not mistral.rs' own CUDA kernels, which a GPU device here would need.
    let device = mistralrs::best_device(true)?;
    let max_num_seqs = config.max_num_seqs;
    let pipeline = tokio::task::spawn_blocking(move || {
        loader.load_model_from_hf(
            None,
            TokenSource::CacheToken,
            &dtype,
            &device,
            true,
            DeviceMapSetting::Auto(AutoDeviceMapParams::default_text()),
            None,
            None,
        )
    })
    .await??;
    let scheduler = SchedulerConfig::DefaultScheduler {
        method: DefaultSchedulerMethod::Fixed(max_num_seqs.try_into()?),
    };
    let runner = MistralRsBuilder::new(pipeline, scheduler, false, None)
        .with_prefix_cache_n(16)
        .build()
        .await;
    Ok(Model::new(runner))
}

fn build_request(messages: Vec<ChatMessage>, s: &Sampling) -> RequestBuilder {
    let mut rb = RequestBuilder::new();
    for m in messages {
        let role = match m.role {
            Role::System => TextMessageRole::System,
            Role::User => TextMessageRole::User,
            Role::Assistant => TextMessageRole::Assistant,
        };
        rb = rb.add_message(role, m.content);
    }
    let mut params = SamplingParams::neutral();
    if s.temperature <= 0.0 {
        params.top_k = Some(1);
    } else {
        params.temperature = Some(s.temperature);
        params.top_p = Some(s.top_p);
    }
    params.max_len = Some(s.max_tokens);
    if !s.stop.is_empty() {
        params.stop_toks = Some(StopTokens::Seqs(s.stop.clone()));
    }
    if let Some(n) = s.logprobs {
        params.top_n_logprobs = n;
    }
    rb.set_sampling(params)
        .return_logprobs(s.logprobs.is_some())
}

/// One token's log-probability in OpenAI's shape.
fn openai_logprob(l: &mistralrs::core::ResponseLogprob) -> serde_json::Value {
    let bytes = l
        .bytes
        .clone()
        .unwrap_or_else(|| l.token.as_bytes().to_vec());
    serde_json::json!({
        "token": l.token,
        "logprob": l.logprob,
        "bytes": bytes,
        "top_logprobs": l.top_logprobs.iter().map(|t| {
            let text = t.bytes.clone().unwrap_or_default();
            serde_json::json!({"token": text, "logprob": t.logprob, "bytes": text.as_bytes()})
        }).collect::<Vec<_>>(),
    })
}

/// Runs on the tokio runtime but only awaits: the engine thread does the model work.
async fn forward(
    model: Arc<Model>,
    request: RequestBuilder,
    tx: mpsc::Sender<Result<GenEvent, ModelError>>,
    _permit: OwnedSemaphorePermit,
    stats: Arc<LlmStats>,
) {
    let mut stream = match model.stream_chat_request(request).await {
        Ok(s) => s,
        Err(e) => {
            let _ = tx
                .send(Err(ModelError::internal(format!(
                    "the local model refused the request: {e}"
                ))))
                .await;
            return;
        }
    };
    loop {
        let response = tokio::select! {
            () = tx.closed() => {
                // The reader is gone: dropping the stream makes the engine cancel the
                // sequence at its next token.
                stats.cancelled.inc();
                return;
            }
            r = stream.next() => r,
        };
        let Some(response) = response else {
            let _ = tx
                .send(Err(ModelError::internal(
                    "the local model's engine closed the stream early",
                )))
                .await;
            return;
        };
        let event = match response {
            Response::Chunk(chunk) => {
                let mut text = String::new();
                let mut finish = None;
                let mut logprobs = Vec::new();
                for choice in chunk.choices {
                    if let Some(l) = &choice.logprobs {
                        logprobs.push(openai_logprob(l));
                    }
                    if let Some(t) = choice.delta.content {
                        text.push_str(&t);
                    }
                    if choice.finish_reason.is_some() {
                        finish = choice.finish_reason;
                    }
                }
                if !logprobs.is_empty() && tx.send(Ok(GenEvent::Logprobs(logprobs))).await.is_err()
                {
                    stats.cancelled.inc();
                    return;
                }
                if !text.is_empty() && tx.send(Ok(GenEvent::Delta(text))).await.is_err() {
                    stats.cancelled.inc();
                    return;
                }
                match finish {
                    Some(reason) => {
                        let (p, c) = chunk
                            .usage
                            .map(|u| (u.prompt_tokens, u.completion_tokens))
                            .unwrap_or((0, 0));
                        stats.prompt_tokens.inc_by(p as u64);
                        stats.completion_tokens.inc_by(c as u64);
                        Ok(GenEvent::Done {
                            finish_reason: openai_finish_reason(&reason),
                            prompt_tokens: p,
                            completion_tokens: c,
                        })
                    }
                    None => continue,
                }
            }
            Response::Done(done) => {
                let text: String = done
                    .choices
                    .iter()
                    .filter_map(|c| c.message.content.clone())
                    .collect();
                let logprobs: Vec<serde_json::Value> = done
                    .choices
                    .iter()
                    .filter_map(|c| c.logprobs.as_ref()?.content.as_ref())
                    .flatten()
                    .map(openai_logprob)
                    .collect();
                if !logprobs.is_empty() && tx.send(Ok(GenEvent::Logprobs(logprobs))).await.is_err()
                {
                    return;
                }
                if !text.is_empty() && tx.send(Ok(GenEvent::Delta(text))).await.is_err() {
                    return;
                }
                let reason = done
                    .choices
                    .first()
                    .map(|c| openai_finish_reason(&c.finish_reason))
                    .unwrap_or_else(|| "stop".into());
                Ok(GenEvent::Done {
                    finish_reason: reason,
                    prompt_tokens: done.usage.prompt_tokens,
                    completion_tokens: done.usage.completion_tokens,
                })
            }
            Response::ValidationError(e) => Err(ModelError::invalid_request(format!(
                "the local model rejected the request: {e}"
            ))),
            Response::InternalError(e) => {
                Err(ModelError::internal(format!("the local model failed: {e}")))
            }
            Response::ModelError(e, _) => {
                Err(ModelError::internal(format!("the local model failed: {e}")))
            }
            _ => Err(ModelError::internal(
                "the local model answered with an unexpected response kind",
            )),
        };
        let _ = tx.send(event).await;
        return;
    }
}

/// mistral.rs' stop reasons as OpenAI names them.
fn openai_finish_reason(reason: &str) -> String {
    match reason {
        "length" | "model_length" => "length".into(),
        "canceled" => "stop".into(),
        "tool_calls" => "tool_calls".into(),
        _ => "stop".into(),
    }
}
