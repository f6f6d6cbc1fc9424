//! Branch-free `f32` exp, erf and GELU that the compiler vectorises (libm's are scalar calls),
//! for the packed encoder's softmax and activation.

const LOG2E: f32 = std::f32::consts::LOG2_E;

/// e^x with a relative error under 2e-7 on [-87, 88]; inputs are clamped to that range.
/// Cody-Waite range reduction x = k ln2 + r, then a degree-6 polynomial for e^r (the
/// coefficients of Cephes' `expf`).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let k = (x * LOG2E + 0.5).floor();
    let r = x - k * 0.693_359_4 + k * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((k as i32 + 127) << 23) as u32)
}

/// erf(x) with an absolute error under 5e-7 (Abramowitz and Stegun 7.1.26, whose own bound is
/// 1.5e-7, plus the error of `exp`).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152) * t + 1.421_413_8) * t - 0.284_496_74) * t
        + 0.254_829_6)
        * t;
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

/// GELU with the exact (erf) form BERT uses, applied in place.
pub fn gelu_in_place(xs: &mut [f32]) {
    for x in xs {
        *x = 0.5 * *x * (1.0 + erf(*x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// Softmax of one row in place.
pub fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for x in row.iter_mut() {
        *x = exp(*x - max);
    }
    let sum = sum(row);
    let inv = 1.0 / sum;
    for x in row.iter_mut() {
        *x *= inv;
    }
}

/// Sum with eight partial sums (vectorises; a plain fold must keep its order and does not).
pub fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(from: f32, to: f32, n: usize) -> impl Iterator<Item = f32> {
        (0..=n).map(move |i| from + (to - from) * i as f32 / n as f32)
    }

    #[test]
    fn exp_matches_std_within_relative_2e7() {
        let worst = grid(-87.0, 88.0, 200_000)
            .map(|x| ((exp(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs())
            .fold(0f64, f64::max);
        assert!(worst < 2e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) >= 0.0 && exp(-1000.0) < 1e-37);
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn erf_matches_libm_within_5e7() {
        let worst = grid(-6.0, 6.0, 200_000)
            .map(|x| (erf(x) as f64 - libm_erf(x as f64)).abs())
            .fold(0f64, f64::max);
        assert!(worst < 5e-7, "worst absolute error {worst}");
        assert_eq!(erf(0.0), 0.0);
        assert!(erf(-0.5) < 0.0);
    }

    #[test]
    fn gelu_and_softmax_match_the_plain_formulas() {
        let xs: Vec<f32> = grid(-8.0, 8.0, 1000).collect();
        let mut g = xs.clone();
        gelu_in_place(&mut g);
        for (x, y) in xs.iter().zip(&g) {
            let want = 0.5 * *x as f64 * (1.0 + libm_erf(*x as f64 / std::f64::consts::SQRT_2));
            assert!(
                (*y as f64 - want).abs() < 1e-5,
                "gelu({x}) = {y}, want {want}"
            );
        }
        let mut row: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin() * 9.0).collect();
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let total: f64 = row.iter().map(|x| (*x as f64 - max).exp()).sum();
        let want: Vec<f64> = row
            .iter()
            .map(|x| (*x as f64 - max).exp() / total)
            .collect();
        softmax_in_place(&mut row);
        for (y, w) in row.iter().zip(&want) {
            assert!((*y as f64 - w).abs() < 1e-6);
        }
        assert!((sum(&row) - 1.0).abs() < 1e-5);
    }

    /// erf in f64 by its Maclaurin series (|x| < 3) or its asymptotic complement, as a reference
    /// independent of the approximation under test.
    fn libm_erf(x: f64) -> f64 {
        let a = x.abs();
        let v = if a < 3.0 {
            let mut term = a;
            let mut total = a;
            for n in 1..200 {
                term *= -a * a / n as f64;
                total += term / (2 * n + 1) as f64;
            }
            total * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc(a) ~ e^{-a^2} / (a sqrt(pi)) * (1 - 1/(2a^2) + 3/(4a^4) - 15/(8a^6))
            let a2 = a * a;
            let series =
                1.0 - 1.0 / (2.0 * a2) + 3.0 / (4.0 * a2 * a2) - 15.0 / (8.0 * a2 * a2 * a2);
            1.0 - (-a2).exp() / (a * std::f64::consts::PI.sqrt()) * series
        };
        v.copysign(x)
    }
}
