//! The encoder services and what is built on them, loaded once and shared: the detector (with
//! its gate and calibration), the translator, and the base encoder for semantic similarity.

use std::sync::Arc;

use visa_models::encoder::{EncoderFiles, SentenceEncoder};
use visa_models::service::EncoderService;

use crate::detector::{Detector, Head, ValueDetector};
use crate::translator::Translator;

/// The encoder service and what is built on it.
pub struct ValueModels {
    /// The encoder with the detector's fine-tuned top layers (values).
    pub encoder: Arc<EncoderService>,
    /// The base encoder, for semantic similarity: the fine-tuned layers were trained to tell
    /// values apart, which is what a similarity between a text and its rewrite must ignore.
    pub semantic: Arc<EncoderService>,
    pub detector: Arc<dyn ValueDetector>,
    pub translator: Translator,
}

impl ValueModels {
    /// Load the encoder and head, start the encoder thread, embed the translator's value
    /// descriptions.
    pub async fn load(
        config: &visa_models::config::ModelsConfig,
        stats: visa_models::service::ServiceStats,
    ) -> anyhow::Result<Self> {
        let files = EncoderFiles::new(&config.encoder_dir);
        let head_path = std::path::Path::new(&config.detector_head);
        let head =
            Head::load(head_path).map_err(|e| anyhow::anyhow!("models.detector_head: {e}"))?;
        // With the head's fine-tuned encoder layers, when it has them (HEAD.encoder.safetensors).
        let (encoder_dir, head_file) = (config.encoder_dir.clone(), head_path.to_path_buf());
        let encoder = tokio::task::spawn_blocking(move || {
            crate::detector::load_encoder(std::path::Path::new(&encoder_dir), &head_file)
        })
        .await?
        .map_err(|e| anyhow::anyhow!("models.encoder_dir: {e}"))?;
        anyhow::ensure!(
            encoder.bert.config.hidden_size == head.dim(),
            "models.detector_head: the head expects {}-dimensional embeddings, the encoder makes {}",
            head.dim(),
            encoder.bert.config.hidden_size
        );
        let encoder = Arc::new(EncoderService::start(
            encoder,
            config.encoder_queue,
            config.encoder_max_batch,
            stats.clone(),
        )?);
        let base = tokio::task::spawn_blocking(move || {
            SentenceEncoder::load(&files, crate::detector::MAX_TOKENS)
        })
        .await?
        .map_err(|e| anyhow::anyhow!("models.encoder_dir: {e}"))?;
        let semantic = Arc::new(EncoderService::start(
            base,
            config.encoder_queue,
            config.encoder_max_batch,
            stats,
        )?);
        let translator = Translator::new(encoder.clone())
            .await
            .map_err(|e| anyhow::anyhow!("translator: {}", e.message))?;
        // The head's value gate, when it has one (HEAD.gate.safetensors).
        let gate_file = crate::detector::gate_path(head_path);
        let gate = if gate_file.exists() && !config.detector_calibration.is_empty() {
            Some(
                crate::detector::gate::Gate::load(&gate_file)
                    .map_err(|e| anyhow::anyhow!("models.detector_head: {e}"))?,
            )
        } else {
            None
        };
        let calibration = if config.detector_calibration.is_empty() {
            crate::detector::Calibration::identity()
        } else {
            crate::detector::Calibration::load(std::path::Path::new(&config.detector_calibration))
                .map_err(|e| anyhow::anyhow!("models.detector_calibration: {e}"))?
        };
        Ok(Self {
            detector: Arc::new(Detector {
                encoder: encoder.clone(),
                head,
                gate,
                calibration,
            }),
            encoder,
            semantic,
            translator,
        })
    }
}
