//! Writing the trained adapter (LoRA matrices in safetensors, in the format of
//! `visa_models::adapter`) and copying one back into a model for `--resume`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::llama::Llama;

use visa_models::adapter::{Adapter, SCALE};

/// Write the model's adapters.
pub fn save(model: &Llama, path: &Path) -> anyhow::Result<()> {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut scale = None;
    for (name, lin) in model.linears() {
        if let Some(l) = &lin.lora {
            tensors.insert(format!("{name}.lora_a"), l.a.as_tensor().clone());
            tensors.insert(format!("{name}.lora_b"), l.b.as_tensor().clone());
            scale = Some(l.scale);
        }
    }
    let scale = scale.ok_or_else(|| anyhow::anyhow!("the model has no adapters to save"))?;
    tensors.insert(SCALE.into(), Tensor::new(&[scale as f32], &Device::Cpu)?);
    let tmp = path.with_extension("safetensors.partial");
    candle_core::safetensors::save(&tensors, &tmp)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Copy an adapter's values into a model that carries adapters of the same shapes.
pub fn restore(model: &Llama, adapter: &Adapter) -> anyhow::Result<()> {
    for (name, lin) in model.linears() {
        let (Some(l), Some((a, b))) = (&lin.lora, adapter.layers.get(&name)) else {
            continue;
        };
        l.a.set(&a.to_device(l.a.device())?)?;
        l.b.set(&b.to_device(l.b.device())?)?;
    }
    Ok(())
}
