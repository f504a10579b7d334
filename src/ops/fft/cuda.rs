//! The CUDA backend of [`rfft2`](super::rfft2) and [`irfft2`](super::irfft2): cuFFT through
//! cudarc, one batched 2-D plan over all planes (`cufftPlanMany`), f32 (R2C/C2R) and f64
//! (D2Z/Z2D).
//!
//! cuFFT's half spectra are interleaved complex `(.., H, W/2+1)`; the op's are planar
//! `(.., 2, H, W/2+1)`. The conversion is one strided copy on the device with candle's own kernels:
//! - forward: R2C into an interleaved buffer, seen as `(n, H, Wq, 2)`, then copied through the
//!   permutation `(n, 2, H, Wq)` into the output;
//! - inverse: the planar input seen through the permutation `(n, H, Wq, 2)` is scaled by
//!   `1/(H*W)` into a fresh interleaved buffer (`affine`, one pass doing both), then C2R. C2R may
//!   overwrite its input, which is that private buffer.
//!
//! Plans are cached per (device, host thread, H, W, batch, transform) and bound to candle's stream
//! of the device (its per-thread default stream, hence the thread in the key: one plan's work area
//! is never shared by two streams). The cache keeps the last [`MAX_PLANS`] plans: a plan holds a
//! work area on the GPU about the size of its data. [`clear_plans`] drops them all.

use std::sync::{Arc, Mutex, OnceLock};
use std::thread::ThreadId;

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage, DeviceId};
use candle_core::{DType, Layout, Result, Shape};
use cudarc::cufft::result::CufftError;
use cudarc::cufft::{sys, CudaFft};
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr};

/// How many plans the cache keeps (the most recently used).
const MAX_PLANS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Forward,
    Inverse,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Key {
    device: DeviceId,
    thread: ThreadId,
    h: usize,
    w: usize,
    batch: usize,
    dtype: DType,
    direction: Direction,
}

type Plans = Vec<(Key, Arc<CudaFft>)>;

fn plans() -> std::sync::MutexGuard<'static, Plans> {
    static PLANS: OnceLock<Mutex<Plans>> = OnceLock::new();
    PLANS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Drops every cached cuFFT plan (and its work area).
pub(super) fn clear_plans() {
    plans().clear();
}

fn cufft_error(op: &str, what: &str, e: CufftError) -> candle_core::Error {
    candle_core::Error::Cuda(format!("{op}: cuFFT {what} failed: {:?}", e.0).into())
}

fn driver_error(op: &str, e: cudarc::driver::DriverError) -> candle_core::Error {
    candle_core::Error::Cuda(format!("{op}: {e}").into())
}

/// The float types cuFFT transforms.
trait Float: CudaDType + DeviceRepr + Copy {
    const DTYPE: DType;
    const R2C: sys::cufftType;
    const C2R: sys::cufftType;
    type Complex: DeviceRepr;
    fn r2c(
        p: &CudaFft,
        x: &CudaView<Self>,
        y: &mut CudaViewMut<Self::Complex>,
    ) -> std::result::Result<(), CufftError>;
    fn c2r(
        p: &CudaFft,
        x: &mut CudaViewMut<Self::Complex>,
        y: &mut CudaViewMut<Self>,
    ) -> std::result::Result<(), CufftError>;
}

impl Float for f32 {
    const DTYPE: DType = DType::F32;
    const R2C: sys::cufftType = sys::cufftType::CUFFT_R2C;
    const C2R: sys::cufftType = sys::cufftType::CUFFT_C2R;
    type Complex = sys::float2;
    fn r2c(
        p: &CudaFft,
        x: &CudaView<f32>,
        y: &mut CudaViewMut<sys::float2>,
    ) -> std::result::Result<(), CufftError> {
        p.exec_r2c(x, y)
    }
    fn c2r(
        p: &CudaFft,
        x: &mut CudaViewMut<sys::float2>,
        y: &mut CudaViewMut<f32>,
    ) -> std::result::Result<(), CufftError> {
        p.exec_c2r(x, y)
    }
}

impl Float for f64 {
    const DTYPE: DType = DType::F64;
    const R2C: sys::cufftType = sys::cufftType::CUFFT_D2Z;
    const C2R: sys::cufftType = sys::cufftType::CUFFT_Z2D;
    type Complex = sys::double2;
    fn r2c(
        p: &CudaFft,
        x: &CudaView<f64>,
        y: &mut CudaViewMut<sys::double2>,
    ) -> std::result::Result<(), CufftError> {
        p.exec_d2z(x, y)
    }
    fn c2r(
        p: &CudaFft,
        x: &mut CudaViewMut<sys::double2>,
        y: &mut CudaViewMut<f64>,
    ) -> std::result::Result<(), CufftError> {
        p.exec_z2d(x, y)
    }
}

/// The plan for `batch` planes of `(h, w)`, from the cache or made (and cached).
fn plan<T: Float>(
    dev: &CudaDevice,
    h: usize,
    w: usize,
    batch: usize,
    direction: Direction,
) -> Result<Arc<CudaFft>> {
    let key = Key {
        device: dev.id(),
        thread: std::thread::current().id(),
        h,
        w,
        batch,
        dtype: T::DTYPE,
        direction,
    };
    let mut cache = plans();
    if let Some(i) = cache.iter().position(|(k, _)| *k == key) {
        let entry = cache.remove(i);
        let plan = entry.1.clone();
        cache.push(entry);
        return Ok(plan);
    }
    let (op, kind) = match direction {
        Direction::Forward => ("rfft2", T::R2C),
        Direction::Inverse => ("irfft2", T::C2R),
    };
    let dim = |v: usize| i32::try_from(v).map_err(|_| too_large(op, h, w));
    // inembed/onembed NULL: the default packed layouts, real (h, w) and complex (h, w/2+1).
    let plan = CudaFft::plan_many(
        &[dim(h)?, dim(w)?],
        None,
        1,
        0,
        None,
        1,
        0,
        kind,
        dim(batch)?,
        dev.cuda_stream(),
    )
    .map_err(|e| cufft_error(op, &format!("plan for {batch} x {h}x{w}"), e))?;
    let plan = Arc::new(plan);
    if cache.len() >= MAX_PLANS {
        cache.remove(0);
    }
    cache.push((key, plan.clone()));
    Ok(plan)
}

fn too_large(op: &str, h: usize, w: usize) -> candle_core::Error {
    candle_core::Error::Cuda(format!("{op}: a {h}x{w} plane is too large for cuFFT").into())
}

/// Planes per cuFFT call: every element offset of one call must fit an `i32`.
fn chunk(op: &str, plane: usize, h: usize, w: usize) -> Result<usize> {
    match i32::MAX as usize / plane.max(1) {
        0 => Err(too_large(op, h, w)),
        n => Ok(n),
    }
}

/// `s` seen through `l` as a contiguous storage and its start offset: `s` itself when `l` is
/// contiguous, else a contiguous copy.
fn contiguous(s: &CudaStorage, l: &Layout) -> Result<(Option<CudaStorage>, usize)> {
    if l.is_contiguous() {
        return Ok((None, l.start_offset()));
    }
    // SAFETY: every element is written by the copy below.
    let mut dst = unsafe { s.device.alloc_uninit(l.shape(), s.dtype()) }?;
    s.copy_strided_src(&mut dst, 0, l)?;
    Ok((Some(dst), 0))
}

/// Planes `(.., h, w)` (as laid out by `l`) to planar half spectra `(n * 2 * h * (w/2+1))`.
pub(super) fn rfft(s: &CudaStorage, l: &Layout, h: usize, w: usize) -> Result<CudaStorage> {
    match s.dtype() {
        DType::F32 => rfft_t::<f32>(s, l, h, w),
        DType::F64 => rfft_t::<f64>(s, l, h, w),
        d => candle_core::bail!("rfft2: unsupported dtype {d:?}"),
    }
}

/// Planar half spectra `(.., 2, h, w/2+1)` (as laid out by `l`) to planes `(n * h * w)`,
/// normalised by `1/(h*w)`.
pub(super) fn irfft(s: &CudaStorage, l: &Layout, h: usize, w: usize) -> Result<CudaStorage> {
    match s.dtype() {
        DType::F32 => irfft_t::<f32>(s, l, h, w),
        DType::F64 => irfft_t::<f64>(s, l, h, w),
        d => candle_core::bail!("irfft2: unsupported dtype {d:?}"),
    }
}

fn rfft_t<T: Float>(s: &CudaStorage, l: &Layout, h: usize, w: usize) -> Result<CudaStorage> {
    let dev = &s.device;
    let wq = w / 2 + 1;
    let n = l.shape().elem_count() / (h * w).max(1);
    let (copy, start) = contiguous(s, l)?;
    let x = T::as_cuda_slice(copy.as_ref().unwrap_or(s))?;
    // Interleaved complex spectra, (n, h, wq) complex = (n, h, wq, 2) reals.
    // SAFETY: cuFFT writes every element.
    let mut spec = unsafe { dev.alloc::<T>(n * h * wq * 2) }?;
    if n > 0 {
        let stream = dev.cuda_stream();
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| driver_error("rfft2", e))?;
        let per_call = chunk("rfft2", 2 * h * wq, h, w)?;
        let mut p0 = 0;
        while p0 < n {
            let b = per_call.min(n - p0);
            let plan = plan::<T>(dev, h, w, b, Direction::Forward)?;
            let xv = x.slice(start + p0 * h * w..start + (p0 + b) * h * w);
            let mut yv = spec.slice_mut(p0 * h * wq * 2..(p0 + b) * h * wq * 2);
            // SAFETY: a complex value is two reals; the view holds b * h * wq of them.
            let mut yc = unsafe { yv.transmute_mut::<T::Complex>(b * h * wq) }
                .ok_or_else(|| candle_core::Error::Cuda("rfft2: bad spectrum view".into()))?;
            T::r2c(&plan, &xv, &mut yc).map_err(|e| cufft_error("rfft2", "R2C", e))?;
            p0 += b;
        }
    }
    // Interleaved to planar: (n, h, wq, 2) seen as (n, 2, h, wq).
    let spec = T::wrap_cuda_slice(spec, dev.clone());
    let planar = Layout::contiguous((n, h, wq, 2)).permute(&[0, 3, 1, 2])?;
    // SAFETY: the copy writes every element.
    let mut out = unsafe { dev.alloc_uninit(&Shape::from(n * 2 * h * wq), T::DTYPE) }?;
    spec.copy_strided_src(&mut out, 0, &planar)?;
    Ok(out)
}

fn irfft_t<T: Float>(s: &CudaStorage, l: &Layout, h: usize, w: usize) -> Result<CudaStorage> {
    let dev = &s.device;
    let wq = w / 2 + 1;
    let n = l.shape().elem_count() / (2 * h * wq).max(1);
    let (copy, start) = contiguous(s, l)?;
    let src = copy.as_ref().unwrap_or(s);
    // Planar (n, 2, h, wq) seen as interleaved (n, h, wq, 2), scaled: C2R's private input.
    let interleaved =
        Layout::contiguous_with_offset((n, 2, h, wq), start).permute(&[0, 2, 3, 1])?;
    let norm = 1.0 / (h * w).max(1) as f64;
    let mut scaled = src.affine(&interleaved, norm, 0.0)?;
    let spec = T::as_cuda_slice_mut(&mut scaled)?;
    // SAFETY: cuFFT writes every element.
    let mut out = unsafe { dev.alloc::<T>(n * h * w) }?;
    if n > 0 {
        let stream = dev.cuda_stream();
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| driver_error("irfft2", e))?;
        let per_call = chunk("irfft2", 2 * h * wq, h, w)?;
        let mut p0 = 0;
        while p0 < n {
            let b = per_call.min(n - p0);
            let plan = plan::<T>(dev, h, w, b, Direction::Inverse)?;
            let mut xv = spec.slice_mut(p0 * h * wq * 2..(p0 + b) * h * wq * 2);
            // SAFETY: a complex value is two reals; the view holds b * h * wq of them.
            let mut xc = unsafe { xv.transmute_mut::<T::Complex>(b * h * wq) }
                .ok_or_else(|| candle_core::Error::Cuda("irfft2: bad spectrum view".into()))?;
            let mut yv = out.slice_mut(p0 * h * w..(p0 + b) * h * w);
            T::c2r(&plan, &mut xc, &mut yv).map_err(|e| cufft_error("irfft2", "C2R", e))?;
            p0 += b;
        }
    }
    Ok(T::wrap_cuda_slice(out, dev.clone()))
}
