//! LoRA (Hu et al., 2021): a frozen linear layer `W` plus a trainable low-rank update
//! `scale * B A`, with `A` random and `B` zero at the start so training begins at the base.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor, Var};

/// Rank, scale and which projections get adapters.
#[derive(Debug, Clone, Copy)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// The adapter of one projection.
pub struct LoraAdapter {
    /// `[rank, in]`
    pub a: Var,
    /// `[out, rank]`
    pub b: Var,
    pub scale: f64,
}

/// A linear layer `y = x W^T (+ scale x A^T B^T)`; `W` is `[out, in]` and never trained.
pub struct Linear {
    pub weight: Tensor,
    pub lora: Option<LoraAdapter>,
    /// A quantized copy of `weight` for sampling (no gradients needed there).
    quantized: Option<QMatMul>,
}

impl Linear {
    pub fn new(weight: Tensor) -> Self {
        Self {
            weight,
            lora: None,
            quantized: None,
        }
    }

    /// Keep a quantized copy of the base weight for [`Linear::forward_sampling`].
    pub fn quantize(&mut self, dtype: GgmlDType) -> Result<()> {
        let q = QTensor::quantize(&self.weight, dtype)?;
        self.quantized = Some(QMatMul::from_qtensor(q)?);
        Ok(())
    }

    /// The forward pass for sampling: the quantized base (when there is one; 4x less memory
    /// to read per token) plus the adapter, without gradients.
    pub fn forward_sampling(&self, x: &Tensor) -> Result<Tensor> {
        // Many rows at once (a prompt) go faster through the f32 matmul than row by row
        // through the quantized dot products.
        let rows = x.elem_count() / x.dims().last().copied().unwrap_or(1).max(1);
        let (Some(q), true) = (&self.quantized, rows <= 16) else {
            return Ok(self.forward(x, true)?.detach());
        };
        let y = q.forward(x)?;
        match &self.lora {
            Some(l) => {
                let low = x.broadcast_matmul(&l.a.as_tensor().detach().t()?)?;
                let up = low.broadcast_matmul(&l.b.as_tensor().detach().t()?)?;
                y + (up * l.scale)?
            }
            None => Ok(y),
        }
    }

    pub fn out_dim(&self) -> Result<usize> {
        self.weight.dim(0)
    }

    /// Add a fresh adapter (`A` ~ N(0, 1/in), `B` = 0). `rng_seed` makes it reproducible.
    pub fn add_lora(&mut self, cfg: LoraConfig, device: &Device, seed: u64) -> Result<()> {
        let (out, inp) = self.weight.dims2()?;
        let a = seeded_normal(&[cfg.rank, inp], 1.0 / (inp as f64).sqrt(), seed, device)?;
        self.lora = Some(LoraAdapter {
            a: Var::from_tensor(&a)?,
            b: Var::zeros((out, cfg.rank), DType::F32, device)?,
            scale: cfg.scale(),
        });
        Ok(())
    }

    /// `with_lora = false` gives the frozen base (the reference policy).
    pub fn forward(&self, x: &Tensor, with_lora: bool) -> Result<Tensor> {
        // One 2-D matmul over all leading dimensions (a broadcast batch matmul would copy the
        // weight once per batch entry).
        let dims = x.dims().to_vec();
        let inp = dims.last().copied().unwrap_or(0);
        let x2 = x.reshape(((), inp))?;
        let mut y = x2.matmul(&self.weight.t()?)?;
        if let (Some(l), true) = (&self.lora, with_lora) {
            let low = x2.matmul(&l.a.as_tensor().t()?)?;
            let up = low.matmul(&l.b.as_tensor().t()?)?;
            y = (y + (up * l.scale)?)?;
        }
        let mut out = dims;
        if let Some(last) = out.last_mut() {
            *last = y.dim(1)?;
        }
        y.reshape(out)
    }

    /// `W + scale B A`: the merged weight, for export.
    pub fn merged(&self) -> Result<Tensor> {
        match &self.lora {
            Some(l) => {
                let delta = l.b.as_tensor().matmul(l.a.as_tensor())?;
                &self.weight + (delta * l.scale)?
            }
            None => Ok(self.weight.clone()),
        }
    }
}

/// Normal samples from a small deterministic generator (SplitMix64 + Box-Muller), so adapters
/// and test models are the same for the same seed on every machine.
pub fn seeded_normal(shape: &[usize], std: f64, seed: u64, device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // In (0, 1].
        ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    };
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        let (u1, u2) = (next(), next());
        let r = (-2.0 * u1.ln()).sqrt();
        let th = 2.0 * std::f64::consts::PI * u2;
        v.push((r * th.cos() * std) as f32);
        if v.len() < n {
            v.push((r * th.sin() * std) as f32);
        }
    }
    Tensor::from_vec(v, shape, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_the_base_and_merges_to_the_same_function() {
        let dev = Device::Cpu;
        let w = seeded_normal(&[6, 4], 1.0, 1, &dev).unwrap();
        let mut lin = Linear::new(w.clone());
        lin.add_lora(
            LoraConfig {
                rank: 2,
                alpha: 4.0,
            },
            &dev,
            7,
        )
        .unwrap();
        let x = seeded_normal(&[3, 4], 1.0, 2, &dev).unwrap();
        let base = lin.forward(&x, false).unwrap();
        let with = lin.forward(&x, true).unwrap();
        let d: f32 = (base.clone() - with)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(d, 0.0, "B = 0 at the start");
        // Move B, then the merged weight computes what base + adapter computes.
        let l = lin.lora.as_ref().unwrap();
        l.b.set(&seeded_normal(&[6, 2], 0.5, 3, &dev).unwrap())
            .unwrap();
        let with = lin.forward(&x, true).unwrap();
        let merged = x.matmul(&lin.merged().unwrap().t().unwrap()).unwrap();
        let d: f32 = (merged - &with)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(d < 1e-5, "{d}");
        let moved: f32 = (base - with)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(moved > 0.0);
    }

    #[test]
    fn seeded_normal_is_reproducible_and_roughly_standard() {
        let dev = Device::Cpu;
        let a: Vec<f32> = seeded_normal(&[10000], 1.0, 5, &dev)
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = seeded_normal(&[10000], 1.0, 5, &dev)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(a, b);
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        let var = a.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / a.len() as f32;
        assert!(
            mean.abs() < 0.05 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }
}
