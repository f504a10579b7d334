//! The Converse2D operator of "Reverse Convolution and Its Applications to Image Restoration"
//! (Huang et al., ICCV 2025), `Converse2D` in the official `models/util_converse.py`.
//!
//! Converse2D reverses a depthwise convolution with kernel `K` followed by `s`-fold
//! downsampling: it returns the closed-form minimiser of `||y - (x * K)↓s||² + λ||x - x0||²`
//! (eq. 6 of the paper), computed in the Fourier domain as one filter `G` per channel
//! ([`super::transfer`]). [`solve`] takes the kernels per call (Converse-USRNet's data module);
//! the learned layer [`Converse2d`] keeps its transfer functions on the reference path. Both run
//! the fused CPU kernels for f32 on the CPU and the composed candle ops ([`solve_reference`])
//! everywhere else. When a gradient is to flow (to the input, or to the kernels and `λ`, whose
//! transfer functions are then built per call with their own backward, [`super::grad`]), the
//! CPU runs fused training solves with their fused backward ([`TrainSolve`]) for f32 and f64,
//! and other devices the reference, which candle's autograd differentiates.

use candle_core::Tensor;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Module, Result, Shape};
use candle_nn::VarBuilder;

use super::cpu::solve::{Filters, Geometry};
use super::cpu::solve_grad::{self, Dims, Wanted};
use super::fft::{irfft2, rfft2};
use super::pad::{check_padding, pad2d, PaddingMode};
use super::planar_cache::PlanarCache;
use super::transfer::{self, Taps};
use super::Backend;

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

/// A layer's planar transfer functions for the reference path: one size, within a process-wide
/// byte budget ([`super::planar_cache`]); the fused kernels make theirs per call.
#[derive(Debug, Default)]
struct Cache {
    planar: PlanarCache,
}

/// Where the solve's transfer functions come from.
enum Source<'a> {
    Layer(&'a Taps, &'a Cache),
    PerCall(&'a Taps),
}

/// Solves Converse2D for `x` `(N, C, H, W)` with per-channel kernels `kernel` `(1|N, C, k, k)` and
/// regularisation `lam` `(1, C, 1, 1)`; returns `(N, C, H*scale, W*scale)`. The transfer
/// functions are built for this call only; a layer with fixed kernels should be a
/// [`Converse2d`], which keeps them on the reference path.
///
/// On a GPU (the reference path) the kernels, a few KB, are read back to the host, the transfer
/// functions are built there (the separable DFT of the taps, in f64, in parallel) and uploaded
/// once for the call: `(N, C, s², 2, H, W/2+1)` values. This is Converse-USRNet's data step,
/// whose kernels come from the blur kernel of each image: one small download and one upload per
/// data step, by choice, rather than a DFT kernel of our own on the device. A [`Converse2d`]
/// layer builds and uploads its transfer functions once per input size and device, and keeps
/// them. Nothing else in the reference path is read back from the device (padding and resizing
/// upload small index tables per call).
pub fn solve(
    x: &Tensor,
    kernel: &Tensor,
    lam: &Tensor,
    scale: usize,
    padding: usize,
    mode: PaddingMode,
) -> Result<Tensor> {
    let taps = Taps::new(kernel, lam)?;
    let tracked = (kernel.track_op() || lam.track_op()).then_some((kernel, lam));
    solve_with(x, Source::PerCall(&taps), tracked, scale, padding, mode)
}

/// The solve, on the backend [`Backend::of`] picks for `x`; with `tracked`, the kernels and `λ`
/// that gradients are to reach, on the reference backend with transfer functions made of candle
/// ops.
fn solve_with(
    x: &Tensor,
    source: Source,
    tracked: Option<(&Tensor, &Tensor)>,
    scale: usize,
    padding: usize,
    mode: PaddingMode,
) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let taps = match source {
        Source::Layer(t, _) | Source::PerCall(t) => t,
    };
    if taps.channels() != c || (taps.sets() != 1 && taps.sets() != n) {
        candle_core::bail!(
            "Converse2D: kernels ({} x {} channels) do not fit input {:?}",
            taps.sets(),
            taps.channels(),
            x.shape()
        )
    }
    if !(1..=8).contains(&scale) {
        candle_core::bail!("Converse2D: scale {scale} is not supported (1 to 8)")
    }
    check_padding(mode, padding, h)?;
    check_padding(mode, padding, w)?;
    let (hp, wp) = (h + 2 * padding, w + 2 * padding);
    taps.check_fits((hp, wp), scale)?;
    if let Some((kernel, lam)) = tracked {
        if Backend::trains_fused(x) {
            // The host builds `g` and its backward (vectorised over channels), not the
            // composed ops (elementwise, and on the s-fold grid at s > 1).
            // `taps`: the kernels as they are now (an optimiser updates them in place).
            let (g, taps) = super::grad::planar_host(kernel, lam, (hp, wp), scale)?;
            return solve_trainable(x, &g, taps, scale, padding, mode);
        }
        let g = super::grad::planar(kernel, lam, (hp, wp), scale)?;
        return solve_reference(x, &g, scale, padding, mode);
    }
    if x.track_op() && Backend::trains_fused(x) {
        let g = transfer::planar(taps, (hp, wp), scale, x.dtype(), x.device())?;
        return solve_trainable(x, &g, taps.clone(), scale, padding, mode);
    }
    match Backend::of(x) {
        Backend::Fused => {
            let filters = Filters(taps);
            let geo = Geometry::new((h, w), padding, scale, mode);
            x.contiguous()?
                .apply_op1_no_bwd(&FusedSolve { geo, filters })
        }
        Backend::Reference => {
            let make = || transfer::planar(taps, (hp, wp), scale, x.dtype(), x.device());
            let g = match source {
                Source::Layer(_, cache) => {
                    let key = (hp, wp, x.dtype(), x.device().location());
                    cache.planar.get_or_make(key, make)?
                }
                Source::PerCall(_) => make()?,
            };
            solve_reference(x, &g, scale, padding, mode)
        }
    }
}

/// The reference solve, composed of candle ops on any device: pad, `rfft2`, multiply by the
/// planar transfer functions `g` `(1|N, C, s², 2, hp, wp/2+1)` of the output's `s²` phases,
/// `irfft2`, interleave the phases, crop.
pub(crate) fn solve_reference(
    x: &Tensor,
    g: &Tensor,
    s: usize,
    padding: usize,
    mode: PaddingMode,
) -> Result<Tensor> {
    let xp = pad2d(x, padding, mode)?;
    let (n, c, hp, wp) = xp.dims4()?;
    let y = rfft2(&xp)?.unsqueeze(2)?;
    let (yr, yi) = (y.narrow(3, 0, 1)?, y.narrow(3, 1, 1)?);
    let (gr, gi) = (g.narrow(3, 0, 1)?, g.narrow(3, 1, 1)?);
    let re = (yr.broadcast_mul(&gr)? - yi.broadcast_mul(&gi)?)?;
    let im = (yr.broadcast_mul(&gi)? + yi.broadcast_mul(&gr)?)?;
    let phases = irfft2(&Tensor::cat(&[&re, &im], 3)?, wp)?;
    let out = if s > 1 {
        phases
            .reshape((n, c, s, s, hp, wp))?
            .permute((0, 1, 4, 2, 5, 3))?
            .contiguous()?
            .reshape((n, c, hp * s, wp * s))?
    } else {
        phases.squeeze(2)?
    };
    let (crop, (ho, wo)) = (
        padding * s,
        ((hp - 2 * padding) * s, (wp - 2 * padding) * s),
    );
    out.narrow(2, crop, ho)?.narrow(3, crop, wo)
}

/// The fused solve of `(N, C, H, W)` f32 on the CPU ([`super::cpu::solve`]).
struct FusedSolve<'a> {
    geo: Geometry,
    filters: Filters<'a>,
}

impl CustomOp1 for FusedSolve<'_> {
    fn name(&self) -> &'static str {
        "converse2d-fused"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(d), Some((a, b))) = (st, l.contiguous_offsets()) else {
            candle_core::bail!("converse2d-fused: needs contiguous f32")
        };
        let (n, c, h, w) = l.shape().dims4()?;
        let scale = self.geo.s;
        let mut out = vec![0f32; n * c * h * w * scale * scale];
        super::cpu::solve::solve(
            &d[a..b],
            &mut out,
            (c, h, w),
            &self.geo,
            self.filters,
            false,
        )?;
        Ok((
            CpuStorage::F32(out),
            Shape::from((n, c, h * scale, w * scale)),
        ))
    }
}

/// The solve of `x` `(N, C, H, W)` with the planar transfer functions `g`
/// `(1|N, C, s², 2, hp, wq)` made from `taps`, with its fused backward to both
/// ([`TrainSolve`]).
fn solve_trainable(
    x: &Tensor,
    g: &Tensor,
    taps: Taps,
    scale: usize,
    padding: usize,
    mode: PaddingMode,
) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let op = TrainSolve {
        taps,
        size: (h, w),
        padding,
        scale,
        mode,
        spectra: std::sync::Mutex::new(None),
    };
    x.contiguous()?.apply_op2(&g.contiguous()?, op)
}

/// The solve a training step runs on the CPU, over the input and the transfer functions `g`
/// (made on the host by an op with its own backward when the kernels and `λ` train,
/// [`super::grad::planar_host`], so that their gradients follow from `g`'s): forward, for f32
/// at scale 1 the lane solve from `g` that keeps the input's spectrum for the backward
/// ([`super::cpu::solve::backward::forward`]), for f32 at larger scales the fused lane solve
/// (from `taps`, what `g` was made of), for f64 the plane solve of [`super::cpu::solve_grad`];
/// backward, the adjoint to `x` and `g`, each when it is wanted: on lanes for f32 at scale 1
/// ([`super::cpu::solve::backward`]), else plane by plane.
struct TrainSolve {
    taps: Taps,
    size: (usize, usize),
    padding: usize,
    scale: usize,
    mode: PaddingMode,
    /// The input's spectra the forward kept for the backward (f32 at scale 1).
    spectra: std::sync::Mutex<Option<super::cpu::solve::backward::Spectra>>,
}

impl TrainSolve {
    fn geometry(&self) -> Geometry {
        Geometry::new(self.size, self.padding, self.scale, self.mode)
    }

    /// `(n, c)` of `x` and the kernel sets of `g`.
    fn dims(x: &Layout, g: &Layout) -> Result<solve_grad::Dims> {
        let (n, c, _, _) = x.shape().dims4()?;
        Ok(solve_grad::Dims {
            n,
            c,
            sets: g.dims()[0],
        })
    }
}

/// The contiguous values of a storage, or an error naming `op`.
fn values<'a, T: candle_core::WithDType>(
    op: &str,
    s: &'a CpuStorage,
    l: &Layout,
) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("{op}: needs contiguous input"),
    }
}

impl CustomOp2 for TrainSolve {
    fn name(&self) -> &'static str {
        "converse2d-train"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (geo, d) = (self.geometry(), Self::dims(xl, gl)?);
        let (s, (h, w)) = (self.scale, self.size);
        let shape = Shape::from((d.n, d.c, h * s, w * s));
        let out = match xs {
            CpuStorage::F32(_) if s == 1 => {
                let (x, g) = (values(self.name(), xs, xl)?, values(self.name(), gs, gl)?);
                let mut out = crate::alloc::zeros_to_overwrite(shape.elem_count());
                let spectra = super::cpu::solve::backward::forward(x, g, &mut out, d, &geo);
                let old = self.spectra.lock().map(|mut k| k.replace(spectra));
                if let Ok(Some(old)) = old {
                    old.release();
                }
                CpuStorage::F32(out)
            }
            CpuStorage::F32(_) => {
                let x = values::<f32>(self.name(), xs, xl)?;
                let mut out = crate::alloc::zeros_to_overwrite(shape.elem_count());
                let filters = Filters(&self.taps);
                super::cpu::solve::solve(x, &mut out, (d.c, h, w), &geo, filters, false)?;
                CpuStorage::F32(out)
            }
            CpuStorage::F64(_) => {
                let (x, g) = (values(self.name(), xs, xl)?, values(self.name(), gs, gl)?);
                CpuStorage::F64(solve_grad::forward::<f64>(x, g, d, &geo)?)
            }
            _ => candle_core::bail!("{}: f32 or f64 only", self.name()),
        };
        Ok((out, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        g: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let want = solve_grad::Wanted {
            dx: x.track_op(),
            dg: g.track_op(),
        };
        if !want.dx && !want.dg {
            return Ok((None, None));
        }
        let spectra = self.spectra.lock().ok().and_then(|mut k| k.take());
        let op = TrainBackward {
            op: self,
            want,
            other: std::sync::Mutex::new(None),
            spectra,
        };
        // The op's output is the first wanted gradient; `dg` beside `dx` comes back apart.
        let first = x.apply_op3_no_bwd(g, &dy.contiguous()?, &op);
        if let Some(spectra) = op.spectra {
            spectra.release();
        }
        let first = first?;
        let other = op.other.into_inner().unwrap_or_else(|e| e.into_inner());
        match (want.dx, want.dg) {
            (true, true) => {
                let dg = match other {
                    Some(CpuStorage::F32(v)) => Tensor::from_vec(v, g.shape(), g.device())?,
                    Some(CpuStorage::F64(v)) => Tensor::from_vec(v, g.shape(), g.device())?,
                    _ => candle_core::bail!("converse2d-train-backward: no filter gradient"),
                };
                Ok((Some(first.reshape(x.shape())?), Some(dg)))
            }
            (true, false) => Ok((Some(first.reshape(x.shape())?), None)),
            _ => Ok((None, Some(first.reshape(g.shape())?))),
        }
    }
}

/// The gradients `(dx, dg)` of a solve.
type Grads<T> = (Vec<T>, Vec<T>);

/// [`TrainSolve`]'s backward over `(x, g, dy)`: returns the first wanted gradient (`dx`, else
/// `dg`) and keeps `dg` in `other` when both are wanted.
struct TrainBackward<'a> {
    op: &'a TrainSolve,
    want: solve_grad::Wanted,
    other: std::sync::Mutex<Option<CpuStorage>>,
    /// The input's spectra from the forward, for the lane backward.
    spectra: Option<super::cpu::solve::backward::Spectra>,
}

impl CustomOp3 for TrainBackward<'_> {
    fn name(&self) -> &'static str {
        "converse2d-train-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        type Backward<'a, T> =
            &'a dyn Fn(&[T], &[T], &[T], Dims, &Geometry, Wanted) -> Result<Grads<T>>;
        fn run<T: candle_core::WithDType>(
            me: &TrainBackward,
            (xs, xl): (&CpuStorage, &Layout),
            (gs, gl): (&CpuStorage, &Layout),
            (ds, dl): (&CpuStorage, &Layout),
            backward: Backward<'_, T>,
        ) -> Result<CpuStorage> {
            let name = me.name();
            let (x, g, dy) = (
                values(name, xs, xl)?,
                values(name, gs, gl)?,
                values(name, ds, dl)?,
            );
            let d = TrainSolve::dims(xl, gl)?;
            let geo = me.op.geometry();
            let (dx, dg) = backward(x, g, dy, d, &geo, me.want)?;
            if !me.want.dx {
                return Ok(T::to_cpu_storage_owned(dg));
            }
            if me.want.dg {
                *me.other.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(T::to_cpu_storage_owned(dg));
            }
            Ok(T::to_cpu_storage_owned(dx))
        }
        // f32 at scale 1: the lane backward; else the plane backward (the lane backward's
        // reference). At scale 2 the plane backward is the faster (77 against 125 ms for the
        // bench's 4x64x128x128). At scale 1 the lanes win where rustfft has no fast butterfly
        // for a factor (76 = 4 x 19: a Converse-DnCNN step, 4.7 against 5.4 s) and lose a
        // little where it has (132 = 4 x 3 x 11: 40 against 35 ms for the bench's operator).
        let (x, g, d) = ((xs, xl), (gs, gl), (ds, dl));
        let out = match xs {
            CpuStorage::F32(_) if self.op.scale > 1 => {
                run::<f32>(self, x, g, d, &solve_grad::backward)?
            }
            CpuStorage::F32(_) => {
                let spectra = self.spectra.as_ref();
                let lanes = |x: &[f32], g: &[f32], dy: &[f32], d, geo: &Geometry, want| {
                    let b = super::cpu::solve::backward::backward;
                    Ok(b(x, g, dy, d, geo, want, spectra))
                };
                run::<f32>(self, x, g, d, &lanes)?
            }
            CpuStorage::F64(_) => run::<f64>(self, x, g, d, &solve_grad::backward)?,
            _ => candle_core::bail!("{}: f32 or f64 only", self.name()),
        };
        let count = match &out {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::F64(v) => v.len(),
            _ => 0,
        };
        Ok((out, Shape::from(count)))
    }
}

/// A Converse2D layer with learned depthwise kernels (`weight` `(1, C, k, k)`, `bias`
/// `(1, C, 1, 1)`), as `Converse2D` in the official code. On the reference path it keeps its
/// transfer functions per input size ([`Self::clear_cache`] drops them).
#[derive(Debug)]
pub struct Converse2d {
    weight: Tensor,
    bias: Tensor,
    lambda: Tensor,
    taps: Taps,
    config: Converse2dConfig,
    cache: Cache,
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
        let lambda = lambda(&bias, config.eps)?;
        Ok(Self {
            taps: Taps::new(&weight, &lambda)?,
            lambda,
            weight,
            bias,
            config,
            cache: Cache::default(),
        })
    }

    pub fn config(&self) -> &Converse2dConfig {
        &self.config
    }

    /// The kernels `(1, C, k, k)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias `(1, C, 1, 1)` (`λ = sigmoid(bias - 9) + eps`).
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// `λ` `(1, C, 1, 1)`.
    pub fn lambda(&self) -> &Tensor {
        &self.lambda
    }

    /// Drops the transfer functions the reference path kept (a device would otherwise receive
    /// them on every call; the fused kernels make theirs per call).
    pub fn clear_cache(&self) {
        self.cache.planar.clear();
    }

    /// The fused kernels' view of the layer: its geometry at input size `(h, w)` and its filters.
    pub(crate) fn fused(&self, (h, w): (usize, usize)) -> Result<(Geometry, Filters<'_>)> {
        let c = self.config;
        check_padding(c.padding_mode, c.padding, h)?;
        check_padding(c.padding_mode, c.padding, w)?;
        let geo = Geometry::new((h, w), c.padding, c.scale, c.padding_mode);
        self.taps.check_fits((geo.hp, geo.wp), c.scale)?;
        Ok((geo, Filters(&self.taps)))
    }
}

impl Module for Converse2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.config;
        let source = Source::Layer(&self.taps, &self.cache);
        // Trainable weights are read as they are now (an optimiser updates them in place).
        let lam;
        let tracked = if self.weight.track_op() || self.bias.track_op() {
            lam = lambda(&self.bias, c.eps)?;
            Some((&self.weight, &lam))
        } else {
            None
        };
        solve_with(x, source, tracked, c.scale, c.padding, c.padding_mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::fft::reference::dft2;
    use crate::ops::with_reference;
    use candle_core::{DType, Device};

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        let d = (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap();
        d.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

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
        let y = solve(&x, &k, &lam, 1, 2, PaddingMode::Circular).unwrap();
        assert!(max_diff(&y, &x) < 1e-9);
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
            let y = solve(&x, &k, &lam, 1, 2, mode).unwrap();
            assert!(max_diff(&y, &x) < 1e-6, "{mode}");
        }
        let y = solve(&x, &k, &lam, 2, 1, PaddingMode::Replicate).unwrap();
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
        assert!(max_diff(&samples, &x) < 1e-5);
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
            let got = solve(&x, &k, &lam, s, p, mode).unwrap();
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

    /// f32 through both backends against the f64 answer: scales 1 to 4, every padding mode,
    /// even and odd kernels, a partial channel group, two images with a kernel set each, and
    /// both arithmetic paths of the fused kernels.
    #[test]
    fn f32_matches_f64_on_both_backends() {
        let dev = Device::Cpu;
        let modes = PaddingMode::ALL;
        let mut case = 0;
        for s in 1..=4 {
            for (m, mode) in modes.into_iter().enumerate() {
                for ks in [2, 3, 4, 5] {
                    case += 1;
                    let (c, n) = (if case % 3 == 0 { 19 } else { 5 }, 1 + case % 2);
                    let (h, w) = (6 + (case * 7) % 9, 5 + (case * 5) % 11);
                    let p = (m + ks) % 4;
                    let sets = if case % 4 == 0 { n } else { 1 };
                    let x = Tensor::rand(-1f64, 1.0, (n, c, h, w), &dev).unwrap();
                    let k = Tensor::rand(0f64, 1.0, (sets, c, ks, ks), &dev).unwrap();
                    let k = k.broadcast_div(&k.sum_keepdim((2, 3)).unwrap()).unwrap();
                    let bias = Tensor::rand(0f64, 9.0, (1, c, 1, 1), &dev).unwrap();
                    let lam = lambda(&bias, 1e-3).unwrap();
                    let want = solve(&x, &k, &lam, s, p, mode).unwrap();
                    let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
                    let run = || solve(&f32(&x), &f32(&k), &f32(&lam), s, p, mode).unwrap();
                    let fused = run();
                    let reference = with_reference(run);
                    let scale = want
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f64>()
                        .unwrap();
                    let what = format!("s={s} {mode} k={ks} p={p} c={c} n={n} {h}x{w}");
                    assert!(
                        max_diff(&fused, &want) < 2e-6 * scale.max(1.0),
                        "fused {what}"
                    );
                    assert!(
                        max_diff(&reference, &want) < 2e-6 * scale.max(1.0),
                        "ref {what}"
                    );
                }
            }
        }
    }

    /// The fused solve on every instruction set this CPU has (AVX-512, AVX2, portable) against
    /// the reference, at scale 1 and 2 (the parallel groups run with the caller's choice).
    #[test]
    fn every_instruction_set_matches_the_reference() {
        use crate::ops::cpu::simd::Isa;
        let dev = Device::Cpu;
        // Padded widths 16, 19, 13 and 34, even and odd: the column passes' blocks of four full
        // and partial (at both scales), and the columns that are their own mirror.
        let sizes = [
            (1, (9, 12)),
            (2, (9, 12)),
            (1, (7, 15)),
            (2, (7, 15)),
            (1, (10, 9)),
            (1, (5, 30)),
        ];
        for (s, (h, w)) in sizes {
            let x = Tensor::rand(-1f32, 1.0, (1, 37, h, w), &dev).unwrap();
            let k = Tensor::rand(0f32, 0.2, (1, 37, 3, 3), &dev).unwrap();
            let lam = Tensor::full(0.05f32, (1, 37, 1, 1), &dev).unwrap();
            let mode = PaddingMode::Reflect;
            let run = || solve(&x, &k, &lam, s, 2, mode).unwrap();
            let reference = with_reference(run);
            for isa in Isa::available() {
                let fused = isa.run(run);
                assert!(max_diff(&fused, &reference) < 1e-5, "{isa:?} s={s} {h}x{w}");
            }
        }
    }

    /// The reference path keeps a layer's planar transfer functions per size, reuses them and
    /// drops them on `clear_cache`; the fused path gives the same answer on every call.
    #[test]
    fn layer_keeps_and_clears_its_transfer_functions() {
        let dev = Device::Cpu;
        let cfg = Converse2dConfig {
            kernel_size: 3,
            scale: 2,
            padding: 2,
            padding_mode: PaddingMode::Replicate,
            eps: 1e-3,
        };
        let w = Tensor::rand(0f32, 0.3, (1, 20, 3, 3), &dev).unwrap();
        let b = Tensor::rand(-1f32, 1.0, (1, 20, 1, 1), &dev).unwrap();
        let layer = Converse2d::from_tensors(w, b, cfg).unwrap();
        let x = Tensor::rand(0f32, 1.0, (1, 20, 11, 8), &dev).unwrap();
        let first = layer.forward(&x).unwrap();
        let again = layer.forward(&x).unwrap();
        assert_eq!(max_diff(&first, &again), 0.0);
        let kept = || layer.cache.planar.len();
        assert_eq!(kept(), 0);
        let reference = with_reference(|| layer.forward(&x).unwrap());
        assert_eq!(kept(), 1);
        assert!(max_diff(&first, &reference) < 1e-5);
        let again = with_reference(|| layer.forward(&x).unwrap());
        assert_eq!((kept(), max_diff(&again, &reference)), (1, 0.0));
        layer.clear_cache();
        assert_eq!(kept(), 0);
        let after = with_reference(|| layer.forward(&x).unwrap());
        assert_eq!(max_diff(&after, &reference), 0.0);
    }

    #[test]
    fn shape_errors_are_reported() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 4, 4), DType::F32, &dev).unwrap();
        let k = Tensor::zeros((1, 2, 3, 3), DType::F32, &dev).unwrap();
        let lam = Tensor::ones((1, 2, 1, 1), DType::F32, &dev).unwrap();
        let e = solve(&x, &k, &lam, 1, 0, PaddingMode::Circular).unwrap_err();
        assert!(e.to_string().contains("do not fit input"), "{e}");
        let k = Tensor::zeros((1, 3, 7, 7), DType::F32, &dev).unwrap();
        let lam = Tensor::ones((1, 3, 1, 1), DType::F32, &dev).unwrap();
        for backend in [false, true] {
            let run = || solve(&x, &k, &lam, 1, 1, PaddingMode::Circular);
            let e = if backend { with_reference(run) } else { run() }.unwrap_err();
            assert!(
                e.to_string().contains("larger than the padded input 6x6"),
                "{e}"
            );
        }
        let lam = Tensor::ones((1, 2, 1, 1), DType::F32, &dev).unwrap();
        let e = solve(&x, &k, &lam, 1, 1, PaddingMode::Circular).unwrap_err();
        assert!(e.to_string().contains("lambda"), "{e}");
    }

    /// The gradients of `sum(y * g)` to the input, the kernels and the bias of a trainable
    /// layer: `(x, weight, bias)`.
    fn layer_grads(
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        g: &Tensor,
        cfg: Converse2dConfig,
    ) -> Vec<Tensor> {
        let vars = [x, w, b].map(|t| candle_core::Var::from_tensor(t).unwrap());
        let layer = Converse2d::from_tensors(
            vars[1].as_tensor().clone(),
            vars[2].as_tensor().clone(),
            cfg,
        )
        .unwrap();
        let y = layer.forward(vars[0].as_tensor()).unwrap();
        let grads = (y * g).unwrap().sum_all().unwrap().backward().unwrap();
        vars.iter().map(|v| grads.get(v).unwrap().clone()).collect()
    }

    /// `|a - b|` over the largest magnitude of `b` (at least 1e-3).
    fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
        let m = b
            .to_dtype(DType::F64)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        max_diff(a, b) / m.max(1e-3)
    }

    /// The fused backward (the default on the CPU) against candle's autograd of the reference
    /// solve: the input's, the kernels' and the bias's gradients, in all four padding modes, at
    /// scales 1 to 4, in f32 (on every instruction set the CPU has) and f64.
    #[test]
    fn fused_backward_equals_the_reference() {
        use crate::ops::cpu::simd::Isa;
        let dev = Device::Cpu;
        for (case, (s, mode)) in (1..=4)
            .flat_map(|s| PaddingMode::ALL.map(|m| (s, m)))
            .enumerate()
        {
            // 18 channels: a whole lane group and a partial one.
            let (c, ks, p) = (18, 2 + case % 3, 1 + case % 2);
            let (h, w) = (5 + case % 3, 7 - case % 2);
            let cfg = Converse2dConfig {
                kernel_size: ks,
                scale: s,
                padding: p,
                padding_mode: mode,
                eps: 1e-3,
            };
            for dtype in [DType::F64, DType::F32] {
                let t = |lo: f64, hi: f64, shape: (usize, usize, usize, usize)| {
                    Tensor::rand(lo, hi, shape, &dev)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap()
                };
                let x = t(-1.0, 1.0, (2, c, h, w));
                let wt = t(0.0, 0.5, (1, c, ks, ks));
                let b = t(4.0, 9.0, (1, c, 1, 1));
                let g = t(-1.0, 1.0, (2, c, h * s, w * s));
                let want = with_reference(|| layer_grads(&x, &wt, &b, &g, cfg));
                let isas = if dtype == DType::F32 {
                    Isa::available()
                } else {
                    vec![Isa::current()]
                };
                for isa in isas {
                    let got = isa.run(|| layer_grads(&x, &wt, &b, &g, cfg));
                    let bound = if dtype == DType::F64 { 1e-10 } else { 2e-4 };
                    for (name, (a, b)) in ["x", "weight", "bias"].iter().zip(got.iter().zip(&want))
                    {
                        let d = rel_diff(a, b);
                        assert!(d < bound, "s={s} {mode} {dtype:?} {isa:?} d{name}: {d:e}");
                    }
                }
            }
        }
    }

    /// The fused backward of a per-call solve with one kernel set per image (Converse-USRNet's
    /// data step) against the reference: input, kernels and `λ`.
    #[test]
    fn fused_backward_of_per_image_kernels_equals_the_reference() {
        let dev = Device::Cpu;
        for s in [1, 2] {
            let x = Tensor::rand(-1f64, 1.0, (3, 3, 6, 7), &dev).unwrap();
            let k = Tensor::rand(-0.3f64, 0.3, (3, 3, 4, 4), &dev).unwrap();
            let a = Tensor::rand(3f64, 8.0, (1, 3, 1, 1), &dev).unwrap();
            let g = Tensor::rand(-1f64, 1.0, (3, 3, 6 * s, 7 * s), &dev).unwrap();
            let grads = || {
                let vars = [&x, &k, &a].map(|t| candle_core::Var::from_tensor(t).unwrap());
                let lam = lambda(vars[2].as_tensor(), 1e-3).unwrap();
                let y = solve(
                    vars[0].as_tensor(),
                    vars[1].as_tensor(),
                    &lam,
                    s,
                    2,
                    PaddingMode::Reflect,
                )
                .unwrap();
                let gr = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
                vars.iter()
                    .map(|v| gr.get(v).unwrap().clone())
                    .collect::<Vec<_>>()
            };
            let (got, want) = (grads(), with_reference(grads));
            for (a, b) in got.iter().zip(&want) {
                assert!(rel_diff(a, b) < 1e-10, "s={s}: {:e}", rel_diff(a, b));
            }
        }
    }
}
