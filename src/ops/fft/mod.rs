//! Fourier transforms. Three implementations, each for one path, and a fourth for the tests:
//!
//! | what | where | used by |
//! | --- | --- | --- |
//! | [`rfft2`] / [`irfft2`], a candle op: real 2-D FFT over the last two dims, f32 and f64 | CPU: [`cpu`] (realfft/rustfft, plans cached, planes in parallel); CUDA (`cuda` feature): `cuda` (cuFFT, one batched plan over all planes, plans cached, planar/interleaved conversion on the device) | the reference Converse2D solve, so every device and dtype, and anyone's own code |
//! | the lane FFT: complex 1-D FFTs over vectors of 8 f32 | `crate::ops::cpu::lanes` | the fused f32 CPU solve (`crate::ops::cpu::solve`) |
//! | the separable DFT of a kernel's taps, in f64 | [`crate::ops::transfer`] | building transfer functions for both solves |
//! | a plain O(N²) DFT | `reference` (tests only) | checking the others |
//!
//! [`rfft2`] and [`irfft2`] have their backward ([`CustomOp1::bwd`]), each the other transform
//! with the adjoint's weights, so candle's autograd differentiates the reference solve on every
//! device.

pub(crate) mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
#[cfg(any(feature = "cuda", test))]
mod glue;
#[cfg(test)]
pub(crate) mod reference;

#[cfg(test)]
use std::collections::BTreeSet;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// How many cuFFT plans the CUDA build keeps: one forward pass of each released model needs at
/// most this many distinct ones (listed by the tests below), so no image rebuilds a plan.
#[cfg(any(feature = "cuda", test))]
pub(crate) const MAX_PLANS: usize = 16;

/// The plan one transform needs: a batch of `(h, w)` planes, one way.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct PlanKey {
    pub h: usize,
    pub w: usize,
    pub batch: usize,
    pub inverse: bool,
}

#[cfg(test)]
thread_local! {
    static RECORDED: std::cell::RefCell<Option<BTreeSet<PlanKey>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` and returns the distinct plans the transforms it ran on this thread needed, on any
/// device.
#[cfg(test)]
pub(crate) fn record_plans<R>(f: impl FnOnce() -> R) -> (R, BTreeSet<PlanKey>) {
    let outer = RECORDED.with(|r| r.replace(Some(BTreeSet::new())));
    let out = f();
    let seen = RECORDED.with(|r| r.replace(outer)).unwrap_or_default();
    (out, seen)
}

/// Records a transform's plan inside [`record_plans`] (tests only).
#[cfg(test)]
fn note(h: usize, w: usize, batch: usize, inverse: bool) {
    RECORDED.with(|r| {
        if let Some(seen) = r.borrow_mut().as_mut() {
            seen.insert(PlanKey {
                h,
                w,
                batch,
                inverse,
            });
        }
    });
}

#[cfg(not(test))]
fn note(_h: usize, _w: usize, _batch: usize, _inverse: bool) {}

/// Real 2-D FFT over the last two dims: `(.., H, W)` to the planar half spectrum
/// `(.., 2, H, W/2+1)` (real part, then imaginary part), unnormalised.
pub fn rfft2(x: &Tensor) -> Result<Tensor> {
    if x.rank() < 2 {
        candle_core::bail!("rfft2 needs at least 2 dims, got {:?}", x.shape())
    }
    x.contiguous()?.apply_op1(Rfft2)
}

/// Inverse of [`rfft2`]: `(.., 2, H, W/2+1)` to real `(.., H, width)`, normalised by `1/(H*W)`.
pub fn irfft2(x: &Tensor, width: usize) -> Result<Tensor> {
    let d = x.dims();
    if d.len() < 3 || d[d.len() - 3] != 2 || d[d.len() - 1] != width / 2 + 1 {
        candle_core::bail!(
            "irfft2: shape {:?} is not a planar half spectrum of width {width}",
            x.shape()
        )
    }
    x.contiguous()?.apply_op1(Irfft2 { width })
}

/// The columns `v < W/2+1` of a half spectrum over `W` that are their own mirror image (`v = 0`
/// and, for even `W`, `v = W/2`), as a `(W/2+1)` mask of ones, in `like`'s dtype and device.
fn self_conjugate_columns(w: usize, like: &Tensor) -> Result<Tensor> {
    let m: Vec<f64> = (0..w / 2 + 1)
        .map(|v| if v == 0 || 2 * v == w { 1.0 } else { 0.0 })
        .collect();
    Tensor::from_vec(m, w / 2 + 1, &candle_core::Device::Cpu)?
        .to_dtype(like.dtype())?
        .to_device(like.device())
}

/// The adjoint of [`rfft2`] for input width `w`: `g` `(.., 2, H, W/2+1)` to
/// `Re sum_{u, v} (g_re + i g_im)[u, v] e^{2 pi i (u i / H + v j / W)}` `(.., H, W)`.
///
/// That is `H W` times the inverse transform of `g` with its mirrored columns halved (the
/// inverse counts them twice) and its self-conjugate columns made Hermitian along `H`
/// (`(g[u] + conj(g[-u])) / 2`, whose inverse is real and equals the real part asked for), so
/// every inverse transform gives the same answer.
fn rfft2_adjoint(g: &Tensor, w: usize) -> Result<Tensor> {
    let d = g.dims();
    let (r, h) = (d.len(), d[d.len() - 2]);
    let mirror: Vec<u32> = (0..h).map(|u| ((h - u) % h) as u32).collect();
    let mirror = Tensor::from_vec(mirror, h, g.device())?;
    let flipped = g.index_select(&mirror, r - 2)?;
    let mut sign = vec![1usize; r];
    sign[r - 3] = 2;
    let sign = Tensor::from_vec(vec![1.0, -1.0], 2, &candle_core::Device::Cpu)?
        .to_dtype(g.dtype())?
        .to_device(g.device())?
        .reshape(&sign[..])?;
    let hermitian = ((g + flipped.broadcast_mul(&sign)?)? * 0.5)?;
    let m = self_conjugate_columns(w, g)?;
    let rest = ((m.ones_like()? - &m)? * 0.5)?;
    let z = (hermitian.broadcast_mul(&m)? + g.broadcast_mul(&rest)?)?;
    irfft2(&z, w)? * (h * w) as f64
}

/// The adjoint of [`irfft2`] (on the half spectra of real signals, the only ones it is defined
/// for): `rfft2(g)` with every column weighted by how often the inverse counts it (once for the
/// self-conjugate columns, twice for the others), over `H W`.
fn irfft2_adjoint(g: &Tensor) -> Result<Tensor> {
    let d = g.dims();
    let (h, w) = (d[d.len() - 2], d[d.len() - 1]);
    let m = self_conjugate_columns(w, g)?;
    let weight = ((m.ones_like()? * 2.0)? - &m)? / (h * w) as f64;
    rfft2(&g.contiguous()?)?.broadcast_mul(&weight?)
}

/// Drops the cached plans: the CPU ones (a few KB per transform size) and, in a CUDA build, the
/// cuFFT ones (each with a work area on the GPU). They are rebuilt when needed.
pub fn clear_plans() {
    cpu::clear_plans();
    #[cfg(feature = "cuda")]
    cuda::clear_plans();
}

/// `(.., H, W)` -> `(.., 2, H, W/2+1)`.
fn rfft_shape(dims: &[usize]) -> (usize, usize, Shape) {
    let (h, w) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    let mut out = dims[..dims.len() - 2].to_vec();
    out.extend([2, h, w / 2 + 1]);
    (h, w, Shape::from(out))
}

/// `(.., 2, H, Wq)` -> `(.., H, width)`.
fn irfft_shape(dims: &[usize], width: usize) -> (usize, Shape) {
    let h = dims[dims.len() - 2];
    let mut out = dims[..dims.len() - 3].to_vec();
    out.extend([h, width]);
    (h, Shape::from(out))
}

struct Rfft2;
struct Irfft2 {
    width: usize,
}

impl CustomOp1 for Rfft2 {
    fn name(&self) -> &'static str {
        "rfft2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (h, w, shape) = rfft_shape(l.dims());
        note(h, w, l.shape().elem_count() / (h * w).max(1), false);
        let out = match s {
            CpuStorage::F32(d) => CpuStorage::F32(cpu::rfft(contiguous(d, l)?, h, w)?),
            CpuStorage::F64(d) => CpuStorage::F64(cpu::rfft(contiguous(d, l)?, h, w)?),
            _ => candle_core::bail!("rfft2: unsupported dtype {:?}", s.dtype()),
        };
        Ok((out, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (h, w, shape) = rfft_shape(l.dims());
        note(h, w, l.shape().elem_count() / (h * w).max(1), false);
        if shape.elem_count() == 0 || l.shape().elem_count() == 0 {
            return Ok((empty(s, &shape)?, shape));
        }
        Ok((cuda::rfft(s, l, h, w)?, shape))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(rfft2_adjoint(grad, arg.dim(candle_core::D::Minus1)?)?))
    }
}

impl CustomOp1 for Irfft2 {
    fn name(&self) -> &'static str {
        "irfft2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (h, shape) = irfft_shape(l.dims(), self.width);
        let w = self.width;
        note(h, w, shape.elem_count() / (h * w).max(1), true);
        let out = match s {
            CpuStorage::F32(d) => CpuStorage::F32(cpu::irfft(contiguous(d, l)?, h, w)?),
            CpuStorage::F64(d) => CpuStorage::F64(cpu::irfft(contiguous(d, l)?, h, w)?),
            _ => candle_core::bail!("irfft2: unsupported dtype {:?}", s.dtype()),
        };
        Ok((out, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (h, shape) = irfft_shape(l.dims(), self.width);
        note(
            h,
            self.width,
            shape.elem_count() / (h * self.width).max(1),
            true,
        );
        if shape.elem_count() == 0 || l.shape().elem_count() == 0 {
            return Ok((empty(s, &shape)?, shape));
        }
        Ok((cuda::irfft(s, l, h, self.width)?, shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(irfft2_adjoint(grad)?))
    }
}

/// The output of an empty transform (zeros, possibly none) on the input's device, with the same
/// dtype check as a real one.
#[cfg(feature = "cuda")]
fn empty(s: &candle_core::CudaStorage, shape: &Shape) -> Result<candle_core::CudaStorage> {
    use candle_core::backend::BackendDevice;
    match s.dtype() {
        candle_core::DType::F32 | candle_core::DType::F64 => s.device.zeros_impl(shape, s.dtype()),
        d => candle_core::bail!("fft: unsupported dtype {d:?}"),
    }
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("fft: input must be contiguous"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Values in [-0.5, 0.5) from a seeded LCG.
    pub(super) fn noise(n: usize, seed: u64) -> Vec<f64> {
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
    fn f32_round_trip_strided_input_and_errors() {
        let x: Vec<f32> = noise(2 * 12 * 10, 7).iter().map(|v| *v as f32).collect();
        let t = Tensor::from_vec(x.clone(), (1, 2, 12, 10), &Device::Cpu).unwrap();
        let back = irfft2(&rfft2(&t).unwrap(), 10).unwrap();
        assert_eq!(back.dims(), &[1, 2, 12, 10]);
        let back = back.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (a, b) in back.iter().zip(&x) {
            assert!((a - b).abs() < 1e-6);
        }
        // A transposed (strided) and an offset view give the transforms of what they show.
        let tt = t.transpose(2, 3).unwrap();
        let want = rfft2(&tt.contiguous().unwrap()).unwrap();
        let got = rfft2(&tt).unwrap();
        let d = (got - want).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        let off = t.narrow(1, 1, 1).unwrap();
        let want = rfft2(&off.contiguous().unwrap()).unwrap();
        let d = (rfft2(&off).unwrap() - want).unwrap().abs().unwrap();
        assert_eq!(d.max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        let t = Tensor::zeros((3, 4), DType::U8, &Device::Cpu).unwrap();
        assert!(rfft2(&t)
            .unwrap_err()
            .to_string()
            .contains("unsupported dtype"));
        let t = Tensor::zeros((2, 4, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(irfft2(&t, 6).is_err());
    }

    /// The backward of `rfft2` is the adjoint of the plain DFT: for the loss
    /// `sum(rfft2(x) * g)`, `dx[i, j] = sum_{u, v} g_re cos t - g_im sin t` with
    /// `t = 2 pi (u i / H + v j / W)`, over the half spectrum, for odd, even and unit sizes.
    #[test]
    fn rfft2_backward_is_the_plain_dft_adjoint() {
        use std::f64::consts::PI;
        for &(h, w) in &[(1, 1), (4, 6), (5, 7), (6, 5), (3, 2), (2, 1), (7, 4)] {
            let wq = w / 2 + 1;
            let x = noise(3 * h * w, (h * 13 + w) as u64);
            let g = noise(3 * 2 * h * wq, (h * 17 + w) as u64);
            let x = candle_core::Var::from_vec(x, (3, h, w), &Device::Cpu).unwrap();
            let gt = Tensor::from_vec(g.clone(), (3, 2, h, wq), &Device::Cpu).unwrap();
            let loss = (rfft2(&x).unwrap() * &gt).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            let dx = grads.get(&x).unwrap().flatten_all().unwrap();
            let dx = dx.to_vec1::<f64>().unwrap();
            for c in 0..3 {
                let g = &g[c * 2 * h * wq..][..2 * h * wq];
                for i in 0..h {
                    for j in 0..w {
                        let mut want = 0.0;
                        for u in 0..h {
                            for v in 0..wq {
                                let t = 2.0
                                    * PI
                                    * (((u * i) % h) as f64 / h as f64
                                        + ((v * j) % w) as f64 / w as f64);
                                let k = u * wq + v;
                                want += g[k] * t.cos() - g[h * wq + k] * t.sin();
                            }
                        }
                        let got = dx[(c * h + i) * w + j];
                        assert!((got - want).abs() < 1e-12, "{h}x{w} at {c},{i},{j}");
                    }
                }
            }
        }
    }

    /// A filter through both transforms, `sum(irfft2(rfft2(x) · rfft2(k)) * g)`, differentiated
    /// by autograd (through both backwards) and by central finite differences in f64, with
    /// respect to the signal `x` and the filter `k`.
    #[test]
    fn both_backwards_match_finite_differences() {
        let dev = Device::Cpu;
        for &(h, w) in &[(4, 6), (5, 7), (6, 5), (3, 2), (1, 4)] {
            let n = 2 * h * w;
            let x0 = noise(n, (h * 3 + w) as u64);
            let k0 = noise(n, (h * 5 + w) as u64);
            let g = Tensor::from_vec(noise(n, (h * 7 + w) as u64), (2, h, w), &dev).unwrap();
            let loss = |x: &Tensor, k: &Tensor| {
                let (a, b) = (rfft2(x).unwrap(), rfft2(k).unwrap());
                let part = |t: &Tensor, i| t.narrow(1, i, 1).unwrap();
                let (ar, ai, br, bi) = (part(&a, 0), part(&a, 1), part(&b, 0), part(&b, 1));
                let re = ((&ar * &br).unwrap() - (&ai * &bi).unwrap()).unwrap();
                let im = ((&ar * &bi).unwrap() + (&ai * &br).unwrap()).unwrap();
                let y = irfft2(&Tensor::cat(&[re, im], 1).unwrap(), w).unwrap();
                (y * &g).unwrap().sum_all().unwrap()
            };
            let x = candle_core::Var::from_vec(x0.clone(), (2, h, w), &dev).unwrap();
            let k = candle_core::Var::from_vec(k0.clone(), (2, h, w), &dev).unwrap();
            let grads = loss(&x, &k).backward().unwrap();
            let value = |x: &[f64], k: &[f64]| {
                let t = |v: &[f64]| Tensor::from_vec(v.to_vec(), (2, h, w), &dev).unwrap();
                loss(&t(x), &t(k)).to_scalar::<f64>().unwrap()
            };
            let eps = 1e-6;
            for (var, which) in [(&x, 0), (&k, 1)] {
                let got = grads.get(var).unwrap().flatten_all().unwrap();
                let got = got.to_vec1::<f64>().unwrap();
                for (i, got) in got.iter().enumerate() {
                    let (mut a, mut b) = ((x0.clone(), k0.clone()), (x0.clone(), k0.clone()));
                    if which == 0 {
                        a.0[i] += eps;
                        b.0[i] -= eps;
                    } else {
                        a.1[i] += eps;
                        b.1[i] -= eps;
                    }
                    let fd = (value(&a.0, &a.1) - value(&b.0, &b.1)) / (2.0 * eps);
                    assert!(
                        (got - fd).abs() < 1e-7 * fd.abs().max(1.0),
                        "{h}x{w} d{} [{i}]: {got} vs {fd}",
                        ["x", "k"][which],
                    );
                }
            }
        }
    }

    /// The plans one forward pass of each released model needs (zero weights, f64, so the
    /// reference path that a GPU runs): a (batch, direction) pair per Converse2D layer shape. At
    /// 1024x1024 (SR: from 256) the sizes scale and the keys stay as many; the CUDA plan cache
    /// holds them all, so no image rebuilds a plan.
    #[test]
    fn plan_keys_of_one_forward_of_each_model_fit_the_cache() {
        use crate::models::{Model, ModelKind};
        let listing = |keys: &BTreeSet<PlanKey>| {
            keys.iter()
                .map(|k| {
                    let way = if k.inverse { "C2R" } else { "R2C" };
                    format!("{way} {}x{} x{}", k.h, k.w, k.batch)
                })
                .collect::<Vec<_>>()
        };
        for kind in ModelKind::ALL {
            let spec = kind.spec().unwrap();
            let zeros = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
            let tensors = spec
                .params
                .iter()
                .map(|p| (p.name.clone(), zeros(&p.shape)))
                .collect();
            let model = Model::from_tensors(kind, tensors, DType::F64, &Device::Cpu).unwrap();
            let (c, side) = if kind == ModelKind::DnCNN {
                (1, 32)
            } else if kind == ModelKind::SRResNet {
                (3, 16)
            } else {
                (3, 32)
            };
            let x = Tensor::zeros((1, c, side, side), DType::F64, &Device::Cpu).unwrap();
            let k = (kind == ModelKind::USRNet)
                .then(|| Tensor::full(1.0 / 49.0, (1, 1, 7, 7), &Device::Cpu).unwrap());
            let (_, keys) = record_plans(|| model.forward(&x, k.as_ref()).unwrap());
            let got = listing(&keys);
            eprintln!("{kind}: {} plans: {}", got.len(), got.join(", "));
            assert!(keys.len() <= MAX_PLANS, "{kind}: {got:?}");
            let (again, _) = record_plans(|| record_plans(|| ()).1);
            assert!(again.is_empty());
        }
    }

    /// cuFFT against the CPU transforms, on a machine with a GPU (skipped elsewhere).
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_matches_the_cpu() {
        let Ok(gpu) = crate::device::DeviceSpec::Cuda(0).open() else {
            eprintln!("skipped: no usable CUDA GPU");
            return;
        };
        let max_diff = |a: &Tensor, b: &Tensor| {
            let d = (a.to_device(&Device::Cpu).unwrap() - b).unwrap();
            let d = d.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            d.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
        };
        for &(h, w) in &[
            (1, 1),
            (4, 6),
            (5, 7),
            (13, 11),
            (8, 1),
            (2, 9),
            (64, 48),
            (37, 50),
        ] {
            for (dtype, tol) in [(DType::F64, 1e-11), (DType::F32, 2e-4)] {
                let x = Tensor::from_vec(
                    noise(3 * 2 * h * w, (h * 7 + w) as u64),
                    (3, 2, h, w),
                    &Device::Cpu,
                )
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
                let xg = x.to_device(&gpu).unwrap();
                let (f, fg) = (rfft2(&x).unwrap(), rfft2(&xg).unwrap());
                assert_eq!(fg.dims(), f.dims());
                let scale = (h * w) as f64;
                assert!(max_diff(&fg, &f) < tol * scale, "rfft2 {h}x{w} {dtype:?}");
                let back = irfft2(&fg, w).unwrap();
                assert_eq!(back.dims(), x.dims());
                assert!(max_diff(&back, &x) < tol, "round trip {h}x{w} {dtype:?}");
                assert!(max_diff(&irfft2(&fg, w).unwrap(), &irfft2(&f, w).unwrap()) < tol);
                // Strided and offset views, forward and inverse.
                let tt = xg.transpose(2, 3).unwrap();
                let want = rfft2(&x.transpose(2, 3).unwrap().contiguous().unwrap()).unwrap();
                assert!(max_diff(&rfft2(&tt).unwrap(), &want) < tol * scale);
                let off = xg.narrow(1, 1, 1).unwrap();
                let want = rfft2(&x.narrow(1, 1, 1).unwrap().contiguous().unwrap()).unwrap();
                assert!(max_diff(&rfft2(&off).unwrap(), &want) < tol * scale);
                let fo = fg.narrow(0, 1, 2).unwrap();
                let want = irfft2(&f.narrow(0, 1, 2).unwrap().contiguous().unwrap(), w).unwrap();
                assert!(max_diff(&irfft2(&fo, w).unwrap(), &want) < tol);
            }
        }
        clear_plans();
        let e = rfft2(&Tensor::zeros((3, 4), DType::U8, &gpu).unwrap()).unwrap_err();
        assert!(e.to_string().contains("unsupported dtype"), "{e}");
        let empty = Tensor::zeros((0, 4, 6), DType::F32, &gpu).unwrap();
        assert_eq!(rfft2(&empty).unwrap().dims(), &[0, 2, 4, 4]);
    }
}
