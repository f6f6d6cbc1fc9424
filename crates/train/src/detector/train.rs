//! `visa-proxy train-detector`: embed the Touché23 training split with the sentence encoder,
//! fit a logistic head over the 20 categories, pick per-category thresholds on a held-out part
//! of the training split, report on validation, and write the head with a JSON card.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, Optimizer, VarBuilder, VarMap};
use serde_json::json;

use super::eval::{Report, best_threshold, evaluate, print_report};
use crate::models::encoder::{EncoderFiles, SentenceEncoder, sha256_hex};
use crate::models::service::embed_batched;
use visa_core::detector::gate::Gate;
use visa_core::detector::{
    CATEGORIES, Head, MAPPING_NAME, MAX_TOKENS, calibration_path, delta_path,
};

#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub data: PathBuf,
    pub out: PathBuf,
    pub encoder_dir: PathBuf,
    pub epochs: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    /// Share of the training split held out to choose thresholds.
    pub holdout: f64,
    /// Where embeddings are cached between runs (keyed by encoder and texts).
    pub cache_dir: Option<PathBuf>,
    /// Fine-tune this many top encoder layers with the head (0: frozen encoder).
    pub fine_tune_layers: usize,
    pub fine_tune_epochs: usize,
    pub fine_tune_lr: f64,
    /// Answers of the local model to neutral prompts (`assets/detector/neutral-fit.jsonl`): with
    /// them the value gate and the calibration are fitted after the head (`calibrate`).
    /// `None`: no gate, no calibration.
    pub neutral: Option<PathBuf>,
}

/// Share of the neutral answers kept out of the gate's fit, for the calibration.
pub const NEUTRAL_HOLDOUT: f64 = 0.3;

/// Whether a neutral answer is kept for calibration (by a hash of its text, so every command
/// splits the file the same way).
pub fn neutral_held_out(text: &str) -> bool {
    held_out(&format!("neutral:{text}"), NEUTRAL_HOLDOUT)
}

/// Texts per fine-tuning step.
const FT_BATCH: usize = 32;

/// Fine-tune the top `k` encoder layers together with the head (warm-started from the logistic
/// head), with the bottom layers frozen and run once. Returns the new layer tensors (by name)
/// and the new head weights.
fn fine_tune(
    encoder_dir: &Path,
    texts: &[&str],
    labels: &[[u8; 20]],
    head: &Head,
    k: usize,
    epochs: usize,
    lr: f64,
) -> anyhow::Result<(HashMap<String, Tensor>, Head)> {
    let dev = Device::Cpu;
    let files = EncoderFiles::new(encoder_dir);
    let base = SentenceEncoder::load(&files, MAX_TOKENS)?;
    let n_layers = base.bert.num_layers();
    anyhow::ensure!(
        k >= 1 && k <= n_layers,
        "--fine-tune-layers must be in 1..={n_layers}"
    );
    let start = n_layers - k;

    // The frozen bottom, once: batches of similar length.
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| texts[i].len());
    let started = Instant::now();
    let mut batches: Vec<(Tensor, Tensor, Tensor)> = Vec::new();
    for chunk in order.chunks(FT_BATCH) {
        let batch: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
        let (ids, mask) = base.tokenize(&batch)?;
        let x = base.bert.embed_tokens(&ids, false)?;
        let bottom = base.bert.run_layers(&x, &mask, 0, start, false)?;
        let y: Vec<f32> = chunk
            .iter()
            .flat_map(|&i| labels[i].iter().map(|&v| f32::from(v)))
            .collect();
        batches.push((bottom, mask, Tensor::from_vec(y, (chunk.len(), 20), &dev)?));
    }
    eprintln!(
        "fine-tune: frozen bottom ({start} layers) of {} texts in {:.0} s",
        texts.len(),
        started.elapsed().as_secs_f64()
    );

    // Trainable copies of the top layers.
    let weights = std::fs::read(files.weights())?;
    let mut tensors = candle_core::safetensors::load_buffer(&weights, &dev)?;
    let mut vars: Vec<(String, candle_core::Var)> = Vec::new();
    for (name, t) in tensors.iter_mut() {
        let trainable = (start..n_layers).any(|i| name.starts_with(&format!("encoder.layer.{i}.")));
        if trainable {
            let v = candle_core::Var::from_tensor(t)?;
            *t = v.as_tensor().clone();
            vars.push((name.clone(), v));
        }
    }
    let top = crate::models::bert::Bert::new(
        base.bert.config.clone(),
        VarBuilder::from_tensors(tensors, DType::F32, &dev),
    )?;
    let d = head.dim();
    let w = candle_core::Var::from_tensor(&Tensor::from_vec(
        head.weight.iter().flatten().copied().collect::<Vec<f32>>(),
        (20, d),
        &dev,
    )?)?;
    let b = candle_core::Var::from_tensor(&Tensor::from_vec(head.bias.to_vec(), 20, &dev)?)?;
    let n = labels.len();
    let pos_weight: Vec<f32> = (0..20)
        .map(|c| {
            let pos = labels.iter().filter(|r| r[c] == 1).count().max(1) as f32;
            ((n as f32 - pos) / pos).sqrt().clamp(1.0, 10.0)
        })
        .collect();
    let pw = Tensor::from_vec(pos_weight, (1, 20), &dev)?;
    let mut opt_layers = candle_nn::AdamW::new(
        vars.iter().map(|(_, v)| v.clone()).collect(),
        candle_nn::ParamsAdamW {
            lr,
            weight_decay: 0.01,
            ..Default::default()
        },
    )?;
    let mut opt_head = candle_nn::AdamW::new(
        vec![w.clone(), b.clone()],
        candle_nn::ParamsAdamW {
            lr: lr * 20.0,
            weight_decay: 1e-4,
            ..Default::default()
        },
    )?;
    let softplus = |t: &Tensor| -> candle_core::Result<Tensor> {
        t.relu()? + ((t.abs()?.neg()?.exp()? + 1.0)?.log()?)
    };
    let mut step_order: Vec<usize> = (0..batches.len()).collect();
    for epoch in 0..epochs {
        // A fixed, epoch-dependent shuffle (reproducible without an RNG crate).
        step_order.sort_by_key(|&i| sha256_hex(format!("{epoch}:{i}").as_bytes()));
        let mut total = 0.0f32;
        for (k_step, &bi) in step_order.iter().enumerate() {
            let (bottom, mask, y) = &batches[bi];
            let states = top.run_layers(bottom, mask, start, n_layers, true)?;
            let pooled = crate::models::bert::mean_pool_normalize(&states, mask)?;
            let z = pooled
                .matmul(&w.as_tensor().t()?)?
                .broadcast_add(b.as_tensor())?;
            let loss = ((y.broadcast_mul(&pw)? * softplus(&z.neg()?)?)?
                + ((1.0 - y)? * softplus(&z)?)?)?
            .mean_all()?;
            let grads = loss.backward()?;
            opt_layers.step(&grads)?;
            opt_head.step(&grads)?;
            total += loss.to_scalar::<f32>()?;
            if k_step % 40 == 0 {
                eprintln!(
                    "fine-tune epoch {epoch} step {k_step}/{}: loss {:.4} ({:.0} s)",
                    batches.len(),
                    total / (k_step + 1) as f32,
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }
    let delta: HashMap<String, Tensor> = vars
        .iter()
        .map(|(name, v)| Ok((name.clone(), v.as_tensor().to_dtype(DType::F16)?)))
        .collect::<candle_core::Result<_>>()?;
    let new_head = Head {
        weight: w.as_tensor().to_vec2::<f32>()?,
        bias: b
            .as_tensor()
            .to_vec1::<f32>()?
            .try_into()
            .map_err(|_| anyhow::anyhow!("bias has the wrong size"))?,
        thresholds: head.thresholds,
    };
    Ok((delta, new_head))
}

/// Embeddings of `texts`, from the cache when the same encoder already embedded them.
fn embed_cached(
    encoder: &SentenceEncoder,
    texts: &[&str],
    cache_dir: Option<&Path>,
    label: &str,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let key = {
        let mut all = encoder.weights_sha256.clone();
        for t in texts {
            all.push('\u{1f}');
            all.push_str(t);
        }
        sha256_hex(all.as_bytes())
    };
    let path = cache_dir.map(|d| d.join(format!("emb-{}.safetensors", &key[..16])));
    if let Some(p) = &path
        && p.exists()
        && let Ok(map) = candle_core::safetensors::load(p, &Device::Cpu)
        && let Some(t) = map.get("x")
    {
        eprintln!(
            "{label}: {} embeddings from cache {}",
            texts.len(),
            p.display()
        );
        return Ok(t.to_vec2::<f32>()?);
    }
    let started = Instant::now();
    let mut out = Vec::with_capacity(texts.len());
    for (k, chunk) in texts.chunks(512).enumerate() {
        out.extend(embed_batched(encoder, chunk, 32).map_err(anyhow::Error::msg)?);
        eprintln!(
            "{label}: embedded {}/{} texts ({:.0} s)",
            (k * 512 + chunk.len()).min(texts.len()),
            texts.len(),
            started.elapsed().as_secs_f64()
        );
    }
    if let Some(p) = &path {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let dim = out.first().map(Vec::len).unwrap_or(0);
        let flat: Vec<f32> = out.iter().flatten().copied().collect();
        let t = Tensor::from_vec(flat, (out.len(), dim), &Device::Cpu)?;
        candle_core::safetensors::save(&std::iter::once(("x".to_owned(), t)).collect(), p)?;
    }
    Ok(out)
}

/// A deterministic split of argument ids: true = held out.
pub(crate) fn held_out(id: &str, share: f64) -> bool {
    let h = sha256_hex(id.as_bytes());
    let x = u32::from_str_radix(&h[..8], 16).unwrap_or(0) as f64 / u32::MAX as f64;
    x < share
}

/// Fit the value gate on embeddings of value-laden (`true`) and value-neutral (`false`)
/// sentences.
pub fn fit_gate(x: &[Vec<f32>], labels: &[bool]) -> anyhow::Result<Gate> {
    let y: Vec<[u8; 20]> = labels.iter().map(|l| [u8::from(*l); 20]).collect();
    // The head's fit with the same label in every output; the first output is the gate.
    let (w, b) = fit_logistic(x, &y, 300, 0.01, 1e-4)?;
    Ok(Gate {
        weight: w.into_iter().next().unwrap_or_default(),
        bias: b[0],
    })
}

/// Fit W, b of a logistic regression over 20 outputs with class-weighted binary cross-entropy.
pub fn fit_logistic(
    x: &[Vec<f32>],
    y: &[[u8; 20]],
    epochs: usize,
    lr: f64,
    weight_decay: f64,
) -> anyhow::Result<(Vec<Vec<f32>>, [f32; 20])> {
    let dev = Device::Cpu;
    let n = x.len();
    let d = x.first().map(Vec::len).unwrap_or(0);
    anyhow::ensure!(n > 0 && d > 0, "no training data");
    let xt = Tensor::from_vec(
        x.iter().flatten().copied().collect::<Vec<f32>>(),
        (n, d),
        &dev,
    )?;
    let yt = Tensor::from_vec(
        y.iter()
            .flat_map(|r| r.iter().map(|&v| f32::from(v)))
            .collect::<Vec<f32>>(),
        (n, 20),
        &dev,
    )?;
    // Positive examples weigh sqrt(negatives / positives), capped: rare categories still count.
    let pos_weight: Vec<f32> = (0..20)
        .map(|c| {
            let pos = y.iter().filter(|r| r[c] == 1).count().max(1) as f32;
            ((n as f32 - pos) / pos).sqrt().clamp(1.0, 10.0)
        })
        .collect();
    let pw = Tensor::from_vec(pos_weight, (1, 20), &dev)?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let w = vb.get_with_hints((20, d), "weight", Init::Const(0.0))?;
    let b = vb.get_with_hints(20, "bias", Init::Const(0.0))?;
    let mut opt = candle_nn::AdamW::new(
        varmap.all_vars(),
        candle_nn::ParamsAdamW {
            lr,
            weight_decay,
            ..Default::default()
        },
    )?;
    for epoch in 0..epochs {
        let z = xt.matmul(&w.t()?)?.broadcast_add(&b)?;
        // softplus(t) = relu(t) + log(1 + exp(-|t|)), stable for large |t|.
        let softplus = |t: &Tensor| -> candle_core::Result<Tensor> {
            t.relu()? + ((t.abs()?.neg()?.exp()? + 1.0)?.log()?)
        };
        let pos_term = (yt.broadcast_mul(&pw)? * softplus(&z.neg()?)?)?;
        let neg_term = ((1.0 - &yt)? * softplus(&z)?)?;
        let loss = (pos_term + neg_term)?.mean_all()?;
        opt.backward_step(&loss)?;
        if epoch % 100 == 0 || epoch + 1 == epochs {
            eprintln!("epoch {epoch:>4}: loss {:.4}", loss.to_scalar::<f32>()?);
        }
    }
    let weight = w.to_vec2::<f32>()?;
    let bias: [f32; 20] = b
        .to_vec1::<f32>()?
        .try_into()
        .map_err(|_| anyhow::anyhow!("bias has the wrong size"))?;
    Ok((weight, bias))
}

/// Train, report, write head and card. Returns the validation report.
pub fn run(o: &TrainOptions) -> anyhow::Result<Report> {
    let started = Instant::now();
    let train = super::data::load_split(&o.data, "training").map_err(anyhow::Error::msg)?;
    let valid = super::data::load_split(&o.data, "validation").map_err(anyhow::Error::msg)?;
    let encoder = visa_core::detector::load_encoder(&o.encoder_dir, &o.out)?;
    let train_texts: Vec<&str> = train.iter().map(|a| a.text()).collect();
    let valid_texts: Vec<&str> = valid.iter().map(|a| a.text()).collect();
    let xtr = embed_cached(&encoder, &train_texts, o.cache_dir.as_deref(), "training")?;
    let xva = embed_cached(&encoder, &valid_texts, o.cache_dir.as_deref(), "validation")?;

    let (fit_idx, hold_idx): (Vec<usize>, Vec<usize>) =
        (0..train.len()).partition(|&i| !held_out(&train[i].id, o.holdout));
    let fx: Vec<Vec<f32>> = fit_idx.iter().map(|&i| xtr[i].clone()).collect();
    let fy: Vec<[u8; 20]> = fit_idx.iter().map(|&i| train[i].labels).collect();
    eprintln!(
        "fitting the head on {} arguments, {} held out for thresholds",
        fx.len(),
        hold_idx.len()
    );
    let (weight, bias) = fit_logistic(&fx, &fy, o.epochs, o.learning_rate, o.weight_decay)?;
    let mut head = Head {
        weight,
        bias,
        thresholds: [0.5; 20],
    };
    let delta_file = delta_path(&o.out);
    let mut fine_tuned = serde_json::Value::Bool(false);
    let (xtr, xva) = if o.fine_tune_layers > 0 {
        let fit_texts: Vec<&str> = fit_idx.iter().map(|&i| train[i].text()).collect();
        let (delta, tuned) = fine_tune(
            &o.encoder_dir,
            &fit_texts,
            &fy,
            &head,
            o.fine_tune_layers,
            o.fine_tune_epochs,
            o.fine_tune_lr,
        )?;
        head = tuned;
        candle_core::safetensors::save(&delta, &delta_file)?;
        let bytes = std::fs::read(&delta_file)?;
        fine_tuned = json!({
            "layers": o.fine_tune_layers, "epochs": o.fine_tune_epochs, "learning_rate": o.fine_tune_lr,
            "batch": FT_BATCH, "file": delta_file.file_name().map(|f| f.to_string_lossy().to_string()),
            "sha256": sha256_hex(&bytes), "bytes": bytes.len(), "dtype": "f16",
        });
        let tuned_encoder = visa_core::detector::load_encoder(&o.encoder_dir, &o.out)?;
        (
            embed_cached(&tuned_encoder, &train_texts, None, "training (fine-tuned)")?,
            embed_cached(
                &tuned_encoder,
                &valid_texts,
                None,
                "validation (fine-tuned)",
            )?,
        )
    } else {
        if delta_file.exists() {
            std::fs::remove_file(&delta_file)?;
        }
        (xtr, xva)
    };
    let hold_probs: Vec<[f32; 20]> = hold_idx
        .iter()
        .map(|&i| head.probabilities(&xtr[i]))
        .collect();
    for c in 0..20 {
        let p: Vec<f32> = hold_probs.iter().map(|r| r[c]).collect();
        let g: Vec<u8> = hold_idx.iter().map(|&i| train[i].labels[c]).collect();
        head.thresholds[c] = best_threshold(&p, &g);
    }
    let probs: Vec<[f32; 20]> = xva.iter().map(|v| head.probabilities(v)).collect();
    let gold: Vec<[u8; 20]> = valid.iter().map(|a| a.labels).collect();
    let report = evaluate(&probs, &gold, &head.thresholds);
    print_report(&report);
    head.save(&o.out).map_err(anyhow::Error::msg)?;

    let card = json!({
        "model": "visa-proxy value detector head",
        "data": {
            "dataset": "Touche23-ValueEval (Mirzakhmedova, Kiesel, et al., LREC-COLING 2024), CC BY-SA 4.0",
            "train_split": "training",
            "arguments_fit": fx.len(),
            "arguments_threshold_holdout": hold_idx.len(),
            "holdout_share": o.holdout,
            "report_split": "validation",
            "arguments_report": valid.len(),
            "text": "premise",
        },
        "mapping": MAPPING_NAME,
        "encoder": {
            "files": o.encoder_dir.display().to_string(),
            "weights_sha256": encoder.weights_sha256,
            "max_tokens": MAX_TOKENS,
            "fine_tuned": fine_tuned,
        },
        "head": {"kind": "logistic", "inputs": head.dim(), "outputs": 20},
        "training": {
            "epochs": o.epochs, "learning_rate": o.learning_rate, "weight_decay": o.weight_decay,
            "loss": "binary cross-entropy, positives weighted by sqrt(neg/pos) capped at 10",
            "init": "zeros (deterministic)",
            "seconds": started.elapsed().as_secs_f64().round(),
        },
        "thresholds": CATEGORIES.iter().zip(head.thresholds).map(|(n, t)| ((*n).to_owned(), json!(t))).collect::<serde_json::Map<_, _>>(),
        "validation": report,
    });
    let card_path = card_path(&o.out);
    std::fs::write(&card_path, serde_json::to_string_pretty(&card)? + "\n")?;
    println!("wrote {} and {}", o.out.display(), card_path.display());
    if let Some(neutral) = &o.neutral {
        super::calibrate::run(&super::calibrate::CalibrateOptions {
            data: o.data.clone(),
            neutral: neutral.clone(),
            valued: Some(neutral.with_file_name("valued-fit.jsonl")).filter(|p| p.exists()),
            encoder_dir: o.encoder_dir.clone(),
            head: o.out.clone(),
            out: calibration_path(&o.out),
            holdout: o.holdout,
        })?;
    }
    Ok(report)
}

/// `head.safetensors` -> `head.json`.
pub fn card_path(head: &Path) -> PathBuf {
    head.with_extension("json")
}
