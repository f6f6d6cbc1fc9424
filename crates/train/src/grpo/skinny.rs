//! Products of a few rows with a large weight, `x W^T` for decoding: `gemm` packs the whole
//! weight into its own layout on every call (a full copy of every matrix for each generated
//! token, the decoder's largest cost), while here each weight row is read once, in place, for
//! all rows of `x`, with dot products in parallel over output columns.

use candle_core::{CpuStorage, DType, Device, Result, Storage, Tensor};
use rayon::prelude::*;

/// Inputs with at most this many rows take the skinny path (decoding a group is a few rows).
pub const MAX_ROWS: usize = 8;

/// Output columns per parallel task.
const COLUMNS_PER_TASK: usize = 64;

/// Dot product with eight partial sums (vectorises).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((s, p), q) in acc.iter_mut().zip(x).zip(y) {
            *s += p * q;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `x W^T` for `x` [..., K] with at most [`MAX_ROWS`] rows and `W` [N, K] (contiguous f32 on
/// the CPU), without gradients; `None` when the inputs do not qualify (the caller uses candle).
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    let dims = x.dims().to_vec();
    let k = dims.last().copied().unwrap_or(0);
    let rows = x.elem_count() / k.max(1);
    let (n, wk) = w.dims2()?;
    if rows == 0
        || rows > MAX_ROWS
        || wk != k
        || x.dtype() != DType::F32
        || w.dtype() != DType::F32
        || !x.device().is_cpu()
        || !w.device().is_cpu()
    {
        return Ok(None);
    }
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let (guard, layout) = w.storage_and_layout();
    let ws = match (&*guard, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((start, end))) if end - start == n * k => {
            &v[start..end]
        }
        _ => return Ok(None),
    };
    // [N, rows] first (each task owns whole output columns), then transposed.
    let mut by_column = vec![0f32; n * rows];
    by_column
        .par_chunks_mut(COLUMNS_PER_TASK * rows)
        .enumerate()
        .for_each(|(task, out)| {
            for (j, o) in out.chunks_mut(rows).enumerate() {
                let col = task * COLUMNS_PER_TASK + j;
                let wrow = &ws[col * k..(col + 1) * k];
                for (r, v) in o.iter_mut().enumerate() {
                    *v = dot(&xs[r * k..(r + 1) * k], wrow);
                }
            }
        });
    drop(guard);
    let mut out = vec![0f32; rows * n];
    for (col, vals) in by_column.chunks(rows).enumerate() {
        for (r, v) in vals.iter().enumerate() {
            out[r * n + col] = *v;
        }
    }
    let mut shape = dims;
    if let Some(last) = shape.last_mut() {
        *last = n;
    }
    Ok(Some(Tensor::from_vec(out, shape, &Device::Cpu)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_candles_matmul_and_declines_what_it_does_not_cover() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (197, 131), &dev).unwrap();
        for shape in [vec![1, 131], vec![4, 1, 131], vec![2, 4, 131]] {
            let x = Tensor::randn(0f32, 1.0, shape.clone(), &dev).unwrap();
            let got = matmul_t(&x, &w).unwrap().expect("qualifies");
            let x2 = x.reshape(((), 131)).unwrap();
            let want = x2
                .matmul(&w.t().unwrap())
                .unwrap()
                .reshape(got.shape())
                .unwrap();
            assert_eq!(got.dims()[..shape.len() - 1], shape[..shape.len() - 1]);
            assert_eq!(got.dims().last(), Some(&197));
            let diff = crate::grpo::max_abs_diff(got - want);
            assert!(diff < 1e-4, "{shape:?}: {diff}");
        }
        let many = Tensor::zeros((MAX_ROWS + 1, 131), DType::F32, &dev).unwrap();
        assert!(matmul_t(&many, &w).unwrap().is_none());
        let strided = w.t().unwrap();
        let x = Tensor::zeros((1, 197), DType::F32, &dev).unwrap();
        assert!(matmul_t(&x, &strided).unwrap().is_none());
    }
}
