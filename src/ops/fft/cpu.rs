//! The CPU backend of [`rfft2`](super::rfft2) and [`irfft2`](super::irfft2): realfft along rows,
//! rustfft along columns, plans cached per size, planes in parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::Result;
use rayon::prelude::*;
use realfft::{ComplexToReal, FftNum, RealFftPlanner, RealToComplex};
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

/// The plans for one `(H, W)` plane.
pub(crate) struct Plans<T: FftNum> {
    r2c: Arc<dyn RealToComplex<T>>,
    c2r: Arc<dyn ComplexToReal<T>>,
    fwd: Arc<dyn Fft<T>>,
    inv: Arc<dyn Fft<T>>,
}

pub(crate) struct Planners<T: FftNum> {
    real: RealFftPlanner<T>,
    complex: FftPlanner<T>,
    cache: HashMap<(usize, usize), Arc<Plans<T>>>,
}

impl<T: FftNum> Default for Planners<T> {
    fn default() -> Self {
        Self {
            real: RealFftPlanner::new(),
            complex: FftPlanner::new(),
            cache: HashMap::new(),
        }
    }
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
                P.get_or_init(Mutex::default)
            }
        }
    };
}
float_planners!(f32);
float_planners!(f64);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn plans<T: Float>(h: usize, w: usize) -> Arc<Plans<T>> {
    let mut p = lock(T::planners());
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

pub(super) fn clear_plans() {
    *lock(f32::planners()) = Planners::default();
    *lock(f64::planners()) = Planners::default();
}

fn fft_error(e: realfft::FftError) -> candle_core::Error {
    candle_core::Error::Msg(format!("fft: {e}"))
}

/// One plane: real `(h, w)` to planar `(2, h, wq)`.
pub(crate) fn rfft_plane<T: Float>(
    p: &Plans<T>,
    x: &[T],
    out: &mut [T],
    h: usize,
    w: usize,
) -> Result<()> {
    let wq = w / 2 + 1;
    let zero = Complex::new(T::zero(), T::zero());
    // Row transforms, stored transposed (column-major) so the column FFTs run on contiguous data.
    let mut cols = vec![zero; h * wq];
    let mut row_in = p.r2c.make_input_vec();
    let mut row_out = p.r2c.make_output_vec();
    let mut scratch = p.r2c.make_scratch_vec();
    for i in 0..h {
        row_in.copy_from_slice(&x[i * w..(i + 1) * w]);
        p.r2c
            .process_with_scratch(&mut row_in, &mut row_out, &mut scratch)
            .map_err(fft_error)?;
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
    Ok(())
}

/// One plane: planar `(2, h, wq)` to real `(h, w)`, normalised.
pub(crate) fn irfft_plane<T: Float>(
    p: &Plans<T>,
    x: &[T],
    out: &mut [T],
    h: usize,
    w: usize,
) -> Result<()> {
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
        p.c2r
            .process_with_scratch(&mut row_in, &mut row_out, &mut scratch)
            .map_err(fft_error)?;
        for (o, v) in out[i * w..(i + 1) * w].iter_mut().zip(&row_out) {
            *o = *v * norm;
        }
    }
    Ok(())
}

/// Planes `(.., h, w)` to planar half spectra `(.., 2, h, w/2+1)`.
pub(super) fn rfft<T: Float>(data: &[T], h: usize, w: usize) -> Result<Vec<T>> {
    let plans = plans::<T>(h, w);
    let wq = w / 2 + 1;
    let n = data.len() / (h * w).max(1);
    let mut out = vec![T::zero(); n * 2 * h * wq];
    out.par_chunks_mut(2 * h * wq)
        .zip(data.par_chunks(h * w))
        .try_for_each(|(o, x)| rfft_plane(&plans, x, o, h, w))?;
    Ok(out)
}

/// Planar half spectra `(.., 2, h, w/2+1)` to planes `(.., h, w)`.
pub(super) fn irfft<T: Float>(data: &[T], h: usize, w: usize) -> Result<Vec<T>> {
    let plans = plans::<T>(h, w);
    let wq = w / 2 + 1;
    let n = data.len() / (2 * h * wq).max(1);
    let mut out = vec![T::zero(); n * h * w];
    out.par_chunks_mut(h * w)
        .zip(data.par_chunks(2 * h * wq))
        .try_for_each(|(o, x)| irfft_plane(&plans, x, o, h, w))?;
    Ok(out)
}
