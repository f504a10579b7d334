//! The exact (erf) GELU in f32, vectorised.

use std::f32::consts::FRAC_1_SQRT_2;

use rayon::prelude::*;

use super::simd::{simd_fn, Isa};
use crate::ops::profile::{self, OpKind};

/// `erf` on f32: the rational approximation of Eigen and XLA (abs. error < 4e-7; clamped to
/// [-4, 4], where f32 `erf` reaches ±1). Plain arithmetic, so loops over it vectorise. The
/// coefficients are written as published; each rounds to the nearest f32.
#[inline(always)]
#[allow(clippy::excessive_precision)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_2e-10_f32;
    for a in [
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_599_8e-3,
        -1.609_603_3e-2,
    ] {
        p = p * x2 + a;
    }
    let mut q = -1.456_607_2e-5_f32;
    for b in [
        -2.133_740_6e-4,
        -1.682_827e-3,
        -7.373_329_2e-3,
        -1.426_473_9e-2,
    ] {
        q = q * x2 + b;
    }
    x * p / q
}

/// Exact (erf) GELU, as `Tensor::gelu_erf`.
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2))
}

simd_fn! {
    /// `row[i] = gelu(row[i] + b)`.
    pub(crate) fn bias_gelu(_s, row: &mut [f32], b: f32) {
        for v in row.iter_mut() {
            *v = gelu(*v + b);
        }
    }
}

simd_fn! {
    /// `out[i] = gelu(x[i])`.
    fn gelu_into(_s, x: &[f32], out: &mut [f32]) {
        for (o, v) in out.iter_mut().zip(x) {
            *o = gelu(*v);
        }
    }
}

/// `out = gelu(x)`, in parallel pieces.
pub(crate) fn gelu_slice(x: &[f32], out: &mut [f32]) {
    let _t = profile::time(OpKind::NormAct, || x.len() as f64);
    let isa = Isa::current();
    out.par_chunks_mut(1 << 14)
        .zip(x.par_chunks(1 << 14))
        .for_each(|(o, x)| isa.run(|| gelu_into(x, o)));
}

/// `exp(a)` on f32 for `a <= 0` (relative error < 3e-7; `exp(-87)` below -87): `2^n e^r` with
/// `r = a - n ln 2` in [-ln 2 / 2, ln 2 / 2] (ln 2 split in two for an exact product) and a
/// degree-6 Taylor polynomial for `e^r`. Plain arithmetic, so loops over it vectorise.
#[inline(always)]
#[allow(clippy::excessive_precision)]
fn exp_nonpositive(a: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and taking away 1.5 * 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let a = a.max(-87.0);
    let t = a * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = (a - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 720.0;
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p * r + c;
    }
    // `t`'s low mantissa bits hold `n` above `ROUND`'s bits: `2^n` from them, integer ops only.
    p * f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23)
}

/// The derivative of [`gelu`]: `Phi(x) + x phi(x)`.
#[inline(always)]
fn gelu_grad(x: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    0.5 * (1.0 + erf(x * FRAC_1_SQRT_2)) + x * INV_SQRT_2PI * exp_nonpositive(-0.5 * x * x)
}

simd_fn! {
    /// `out[i] = dy[i] * gelu'(x[i])`.
    fn gelu_grad_into(_s, x: &[f32], dy: &[f32], out: &mut [f32]) {
        for ((o, v), g) in out.iter_mut().zip(x).zip(dy) {
            *o = g * gelu_grad(*v);
        }
    }
}

/// The backward of [`gelu_slice`]: `dx = dy * gelu'(x)`, in parallel pieces.
pub(crate) fn gelu_grad_slice(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    let isa = Isa::current();
    dx.par_chunks_mut(1 << 14)
        .zip(x.par_chunks(1 << 14).zip(dy.par_chunks(1 << 14)))
        .for_each(|(o, (x, g))| isa.run(|| gelu_grad_into(x, g, o)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn gelu_matches_the_f64_erf_gelu() {
        let xs: Vec<f64> = (-12000..=12000).map(|i| i as f64 * 1e-3).collect();
        let want = Tensor::new(xs.as_slice(), &Device::Cpu)
            .unwrap()
            .gelu_erf()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let x32: Vec<f32> = xs.iter().map(|v| *v as f32).collect();
        let mut got = vec![0f32; x32.len()];
        gelu_slice(&x32, &mut got);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, y)| (*g as f64 - y).abs() / y.abs().max(1.0))
            .fold(0.0, f64::max);
        // Worst near x = -5.6, where GELU's `1 + erf` cancels: erf's ~4e-7 error times x/2.
        assert!(worst < 1.5e-6, "gelu error {worst}");
    }

    #[test]
    fn exp_matches_f64_exp() {
        let worst = (0..=870_000)
            .map(|i| -(i as f32) * 1e-4)
            .map(|a| ((exp_nonpositive(a) as f64 - (a as f64).exp()) / (a as f64).exp()).abs())
            .fold(0.0, f64::max);
        assert!(worst < 3e-7, "exp relative error {worst}");
    }

    /// The derivative against central differences of the f64 `gelu_erf`, on every instruction set.
    #[test]
    fn gelu_grad_matches_the_f64_derivative() {
        let xs: Vec<f64> = (-9000..=9000).map(|i| i as f64 * 1e-3).collect();
        let at = |d: f64| {
            let v: Vec<f64> = xs.iter().map(|x| x + d).collect();
            let t = Tensor::new(v.as_slice(), &Device::Cpu).unwrap();
            t.gelu_erf().unwrap().to_vec1::<f64>().unwrap()
        };
        let (hi, lo) = (at(1e-6), at(-1e-6));
        let want: Vec<f64> = hi.iter().zip(&lo).map(|(a, b)| (a - b) / 2e-6).collect();
        let x32: Vec<f32> = xs.iter().map(|v| *v as f32).collect();
        let dy = vec![1f32; x32.len()];
        for isa in Isa::available() {
            let mut got = vec![0f32; x32.len()];
            isa.run(|| gelu_grad_slice(&x32, &dy, &mut got));
            let worst = got
                .iter()
                .zip(&want)
                .map(|(g, y)| (*g as f64 - y).abs())
                .fold(0.0, f64::max);
            assert!(worst < 1e-6, "{isa:?}: gelu' error {worst}");
        }
    }
}
