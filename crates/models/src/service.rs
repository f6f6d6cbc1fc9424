//! The encoder on its own thread behind a bounded queue. Requests that arrive while it works
//! are batched together; a full queue answers "overloaded" at once; a request whose caller has
//! gone is skipped.

use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::encoder::SentenceEncoder;
use crate::error::{ErrorKind, ModelError};

/// Embeddings and the time the batch took.
#[derive(Default)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub queued: Duration,
    pub compute: Duration,
    pub batch_texts: usize,
}

struct Job {
    texts: Vec<String>,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Embedded, String>>,
}

/// Counters for `/metrics` and benchmarks; the server registers them with Prometheus.
#[derive(Default, Clone)]
pub struct ServiceStats {
    pub batches: Counter,
    pub texts: Counter,
    pub skipped_cancelled: Counter,
    pub rejected_full: Counter,
}

pub struct EncoderService {
    tx: mpsc::Sender<Job>,
    pub stats: Arc<ServiceStats>,
    pub dim: usize,
    pub weights_sha256: String,
    capacity: usize,
}

impl EncoderService {
    /// Start the worker thread. `queue`: waiting requests before 429; `max_batch`: texts per
    /// forward pass.
    pub fn start(
        encoder: SentenceEncoder,
        queue: usize,
        max_batch: usize,
        stats: ServiceStats,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>(queue.max(1));
        let stats = Arc::new(stats);
        let dim = encoder.bert.config.hidden_size;
        let weights_sha256 = encoder.weights_sha256.clone();
        let worker_stats = stats.clone();
        std::thread::Builder::new()
            .name("visa-encoder".into())
            .spawn(move || worker(encoder, rx, max_batch.max(1), worker_stats))?;
        Ok(Self {
            tx,
            stats,
            dim,
            weights_sha256,
            capacity: queue.max(1),
        })
    }

    /// Embed texts; 429 when the queue is full, never waiting for room.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Embedded, ModelError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            texts,
            enqueued: Instant::now(),
            reply,
        };
        self.tx.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                self.stats.rejected_full.inc();
                ModelError::new(
                    ErrorKind::Overloaded,
                    format!(
                        "the encoder queue is full ({} requests waiting); retry shortly",
                        self.capacity
                    ),
                )
            }
            mpsc::error::TrySendError::Closed(_) => {
                ModelError::new(ErrorKind::Unavailable, "the encoder has stopped")
            }
        })?;
        rx.await
            .map_err(|_| ModelError::new(ErrorKind::Unavailable, "the encoder has stopped"))?
            .map_err(|e| ModelError::internal(format!("encoder failed: {e}")))
    }
}

fn worker(
    encoder: SentenceEncoder,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
    stats: Arc<ServiceStats>,
) {
    while let Some(first) = rx.blocking_recv() {
        // Take what else is waiting, up to the batch size.
        let mut jobs = vec![first];
        let mut n: usize = jobs[0].texts.len();
        while n < max_batch {
            match rx.try_recv() {
                Ok(job) => {
                    n += job.texts.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        jobs.retain(|j| {
            let gone = j.reply.is_closed();
            if gone {
                stats.skipped_cancelled.inc();
            }
            !gone
        });
        if jobs.is_empty() {
            continue;
        }
        let started = Instant::now();
        let all: Vec<&str> = jobs
            .iter()
            .flat_map(|j| j.texts.iter().map(String::as_str))
            .collect();
        let result = embed_batched(&encoder, &all, max_batch);
        let compute = started.elapsed();
        stats.batches.inc();
        stats.texts.inc_by(all.len() as u64);
        let batch_texts = all.len();
        match result {
            Ok(mut vectors) => {
                for job in jobs.into_iter().rev() {
                    let mine = vectors.split_off(vectors.len() - job.texts.len());
                    let _ = job.reply.send(Ok(Embedded {
                        vectors: mine,
                        queued: started.saturating_duration_since(job.enqueued),
                        compute,
                        batch_texts,
                    }));
                }
            }
            Err(e) => {
                for job in jobs {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Embed in sub-batches of at most `max_batch` texts, vectors in input order. (The packed
/// encoder path pads nothing, so the order of texts within a batch costs nothing.)
pub fn embed_batched(
    encoder: &SentenceEncoder,
    texts: &[&str],
    max_batch: usize,
) -> Result<Vec<Vec<f32>>, String> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(max_batch.max(1)) {
        out.extend(encoder.embed_vecs(chunk).map_err(|e| e.to_string())?);
    }
    Ok(out)
}
