//! The Converse2D solve plane by plane (f32 and f64, realfft), forward and backward, with the
//! learned filters as a tensor that gradients reach: what a training step on the CPU runs in
//! f64 and, for the backward, at scale 2 and more; the reference of the lane backward
//! ([`super::solve::backward`]), which f32 takes at scale 1.
//!
//! With the planar transfer functions `g` `(sets, C, s², 2, hp, wq)`
//! ([`crate::ops::transfer::planar`], or [`crate::ops::grad::planar`] when the kernels train),
//! phase `(a, b)` of the output is `irfft2(rfft2(pad x) · g_ab)` read on the padded grid's
//! interior. The solve is linear in `x`, so its adjoint is the same kind of solve with
//! conjugated filters, and the filters' gradient is a product of spectra. With `D_ab` the
//! `rfft2` of phase `(a, b)` of `dy` placed in the interior of a zero grid:
//!
//! - `dx = pad^T irfft2(sum_ab conj(g_ab) · D_ab)`;
//! - `dg_ab = (c_v / (hp wp)) conj(rfft2(pad x)) · D_ab`, summed over the images of a kernel
//!   set, with `c_v` 1 in the self-conjugate columns (`v = 0`, and `wp/2` for even `wp`) and 2
//!   elsewhere: exactly what candle's autograd gives the reference solve
//!   ([`crate::ops::converse2d::solve_reference`]), whose `irfft2` counts those columns so.
//!
//! The kernels' and `λ`'s gradients follow from `dg` through the candle ops that built `g`.
//! Nothing is kept from the forward but its input: per plane the backward holds the input's
//! spectrum, one phase's spectrum and their accumulation (about four padded planes of scratch
//! per thread).

use candle_core::Result;
use rayon::prelude::*;

use super::solve::Geometry;
use crate::ops::fft::cpu::{irfft_plane, plans, rfft_plane, Float};

/// `dims`: `(n, c)` planes of the input; `sets` kernel sets (image `i` uses set `i % sets`).
#[derive(Clone, Copy)]
pub(crate) struct Dims {
    pub(crate) n: usize,
    pub(crate) c: usize,
    pub(crate) sets: usize,
}

/// Values of one planar half spectrum `(2, hp, wq)`.
fn spectrum_len(geo: &Geometry) -> usize {
    2 * geo.hp * (geo.wp / 2 + 1)
}

/// Pads plane `x` `(h, w)` into `xp` `(hp, wp)` as the padding mode says.
fn pad_plane<T: Float>(geo: &Geometry, x: &[T], xp: &mut [T]) {
    for (row, src) in xp.chunks_exact_mut(geo.wp).zip(&geo.rows) {
        match src {
            Some(r) => {
                let line = &x[r * geo.w..][..geo.w];
                for (d, c) in row.iter_mut().zip(&geo.cols) {
                    *d = c.map_or(T::zero(), |c| line[c]);
                }
            }
            None => row.fill(T::zero()),
        }
    }
}

/// The adjoint of [`pad_plane`]: every padded point added to its source.
fn pad_adjoint<T: Float>(geo: &Geometry, xp: &[T], x: &mut [T]) {
    x.fill(T::zero());
    for (row, src) in xp.chunks_exact(geo.wp).zip(&geo.rows) {
        let Some(r) = src else { continue };
        let line = &mut x[r * geo.w..][..geo.w];
        for (v, c) in row.iter().zip(&geo.cols) {
            if let Some(c) = c {
                line[*c] = line[*c] + *v;
            }
        }
    }
}

/// The filters of channel `ch` of set `set`: `s²` planar spectra.
fn filters_of<'a, T>(g: &'a [T], geo: &Geometry, d: Dims, set: usize, ch: usize) -> &'a [T] {
    let len = geo.s * geo.s * spectrum_len(geo);
    &g[(set * d.c + ch) * len..][..len]
}

/// Output planes `(n, c, s*h, s*w)` of input `x` `(n, c, h, w)` with filters `g`.
pub(crate) fn forward<T: Float>(x: &[T], g: &[T], d: Dims, geo: &Geometry) -> Result<Vec<T>> {
    let (h, w, s, hp, wp) = (geo.h, geo.w, geo.s, geo.hp, geo.wp);
    let (plane, spec) = (h * w, spectrum_len(geo));
    let plans = plans::<T>(hp, wp);
    let mut out = vec![T::zero(); d.n * d.c * plane * s * s];
    out.par_chunks_mut(plane * s * s)
        .enumerate()
        .try_for_each(|(i, o)| {
            let (img, ch) = (i / d.c, i % d.c);
            let gs = filters_of(g, geo, d, img % d.sets, ch);
            let mut xp = vec![T::zero(); hp * wp];
            pad_plane(geo, &x[i * plane..][..plane], &mut xp);
            let (mut y, mut z) = (vec![T::zero(); spec], vec![T::zero(); spec]);
            rfft_plane(&plans, &xp, &mut y, hp, wp)?;
            for (ab, gab) in gs.chunks_exact(spec).enumerate() {
                let (zr, zi) = z.split_at_mut(spec / 2);
                let (yr, yi) = y.split_at(spec / 2);
                let (gr, gi) = gab.split_at(spec / 2);
                for k in 0..spec / 2 {
                    zr[k] = yr[k] * gr[k] - yi[k] * gi[k];
                    zi[k] = yr[k] * gi[k] + yi[k] * gr[k];
                }
                irfft_plane(&plans, &z, &mut xp, hp, wp)?;
                let (a, b) = (ab / s, ab % s);
                for i in 0..h {
                    let src = &xp[(i + geo.pad) * wp + geo.pad..][..w];
                    let dst = &mut o[(s * i + a) * s * w..][..s * w];
                    for (j, v) in src.iter().enumerate() {
                        dst[s * j + b] = *v;
                    }
                }
            }
            Ok::<(), candle_core::Error>(())
        })?;
    Ok(out)
}

/// One job of [`backward`]: a kernel set, a channel, and its images with their input-gradient
/// planes.
type Job<'a, T> = (usize, usize, Vec<(usize, Option<&'a mut [T]>)>);

/// What [`backward`] computes.
#[derive(Clone, Copy)]
pub(crate) struct Wanted {
    pub(crate) dx: bool,
    pub(crate) dg: bool,
}

/// The gradients of `sum(y * dy)` for `y = forward(x, g)`: to `x` `(n, c, h, w)` and to `g`
/// `(sets, c, s², 2, hp, wq)`, each only if wanted (else empty). One job per kernel set and
/// channel, over the images of the set, so that each job owns its filters' gradient.
pub(crate) fn backward<T: Float>(
    x: &[T],
    g: &[T],
    dy: &[T],
    d: Dims,
    geo: &Geometry,
    want: Wanted,
) -> Result<(Vec<T>, Vec<T>)> {
    let (h, w, s, hp, wp) = (geo.h, geo.w, geo.s, geo.hp, geo.wp);
    let (plane, spec) = (h * w, spectrum_len(geo));
    let wq = wp / 2 + 1;
    let block = s * s * spec;
    let plans = plans::<T>(hp, wp);
    let mut dx = vec![T::zero(); if want.dx { d.n * d.c * plane } else { 0 }];
    let mut dg = vec![T::zero(); if want.dg { d.sets * d.c * block } else { 0 }];
    // The jobs, set-major like `dg`: each with its images' input-gradient planes.
    let mut planes: Vec<Option<&mut [T]>> = if want.dx {
        dx.chunks_mut(plane).map(Some).collect()
    } else {
        (0..d.n * d.c).map(|_| None).collect()
    };
    let mut jobs: Vec<Job<T>> = (0..d.sets * d.c)
        .map(|j| (j / d.c, j % d.c, vec![]))
        .collect();
    for (i, p) in planes.drain(..).enumerate() {
        let (img, ch) = (i / d.c, i % d.c);
        jobs[(img % d.sets) * d.c + ch].2.push((i, p));
    }
    let dg_blocks: Vec<Option<&mut [T]>> = if want.dg {
        dg.chunks_mut(block).map(Some).collect()
    } else {
        (0..jobs.len()).map(|_| None).collect()
    };
    // Column weights of the filters' gradient: c_v / (hp wp).
    let weight: Vec<T> = (0..wq)
        .map(|v| {
            let c = if v == 0 || 2 * v == wp { 1.0 } else { 2.0 };
            T::from_f64(c / (hp * wp) as f64).unwrap_or_else(T::zero)
        })
        .collect();
    jobs.into_par_iter()
        .zip(dg_blocks)
        .try_for_each(|((set, ch, images), mut dgb)| {
            let gs = filters_of(g, geo, d, set, ch);
            let mut grid = vec![T::zero(); hp * wp];
            let (mut y, mut dsp, mut acc) = (
                vec![T::zero(); spec],
                vec![T::zero(); spec],
                vec![T::zero(); spec],
            );
            for (i, dxo) in images {
                if dgb.is_some() {
                    pad_plane(geo, &x[i * plane..][..plane], &mut grid);
                    rfft_plane(&plans, &grid, &mut y, hp, wp)?;
                }
                acc.fill(T::zero());
                let dyi = &dy[i * plane * s * s..][..plane * s * s];
                for ab in 0..s * s {
                    let (a, b) = (ab / s, ab % s);
                    grid.fill(T::zero());
                    for r in 0..h {
                        let src = &dyi[(s * r + a) * s * w..][..s * w];
                        let dst = &mut grid[(r + geo.pad) * wp + geo.pad..][..w];
                        for (j, o) in dst.iter_mut().enumerate() {
                            *o = src[s * j + b];
                        }
                    }
                    rfft_plane(&plans, &grid, &mut dsp, hp, wp)?;
                    let (dr, di) = dsp.split_at(spec / 2);
                    if let Some(dgb) = dgb.as_deref_mut() {
                        let (gr, gi) = dgb[ab * spec..][..spec].split_at_mut(spec / 2);
                        let (yr, yi) = y.split_at(spec / 2);
                        for k in 0..spec / 2 {
                            let c = weight[k % wq];
                            gr[k] = gr[k] + c * (yr[k] * dr[k] + yi[k] * di[k]);
                            gi[k] = gi[k] + c * (yr[k] * di[k] - yi[k] * dr[k]);
                        }
                    }
                    if dxo.is_some() {
                        let (ar, ai) = acc.split_at_mut(spec / 2);
                        let (gr, gi) = gs[ab * spec..][..spec].split_at(spec / 2);
                        for k in 0..spec / 2 {
                            ar[k] = ar[k] + gr[k] * dr[k] + gi[k] * di[k];
                            ai[k] = ai[k] + gr[k] * di[k] - gi[k] * dr[k];
                        }
                    }
                }
                if let Some(dxo) = dxo {
                    irfft_plane(&plans, &acc, &mut grid, hp, wp)?;
                    pad_adjoint(geo, &grid, dxo);
                }
            }
            Ok::<(), candle_core::Error>(())
        })?;
    Ok((dx, dg))
}
