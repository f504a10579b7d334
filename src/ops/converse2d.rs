//! The Converse2D operator of "Reverse Convolution and Its Applications to Image Restoration"
//! (Huang et al., ICCV 2025), `Converse2D` in the official `models/util_converse.py`.
//!
//! Converse2D reverses a depthwise convolution with kernel `K` followed by `s`-fold
//! downsampling: it returns the closed-form minimiser of `||y - (x * K)↓s||² + λ||x - x0||²`
//! (eq. 6 of the paper), computed in the Fourier domain. [`solve`] is the one solver: the
//! learned-kernel layer [`Converse2d`] and Converse-USRNet's kernel-conditioned data module both
//! call it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{CpuStorage, CustomOp1, DType, DeviceLocation, Layout, Module, Result, Shape};
use candle_core::{Tensor, D};
use candle_nn::VarBuilder;

use super::cpu::{self, Filter};
use super::fft::{irfft2, rfft2, Spectrum};
use super::pad::{check_padding, pad2d, PaddingMode};

/// Hyperparameters of one Converse2D layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Converse2dConfig {
    /// Side of the square kernel (any size, even ones included).
    pub kernel_size: usize,
    /// Upsampling factor `s` (the output is `s` times larger).
    pub scale: usize,
    /// Padding added on every side before the solve and cropped (times `s`) after it.
    pub padding: usize,
    /// How the padding is filled.
    pub padding_mode: PaddingMode,
    /// Added to `sigmoid(bias - 9)` to form `λ`.
    pub eps: f64,
}

impl Converse2dConfig {
    /// The official default: kernel 3, scale 1, padding 2, circular, eps 1e-5.
    pub fn new(kernel_size: usize) -> Self {
        Self {
            kernel_size,
            scale: 1,
            padding: 2,
            padding_mode: PaddingMode::Circular,
            eps: 1e-5,
        }
    }
}

/// `λ = sigmoid(b - 9) + eps`, per channel.
pub fn lambda(b: &Tensor, eps: f64) -> Result<Tensor> {
    candle_nn::ops::sigmoid(&(b - 9.0)?)? + eps
}

/// Caches a layer's transfer function per padded input size (the weights never change): as
/// tensors for the generic path, and as [`Filter`]s for the f32 CPU path. The filters share one
/// process-wide byte budget ([`FILTER_CACHE_ENV`]); past it they are rebuilt on every call.
#[derive(Debug, Default)]
pub struct SpectrumCache {
    entries: Mutex<HashMap<(usize, usize, DType, DeviceLocation), Spectrum>>,
    filters: Mutex<HashMap<(usize, usize), Arc<Filter>>>,
}

/// Environment variable: MiB that cached CPU filters may take in all (default 1024).
pub const FILTER_CACHE_ENV: &str = "CONVERSE_FILTER_CACHE_MB";

static FILTER_BYTES: AtomicUsize = AtomicUsize::new(0);

fn filter_budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        std::env::var(FILTER_CACHE_ENV)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1024)
            << 20
    })
}

impl SpectrumCache {
    const MAX_ENTRIES: usize = 16;

    fn get_or(
        &self,
        key: (usize, usize, DType, DeviceLocation),
        make: impl FnOnce() -> Result<Spectrum>,
    ) -> Result<Spectrum> {
        if let Some(s) = lock(&self.entries).get(&key) {
            return Ok(s.clone());
        }
        let s = make()?;
        let mut entries = lock(&self.entries);
        if entries.len() >= Self::MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(key, s.clone());
        Ok(s)
    }

    fn filter_or(
        &self,
        key: (usize, usize),
        make: impl FnOnce() -> Result<Filter>,
    ) -> Result<Arc<Filter>> {
        if let Some(f) = lock(&self.filters).get(&key) {
            return Ok(f.clone());
        }
        let f = Arc::new(make()?);
        let bytes = f.bytes();
        let fits = FILTER_BYTES
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                (used + bytes <= filter_budget()).then_some(used + bytes)
            })
            .is_ok();
        if fits {
            lock(&self.filters).insert(key, f.clone());
        }
        Ok(f)
    }
}

impl Drop for SpectrumCache {
    fn drop(&mut self) {
        let bytes: usize = lock(&self.filters).values().map(|f| f.bytes()).sum();
        FILTER_BYTES.fetch_sub(bytes, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Optical transfer function: the kernel zero-padded to `(h, w)`, rolled by `-floor(k/2)` so its
/// centre sits at the origin, then transformed. Computed in f64.
fn otf(kernel: &Tensor, h: usize, w: usize) -> Result<Spectrum> {
    let (kh, kw) = kernel.dims4().map(|d| (d.2, d.3))?;
    if kh > h || kw > w {
        candle_core::bail!("Converse2D: kernel {kh}x{kw} is larger than the padded input {h}x{w}")
    }
    let k = kernel
        .to_dtype(DType::F64)?
        .pad_with_zeros(2, 0, h - kh)?
        .pad_with_zeros(3, 0, w - kw)?
        .roll(-((kh / 2) as i32), 2)?
        .roll(-((kw / 2) as i32), 3)?;
    Spectrum::from_planar(&rfft2(&k)?)
}

/// The transfer function `G` of the whole solve, on the half grid `(hp*s, wp*s/2+1)`, so that
/// `X = IFFT(G · tile(FFT(y)))` for the padded input `y` `(hp, wp)`.
///
/// Eq. (6) with `Y_s` the zero-inserted input, whose spectrum is `FFT(y)` tiled `s x s` times, and
/// `X0` its nearest upsampling, whose spectrum is that times the box response `B` of an `s x s`
/// block, simplifies to
/// `G = B + conj(FK) · tile((1 - mean(FK·B)) / (mean(|FK|²) + λ))`, the means taken over the
/// `s x s` frequency blocks. At `s = 1` this is `(conj(FK) + λ) / (|FK|² + λ)`. Unlike the
/// official form it never divides by `λ`, so it stays accurate when `λ` is tiny. Computed in f64.
fn transfer(kernel: &Tensor, lam: &Tensor, hp: usize, wp: usize, s: usize) -> Result<Spectrum> {
    let (hs, ws) = (hp * s, wp * s);
    let fk = otf(kernel, hs, ws)?;
    let lam = lam.to_dtype(DType::F64)?;
    if s == 1 {
        let den = fk.norm_sqr()?.broadcast_add(&lam)?;
        return Ok(Spectrum {
            re: fk.re.broadcast_add(&lam)?.div(&den)?,
            im: fk.im.neg()?.div(&den)?,
        });
    }
    let dev = kernel.device();
    let b = box_response(hs, ws, s, dev)?;
    let fk_full = full(&fk, hs, ws)?;
    let m = block_mean(&fk_full.mul(&b)?, s, hp, wp)?;
    let den = block_mean_real(&fk_full.norm_sqr()?, s, hp, wp)?.broadcast_add(&lam)?;
    let q = Spectrum {
        re: m.re.affine(-1.0, 1.0)?.div(&den)?,
        im: m.im.neg()?.div(&den)?,
    };
    let q = tile(&q, hs, ws / 2 + 1)?;
    let b_half = b.map(|t| t.narrow(3, 0, ws / 2 + 1))?;
    fk.conj_mul(&q)?.add(&b_half)
}

/// Spectrum `(1, 1, hs, ws)` of the `s x s` box at the origin: the nearest-upsampling filter.
fn box_response(hs: usize, ws: usize, s: usize, dev: &candle_core::Device) -> Result<Spectrum> {
    let axis = |n: usize, f: usize| {
        (0..s).fold((0.0, 0.0), |(re, im), a| {
            let t = -2.0 * std::f64::consts::PI * (f * a % n) as f64 / n as f64;
            (re + t.cos(), im + t.sin())
        })
    };
    let (rows, cols): (Vec<_>, Vec<_>) = (
        (0..hs).map(|u| axis(hs, u)).collect(),
        (0..ws).map(|v| axis(ws, v)).collect(),
    );
    let (mut re, mut im) = (Vec::with_capacity(hs * ws), Vec::with_capacity(hs * ws));
    for &(ar, ai) in &rows {
        for &(br, bi) in &cols {
            re.push(ar * br - ai * bi);
            im.push(ar * bi + ai * br);
        }
    }
    Ok(Spectrum {
        re: Tensor::from_vec(re, (1, 1, hs, ws), dev)?,
        im: Tensor::from_vec(im, (1, 1, hs, ws), dev)?,
    })
}

/// Solves Converse2D for `x` `(N, C, H, W)` with per-channel kernels `kernel` `(1|N, C, k, k)` and
/// regularisation `lam` `(1, C, 1, 1)`; returns `(N, C, H*scale, W*scale)`.
///
/// `cache`, when given, keeps the transfer function per input size: pass it only when `kernel`
/// and `lam` are fixed (learned weights).
pub fn solve(
    x: &Tensor,
    kernel: &Tensor,
    lam: &Tensor,
    scale: usize,
    padding: usize,
    mode: PaddingMode,
    cache: Option<&SpectrumCache>,
) -> Result<Tensor> {
    let (n, c, _, _) = x.dims4()?;
    let (kn, kc, _, _) = kernel.dims4()?;
    if kc != c || (kn != 1 && kn != n) {
        candle_core::bail!(
            "Converse2D: kernel {:?} does not fit input {:?}",
            kernel.shape(),
            x.shape()
        )
    }
    if !(1..=8).contains(&scale) {
        candle_core::bail!("Converse2D: scale {scale} is not supported (1 to 8)")
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        let (h, w) = (x.dim(2)?, x.dim(3)?);
        let filter = filter(kernel, lam, (h, w), scale, padding, mode, cache)?;
        return x.contiguous()?.apply_op1_no_bwd(&FusedSolve {
            filter,
            hw: (h, w),
            scale,
            padding,
            mode,
        });
    }
    let xp = pad2d(x, padding, mode)?;
    let (_, _, hp, wp) = xp.dims4()?;
    let (hs, ws) = (hp * scale, wp * scale);
    let dtype = x.dtype();
    let make = || transfer(kernel, lam, hp, wp, scale)?.map(|t| t.to_dtype(dtype));
    let g = match cache {
        Some(cache) => cache.get_or((hp, wp, dtype, x.device().location()), make)?,
        None => make()?,
    };
    let mut y = Spectrum::from_planar(&rfft2(&xp)?)?;
    if scale > 1 {
        y = tile(&full(&y, hp, wp)?, hs, ws / 2 + 1)?;
    }
    let out = irfft2(&y.mul(&g)?.to_planar()?, ws)?;
    let crop = padding * scale;
    out.narrow(2, crop, hs - 2 * crop)?
        .narrow(3, crop, ws - 2 * crop)
}

/// The transfer function for an `(h, w)` input, as a CPU [`Filter`], from `cache` if given.
fn filter(
    kernel: &Tensor,
    lam: &Tensor,
    (h, w): (usize, usize),
    scale: usize,
    padding: usize,
    mode: PaddingMode,
    cache: Option<&SpectrumCache>,
) -> Result<Arc<Filter>> {
    check_padding(mode, padding, h)?;
    check_padding(mode, padding, w)?;
    let (hp, wp) = (h + 2 * padding, w + 2 * padding);
    // Above scale 1, in groups of channels, so the f64 temporaries stay small.
    const GROUP: usize = 16;
    let make = || {
        let (kn, c, kh, kw) = kernel.dims4()?;
        if scale == 1 {
            if kh > hp || kw > wp {
                candle_core::bail!(
                    "Converse2D: kernel {kh}x{kw} is larger than the padded input {hp}x{wp}"
                )
            }
            if lam.dims() != [1, c, 1, 1] {
                candle_core::bail!("Converse2D: lambda {:?} is not (1, {c}, 1, 1)", lam.shape())
            }
            let flat = |t: &Tensor| t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>();
            let (k, l) = (flat(kernel)?, flat(lam)?);
            return Ok(Filter::lanes(&k, &l, (kn, c), (kh, kw), (hp, wp)));
        }
        let mut parts = vec![];
        for n in 0..kn {
            for c0 in (0..c).step_by(GROUP) {
                let len = GROUP.min(c - c0);
                let k = kernel.narrow(0, n, 1)?.narrow(1, c0, len)?;
                // A mismatched `lam` goes through whole, for `transfer` to report it.
                let l = match lam.dim(1)? == c {
                    true => lam.narrow(1, c0, len)?,
                    false => lam.clone(),
                };
                let g = transfer(&k, &l, hp, wp, scale)?;
                let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f64>();
                parts.push(Filter::new(
                    &flat(&g.re)?,
                    &flat(&g.im)?,
                    hp * scale,
                    wp * scale,
                ));
            }
        }
        Ok(Filter::concat(parts, c))
    };
    match cache {
        Some(cache) => cache.filter_or((hp, wp), make),
        None => make().map(Arc::new),
    }
}

/// The solve of `(N, C, H, W)` f32 on the CPU, in one pass per plane
/// ([`cpu::converse_solve_scaled`]).
struct FusedSolve {
    filter: Arc<Filter>,
    hw: (usize, usize),
    scale: usize,
    padding: usize,
    mode: PaddingMode,
}

impl CustomOp1 for FusedSolve {
    fn name(&self) -> &'static str {
        "converse2d-fused"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(d), Some((a, b))) = (s, l.contiguous_offsets()) else {
            candle_core::bail!("converse2d-fused: needs contiguous f32")
        };
        let (n, c, h, w) = l.shape().dims4()?;
        let sc = self.scale;
        let mut out = vec![0f32; n * c * h * w * sc * sc];
        let (x, f) = (&d[a..b], &self.filter);
        let (p, mode) = (self.padding, self.mode);
        cpu::converse_solve_scaled(x, &mut out, self.hw, sc, p, mode, f, false);
        Ok((CpuStorage::F32(out), Shape::from((n, c, h * sc, w * sc))))
    }
}

fn index(it: impl Iterator<Item = usize>, dev: &candle_core::Device) -> Result<Tensor> {
    let v: Vec<u32> = it.map(|i| i as u32).collect();
    let n = v.len();
    Tensor::from_vec(v, n, dev)
}

/// Extends a Hermitian half spectrum `(.., h, w/2+1)` to the full `(.., h, w)`.
fn full(half: &Spectrum, h: usize, w: usize) -> Result<Spectrum> {
    let wq = w / 2 + 1;
    if w == wq {
        return Ok(half.clone());
    }
    let dev = half.re.device();
    let rows = index((0..h).map(|u| (h - u) % h), dev)?;
    let cols = index((wq..w).map(|v| w - v), dev)?;
    let mirror = |t: &Tensor| {
        t.contiguous()?
            .index_select(&rows, D::Minus2)?
            .index_select(&cols, D::Minus1)
    };
    Ok(Spectrum {
        re: Tensor::cat(&[&half.re, &mirror(&half.re)?], D::Minus1)?,
        im: Tensor::cat(&[&half.im, &mirror(&half.im)?.neg()?], D::Minus1)?,
    })
}

/// Repeats a full spectrum `(.., h, w)` periodically over `(.., rows, cols)`.
fn tile(t: &Spectrum, rows: usize, cols: usize) -> Result<Spectrum> {
    let (h, w) = (t.re.dim(D::Minus2)?, t.re.dim(D::Minus1)?);
    let dev = t.re.device();
    let r = index((0..rows).map(|u| u % h), dev)?;
    let c = index((0..cols).map(|v| v % w), dev)?;
    t.map(|x| {
        x.contiguous()?
            .index_select(&r, D::Minus2)?
            .index_select(&c, D::Minus1)
    })
}

/// Mean of the `s x s` blocks of size `(h, w)` tiling the last two dims.
fn block_mean_real(t: &Tensor, s: usize, h: usize, w: usize) -> Result<Tensor> {
    let (n, c) = (t.dim(0)?, t.dim(1)?);
    t.reshape((n, c, s, h, s, w))?
        .sum(4)?
        .sum(2)?
        .affine(1.0 / (s * s) as f64, 0.0)
}

fn block_mean(t: &Spectrum, s: usize, h: usize, w: usize) -> Result<Spectrum> {
    t.map(|t| block_mean_real(t, s, h, w))
}

/// A Converse2D layer with learned depthwise kernels (`weight` `(1, C, k, k)`, `bias`
/// `(1, C, 1, 1)`), as `Converse2D` in the official code.
#[derive(Debug)]
pub struct Converse2d {
    weight: Tensor,
    lambda: Tensor,
    config: Converse2dConfig,
    cache: SpectrumCache,
}

impl Converse2d {
    /// Loads `weight` and `bias` for `channels` channels.
    pub fn new(channels: usize, config: Converse2dConfig, vb: VarBuilder) -> Result<Self> {
        let k = config.kernel_size;
        let weight = vb.get((1, channels, k, k), "weight")?;
        let bias = vb.get((1, channels, 1, 1), "bias")?;
        Self::from_tensors(weight, bias, config)
    }

    /// Builds the layer from its two tensors.
    pub fn from_tensors(weight: Tensor, bias: Tensor, config: Converse2dConfig) -> Result<Self> {
        let (one, c, kh, kw) = weight.dims4()?;
        if one != 1 || kh != config.kernel_size || kw != config.kernel_size {
            candle_core::bail!(
                "Converse2D: weight {:?} is not (1, C, {k}, {k})",
                weight.shape(),
                k = config.kernel_size
            )
        }
        if bias.dims() != [1, c, 1, 1] {
            candle_core::bail!("Converse2D: bias {:?} is not (1, {c}, 1, 1)", bias.shape())
        }
        Ok(Self {
            lambda: lambda(&bias, config.eps)?,
            weight,
            config,
            cache: SpectrumCache::default(),
        })
    }

    pub fn config(&self) -> &Converse2dConfig {
        &self.config
    }

    /// The CPU fast path at scale 1: solves `planes` `(N*C, h, w)` in place, then GELU if `act`.
    pub(crate) fn solve_planes(
        &self,
        planes: &mut [f32],
        hw: (usize, usize),
        act: bool,
    ) -> Result<()> {
        let c = self.config;
        if c.scale != 1 {
            candle_core::bail!("Converse2D: the in-place solve is for scale 1")
        }
        let f = self.filter(hw)?;
        cpu::converse_solve(planes, hw, c.padding, c.padding_mode, &f, act);
        Ok(())
    }

    /// The CPU fast path at any scale: `input` `(N*C, h, w)` to `(N*C, s*h, s*w)`, then GELU if
    /// `act`.
    pub(crate) fn solve_scaled(
        &self,
        input: &[f32],
        hw: (usize, usize),
        act: bool,
    ) -> Result<Vec<f32>> {
        let c = self.config;
        let f = self.filter(hw)?;
        let mut out = vec![0f32; input.len() * c.scale * c.scale];
        let (s, p, mode) = (c.scale, c.padding, c.padding_mode);
        cpu::converse_solve_scaled(input, &mut out, hw, s, p, mode, &f, act);
        Ok(out)
    }

    fn filter(&self, hw: (usize, usize)) -> Result<Arc<Filter>> {
        let c = self.config;
        let (w, l) = (&self.weight, &self.lambda);
        let cache = Some(&self.cache);
        filter(w, l, hw, c.scale, c.padding, c.padding_mode, cache)
    }
}

/// [`solve`] at scale 1 on the CPU fast path, in place on `planes` `(N*C, h, w)`, then GELU if
/// `act`. `kernel` `(1|N, C, k, k)` and `lam` `(1, C, 1, 1)` as in [`solve`]; no cache.
pub(crate) fn solve_planes(
    planes: &mut [f32],
    hw: (usize, usize),
    kernel: &Tensor,
    lam: &Tensor,
    padding: usize,
    mode: PaddingMode,
    act: bool,
) -> Result<()> {
    let f = filter(kernel, lam, hw, 1, padding, mode, None)?;
    cpu::converse_solve(planes, hw, padding, mode, &f, act);
    Ok(())
}

impl Module for Converse2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.config;
        solve(
            x,
            &self.weight,
            &self.lambda,
            c.scale,
            c.padding,
            c.padding_mode,
            Some(&self.cache),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// With λ → ∞ the solution is the initial estimate, the input itself.
    #[test]
    fn large_lambda_returns_the_input() {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f64, 2.0 * 36.0, &dev)
            .unwrap()
            .reshape((1, 2, 6, 6))
            .unwrap();
        let k = Tensor::full(0.1f64, (1, 2, 3, 3), &dev).unwrap();
        let lam = Tensor::full(1e14f64, (1, 2, 1, 1), &dev).unwrap();
        let y = solve(&x, &k, &lam, 1, 2, PaddingMode::Circular, None).unwrap();
        let err = (y - &x).unwrap().abs().unwrap().max_all().unwrap();
        assert!(err.to_scalar::<f64>().unwrap() < 1e-9);
    }

    /// With a delta kernel and tiny λ the solve inverts nothing: output equals input at scale 1,
    /// and at scale s it is an s-fold upsampling whose samples at [s*i, s*j] are the input.
    #[test]
    fn delta_kernel_is_identity_and_upsampling_keeps_samples() {
        let dev = Device::Cpu;
        let x = Tensor::rand(0f64, 1.0, (2, 3, 5, 7), &dev).unwrap();
        let mut k = vec![0f64; 3 * 9];
        for c in 0..3 {
            k[c * 9 + 4] = 1.0;
        }
        let k = Tensor::from_vec(k, (1, 3, 3, 3), &dev).unwrap();
        let lam = Tensor::full(1e-6f64, (1, 3, 1, 1), &dev).unwrap();
        for mode in [
            PaddingMode::Circular,
            PaddingMode::Reflect,
            PaddingMode::Zeros,
        ] {
            let y = solve(&x, &k, &lam, 1, 2, mode, None).unwrap();
            let err = (y - &x).unwrap().abs().unwrap().max_all().unwrap();
            assert!(err.to_scalar::<f64>().unwrap() < 1e-6, "{mode}");
        }
        let y = solve(&x, &k, &lam, 2, 1, PaddingMode::Replicate, None).unwrap();
        assert_eq!(y.dims(), &[2, 3, 10, 14]);
        let samples = y
            .reshape((2, 3, 5, 2, 7, 2))
            .unwrap()
            .narrow(3, 0, 1)
            .unwrap()
            .narrow(5, 0, 1)
            .unwrap()
            .reshape((2, 3, 5, 7))
            .unwrap();
        let err = (samples - &x).unwrap().abs().unwrap().max_all().unwrap();
        assert!(err.to_scalar::<f64>().unwrap() < 1e-5);
    }

    /// 2-D DFT of a full complex array, `sign` -1 forward, +1 inverse (normalised).
    fn dft2(re: &[f64], im: &[f64], h: usize, w: usize, sign: f64) -> (Vec<f64>, Vec<f64>) {
        let (mut or, mut oi) = (vec![0.0; h * w], vec![0.0; h * w]);
        let norm = if sign > 0.0 {
            1.0 / (h * w) as f64
        } else {
            1.0
        };
        for u in 0..h {
            for v in 0..w {
                let (mut a, mut b) = (0.0, 0.0);
                for i in 0..h {
                    for j in 0..w {
                        let t = sign
                            * 2.0
                            * std::f64::consts::PI
                            * (((u * i) % h) as f64 / h as f64 + ((v * j) % w) as f64 / w as f64);
                        let (c, s) = (t.cos(), t.sin());
                        a += re[i * w + j] * c - im[i * w + j] * s;
                        b += re[i * w + j] * s + im[i * w + j] * c;
                    }
                }
                or[u * w + v] = a * norm;
                oi[u * w + v] = b * norm;
            }
        }
        (or, oi)
    }

    /// The official `Converse2D.forward`, step by step, for one padded channel `y` `(h, w)`.
    fn literal(
        y: &[f64],
        h: usize,
        w: usize,
        k: &[f64],
        ks: usize,
        lam: f64,
        s: usize,
    ) -> Vec<f64> {
        let (hs, ws) = (h * s, w * s);
        let n = hs * ws;
        let zeros = vec![0.0; n];
        let (mut sty, mut x0) = (vec![0.0; n], vec![0.0; n]);
        for i in 0..hs {
            for j in 0..ws {
                if i % s == 0 && j % s == 0 {
                    sty[i * ws + j] = y[(i / s) * w + j / s];
                }
                x0[i * ws + j] = lam * y[(i / s) * w + j / s];
            }
        }
        let mut otf = vec![0.0; n];
        for a in 0..ks {
            for b in 0..ks {
                let (i, j) = ((a + hs - ks / 2) % hs, (b + ws - ks / 2) % ws);
                otf[i * ws + j] = k[a * ks + b];
            }
        }
        let (fbr, fbi) = dft2(&otf, &zeros, hs, ws, -1.0);
        let (fyr, fyi) = dft2(&sty, &zeros, hs, ws, -1.0);
        let (f0r, f0i) = dft2(&x0, &zeros, hs, ws, -1.0);
        // FR = conj(FB) FY + F(λ x0); x1 = FB FR.
        let frr: Vec<f64> = (0..n)
            .map(|q| fbr[q] * fyr[q] + fbi[q] * fyi[q] + f0r[q])
            .collect();
        let fri: Vec<f64> = (0..n)
            .map(|q| fbr[q] * fyi[q] - fbi[q] * fyr[q] + f0i[q])
            .collect();
        let x1r: Vec<f64> = (0..n).map(|q| fbr[q] * frr[q] - fbi[q] * fri[q]).collect();
        let x1i: Vec<f64> = (0..n).map(|q| fbr[q] * fri[q] + fbi[q] * frr[q]).collect();
        let blocks = |t: &[f64], u: usize, v: usize| {
            let mut acc = 0.0;
            for a in 0..s {
                for b in 0..s {
                    acc += t[(a * h + u) * ws + b * w + v];
                }
            }
            acc / (s * s) as f64
        };
        let f2b: Vec<f64> = (0..n).map(|q| fbr[q] * fbr[q] + fbi[q] * fbi[q]).collect();
        let (mut fxr, mut fxi) = (vec![0.0; n], vec![0.0; n]);
        for i in 0..hs {
            for j in 0..ws {
                let (u, v) = (i % h, j % w);
                let d = blocks(&f2b, u, v) + lam;
                let (qr, qi) = (blocks(&x1r, u, v) / d, blocks(&x1i, u, v) / d);
                let q = i * ws + j;
                // FX = (FR - conj(FB) q) / λ
                fxr[q] = (frr[q] - (fbr[q] * qr + fbi[q] * qi)) / lam;
                fxi[q] = (fri[q] - (fbr[q] * qi - fbi[q] * qr)) / lam;
            }
        }
        dft2(&fxr, &fxi, hs, ws, 1.0).0
    }

    #[test]
    fn matches_the_literal_official_algorithm() {
        let dev = Device::Cpu;
        let cases = [
            (1, 3, 2, PaddingMode::Circular, 6, 5),
            (1, 4, 3, PaddingMode::Reflect, 5, 7),
            (2, 2, 2, PaddingMode::Replicate, 4, 5),
            (2, 5, 4, PaddingMode::Zeros, 3, 4),
            (3, 3, 1, PaddingMode::Replicate, 3, 4),
            (4, 4, 2, PaddingMode::Circular, 2, 3),
            (4, 1, 0, PaddingMode::Circular, 3, 2),
        ];
        for (s, ks, p, mode, h, w) in cases {
            let c = 2;
            let x = Tensor::rand(-1f64, 1.0, (1, c, h, w), &dev).unwrap();
            let k = Tensor::rand(0f64, 1.0, (1, c, ks, ks), &dev).unwrap();
            let bias = Tensor::rand(6f64, 9.0, (1, c, 1, 1), &dev).unwrap();
            let lam = lambda(&bias, 1e-3).unwrap();
            let got = solve(&x, &k, &lam, s, p, mode, None).unwrap();
            let xp = pad2d(&x, p, mode).unwrap();
            let (hp, wp) = (h + 2 * p, w + 2 * p);
            for ch in 0..c {
                let plane = |t: &Tensor| {
                    t.get(0)
                        .unwrap()
                        .get(ch)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f64>()
                        .unwrap()
                };
                let want = literal(&plane(&xp), hp, wp, &plane(&k), ks, plane(&lam)[0], s);
                let got = plane(&got);
                let (ho, wo) = (h * s, w * s);
                for i in 0..ho {
                    for j in 0..wo {
                        let a = got[i * wo + j];
                        let b = want[(i + p * s) * wp * s + j + p * s];
                        assert!((a - b).abs() < 1e-9, "s={s} k={ks} {mode}: {a} vs {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn shape_errors_are_reported() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 4, 4), DType::F32, &dev).unwrap();
        let k = Tensor::zeros((1, 2, 3, 3), DType::F32, &dev).unwrap();
        let lam = Tensor::ones((1, 2, 1, 1), DType::F32, &dev).unwrap();
        let e = solve(&x, &k, &lam, 1, 0, PaddingMode::Circular, None).unwrap_err();
        assert!(e.to_string().contains("does not fit input"), "{e}");
        let k = Tensor::zeros((1, 3, 7, 7), DType::F32, &dev).unwrap();
        let e = solve(&x, &k, &lam, 1, 1, PaddingMode::Circular, None).unwrap_err();
        assert!(
            e.to_string().contains("larger than the padded input 6x6"),
            "{e}"
        );
    }
}
