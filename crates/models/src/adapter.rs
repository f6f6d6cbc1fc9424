//! The trained adapter's file format and its merge into the served model: LoRA matrices in
//! safetensors (named after the GGUF tensors they adapt, with their scale), read back, and
//! merged into a copy of the base GGUF (`W + scale B A`, re-quantized to Q8_0) that mistral.rs
//! serves like any GGUF file. Training writes the file (`visa-train`'s `grpo::adapter`).

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};

/// The tensor holding the adapter's scale.
pub const SCALE: &str = "lora_scale";

/// An adapter read from disk: per GGUF tensor name (without `.weight`), `(A, B)`, and the scale.
pub struct Adapter {
    pub layers: HashMap<String, (Tensor, Tensor)>,
    pub scale: f64,
}

pub fn load(path: &Path) -> anyhow::Result<Adapter> {
    let mut t = candle_core::safetensors::load(path, &Device::Cpu)?;
    let scale = t
        .remove(SCALE)
        .ok_or_else(|| {
            anyhow::anyhow!("{}: not a visa-proxy adapter (no {SCALE})", path.display())
        })?
        .flatten_all()?
        .to_vec1::<f32>()?
        .first()
        .copied()
        .unwrap_or(1.0) as f64;
    let mut layers = HashMap::new();
    let names: Vec<String> = t
        .keys()
        .filter_map(|k| k.strip_suffix(".lora_a").map(str::to_owned))
        .collect();
    for name in names {
        let a = t.remove(&format!("{name}.lora_a"));
        let b = t.remove(&format!("{name}.lora_b"));
        match (a, b) {
            (Some(a), Some(b)) => {
                layers.insert(name, (a, b));
            }
            _ => anyhow::bail!("{}: {name} lacks lora_a or lora_b", path.display()),
        }
    }
    anyhow::ensure!(
        !layers.is_empty(),
        "{}: no adapter matrices",
        path.display()
    );
    Ok(Adapter { layers, scale })
}

/// What [`merge_into_gguf`] did.
pub struct Merged {
    pub tensors: usize,
    pub adapted: usize,
}

/// Write `output`: the base GGUF with every adapted weight replaced by `W + scale B A`,
/// quantized to `dtype`; other Q4_1 tensors are re-quantized to `dtype` too (candle's fast
/// kernels), everything else and all metadata are kept.
pub fn merge_into_gguf(
    base: &Path,
    adapter: &Adapter,
    output: &Path,
    dtype: GgmlDType,
) -> anyhow::Result<Merged> {
    let dev = Device::Cpu;
    let mut reader = std::io::BufReader::new(std::fs::File::open(base)?);
    let content = gguf_file::Content::read(&mut reader)?;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(names.len());
    let mut adapted = 0;
    for name in names {
        let q = content.tensor(&mut reader, name, &dev)?;
        let key = name.strip_suffix(".weight").unwrap_or(name);
        let q = match adapter.layers.get(key) {
            Some((a, b)) => {
                let w = q.dequantize(&dev)?;
                anyhow::ensure!(
                    w.dims2()? == (b.dim(0)?, a.dim(1)?),
                    "{name}: the adapter's shape does not fit the base weight"
                );
                adapted += 1;
                let merged = (w + (b.matmul(a)? * adapter.scale)?)?;
                QTensor::quantize(&merged, dtype)?
            }
            None if q.dtype() == GgmlDType::Q4_1 => QTensor::quantize(&q.dequantize(&dev)?, dtype)?,
            None => q,
        };
        tensors.push((name.clone(), q));
    }
    anyhow::ensure!(
        adapted == adapter.layers.len(),
        "only {adapted} of the adapter's {} layers exist in {}",
        adapter.layers.len(),
        base.display()
    );
    crate::gguf_convert::write_gguf(&content.metadata, &tensors, output)?;
    Ok(Merged {
        tensors: tensors.len(),
        adapted,
    })
}
