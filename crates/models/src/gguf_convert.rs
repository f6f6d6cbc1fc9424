//! Re-quantize a GGUF file's Q4_1 tensors to Q8_0. candle 0.10.2 has no SIMD dot product for
//! Q4_1 (a profile of SmolLM2 in mistral.rs spent ~40% of its time in the scalar
//! `BlockQ4_1::vec_dot_unopt`), while Q8_0 has an AVX2 one; the conversion costs 8-bit rounding
//! of already 4-bit weights and about 1.5x the file size.

use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Result};

/// What the conversion did.
pub struct Converted {
    pub tensors: usize,
    pub converted: usize,
}

/// Read `input`, convert every Q4_1 tensor to `to`, keep the rest and all metadata, write
/// `output`.
pub fn convert(input: &Path, output: &Path, to: GgmlDType) -> Result<Converted> {
    let mut reader = std::io::BufReader::new(std::fs::File::open(input)?);
    let content = gguf_file::Content::read(&mut reader)?;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(names.len());
    let mut converted = 0;
    for name in names {
        let t = content.tensor(&mut reader, name, &Device::Cpu)?;
        let t = if t.dtype() == GgmlDType::Q4_1 {
            converted += 1;
            QTensor::quantize(&t.dequantize(&Device::Cpu)?, to)?
        } else {
            t
        };
        tensors.push((name.clone(), t));
    }
    write_gguf(&content.metadata, &tensors, output)?;
    Ok(Converted {
        tensors: tensors.len(),
        converted,
    })
}

/// Write a GGUF file with `metadata` (sorted by key) and `tensors`, through a private temporary
/// file renamed into place: processes writing the same file at the same time each write their
/// own and the last rename wins with identical content.
pub fn write_gguf(
    metadata: &std::collections::HashMap<String, gguf_file::Value>,
    tensors: &[(String, QTensor)],
    output: &Path,
) -> Result<()> {
    let mut md: Vec<(&str, &gguf_file::Value)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    md.sort_by(|a, b| a.0.cmp(b.0));
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let tmp = output.with_extension(format!(
        "partial-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        gguf_file::write(&mut w, &md, &refs)?;
        std::io::Write::flush(&mut w)?;
    }
    std::fs::rename(&tmp, output)?;
    Ok(())
}
