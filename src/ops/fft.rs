//! 2-D real FFT as candle custom ops (candle has none).
//!
//! [`rfft2`] maps real `(.., H, W)` to a planar half spectrum `(.., 2, H, W/2+1)`: real parts,
//! then imaginary parts. [`irfft2`] is its inverse, normalised by `1/(H*W)` as `torch.fft.ifftn`.
//! The CPU backend uses realfft/rustfft with cached plans and runs planes in parallel; a CUDA
//! backend plugs into the same ops. [`reference`] is a plain DFT used to test them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use realfft::{ComplexToReal, FftNum, RealFftPlanner, RealToComplex};
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

/// A complex tensor as two real tensors of the same shape.
#[derive(Debug, Clone)]
pub struct Spectrum {
    pub re: Tensor,
    pub im: Tensor,
}

impl Spectrum {
    /// Splits the planar `(.., 2, H, Wq)` layout of [`rfft2`].
    pub fn from_planar(t: &Tensor) -> Result<Self> {
        let d = t.rank() - 3;
        Ok(Self {
            re: t.narrow(d, 0, 1)?.squeeze(d)?,
            im: t.narrow(d, 1, 1)?.squeeze(d)?,
        })
    }

    /// Joins into the planar layout [`irfft2`] takes.
    pub fn to_planar(&self) -> Result<Tensor> {
        Tensor::stack(&[&self.re, &self.im], self.re.rank() - 2)
    }

    /// Complex product (broadcasting).
    pub fn mul(&self, o: &Self) -> Result<Self> {
        Ok(Self {
            re: self
                .re
                .broadcast_mul(&o.re)?
                .sub(&self.im.broadcast_mul(&o.im)?)?,
            im: self
                .re
                .broadcast_mul(&o.im)?
                .add(&self.im.broadcast_mul(&o.re)?)?,
        })
    }

    /// `conj(self) * o` (broadcasting).
    pub fn conj_mul(&self, o: &Self) -> Result<Self> {
        Ok(Self {
            re: self
                .re
                .broadcast_mul(&o.re)?
                .add(&self.im.broadcast_mul(&o.im)?)?,
            im: self
                .re
                .broadcast_mul(&o.im)?
                .sub(&self.im.broadcast_mul(&o.re)?)?,
        })
    }

    pub fn add(&self, o: &Self) -> Result<Self> {
        Ok(Self {
            re: self.re.broadcast_add(&o.re)?,
            im: self.im.broadcast_add(&o.im)?,
        })
    }

    pub fn sub(&self, o: &Self) -> Result<Self> {
        Ok(Self {
            re: self.re.broadcast_sub(&o.re)?,
            im: self.im.broadcast_sub(&o.im)?,
        })
    }

    /// Multiplies by a real tensor (broadcasting).
    pub fn scale(&self, r: &Tensor) -> Result<Self> {
        Ok(Self {
            re: self.re.broadcast_mul(r)?,
            im: self.im.broadcast_mul(r)?,
        })
    }

    /// `|self|^2`.
    pub fn norm_sqr(&self) -> Result<Tensor> {
        self.re.sqr()? + self.im.sqr()?
    }

    pub fn map(&self, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Self> {
        Ok(Self {
            re: f(&self.re)?,
            im: f(&self.im)?,
        })
    }
}

/// Real 2-D FFT over the last two dims: `(.., H, W)` to `(.., 2, H, W/2+1)`.
pub fn rfft2(x: &Tensor) -> Result<Tensor> {
    if x.rank() < 2 {
        candle_core::bail!("rfft2 needs at least 2 dims, got {:?}", x.shape())
    }
    x.contiguous()?.apply_op1_no_bwd(&Rfft2)
}

/// Inverse of [`rfft2`]: `(.., 2, H, W/2+1)` to real `(.., H, width)`.
pub fn irfft2(x: &Tensor, width: usize) -> Result<Tensor> {
    let d = x.dims();
    if d.len() < 3 || d[d.len() - 3] != 2 || d[d.len() - 1] != width / 2 + 1 {
        candle_core::bail!(
            "irfft2: shape {:?} is not a planar half spectrum of width {width}",
            x.shape()
        )
    }
    x.contiguous()?.apply_op1_no_bwd(&Irfft2 { width })
}

struct Rfft2;
struct Irfft2 {
    width: usize,
}

/// The plans for one `(H, W)` plane.
pub(crate) struct Plans<T: FftNum> {
    pub(crate) r2c: Arc<dyn RealToComplex<T>>,
    pub(crate) c2r: Arc<dyn ComplexToReal<T>>,
    pub(crate) fwd: Arc<dyn Fft<T>>,
    pub(crate) inv: Arc<dyn Fft<T>>,
}

pub(crate) struct Planners<T: FftNum> {
    real: RealFftPlanner<T>,
    complex: FftPlanner<T>,
    cache: HashMap<(usize, usize), Arc<Plans<T>>>,
}

/// Float types the CPU backend handles.
pub(crate) trait Float: FftNum {
    fn planners() -> &'static Mutex<Planners<Self>>;
}

macro_rules! float_planners {
    ($t:ty) => {
        impl Float for $t {
            fn planners() -> &'static Mutex<Planners<Self>> {
                static P: OnceLock<Mutex<Planners<$t>>> = OnceLock::new();
                P.get_or_init(|| {
                    Mutex::new(Planners {
                        real: RealFftPlanner::new(),
                        complex: FftPlanner::new(),
                        cache: HashMap::new(),
                    })
                })
            }
        }
    };
}
float_planners!(f32);
float_planners!(f64);

pub(crate) fn plans<T: Float>(h: usize, w: usize) -> Arc<Plans<T>> {
    let mut p = T::planners().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(plans) = p.cache.get(&(h, w)) {
        return plans.clone();
    }
    let plans = Arc::new(Plans {
        r2c: p.real.plan_fft_forward(w),
        c2r: p.real.plan_fft_inverse(w),
        fwd: p.complex.plan_fft_forward(h),
        inv: p.complex.plan_fft_inverse(h),
    });
    p.cache.insert((h, w), plans.clone());
    plans
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("fft: input must be contiguous"),
    }
}

/// One plane: real `(h, w)` to planar `(2, h, wq)`.
fn rfft_plane<T: Float>(p: &Plans<T>, x: &[T], out: &mut [T], h: usize, w: usize) {
    let wq = w / 2 + 1;
    let zero = Complex::new(T::zero(), T::zero());
    // Row transforms, stored transposed (column-major) so the column FFTs run on contiguous data.
    let mut cols = vec![zero; h * wq];
    let mut row_in = p.r2c.make_input_vec();
    let mut row_out = p.r2c.make_output_vec();
    let mut scratch = p.r2c.make_scratch_vec();
    for i in 0..h {
        row_in.copy_from_slice(&x[i * w..(i + 1) * w]);
        // Lengths match the plan, so this cannot fail.
        let _ = p
            .r2c
            .process_with_scratch(&mut row_in, &mut row_out, &mut scratch);
        for (j, v) in row_out.iter().enumerate() {
            cols[j * h + i] = *v;
        }
    }
    let mut scratch = vec![zero; p.fwd.get_inplace_scratch_len()];
    p.fwd.process_with_scratch(&mut cols, &mut scratch);
    let (re, im) = out.split_at_mut(h * wq);
    for j in 0..wq {
        for i in 0..h {
            let v = cols[j * h + i];
            re[i * wq + j] = v.re;
            im[i * wq + j] = v.im;
        }
    }
}

/// One plane: planar `(2, h, wq)` to real `(h, w)`, normalised.
fn irfft_plane<T: Float>(p: &Plans<T>, x: &[T], out: &mut [T], h: usize, w: usize) {
    let wq = w / 2 + 1;
    let zero = Complex::new(T::zero(), T::zero());
    let (re, im) = x.split_at(h * wq);
    let mut cols = vec![zero; h * wq];
    for i in 0..h {
        for j in 0..wq {
            cols[j * h + i] = Complex::new(re[i * wq + j], im[i * wq + j]);
        }
    }
    let mut scratch = vec![zero; p.inv.get_inplace_scratch_len()];
    p.inv.process_with_scratch(&mut cols, &mut scratch);
    let norm = T::one() / T::from_usize(h * w).unwrap_or_else(T::one);
    let mut row_in = p.c2r.make_input_vec();
    let mut row_out = p.c2r.make_output_vec();
    let mut scratch = p.c2r.make_scratch_vec();
    for i in 0..h {
        for (j, v) in row_in.iter_mut().enumerate() {
            *v = cols[j * h + i];
        }
        // A real signal's DC and Nyquist bins are real: drop rounding noise there.
        row_in[0].im = T::zero();
        if w.is_multiple_of(2) {
            row_in[wq - 1].im = T::zero();
        }
        let _ = p
            .c2r
            .process_with_scratch(&mut row_in, &mut row_out, &mut scratch);
        for (o, v) in out[i * w..(i + 1) * w].iter_mut().zip(&row_out) {
            *o = *v * norm;
        }
    }
}

fn run_rfft<T: Float>(data: &[T], h: usize, w: usize) -> Vec<T> {
    let plans = plans::<T>(h, w);
    let wq = w / 2 + 1;
    let n = data.len() / (h * w);
    let mut out = vec![T::zero(); n * 2 * h * wq];
    out.par_chunks_mut(2 * h * wq)
        .zip(data.par_chunks(h * w))
        .for_each(|(o, x)| rfft_plane(&plans, x, o, h, w));
    out
}

fn run_irfft<T: Float>(data: &[T], h: usize, w: usize) -> Vec<T> {
    let plans = plans::<T>(h, w);
    let wq = w / 2 + 1;
    let n = data.len() / (2 * h * wq);
    let mut out = vec![T::zero(); n * h * w];
    out.par_chunks_mut(h * w)
        .zip(data.par_chunks(2 * h * wq))
        .for_each(|(o, x)| irfft_plane(&plans, x, o, h, w));
    out
}

impl CustomOp1 for Rfft2 {
    fn name(&self) -> &'static str {
        "rfft2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = l.dims();
        let (h, w) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let mut out_dims = dims[..dims.len() - 2].to_vec();
        out_dims.extend([2, h, w / 2 + 1]);
        let out = match s {
            CpuStorage::F32(d) => CpuStorage::F32(run_rfft(contiguous(d, l)?, h, w)),
            CpuStorage::F64(d) => CpuStorage::F64(run_rfft(contiguous(d, l)?, h, w)),
            _ => candle_core::bail!("rfft2: unsupported dtype {:?}", s.dtype()),
        };
        Ok((out, Shape::from(out_dims)))
    }
}

impl CustomOp1 for Irfft2 {
    fn name(&self) -> &'static str {
        "irfft2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = l.dims();
        let h = dims[dims.len() - 2];
        let mut out_dims = dims[..dims.len() - 3].to_vec();
        out_dims.extend([h, self.width]);
        let out = match s {
            CpuStorage::F32(d) => CpuStorage::F32(run_irfft(contiguous(d, l)?, h, self.width)),
            CpuStorage::F64(d) => CpuStorage::F64(run_irfft(contiguous(d, l)?, h, self.width)),
            _ => candle_core::bail!("irfft2: unsupported dtype {:?}", s.dtype()),
        };
        Ok((out, Shape::from(out_dims)))
    }
}

/// A plain O(N^2) DFT, obviously correct, for tests.
pub mod reference {
    use std::f64::consts::PI;

    /// 1-D complex forward DFT.
    pub fn dft(re: &[f64], im: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let n = re.len();
        let mut out = (vec![0.0; n], vec![0.0; n]);
        for k in 0..n {
            for j in 0..n {
                let a = -2.0 * PI * ((k * j) % n) as f64 / n as f64;
                out.0[k] += re[j] * a.cos() - im[j] * a.sin();
                out.1[k] += re[j] * a.sin() + im[j] * a.cos();
            }
        }
        out
    }

    /// Real `(h, w)` to the half spectrum `(re, im)`, each `(h, w/2+1)`.
    pub fn rfft2(x: &[f64], h: usize, w: usize) -> (Vec<f64>, Vec<f64>) {
        let wq = w / 2 + 1;
        let (mut re, mut im) = (vec![0.0; h * wq], vec![0.0; h * wq]);
        for u in 0..h {
            for v in 0..wq {
                for i in 0..h {
                    for j in 0..w {
                        let a = -2.0 * PI * ((u * i) as f64 / h as f64 + (v * j) as f64 / w as f64);
                        re[u * wq + v] += x[i * w + j] * a.cos();
                        im[u * wq + v] += x[i * w + j] * a.sin();
                    }
                }
            }
        }
        (re, im)
    }

    /// Half spectrum back to real `(h, w)`, using Hermitian symmetry for the missing half.
    pub fn irfft2(re: &[f64], im: &[f64], h: usize, w: usize) -> Vec<f64> {
        let wq = w / 2 + 1;
        let at = |u: usize, v: usize| {
            if v < wq {
                (re[u * wq + v], im[u * wq + v])
            } else {
                let (u2, v2) = ((h - u) % h, w - v);
                (re[u2 * wq + v2], -im[u2 * wq + v2])
            }
        };
        let mut out = vec![0.0; h * w];
        for i in 0..h {
            for j in 0..w {
                let mut s = 0.0;
                for u in 0..h {
                    for v in 0..w {
                        let (a, b) = at(u, v);
                        let t = 2.0 * PI * ((u * i) as f64 / h as f64 + (v * j) as f64 / w as f64);
                        s += a * t.cos() - b * t.sin();
                    }
                }
                out[i * w + j] = s / (h * w) as f64;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn noise(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .collect()
    }

    #[test]
    fn matches_the_plain_dft_for_odd_even_and_prime_sizes() {
        for &(h, w) in &[(1, 1), (4, 6), (5, 7), (6, 5), (13, 11), (8, 1), (2, 9)] {
            let x = noise(3 * h * w, (h * 31 + w) as u64);
            let t = Tensor::from_vec(x.clone(), (3, h, w), &Device::Cpu).unwrap();
            let f = rfft2(&t).unwrap();
            assert_eq!(f.dims(), &[3, 2, h, w / 2 + 1]);
            let got = f.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let wq = w / 2 + 1;
            for c in 0..3 {
                let (re, im) = reference::rfft2(&x[c * h * w..(c + 1) * h * w], h, w);
                let plane = &got[c * 2 * h * wq..(c + 1) * 2 * h * wq];
                for k in 0..h * wq {
                    assert!((plane[k] - re[k]).abs() < 1e-12, "re {h}x{w} at {k}");
                    assert!(
                        (plane[h * wq + k] - im[k]).abs() < 1e-12,
                        "im {h}x{w} at {k}"
                    );
                }
                let back = reference::irfft2(&re, &im, h, w);
                for (a, b) in back.iter().zip(&x[c * h * w..(c + 1) * h * w]) {
                    assert!((a - b).abs() < 1e-12);
                }
            }
            let back = irfft2(&f, w).unwrap();
            let back = back.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            for (a, b) in back.iter().zip(&x) {
                assert!((a - b).abs() < 1e-12, "round trip {h}x{w}");
            }
        }
    }

    #[test]
    fn f32_round_trip_and_errors() {
        let x: Vec<f32> = noise(2 * 12 * 10, 7).iter().map(|v| *v as f32).collect();
        let t = Tensor::from_vec(x.clone(), (1, 2, 12, 10), &Device::Cpu).unwrap();
        let back = irfft2(&rfft2(&t).unwrap(), 10).unwrap();
        assert_eq!(back.dims(), &[1, 2, 12, 10]);
        let back = back.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (a, b) in back.iter().zip(&x) {
            assert!((a - b).abs() < 1e-6);
        }
        let t = Tensor::zeros((3, 4), DType::U8, &Device::Cpu).unwrap();
        assert!(rfft2(&t)
            .unwrap_err()
            .to_string()
            .contains("unsupported dtype"));
        let t = Tensor::zeros((2, 4, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(irfft2(&t, 6).is_err());
    }
}
