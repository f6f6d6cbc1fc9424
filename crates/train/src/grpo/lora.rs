//! LoRA (Hu et al., 2021): a frozen linear layer `W` plus a trainable low-rank update
//! `scale * B A`, with `A` random and `B` zero at the start so training begins at the base.

use candle_core::{
    CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Storage, Tensor, Var,
};

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

/// `x W^T` for a frozen `W` whose backward pass returns the gradient of `x` only. candle's
/// matmul backward also computes `x^T grad` for the weight whether or not anything needs it,
/// as much work again as the forward pass, for every frozen projection and the output head.
struct FrozenMatmul(Tensor);

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("frozen-matmul: strided input".into()))?;
        let x = Tensor::from_slice(
            &storage.as_slice::<f32>()?[start..end],
            layout.shape(),
            &Device::Cpu,
        )?;
        let y = x.matmul(&self.0.t()?)?;
        let shape = y.shape().clone();
        let (out, l) = y.storage_and_layout();
        match &*out {
            Storage::Cpu(c) if l.start_offset() == 0 && l.is_contiguous() => Ok((c.clone(), shape)),
            _ => Err(candle_core::Error::Msg(
                "frozen-matmul: unexpected output layout".into(),
            )),
        }
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.0)?))
    }
}

/// `x W^T` over all leading dimensions of `x`, as one 2-D matmul (a broadcast batch matmul
/// would copy the weight once per batch entry). `frozen`: gradients flow to `x` only.
pub fn matmul_t(x: &Tensor, w: &Tensor, frozen: bool) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let inp = dims.last().copied().unwrap_or(0);
    let x2 = x.reshape(((), inp))?;
    let y = if frozen && x.device().is_cpu() && x.dtype() == DType::F32 {
        x2.contiguous()?.apply_op1(FrozenMatmul(w.clone()))?
    } else {
        x2.matmul(&w.t()?)?
    };
    let mut out = dims;
    if let Some(last) = out.last_mut() {
        *last = y.dim(1)?;
    }
    y.reshape(out)
}

/// A linear layer `y = x W^T (+ scale x A^T B^T)`; `W` is `[out, in]` and never trained.
pub struct Linear {
    pub weight: Tensor,
    pub lora: Option<LoraAdapter>,
    /// `W + scale B A` as of the last [`Linear::prepare_sampling`], for sampling.
    sampling: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor) -> Self {
        Self {
            weight,
            lora: None,
            sampling: None,
        }
    }

    /// Merge the adapter into a copy of the weight for [`Linear::forward_sampling`]: one matmul
    /// per projection when decoding instead of three and their sum. Stale once the adapter
    /// changes: call again after every update.
    pub fn prepare_sampling(&mut self) -> Result<()> {
        self.sampling = Some(self.merged()?.detach());
        Ok(())
    }

    /// The forward pass for sampling, without gradients: the merged weight when prepared,
    /// else base plus adapter.
    /// `skinny`: few-row inputs (decoding) use [`super::skinny::matmul_t`] on the merged weight.
    pub fn forward_sampling(&self, x: &Tensor, skinny: bool) -> Result<Tensor> {
        match &self.sampling {
            Some(w) => {
                if skinny && let Some(y) = super::skinny::matmul_t(x, w)? {
                    return Ok(y);
                }
                matmul_t(x, w, false)
            }
            None => Ok(self.forward(x, true)?.detach()),
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
        match (&self.lora, with_lora) {
            (Some(l), true) => {
                let y = matmul_t(x, &self.weight, true)?;
                let low = matmul_t(x, l.a.as_tensor(), false)?;
                let up = matmul_t(&low, l.b.as_tensor(), false)?;
                y + (up * l.scale)?
            }
            _ => matmul_t(x, &self.weight, false),
        }
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

    /// A 6 x 4 projection with a rank-2 adapter (B still zero).
    fn six_by_four_rank_two() -> Linear {
        let dev = Device::Cpu;
        let mut lin = Linear::new(seeded_normal(&[6, 4], 1.0, 1, &dev).unwrap());
        lin.add_lora(
            LoraConfig {
                rank: 2,
                alpha: 4.0,
            },
            &dev,
            7,
        )
        .unwrap();
        lin
    }

    #[test]
    fn starts_at_the_base_and_merges_to_the_same_function() {
        let dev = Device::Cpu;
        let lin = six_by_four_rank_two();
        let x = seeded_normal(&[3, 4], 1.0, 2, &dev).unwrap();
        let base = lin.forward(&x, false).unwrap();
        let with = lin.forward(&x, true).unwrap();
        assert_eq!(
            crate::grpo::max_abs_diff(&base - &with),
            0.0,
            "B = 0 at the start"
        );
        // Move B, then the merged weight computes what base + adapter computes.
        let l = lin.lora.as_ref().unwrap();
        l.b.set(&seeded_normal(&[6, 2], 0.5, 3, &dev).unwrap())
            .unwrap();
        let with = lin.forward(&x, true).unwrap();
        let merged = x.matmul(&lin.merged().unwrap().t().unwrap()).unwrap();
        let d: f32 = crate::grpo::max_abs_diff(merged - &with);
        assert!(d < 1e-5, "{d}");
        assert!(crate::grpo::max_abs_diff(&base - &with) > 0.0);
    }

    #[test]
    fn frozen_matmul_matches_matmul_in_values_and_input_gradients() {
        let dev = Device::Cpu;
        let w = seeded_normal(&[5, 4], 1.0, 11, &dev).unwrap();
        let x = Var::from_tensor(&seeded_normal(&[2, 3, 4], 1.0, 12, &dev).unwrap()).unwrap();
        let target = seeded_normal(&[2, 3, 5], 1.0, 13, &dev).unwrap();
        let run = |frozen: bool| {
            let y = matmul_t(x.as_tensor(), &w, frozen).unwrap();
            let loss = (&y - &target).unwrap().sqr().unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            let gx: Vec<f32> = grads
                .get(x.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            (y, gx)
        };
        let (y0, g0) = run(false);
        let (y1, g1) = run(true);
        for (a, b) in y0.iter().zip(&y1).chain(g0.iter().zip(&g1)) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert!(g1.iter().any(|g| g.abs() > 1e-3));
    }

    #[test]
    fn sampling_uses_the_merged_weight_of_the_current_adapter() {
        let dev = Device::Cpu;
        let mut lin = six_by_four_rank_two();
        let l = lin.lora.as_ref().unwrap();
        l.b.set(&seeded_normal(&[6, 2], 0.5, 3, &dev).unwrap())
            .unwrap();
        let x = seeded_normal(&[1, 3, 4], 1.0, 2, &dev).unwrap();
        let diff = |a: &Tensor, b: &Tensor| -> f32 { crate::grpo::max_abs_diff(a - b) };
        let policy = lin.forward(&x, true).unwrap();
        assert!(diff(&lin.forward_sampling(&x, true).unwrap(), &policy) < 1e-5);
        lin.prepare_sampling().unwrap();
        for skinny in [false, true] {
            assert!(diff(&lin.forward_sampling(&x, skinny).unwrap(), &policy) < 1e-5);
        }
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
