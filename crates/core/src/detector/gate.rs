//! The value gate: the probability that a sentence expresses any value at all. The head was
//! trained on arguments, nearly all of which express one, so it reads informational sentences
//! (a recipe step, a definition) as value-laden; the gate is a logistic regression on the same
//! embeddings that tells arguments from value-neutral answers of the local model. A sentence's
//! raw value score is the head's score times the gate, before calibration; the head and its
//! thresholds (and so its F1) stay as they were.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

#[derive(Debug, Clone)]
pub struct Gate {
    pub weight: Vec<f32>,
    pub bias: f32,
}

impl Gate {
    pub fn probability(&self, x: &[f32]) -> f32 {
        let z: f32 = self.weight.iter().zip(x).map(|(w, v)| w * v).sum::<f32>() + self.bias;
        1.0 / (1.0 + (-z).exp())
    }

    pub fn save(&self, path: &Path) -> Result<(), String> {
        let dev = Device::Cpu;
        let map: HashMap<String, Tensor> = [
            (
                "weight".to_owned(),
                Tensor::from_vec(self.weight.clone(), self.weight.len(), &dev),
            ),
            (
                "bias".to_owned(),
                Tensor::from_vec(vec![self.bias], 1, &dev),
            ),
        ]
        .into_iter()
        .map(|(k, t)| t.map(|t| (k, t)))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
        candle_core::safetensors::save(&map, path).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let map = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let get = |name: &str| -> Result<Vec<f32>, String> {
            map.get(name)
                .ok_or_else(|| format!("{}: no tensor {name:?}", path.display()))?
                .to_dtype(DType::F32)
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| e.to_string())
        };
        let weight = get("weight")?;
        let bias = get("bias")?
            .first()
            .copied()
            .ok_or_else(|| format!("{}: empty bias", path.display()))?;
        Ok(Self { weight, bias })
    }
}
