//! The encoder's inference path on CPU: all texts of a batch packed into one [tokens, hidden]
//! matrix (no padding), `gemm` called directly with bias and residual folded into its
//! accumulator, one fused query/key/value projection, attention per text and head without
//! transposes, and vectorised GELU, softmax and layer norm. It reads the weights of the candle
//! [`Bert`] (no second copy, except the fused QKV matrices); candle's path stays the reference
//! and the training path.

use candle_core::{CpuStorage, Storage, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::approx;
use super::bert::{Bert, LayerNorm};

/// A read view of a contiguous f32 CPU tensor's data.
struct View<'a> {
    guard: std::sync::RwLockReadGuard<'a, Storage>,
    start: usize,
    len: usize,
}

impl<'a> View<'a> {
    fn new(t: &'a Tensor) -> candle_core::Result<Self> {
        let (guard, layout) = t.storage_and_layout();
        let start = layout.start_offset();
        let len = layout.shape().elem_count();
        let ok = layout.is_contiguous()
            && matches!(&*guard, Storage::Cpu(CpuStorage::F32(v)) if v.len() >= start + len);
        if !ok {
            candle_core::bail!("packed encoder: weights must be contiguous f32 on the CPU");
        }
        Ok(Self { guard, start, len })
    }

    fn get(&self) -> &[f32] {
        match &*self.guard {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.start..self.start + self.len],
            _ => &[],
        }
    }
}

/// A matrix operand: element (i, j) is `data[offset + i * rs + j * cs]`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    offset: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    fn rows(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            offset: 0,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major [rows, cols] matrix (a linear layer's [out, in] weight read
    /// as [in, out]).
    fn transposed(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            offset: 0,
            rs: 1,
            cs: cols,
        }
    }

    /// Panics (a bug, never input-dependent) if an m x n read would leave the slice.
    fn check(&self, m: usize, n: usize) {
        if m > 0 && n > 0 {
            let last = self.offset + (m - 1) * self.rs + (n - 1) * self.cs;
            assert!(last < self.data.len(), "matrix operand out of bounds");
        }
    }
}

/// dst[m, n] (row-major with row stride `dst_rs`) = (dst if `accumulate`) + scale * lhs @ rhs.
#[expect(
    clippy::too_many_arguments,
    reason = "a GEMM call: shapes, strides and scale, as the gemm crate takes them"
)]
fn matmul(
    dst: &mut [f32],
    dst_rs: usize,
    m: usize,
    n: usize,
    k: usize,
    lhs: Mat,
    rhs: Mat,
    accumulate: bool,
    scale: f32,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    lhs.check(m, k);
    rhs.check(k, n);
    assert!((m - 1) * dst_rs + n <= dst.len() && n <= dst_rs);
    let par = if parallel && rayon::current_num_threads() > 1 {
        Parallelism::Rayon(rayon::current_num_threads())
    } else {
        Parallelism::None
    };
    // SAFETY: every element read or written lies inside its slice (checked above); `dst` is
    // borrowed mutably and does not alias `lhs` or `rhs`, which are shared borrows.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr().add(lhs.offset),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr().add(rhs.offset),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            par,
        );
    }
}

/// Rows of `x` ([rows, width]) normalised in place.
fn layer_norm(x: &mut [f32], width: usize, weight: &[f32], bias: &[f32], eps: f32) {
    x.par_chunks_mut(width * 8).for_each(|rows| {
        for row in rows.chunks_mut(width) {
            let mean = approx::sum(row) / width as f32;
            let mut var = [0f32; 8];
            for (i, v) in row.iter().enumerate() {
                let d = v - mean;
                var[i % 8] += d * d;
            }
            let inv = 1.0 / (var.iter().sum::<f32>() / width as f32 + eps).sqrt();
            for ((v, w), b) in row.iter_mut().zip(weight).zip(bias) {
                *v = (*v - mean) * inv * w + b;
            }
        }
    });
}

/// `dst` ([rows, width]) = each row of `bias`, plus `residual` when given.
fn init_rows(dst: &mut Vec<f32>, rows: usize, bias: &[f32], residual: Option<&[f32]>) {
    dst.clear();
    match residual {
        Some(r) => dst.extend(
            r.chunks(bias.len())
                .flat_map(|row| row.iter().zip(bias).map(|(a, b)| a + b)),
        ),
        None => (0..rows).for_each(|_| dst.extend_from_slice(bias)),
    }
}

struct PackedLayer {
    /// [3H, H]: query, key and value weights stacked.
    qkv_weight: Vec<f32>,
    qkv_bias: Vec<f32>,
}

/// The packed inference path over a [`Bert`]'s weights.
pub struct PackedBert {
    layers: Vec<PackedLayer>,
}

fn concat(ts: &[&Tensor]) -> candle_core::Result<Vec<f32>> {
    Tensor::cat(ts, 0)?.flatten_all()?.to_vec1::<f32>()
}

impl PackedBert {
    pub fn new(bert: &Bert) -> candle_core::Result<Self> {
        let layers = bert
            .layers
            .iter()
            .map(|l| {
                let bias = |lin: &candle_nn::Linear| {
                    lin.bias()
                        .cloned()
                        .ok_or_else(|| candle_core::Error::Msg("BERT layer without bias".into()))
                };
                Ok(PackedLayer {
                    qkv_weight: concat(&[l.query.weight(), l.key.weight(), l.value.weight()])?,
                    qkv_bias: concat(&[&bias(&l.query)?, &bias(&l.key)?, &bias(&l.value)?])?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// Mean-pooled, L2-normalised embeddings of token sequences (each already truncated to the
    /// encoder's limit).
    pub fn embed(&self, bert: &Bert, seqs: &[Vec<u32>]) -> candle_core::Result<Vec<Vec<f32>>> {
        let c = &bert.config;
        let h = c.hidden_size;
        let total: usize = seqs.iter().map(Vec::len).sum();
        if total == 0 {
            return Ok(seqs.iter().map(|_| vec![0.0; h]).collect());
        }
        if let Some(long) = seqs.iter().find(|s| s.len() > c.max_position_embeddings) {
            candle_core::bail!(
                "sequence of {} tokens exceeds the encoder's positions",
                long.len()
            );
        }
        let mut x = self.embeddings(bert, seqs)?;
        let mut buf = Vec::new();
        let mut inter = Vec::new();
        for (layer, packed) in bert.layers.iter().zip(&self.layers) {
            self.layer(layer, packed, seqs, &mut x, &mut buf, &mut inter, c)?;
        }
        let mut out = Vec::with_capacity(seqs.len());
        let mut row = 0;
        for s in seqs {
            let mut mean = vec![0f32; h];
            for t in 0..s.len() {
                for (m, v) in mean.iter_mut().zip(&x[(row + t) * h..(row + t + 1) * h]) {
                    *m += v;
                }
            }
            row += s.len();
            let n = s.len().max(1) as f32;
            mean.iter_mut().for_each(|m| *m /= n);
            let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            mean.iter_mut().for_each(|m| *m /= norm);
            out.push(mean);
        }
        Ok(out)
    }

    fn embeddings(&self, bert: &Bert, seqs: &[Vec<u32>]) -> candle_core::Result<Vec<f32>> {
        let h = bert.config.hidden_size;
        let word = View::new(bert.word.embeddings())?;
        let pos = View::new(bert.position.embeddings())?;
        let types = View::new(bert.token_type.embeddings())?;
        let (word, pos, type0) = (word.get(), pos.get(), &types.get()[..h]);
        let vocab = word.len() / h;
        let mut x = Vec::with_capacity(seqs.iter().map(Vec::len).sum::<usize>() * h);
        for s in seqs {
            for (p, &id) in s.iter().enumerate() {
                let id = id as usize;
                if id >= vocab {
                    candle_core::bail!("token id {id} outside the vocabulary");
                }
                let w = &word[id * h..(id + 1) * h];
                let q = &pos[p * h..(p + 1) * h];
                x.extend(w.iter().zip(q).zip(type0).map(|((a, b), c)| a + b + c));
            }
        }
        norm(&bert.emb_norm, &mut x, h)?;
        Ok(x)
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "a GEMM call: shapes, strides and scale, as the gemm crate takes them"
    )]
    fn layer(
        &self,
        layer: &super::bert::Layer,
        packed: &PackedLayer,
        seqs: &[Vec<u32>],
        x: &mut Vec<f32>,
        buf: &mut Vec<f32>,
        inter: &mut Vec<f32>,
        c: &super::bert::BertConfig,
    ) -> candle_core::Result<()> {
        let h = c.hidden_size;
        let n = x.len() / h;
        let heads = layer.heads;
        let d = layer.head_dim;
        // Fused projection: qkv [N, 3H] = x @ Wqkv^T + b.
        let mut qkv = Vec::new();
        init_rows(&mut qkv, n, &packed.qkv_bias, None);
        matmul(
            &mut qkv,
            3 * h,
            n,
            3 * h,
            h,
            Mat::rows(x, h),
            Mat::transposed(&packed.qkv_weight, h),
            true,
            1.0,
            true,
        );
        // Attention per (text, head); each task returns its [L, d] context block.
        let mut starts = Vec::with_capacity(seqs.len());
        let mut at = 0;
        for s in seqs {
            starts.push(at);
            at += s.len();
        }
        let tasks: Vec<(usize, usize, usize)> = seqs
            .iter()
            .zip(&starts)
            .flat_map(|(s, &o)| (0..heads).map(move |hd| (o, s.len(), hd)))
            .filter(|t| t.1 > 0)
            .collect();
        let scale = 1.0 / (d as f32).sqrt();
        let qkv_ref = &qkv;
        let blocks: Vec<Vec<f32>> = tasks
            .par_iter()
            .map(|&(o, l, hd)| {
                let part_of = |part: usize| Mat {
                    data: qkv_ref,
                    offset: o * 3 * h + part * h + hd * d,
                    rs: 3 * h,
                    cs: 1,
                };
                let mut scores = vec![0f32; l * l];
                let k = part_of(1);
                let k_t = Mat {
                    rs: k.cs,
                    cs: k.rs,
                    ..k
                };
                matmul(
                    &mut scores,
                    l,
                    l,
                    l,
                    d,
                    part_of(0),
                    k_t,
                    false,
                    scale,
                    false,
                );
                scores.chunks_mut(l).for_each(approx::softmax_in_place);
                let mut ctx = vec![0f32; l * d];
                matmul(
                    &mut ctx,
                    d,
                    l,
                    d,
                    l,
                    Mat::rows(&scores, l),
                    part_of(2),
                    false,
                    1.0,
                    false,
                );
                ctx
            })
            .collect();
        let mut ctx = vec![0f32; n * h];
        for (&(o, l, hd), block) in tasks.iter().zip(&blocks) {
            for i in 0..l {
                let row = (o + i) * h + hd * d;
                ctx[row..row + d].copy_from_slice(&block[i * d..(i + 1) * d]);
            }
        }
        // Output projection + residual, then layer norm.
        linear_into(buf, &ctx, &layer.attn_out, Some(x), h, n)?;
        norm(&layer.attn_norm, buf, h)?;
        // Feed-forward: GELU(x W1^T + b1) W2^T + b2 + x, then layer norm.
        linear_into(inter, buf, &layer.intermediate, None, h, n)?;
        inter.par_chunks_mut(4096).for_each(approx::gelu_in_place);
        let width = inter.len() / n;
        linear_into(x, inter, &layer.output, Some(buf), width, n)?;
        norm(&layer.out_norm, x, h)?;
        Ok(())
    }
}

/// `dst` = `input` ([n, in_width]) @ W^T + b (+ `residual`).
fn linear_into(
    dst: &mut Vec<f32>,
    input: &[f32],
    lin: &candle_nn::Linear,
    residual: Option<&[f32]>,
    in_width: usize,
    n: usize,
) -> candle_core::Result<()> {
    let w = View::new(lin.weight())?;
    let b = match lin.bias() {
        Some(b) => View::new(b)?,
        None => candle_core::bail!("BERT layer without bias"),
    };
    let out_width = b.get().len();
    if w.get().len() != out_width * in_width {
        candle_core::bail!("packed encoder: weight shape mismatch");
    }
    let mut out = Vec::with_capacity(n * out_width);
    init_rows(&mut out, n, b.get(), residual);
    matmul(
        &mut out,
        out_width,
        n,
        out_width,
        in_width,
        Mat::rows(input, in_width),
        Mat::transposed(w.get(), in_width),
        true,
        1.0,
        true,
    );
    *dst = out;
    Ok(())
}

fn norm(ln: &LayerNorm, x: &mut [f32], width: usize) -> candle_core::Result<()> {
    let w = View::new(&ln.weight)?;
    let b = View::new(&ln.bias)?;
    layer_norm(x, width, w.get(), b.get(), ln.eps as f32);
    Ok(())
}
