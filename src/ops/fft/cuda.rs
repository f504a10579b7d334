//! The CUDA backend of [`rfft2`](super::rfft2) and [`irfft2`](super::irfft2): cuFFT through
//! cudarc, one batched 2-D plan over all planes (`cufftPlanMany`), f32 (R2C/C2R) and f64
//! (D2Z/Z2D).
//!
//! cuFFT's half spectra are interleaved complex `(.., H, W/2+1)`; the op's are planar
//! `(.., 2, H, W/2+1)`. The conversion, offsets, batching and chunking are [`super::glue`]'s,
//! shared with its CPU tests; this file gives it the device's storage (candle's strided copy and
//! `affine` kernels, a device-to-device copy) and cuFFT's transforms ([`Cufft`]).
//!
//! Plans are cached per (device, host thread, H, W, batch, transform) and bound to candle's stream
//! of the device (its per-thread default stream, hence the thread in the key: one plan's work area
//! is never shared by two streams). The cache keeps the last [`MAX_PLANS`] plans, enough for one
//! forward pass of each released model ([`super::tests`] lists their keys): a plan holds a work
//! area on the GPU about the size of its data. A plan that fails to allocate is made once more
//! after the cache is cleared. [`clear_plans`] drops them all.

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::ThreadId;

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage, DeviceId};
use candle_core::{DType, Layout, Result, Shape};
use cudarc::cufft::result::CufftError;
use cudarc::cufft::{sys, CudaFft};
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr};

use super::glue::{self, Interleaved, CUFFT_MAX_ELEMS};

/// How many plans the cache keeps (the most recently used).
pub(super) const MAX_PLANS: usize = super::MAX_PLANS;

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

/// The plan for `batch` planes of `(h, w)`, from the cache or made (and cached). A plan whose
/// work area does not fit is made once more after the cache (and its work areas) is dropped.
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
    let (h32, w32, b32) = (dim(h)?, dim(w)?, dim(batch)?);
    // inembed/onembed NULL: the default packed layouts, real (h, w) and complex (h, w/2+1).
    let make = || {
        CudaFft::plan_many(
            &[h32, w32],
            None,
            1,
            0,
            None,
            1,
            0,
            kind,
            b32,
            dev.cuda_stream(),
        )
    };
    let plan = match make() {
        Err(CufftError(sys::cufftResult::CUFFT_ALLOC_FAILED)) if !cache.is_empty() => {
            cache.clear();
            make()
        }
        r => r,
    }
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

/// The device's storage and cuFFT, for [`glue`].
struct Cufft<'a, T> {
    dev: &'a CudaDevice,
    float: PhantomData<T>,
}

impl<T: Float> Cufft<'_, T> {
    /// Binds the device's context to this thread (cuFFT calls run outside candle's own).
    fn bind(&self, op: &str) -> Result<()> {
        self.dev
            .cuda_stream()
            .context()
            .bind_to_thread()
            .map_err(|e| driver_error(op, e))
    }
}

/// Refuses an offset cuFFT would fault on (the glue never makes one): a misaligned address is
/// a sticky CUDA error that fails every later call in the process.
fn check_aligned(op: &str, at: usize) -> Result<()> {
    if !at.is_multiple_of(2) {
        return Err(candle_core::Error::Cuda(
            format!("{op}: offset {at} is not complex-aligned").into(),
        ));
    }
    Ok(())
}

impl<T: Float> Interleaved for Cufft<'_, T> {
    type Buf = CudaStorage;

    fn alloc(&self, len: usize) -> Result<CudaStorage> {
        // SAFETY: the glue writes every element before reading it.
        unsafe { self.dev.alloc_uninit(&Shape::from(len), T::DTYPE) }
    }

    fn gather(&self, src: &CudaStorage, layout: &Layout, scale: f64) -> Result<CudaStorage> {
        if scale != 1.0 {
            return src.affine(layout, scale, 0.0);
        }
        // SAFETY: the copy writes every element.
        let mut dst = unsafe { self.dev.alloc_uninit(layout.shape(), T::DTYPE) }?;
        src.copy_strided_src(&mut dst, 0, layout)?;
        Ok(dst)
    }

    fn copy(
        &self,
        src: &CudaStorage,
        from: Range<usize>,
        dst: &mut CudaStorage,
        at: usize,
    ) -> Result<()> {
        let len = from.len();
        let src = T::as_cuda_slice(src)?.slice(from);
        let mut dst = T::as_cuda_slice_mut(dst)?.slice_mut(at..at + len);
        self.dev.memcpy_dtod(&src, &mut dst)
    }

    fn r2c(
        &self,
        (h, w, batch): (usize, usize, usize),
        x: &CudaStorage,
        x_at: usize,
        y: &mut CudaStorage,
        y_at: usize,
    ) -> Result<()> {
        check_aligned("rfft2", x_at)?;
        check_aligned("rfft2", y_at)?;
        self.bind("rfft2")?;
        let plan = plan::<T>(self.dev, h, w, batch, Direction::Forward)?;
        let wq = w / 2 + 1;
        let xv = T::as_cuda_slice(x)?.slice(x_at..x_at + batch * h * w);
        let mut yv = T::as_cuda_slice_mut(y)?.slice_mut(y_at..y_at + batch * h * wq * 2);
        // SAFETY: a complex value is two reals; the view holds batch * h * wq of them.
        let mut yc = unsafe { yv.transmute_mut::<T::Complex>(batch * h * wq) }
            .ok_or_else(|| candle_core::Error::Cuda("rfft2: bad spectrum view".into()))?;
        T::r2c(&plan, &xv, &mut yc).map_err(|e| cufft_error("rfft2", "R2C", e))
    }

    fn c2r(
        &self,
        (h, w, batch): (usize, usize, usize),
        x: &mut CudaStorage,
        x_at: usize,
        y: &mut CudaStorage,
        y_at: usize,
    ) -> Result<()> {
        check_aligned("irfft2", x_at)?;
        check_aligned("irfft2", y_at)?;
        self.bind("irfft2")?;
        let plan = plan::<T>(self.dev, h, w, batch, Direction::Inverse)?;
        let wq = w / 2 + 1;
        let mut xv = T::as_cuda_slice_mut(x)?.slice_mut(x_at..x_at + batch * h * wq * 2);
        // SAFETY: a complex value is two reals; the view holds batch * h * wq of them.
        let mut xc = unsafe { xv.transmute_mut::<T::Complex>(batch * h * wq) }
            .ok_or_else(|| candle_core::Error::Cuda("irfft2: bad spectrum view".into()))?;
        let mut yv = T::as_cuda_slice_mut(y)?.slice_mut(y_at..y_at + batch * h * w);
        T::c2r(&plan, &mut xc, &mut yv).map_err(|e| cufft_error("irfft2", "C2R", e))
    }
}

fn backend<T>(s: &CudaStorage) -> Cufft<'_, T> {
    Cufft {
        dev: &s.device,
        float: PhantomData,
    }
}

/// Planes `(.., h, w)` (as laid out by `l`) to planar half spectra `(n * 2 * h * (w/2+1))`.
pub(super) fn rfft(s: &CudaStorage, l: &Layout, h: usize, w: usize) -> Result<CudaStorage> {
    match s.dtype() {
        DType::F32 => glue::rfft(&backend::<f32>(s), s, l, (h, w), CUFFT_MAX_ELEMS),
        DType::F64 => glue::rfft(&backend::<f64>(s), s, l, (h, w), CUFFT_MAX_ELEMS),
        d => candle_core::bail!("rfft2: unsupported dtype {d:?}"),
    }
}

/// Planar half spectra `(.., 2, h, w/2+1)` (as laid out by `l`) to planes `(n * h * w)`,
/// normalised by `1/(h*w)`.
pub(super) fn irfft(s: &CudaStorage, l: &Layout, h: usize, w: usize) -> Result<CudaStorage> {
    match s.dtype() {
        DType::F32 => glue::irfft(&backend::<f32>(s), s, l, (h, w), CUFFT_MAX_ELEMS),
        DType::F64 => glue::irfft(&backend::<f64>(s), s, l, (h, w), CUFFT_MAX_ELEMS),
        d => candle_core::bail!("irfft2: unsupported dtype {d:?}"),
    }
}
