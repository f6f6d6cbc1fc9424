//! AdamW whose moments and step count can be saved and restored, so that `train-rewriter
//! --resume` continues exactly where a run stopped (candle's `AdamW` keeps its state private).
//! The update is candle's, term for term.

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

#[derive(Debug, Clone, Copy)]
pub struct AdamWParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    /// candle's and PyTorch's defaults.
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

struct Slot {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
}

pub struct AdamW {
    slots: Vec<Slot>,
    /// Steps taken (the bias corrections depend on it).
    pub steps: usize,
    pub params: AdamWParams,
}

impl AdamW {
    /// Named parameters (names key the saved state).
    pub fn new(vars: &[(String, Var)], params: AdamWParams) -> candle_core::Result<Self> {
        let slots = vars
            .iter()
            .map(|(name, var)| {
                Ok(Slot {
                    name: name.clone(),
                    var: var.clone(),
                    m: var.as_tensor().zeros_like()?,
                    v: var.as_tensor().zeros_like()?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            slots,
            steps: 0,
            params,
        })
    }

    /// One update; parameters without a gradient keep their value and moments.
    pub fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        self.steps += 1;
        let p = self.params;
        let t = self.steps as i32;
        let scale_m = 1.0 / (1.0 - p.beta1.powi(t));
        let scale_v = 1.0 / (1.0 - p.beta2.powi(t));
        for s in &mut self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else {
                continue;
            };
            s.m = ((&s.m * p.beta1)? + (g * (1.0 - p.beta1))?)?;
            s.v = ((&s.v * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let m_hat = (&s.m * scale_m)?;
            let v_hat = (&s.v * scale_v)?;
            let decayed = (s.var.as_tensor() * (1.0 - p.lr * p.weight_decay))?;
            let update = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
            s.var.set(&(decayed - (update * p.lr)?)?)?;
        }
        Ok(())
    }

    /// Write the moments (safetensors, `NAME.m` and `NAME.v`) to `path`, through a temporary
    /// file renamed into place so that a crash never leaves half a file.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut tensors = HashMap::new();
        for s in &self.slots {
            tensors.insert(format!("{}.m", s.name), s.m.clone());
            tensors.insert(format!("{}.v", s.name), s.v.clone());
        }
        let tmp = path.with_extension("tmp");
        candle_core::safetensors::save(&tensors, &tmp)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// Restore moments saved by [`AdamW::save`] for the same parameters, and the step count.
    pub fn load(&mut self, path: &Path, steps: usize) -> anyhow::Result<()> {
        let mut saved = candle_core::safetensors::load(path, &candle_core::Device::Cpu)?;
        for s in &mut self.slots {
            for (suffix, slot) in [("m", &mut s.m), ("v", &mut s.v)] {
                let key = format!("{}.{suffix}", s.name);
                let t = saved.remove(&key).ok_or_else(|| {
                    anyhow::anyhow!("{}: no optimizer state for {key}", path.display())
                })?;
                anyhow::ensure!(
                    t.dims() == slot.dims(),
                    "{}: {key} has shape {:?}, the parameter {:?}",
                    path.display(),
                    t.dims(),
                    slot.dims()
                );
                *slot = t.to_device(slot.device())?;
            }
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::Optimizer;

    fn vars(seed: f32) -> Vec<(String, Var)> {
        let a = Tensor::arange(0f32, 6.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let a = ((a * 0.3).unwrap() + seed as f64).unwrap();
        let b = Tensor::new(&[0.5f32, -1.5], &Device::Cpu).unwrap();
        vec![
            ("a".into(), Var::from_tensor(&a).unwrap()),
            ("b".into(), Var::from_tensor(&b).unwrap()),
        ]
    }

    /// A loss whose gradient changes with the parameters, so the moments matter.
    fn loss(vs: &[(String, Var)]) -> Tensor {
        let a = vs[0].1.as_tensor();
        let b = vs[1].1.as_tensor();
        let x = Tensor::new(&[[1f32, -2.0], [0.5, 3.0], [-1.0, 0.25]], &Device::Cpu).unwrap();
        let y = a.matmul(&x).unwrap().broadcast_add(b).unwrap();
        (y.sqr().unwrap().sum_all().unwrap() + y.sin().unwrap().sum_all().unwrap()).unwrap()
    }

    fn values(vs: &[(String, Var)]) -> Vec<f32> {
        vs.iter()
            .flat_map(|(_, v)| {
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect()
    }

    fn params() -> AdamWParams {
        AdamWParams {
            lr: 0.05,
            weight_decay: 0.1,
            ..Default::default()
        }
    }

    #[test]
    fn same_updates_as_candles_adamw() {
        let ours_vars = vars(0.1);
        let theirs_vars = vars(0.1);
        let mut ours = AdamW::new(&ours_vars, params()).unwrap();
        let p = params();
        let mut theirs = candle_nn::AdamW::new(
            theirs_vars.iter().map(|(_, v)| v.clone()).collect(),
            candle_nn::ParamsAdamW {
                lr: p.lr,
                beta1: p.beta1,
                beta2: p.beta2,
                eps: p.eps,
                weight_decay: p.weight_decay,
            },
        )
        .unwrap();
        for _ in 0..7 {
            ours.step(&loss(&ours_vars).backward().unwrap()).unwrap();
            theirs
                .step(&loss(&theirs_vars).backward().unwrap())
                .unwrap();
        }
        let (a, b) = (values(&ours_vars), values(&theirs_vars));
        assert_ne!(a, values(&vars(0.1)), "the parameters moved");
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-6, "{x} vs {y}");
        }
    }

    /// Six steps straight equal three steps, a save, a fresh optimizer that loads, three more.
    #[test]
    fn resuming_from_saved_moments_equals_an_uninterrupted_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizer.safetensors");
        let straight = vars(-0.2);
        let mut opt = AdamW::new(&straight, params()).unwrap();
        for _ in 0..6 {
            opt.step(&loss(&straight).backward().unwrap()).unwrap();
        }

        let resumed = vars(-0.2);
        let mut first = AdamW::new(&resumed, params()).unwrap();
        for _ in 0..3 {
            first.step(&loss(&resumed).backward().unwrap()).unwrap();
        }
        first.save(&path).unwrap();
        let mut second = AdamW::new(&resumed, params()).unwrap();
        second.load(&path, first.steps).unwrap();
        for _ in 0..3 {
            second.step(&loss(&resumed).backward().unwrap()).unwrap();
        }
        assert_eq!(values(&straight), values(&resumed));

        // Without the moments (what --resume did before), the run differs.
        let fresh = vars(-0.2);
        let mut a = AdamW::new(&fresh, params()).unwrap();
        for _ in 0..3 {
            a.step(&loss(&fresh).backward().unwrap()).unwrap();
        }
        let mut b = AdamW::new(&fresh, params()).unwrap();
        for _ in 0..3 {
            b.step(&loss(&fresh).backward().unwrap()).unwrap();
        }
        assert_ne!(values(&straight), values(&fresh));
    }

    #[test]
    fn loading_state_for_other_parameters_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizer.safetensors");
        let vs = vars(0.0);
        AdamW::new(&vs, params()).unwrap().save(&path).unwrap();
        let other = vec![(
            "c".to_owned(),
            Var::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(),
        )];
        let err = AdamW::new(&other, params())
            .unwrap()
            .load(&path, 1)
            .unwrap_err();
        assert!(
            err.to_string().contains("no optimizer state for c.m"),
            "{err}"
        );
        let wrong_shape = vec![(
            "a".to_owned(),
            Var::zeros((3, 2), DType::F32, &Device::Cpu).unwrap(),
        )];
        let err = AdamW::new(&wrong_shape, params())
            .unwrap()
            .load(&path, 1)
            .unwrap_err();
        assert!(err.to_string().contains("shape"), "{err}");
    }
}
