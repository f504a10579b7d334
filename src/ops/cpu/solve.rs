//! The fused Converse2D solve: f32 on the CPU, [`GROUP`] channels at a time.
//!
//! Channel `2l` of a group is the real part and channel `2l + 1` the imaginary part of lane `l`
//! of one complex 2-D FFT over vectors ([`lanes`]), so every operation of the transform works on
//! 16 planes at once and awkward sizes (268 = 4 x 67) cost no more than smooth ones. After the
//! forward transform of the padded input the two channels' spectra are separated by Hermitian
//! symmetry, each is multiplied by its own transfer function and they are recombined before one
//! inverse transform, of which only the rows kept by the crop are computed.
//!
//! At scale `s > 1` the output's `s x s` phases (the pixels `(s*i + a, s*j + b)`) are solved one
//! by one on the input's grid: the inverse transform of `G · tile(Z)` over the `s`-fold grid,
//! read at one phase, is the inverse over the input grid of `Z` times `G`'s `s x s` aliases
//! summed with their phase factors (built in f64 with the transfer function). So the scaled solve
//! needs no larger grid, and the aliases' cancellation happens in f64 rather than in the f32
//! transform.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::Result;
use rayon::prelude::*;

use super::act::gelu;
use super::simd::{simd_fn, Simd, LANES, V};
use crate::ops::fft::lanes::Plan;
use crate::ops::pad::PaddingMode;
use crate::ops::profile::{self, OpKind};
use crate::ops::transfer::{self, Taps};

/// Channels per lane group.
pub(crate) const GROUP: usize = 2 * LANES;

/// The geometry of one solve: input planes `(h, w)` padded by `pad` to `(hp, wp)`, solved on
/// that grid (one phase at a time at scale `s`) and cropped to `(s*h, s*w)`.
#[derive(Debug)]
pub(crate) struct Geometry {
    pub(crate) h: usize,
    pub(crate) w: usize,
    pad: usize,
    pub(crate) s: usize,
    pub(crate) hp: usize,
    pub(crate) wp: usize,
    /// Padding sources of the rows and columns.
    rows: Vec<Option<usize>>,
    cols: Vec<Option<usize>>,
    plan_h: Plan,
    plan_w: Plan,
}

impl Geometry {
    pub(crate) fn new((h, w): (usize, usize), pad: usize, s: usize, mode: PaddingMode) -> Self {
        let (hp, wp) = (h + 2 * pad, w + 2 * pad);
        Self {
            h,
            w,
            pad,
            s,
            hp,
            wp,
            rows: mode.sources(h, pad),
            cols: mode.sources(w, pad),
            plan_h: Plan::new(hp),
            plan_w: Plan::new(wp),
        }
    }

    /// Vectors of one phase's transfer function: four per frequency of the half grid.
    fn phase_len(&self) -> usize {
        4 * self.hp * (self.wp / 2 + 1)
    }

    /// Vectors of one group's transfer functions (all `s x s` phases).
    pub(crate) fn filter_len(&self) -> usize {
        self.s * self.s * self.phase_len()
    }

    /// Fits the [`Pool`] to the buffers a solve of this geometry takes: grids, and at `s > 1`
    /// transfer functions (at scale 1 they are made row by row, or kept by their layer).
    pub(crate) fn fit_pool(&self, pool: &Pool) {
        let filters = if self.s > 1 { self.filter_len() } else { 0 };
        pool.fit(&[self.hp * self.wp, filters]);
    }

    /// Where input pixel `(i, j)` lies in the padded grid (and, at scale 1, output pixel
    /// `(i, j)` after the solve).
    #[inline(always)]
    pub(crate) fn inner(&self, i: usize, j: usize) -> usize {
        (i + self.pad) * self.wp + self.pad + j
    }

    /// Nominal FFT flops of solving `planes` planes (for the op timers).
    pub(crate) fn flops(&self, planes: usize) -> f64 {
        profile::fft_flops(planes, self.s * self.hp, self.s * self.wp)
    }
}

/// The buffers of one group in flight, from the [`Pool`]: the padded grid, at `s > 1` a second
/// grid for the phases, and a line of each.
pub(crate) struct Grid {
    re: Vec<V>,
    im: Vec<V>,
    phase_re: Vec<V>,
    phase_im: Vec<V>,
    line_re: Vec<V>,
    line_im: Vec<V>,
    /// At scale 1, the spectra of a column pair `(v, -v)`, one after the other.
    pair_re: Vec<V>,
    pair_im: Vec<V>,
    scratch: Vec<V>,
    /// A frequency column of a transfer function made while solving.
    column: Vec<V>,
}

impl Grid {
    pub(crate) fn new(geo: &Geometry, pool: &Pool) -> Self {
        let n = geo.hp * geo.wp;
        let (phase, pair) = if geo.s > 1 { (n, 0) } else { (0, 2 * geo.hp) };
        let line = geo.hp.max(geo.wp);
        let scratch = geo.plan_h.scratch_len().max(geo.plan_w.scratch_len());
        Self {
            re: pool.take(n),
            im: pool.take(n),
            phase_re: pool.take(phase),
            phase_im: pool.take(phase),
            line_re: vec![V::default(); line],
            line_im: vec![V::default(); line],
            pair_re: vec![V::default(); pair],
            pair_im: vec![V::default(); pair],
            scratch: vec![V::default(); scratch],
            column: vec![V::default(); 4 * geo.hp],
        }
    }

    pub(crate) fn give_back(self, pool: &Pool) {
        for v in [self.re, self.im, self.phase_re, self.phase_im] {
            pool.give(v);
        }
    }

    /// The grid's vectors, for the caller to cut into interior segments.
    pub(crate) fn interior_mut(&mut self) -> (&mut [V], &mut [V]) {
        (&mut self.re, &mut self.im)
    }

    /// Reads the lanes `0..count` of the grid points `k..k + len` into rows of `h` (rows
    /// `stride` apart), columns `j..j + len`.
    pub(crate) fn get_rows(
        &self,
        k: usize,
        h: &mut [f32],
        stride: usize,
        j: usize,
        len: usize,
        count: usize,
    ) {
        let lanes = (&self.re[k..][..len], &self.im[k..][..len]);
        lanes_to_rows(lanes, &mut h[j..], stride, count);
    }

    /// Writes `count` planes `(h, w)` into the interior of the grid, zeros in the unused lanes.
    pub(crate) fn load(&mut self, geo: &Geometry, planes: &[f32], count: usize) {
        let hw = geo.h * geo.w;
        for i in 0..geo.h {
            let at = geo.inner(i, 0);
            let lanes = (&mut self.re[at..][..geo.w], &mut self.im[at..][..geo.w]);
            rows_to_lanes(lanes, &planes[i * geo.w..], hw, count);
        }
    }

    /// Fills the padding of the grid from its interior.
    pub(crate) fn fill_padding(&mut self, geo: &Geometry) {
        let (pad, w, wp) = (geo.pad, geo.w, geo.wp);
        for i in pad..pad + geo.h {
            let (gr, gi) = (&mut self.re[i * wp..][..wp], &mut self.im[i * wp..][..wp]);
            for (j, col) in geo.cols.iter().enumerate() {
                if j < pad || j >= pad + w {
                    (gr[j], gi[j]) = match *col {
                        Some(c) => (gr[pad + c], gi[pad + c]),
                        None => (V::default(), V::default()),
                    };
                }
            }
        }
        for (i, row) in geo.rows.iter().enumerate() {
            if i >= pad && i < pad + geo.h {
                continue;
            }
            match *row {
                Some(r) => {
                    let src = (r + pad) * wp;
                    self.re.copy_within(src..src + wp, i * wp);
                    self.im.copy_within(src..src + wp, i * wp);
                }
                None => {
                    self.re[i * wp..][..wp].fill(V::default());
                    self.im[i * wp..][..wp].fill(V::default());
                }
            }
        }
    }

    /// Solves the group at scale 1, in place: the padded grid (interior and padding filled) in,
    /// the solution at the interior ([`Geometry::inner`]) out, through GELU if `act`. `g` is the
    /// group's transfer function.
    pub(crate) fn solve(&mut self, geo: &Geometry, g: &mut FilterRef, act: bool) {
        assert!(geo.s == 1, "the in-place solve is for scale 1");
        let _t = profile::time_shared(OpKind::Fft, || geo.flops(GROUP));
        solve_grid(geo, self, g, act, None)
    }

    /// Solves the group at any scale into `count` planes `(s*h, s*w)` of `out`.
    pub(crate) fn solve_into(
        &mut self,
        geo: &Geometry,
        g: &mut FilterRef,
        act: bool,
        out: &mut [f32],
        count: usize,
    ) {
        let _t = profile::time_shared(OpKind::Fft, || geo.flops(GROUP));
        solve_grid(geo, self, g, act, Some((out, count)))
    }
}

simd_fn! {
    /// Lanes from rows: channel `q < count` of point `x` (lane `q / 2` of `re` for even `q`, of
    /// `im` for odd) is `rows[q * stride + x]`; the unused lanes are zero. The reference for the
    /// transposes is the loop the portable build runs at `count < GROUP`.
    pub(crate) fn rows_to_lanes(
        s,
        lanes: (&mut [V], &mut [V]),
        rows: &[f32],
        stride: usize,
        count: usize,
    ) {
        let (re, im) = lanes;
        let (n, full) = (re.len(), transposed(re.len(), count));
        for x in (0..full).step_by(LANES) {
            let (mut even, mut odd) = ([V::default(); LANES], [V::default(); LANES]);
            for l in 0..LANES {
                even[l] = load_v(rows, 2 * l * stride + x);
                odd[l] = load_v(rows, (2 * l + 1) * stride + x);
            }
            re[x..x + LANES].copy_from_slice(&s.transpose(even));
            im[x..x + LANES].copy_from_slice(&s.transpose(odd));
        }
        let (re, im) = (&mut re[full..], &mut im[full..]);
        if count < GROUP {
            re.fill(V::default());
            im.fill(V::default());
        }
        for q in 0..count {
            let dst = if q % 2 == 0 { &mut *re } else { &mut *im };
            for (d, v) in dst.iter_mut().zip(&rows[q * stride + full..][..n - full]) {
                d.0[q / 2] = *v;
            }
        }
    }
}

simd_fn! {
    /// Rows from lanes, the inverse of [`rows_to_lanes`] for the channels `q < count`.
    pub(crate) fn lanes_to_rows(
        s,
        lanes: (&[V], &[V]),
        rows: &mut [f32],
        stride: usize,
        count: usize,
    ) {
        let (re, im) = lanes;
        let (n, full) = (re.len(), transposed(re.len(), count));
        for x in (0..full).step_by(LANES) {
            let even = s.transpose(re[x..x + LANES].try_into().unwrap());
            let odd = s.transpose(im[x..x + LANES].try_into().unwrap());
            for l in 0..LANES {
                store_v(rows, 2 * l * stride + x, even[l]);
                store_v(rows, (2 * l + 1) * stride + x, odd[l]);
            }
        }
        for q in 0..count {
            let src = if q % 2 == 0 { &re[full..] } else { &im[full..] };
            for (d, v) in rows[q * stride + full..][..n - full].iter_mut().zip(src) {
                *d = v.0[q / 2];
            }
        }
    }
}

/// How many of `n` points the transposes move: whole vectors, and only for full groups (the
/// rest take the plain loop).
#[inline(always)]
fn transposed(n: usize, count: usize) -> usize {
    if count == GROUP {
        n / LANES * LANES
    } else {
        0
    }
}

#[inline(always)]
fn load_v(x: &[f32], at: usize) -> V {
    V(x[at..at + LANES].try_into().unwrap())
}

#[inline(always)]
fn store_v(x: &mut [f32], at: usize, v: V) {
    x[at..at + LANES].copy_from_slice(&v.0);
}

simd_fn! {
    /// The solve of one group: forward transform, then per phase the filter, the inverse and
    /// the crop (into `out` when given, else left in the grid at scale 1).
    fn solve_grid(
        s,
        geo: &Geometry,
        grid: &mut Grid,
        filter: &mut FilterRef,
        act: bool,
        out: Option<(&mut [f32], usize)>,
    ) {
        let (hp, wp) = (geo.hp, geo.wp);
        let Grid {
            re,
            im,
            phase_re,
            phase_im,
            line_re,
            line_im,
            pair_re,
            pair_im,
            scratch,
            column,
        } = grid;
        let pw = &geo.plan_w;
        // Forward: the rows that are not all zeros, then the columns.
        for (i, row) in geo.rows.iter().enumerate() {
            if row.is_some() {
                pw.forward(s, (re, im), (i * wp, 1), (line_re, line_im), scratch);
                re[i * wp..][..wp].copy_from_slice(&line_re[..wp]);
                im[i * wp..][..wp].copy_from_slice(&line_im[..wp]);
            }
        }
        let (mut out, count) = match out {
            Some((o, c)) => (Some(o), c),
            None => (None, 0),
        };
        let wq = wp / 2 + 1;
        if let Some(g) = filter.stored() {
            assert_eq!(g.len(), geo.filter_len(), "Converse2D filter size");
        }
        if geo.s == 1 {
            // Column by column pair (v, -v), which the filter couples: each column is copied
            // out once, its forward transform, the filter and its inverse run on the pair's
            // contiguous buffers, and it is copied back (a column's points are a row apart; the
            // transforms reading them there measured 3% slower on ConverseNet 256).
            let norm = 1.0 / (hp * wp) as f64;
            for v in 0..wq {
                let mv = (wp - v) % wp;
                let cols = if mv == v { &[v][..] } else { &[v, mv][..] };
                for (t, &j) in cols.iter().enumerate() {
                    for i in 0..hp {
                        (line_re[i], line_im[i]) = (re[i * wp + j], im[i * wp + j]);
                    }
                    let spectrum = (&mut pair_re[t * hp..][..hp], &mut pair_im[t * hp..][..hp]);
                    geo.plan_h.forward(s, (line_re, line_im), (0, 1), spectrum, scratch);
                }
                let at = (0, (cols.len() - 1) * hp, 1);
                let pair = (&mut pair_re[..], &mut pair_im[..]);
                match &mut *filter {
                    FilterRef::Columns(made, made_count) => {
                        // Each column of the transfer function used as it is made.
                        let t = profile::time_nested(OpKind::Transfer, || (*made_count * hp) as f64);
                        let width = made.width();
                        lanes_column(column, made.column(v), width, *made_count, norm);
                        drop(t);
                        filter_column(s, geo, (column, 0, 1), v, None, pair, at);
                    }
                    stored => {
                        let g = stored.stored().expect("stored transfer functions");
                        filter_column(s, geo, (g, v, wq), v, None, pair, at)
                    }
                }
                for (t, &j) in cols.iter().enumerate() {
                    // The inverse: the forward transform with the parts swapped.
                    let spectrum = (&pair_im[t * hp..][..hp], &pair_re[t * hp..][..hp]);
                    geo.plan_h.forward(s, spectrum, (0, 1), (line_im, line_re), scratch);
                    for i in 0..hp {
                        (re[i * wp + j], im[i * wp + j]) = (line_re[i], line_im[i]);
                    }
                }
            }
            inverse_rows(s, geo, (re, im), (line_re, line_im), scratch, act);
            if let Some(out) = out.as_deref_mut() {
                store_phase(geo, (re, im), out, count, (0, 0));
            }
            return;
        }
        for j in 0..wp {
            forward_column(s, geo, (re, im), j, (line_re, line_im), scratch);
        }
        let g = filter
            .stored()
            .expect("transfer functions made by column are for scale 1");
        for phase in 0..geo.s * geo.s {
            // Filter from the spectrum into the phase grid, then invert.
            let gp = &g[phase * geo.phase_len()..][..geo.phase_len()];
            for v in 0..wq {
                let src = Some((&**re, &**im));
                let at = (v, (wp - v) % wp, wp);
                filter_column(s, geo, (gp, v, wq), v, src, (phase_re, phase_im), at);
            }
            for j in 0..wp {
                inverse_column(s, geo, (phase_re, phase_im), j, (line_re, line_im), scratch);
            }
            inverse_rows(s, geo, (phase_re, phase_im), (line_re, line_im), scratch, act);
            if let Some(out) = out.as_deref_mut() {
                let (a, b) = (phase / geo.s, phase % geo.s);
                store_phase(geo, (phase_re, phase_im), out, count, (a, b));
            }
        }
    }
}

/// The forward transform of column `j` of the grid, in place.
#[inline(always)]
fn forward_column<S: Simd>(
    s: S,
    geo: &Geometry,
    (re, im): (&mut [V], &mut [V]),
    j: usize,
    (line_re, line_im): (&mut [V], &mut [V]),
    scratch: &mut [V],
) {
    let wp = geo.wp;
    geo.plan_h.forward(
        s,
        (&*re, &*im),
        (j, wp),
        (&mut *line_re, &mut *line_im),
        scratch,
    );
    for i in 0..geo.hp {
        re[i * wp + j] = line_re[i];
        im[i * wp + j] = line_im[i];
    }
}

/// The inverse transform of column `j` of the grid `(dr, di)`, in place: the forward one with
/// the parts swapped.
#[inline(always)]
fn inverse_column<S: Simd>(
    s: S,
    geo: &Geometry,
    (dr, di): (&mut [V], &mut [V]),
    j: usize,
    (line_re, line_im): (&mut [V], &mut [V]),
    scratch: &mut [V],
) {
    forward_column(s, geo, (di, dr), j, (line_im, line_re), scratch)
}

/// The inverse transform along the interior rows of the grid `(dr, di)` (its columns done),
/// whose interior columns are written back through GELU if `act`.
#[inline(always)]
fn inverse_rows<S: Simd>(
    s: S,
    geo: &Geometry,
    (dr, di): (&mut [V], &mut [V]),
    (line_re, line_im): (&mut [V], &mut [V]),
    scratch: &mut [V],
    act: bool,
) {
    let (wp, pad, w) = (geo.wp, geo.pad, geo.w);
    for i in pad..pad + geo.h {
        let row = i * wp;
        geo.plan_w.forward(
            s,
            (&*di, &*dr),
            (row, 1),
            (&mut *line_im, &mut *line_re),
            scratch,
        );
        let (kr, ki) = (&mut line_re[pad..pad + w], &mut line_im[pad..pad + w]);
        if act {
            for v in kr.iter_mut().chain(ki.iter_mut()) {
                for x in v.0.iter_mut() {
                    *x = gelu(*x);
                }
            }
        }
        dr[row + pad..][..w].copy_from_slice(kr);
        di[row + pad..][..w].copy_from_slice(ki);
    }
}

/// Copies phase `(a, b)` of the solution, the grid's interior, into `count` planes
/// `(s*h, s*w)` at the pixels `(s*i + a, s*j + b)`.
#[inline(always)]
fn store_phase(
    geo: &Geometry,
    (dr, di): (&[V], &[V]),
    out: &mut [f32],
    count: usize,
    (a, b): (usize, usize),
) {
    let (s, h, w) = (geo.s, geo.h, geo.w);
    let (ho, wo) = (s * h, s * w);
    for i in 0..h {
        let at = geo.inner(i, 0);
        let (gr, gi) = (&dr[at..][..w], &di[at..][..w]);
        if s == 1 {
            lanes_to_rows((gr, gi), &mut out[i * w..], h * w, count);
            continue;
        }
        for q in 0..count {
            let src = if q % 2 == 0 { gr } else { gi };
            let dst = &mut out[(q * ho + s * i + a) * wo..][..wo];
            for (j, v) in src.iter().enumerate() {
                dst[s * j + b] = v.0[q / 2];
            }
        }
    }
}

/// The filter step for frequency column `v` (of the half spectrum), whose transfer functions
/// are column `gv` of `g` (`g_cols` columns, four vectors per frequency, row-major): with Z the spectrum, channel a's is
/// Xa = (Z[k] + conj Z[-k]) / 2 and channel b's Xb = (Z[k] - conj Z[-k]) / 2i; the result is
/// Y[k] = Ga Xa + i Gb Xb, and at -k its conjugate parts (the filters are Hermitian). So each
/// `k = (u, v)` sets `Y[k]` and `Y[-k]`; in the columns that are their own mirror (0, and
/// `wp/2` when `wp` is even) only the rows `u <= hp/2` do. Z is read from `src` when given
/// (kept for the next phase), else from `dst`. Frequency `(u, v)` is at `off_v + u * stride`
/// of both, and `(u, -v)` at `off_mv + u * stride`.
#[inline(always)]
fn filter_column<S: Simd>(
    s: S,
    geo: &Geometry,
    (g, gv, g_cols): (&[V], usize, usize),
    v: usize,
    src: Option<(&[V], &[V])>,
    (dr, di): (&mut [V], &mut [V]),
    (off_v, off_mv, stride): (usize, usize, usize),
) {
    let (hp, wp) = (geo.hp, geo.wp);
    let mv = (wp - v) % wp;
    let rows = if mv == v { hp / 2 + 1 } else { hp };
    for u in 0..rows {
        let f = &g[4 * (u * g_cols + gv)..][..4];
        let mu = (hp - u) % hp;
        let (k, mk) = (off_v + u * stride, off_mv + mu * stride);
        let (zr, zi, mr, mi) = match src {
            Some((sr, si)) => (sr[k], si[k], sr[mk], si[mk]),
            None => (dr[k], di[k], dr[mk], di[mk]),
        };
        let (ar, ai) = (s.scale(s.add(zr, mr), 0.5), s.scale(s.sub(zi, mi), 0.5));
        let (br, bi) = (s.scale(s.add(zi, mi), 0.5), s.scale(s.sub(mr, zr), 0.5));
        let (pr, pi) = s.cmul(f[0], f[1], ar, ai);
        let (qr, qi) = s.cmul(f[2], f[3], br, bi);
        (dr[mk], di[mk]) = (s.add(pr, qi), s.sub(qr, pi));
        (dr[k], di[k]) = (s.sub(pr, qi), s.add(pi, qr));
    }
}

/// Reusable vector buffers for the groups in flight, shared by every fused solve of the
/// process: fresh allocations this large are page-faulted in on every call, which costs about a
/// tenth of a solve. Each op first [`fit`](Self::fit)s it to its own sizes, so it holds no more
/// than the widest op of the current size had in flight; [`clear`](Self::clear) (through
/// [`crate::ops::clear_caches`]) frees it.
#[derive(Default)]
pub(crate) struct Pool(Mutex<Vec<Vec<V>>>);

impl Pool {
    /// A buffer of `len` vectors (contents unspecified): a pooled one at most a quarter larger,
    /// else a new one.
    pub(crate) fn take(&self, len: usize) -> Vec<V> {
        if len == 0 {
            return Vec::new();
        }
        let mut bufs = lock(&self.0);
        let best = bufs
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len && b.capacity() <= len + len / 4)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        let mut v = match best {
            Some(i) => bufs.swap_remove(i),
            None => {
                drop(bufs);
                // Zeroed by the system, page by page as it is written.
                return vec![V::default(); len];
            }
        };
        v.resize(len, V::default());
        v.truncate(len);
        v
    }

    /// Drops the buffers an op taking buffers of `sizes` (vectors; 0 for none) would not use,
    /// those [`take`](Self::take) would not give for any of them.
    pub(crate) fn fit(&self, sizes: &[usize]) {
        let fits = |b: &Vec<V>| {
            let c = b.capacity();
            sizes
                .iter()
                .any(|&len| len > 0 && c >= len && c <= len + len / 4)
        };
        let mut bufs = lock(&self.0);
        let before = bufs.len();
        bufs.retain(fits);
        if bufs.len() < before {
            drop(bufs);
            release_freed_memory();
        }
    }

    pub(crate) fn give(&self, v: Vec<V>) {
        if v.capacity() > 0 {
            lock(&self.0).push(v);
        }
    }

    pub(crate) fn clear(&self) {
        lock(&self.0).clear();
    }

    pub(crate) fn bytes(&self) -> usize {
        lock(&self.0)
            .iter()
            .map(|b| b.capacity() * size_of::<V>())
            .sum()
    }
}

/// Hands memory the allocator keeps after frees back to the system (glibc keeps freed blocks of
/// up to 32 MiB in its arenas, which a solve of another size would not use).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The process's buffer pool.
pub(crate) fn pool() -> &'static Pool {
    static POOL: std::sync::OnceLock<Pool> = std::sync::OnceLock::new();
    POOL.get_or_init(Pool::default)
}

/// A layer's transfer functions in the lane layout, per grid size and group. They are built
/// when needed (a group costs about one FFT pass); once [`keep`](Self::keep) is on they are
/// also kept, within a process-wide byte budget ([`FILTER_CACHE_ENV`]).
#[derive(Debug, Default)]
pub(crate) struct FilterCache {
    keep: std::sync::atomic::AtomicBool,
    groups: Mutex<HashMap<(usize, usize, usize), Vec<Option<Arc<Vec<V>>>>>>,
}

/// Environment variable: MiB that kept CPU transfer functions may take in all. The default, 0,
/// keeps none: rebuilding them costs about 7% of a model run, keeping them as much memory as
/// the run's feature maps (1 GiB for a 1024x768 colour denoise).
pub const FILTER_CACHE_ENV: &str = "CONVERSE_FILTER_CACHE_MB";

static CACHED_BYTES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn cache_budget() -> usize {
    static BUDGET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BUDGET.get_or_init(|| {
        std::env::var(FILTER_CACHE_ENV)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0)
            << 20
    })
}

impl FilterCache {
    /// Keep the transfer functions built from now on (or stop keeping new ones).
    pub(crate) fn keep(&self, on: bool) {
        self.keep.store(on, std::sync::atomic::Ordering::Relaxed)
    }

    /// Drops every kept transfer function of this layer.
    pub(crate) fn clear(&self) {
        let mut g = lock(&self.groups);
        let bytes: usize = g
            .values()
            .flatten()
            .flatten()
            .map(|f| f.len() * size_of::<V>())
            .sum();
        g.clear();
        CACHED_BYTES.fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for FilterCache {
    fn drop(&mut self) {
        self.clear()
    }
}

/// Where a solve's transfer functions come from.
#[derive(Clone, Copy)]
pub(crate) enum Filters<'a> {
    /// A learned layer's: kept in its cache when it keeps them and the budget allows.
    Cached(&'a Taps, &'a FilterCache),
    /// Per call (Converse-USRNet's data module): built when needed.
    PerCall(&'a Taps),
}

/// A group's transfer function: shared from a cache, owned whole (and given back to the pool),
/// or made a pair of frequency rows at a time while the solve uses them (at scale 1, when it is
/// not kept: no group-sized buffer at all).
pub(crate) enum FilterRef {
    Shared(Arc<Vec<V>>),
    Owned(Vec<V>),
    Columns(Box<transfer::Columns>, usize),
}

impl FilterRef {
    /// The stored transfer functions (`None` when they are made by column while solving).
    fn stored(&self) -> Option<&[V]> {
        match self {
            Self::Shared(g) => Some(g),
            Self::Owned(g) => Some(g),
            Self::Columns(..) => None,
        }
    }

    pub(crate) fn release(self, pool: &Pool) {
        if let Self::Owned(v) = self {
            pool.give(v)
        }
    }
}

impl Filters<'_> {
    fn taps(&self) -> &Taps {
        match self {
            Self::Cached(t, _) | Self::PerCall(t) => t,
        }
    }

    /// The transfer function of group `g` (channels `16g..`) of kernel set `set`.
    pub(crate) fn group(&self, geo: &Geometry, set: usize, g: usize, pool: &Pool) -> FilterRef {
        let taps = self.taps();
        let unkept = || {
            if geo.s > 1 {
                return FilterRef::Owned(build_group(taps, geo, set, g, pool));
            }
            let chans = g * GROUP..taps.channels().min((g + 1) * GROUP);
            let count = chans.len();
            let cols = transfer::Columns::new(taps, set, &lane_order(chans), (geo.hp, geo.wp));
            FilterRef::Columns(Box::new(cols), count)
        };
        let cache = match self {
            Self::Cached(_, cache) if cache.keep.load(std::sync::atomic::Ordering::Relaxed) => {
                cache
            }
            _ => return unkept(),
        };
        let groups = taps.channels().div_ceil(GROUP);
        let key = (geo.hp, geo.wp, geo.s);
        if let Some(Some(f)) = lock(&cache.groups)
            .get(&key)
            .and_then(|v| v.get(set * groups + g))
        {
            return FilterRef::Shared(f.clone());
        }
        let bytes = geo.filter_len() * size_of::<V>();
        let fits = CACHED_BYTES
            .fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                |used| (used + bytes <= cache_budget()).then_some(used + bytes),
            )
            .is_ok();
        if !fits {
            return unkept();
        }
        let f = Arc::new(build_group(taps, geo, set, g, &Pool::default()));
        let mut map = lock(&cache.groups);
        let slots = map
            .entry(key)
            .or_insert_with(|| vec![None; taps.sets() * groups]);
        match &slots[set * groups + g] {
            // Another thread got there first: keep its copy.
            Some(old) => {
                CACHED_BYTES.fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
                FilterRef::Shared(old.clone())
            }
            None => {
                slots[set * groups + g] = Some(f.clone());
                FilterRef::Shared(f)
            }
        }
    }
}

/// Builds group `g` of kernel set `set` in the lane layout, scaled by `1/(hs*ws)` (the
/// transforms are unnormalised): per phase, at each frequency `(u, v)` of the half grid four
/// vectors, the real and imaginary parts of filter `2l`, then of filter `2l+1`, in lane `l`.
fn build_group(taps: &Taps, geo: &Geometry, set: usize, g: usize, pool: &Pool) -> Vec<V> {
    let s = geo.s;
    let _t = profile::time_shared(OpKind::Transfer, || {
        (GROUP * s * s * geo.hp * geo.wp) as f64
    });
    let c0 = g * GROUP;
    let count = GROUP.min(taps.channels() - c0);
    let mut out = pool.take(geo.filter_len());
    if count < GROUP {
        out.fill(V::default());
    }
    let (hp, wp) = (geo.hp, geo.wp);
    let wq = wp / 2 + 1;
    let norm = 1.0 / (s * s * hp * wp) as f64;
    let chans = c0..c0 + count;
    if s == 1 {
        let mut cols = transfer::Columns::new(taps, set, &lane_order(chans), (hp, wp));
        let width = cols.width();
        let mut column = vec![V::default(); 4 * hp];
        for v in 0..wq {
            lanes_column(&mut column, cols.column(v), width, count, norm);
            for (u, d) in column.chunks_exact(4).enumerate() {
                out[4 * (u * wq + v)..][..4].copy_from_slice(d);
            }
        }
        return out;
    }
    // Every filter at once, a row of every phase at a time.
    transfer::build_scaled(
        taps,
        set,
        &lane_order(chans),
        (hp, wp),
        s,
        |phase, u, row| {
            let width = row.len() / (2 * wq);
            let (re, im) = row.split_at(wq * width);
            let dst = &mut out[phase * geo.phase_len() + 4 * u * wq..][..4 * wq];
            for (v, d) in dst.chunks_exact_mut(4).enumerate() {
                lanes_entry(
                    d,
                    (&re[v * width..][..width], &im[v * width..][..width]),
                    count,
                    norm,
                );
            }
        },
    );
    out
}

/// The order in which a group's transfer functions are made: for a whole group the even
/// channels then the odd ones, so that each frequency's 16 values are the four lane vectors in a
/// row (real and imaginary parts of the even channels, then of the odd ones).
fn lane_order(chans: std::ops::Range<usize>) -> Vec<usize> {
    if chans.len() == GROUP {
        chans
            .clone()
            .step_by(2)
            .chain(chans.skip(1).step_by(2))
            .collect()
    } else {
        chans.collect()
    }
}

/// One frequency of a group's transfer functions into its four lane vectors: `(gr, gi)` per
/// filter in [`lane_order`].
#[inline(always)]
fn lanes_entry(d: &mut [V], (gr, gi): (&[f64], &[f64]), count: usize, norm: f64) {
    if count == GROUP {
        for l in 0..LANES {
            d[0].0[l] = (gr[l] * norm) as f32;
            d[1].0[l] = (gi[l] * norm) as f32;
            d[2].0[l] = (gr[LANES + l] * norm) as f32;
            d[3].0[l] = (gi[LANES + l] * norm) as f32;
        }
    } else {
        for f in 0..count {
            let (lane, part) = (f / 2, 2 * (f % 2));
            d[part].0[lane] = (gr[f] * norm) as f32;
            d[part + 1].0[lane] = (gi[f] * norm) as f32;
        }
    }
}

simd_fn! {
    /// One frequency column of a group's transfer functions into the lane layout: `col` holds
    /// `(hp, 2, width)`, the filters innermost in [`lane_order`]; `out` gets four vectors per row.
    fn lanes_column(_s, out: &mut [V], col: &[f64], width: usize, count: usize, norm: f64) {
        for (d, row) in out.chunks_exact_mut(4).zip(col.chunks_exact(2 * width)) {
            lanes_entry(d, row.split_at(width), count, norm);
        }
    }
}

/// Solves `x` `(n, c, h, w)` into `out` `(n, c, s*h, s*w)`, GELU after if `act`: each image's
/// groups of [`GROUP`] channels in parallel, kernel set `i % sets` for image `i`.
pub(crate) fn solve(
    x: &[f32],
    out: &mut [f32],
    (c, h, w): (usize, usize, usize),
    geo: &Geometry,
    filters: Filters,
    act: bool,
) -> Result<()> {
    let taps = filters.taps();
    if taps.channels() != c || (geo.h, geo.w) != (h, w) {
        candle_core::bail!("Converse2D: {c} channels of {h}x{w} do not fit the layer")
    }
    taps.check_fits((geo.hp, geo.wp), geo.s)?;
    let (plane, plane_out) = (h * w, h * w * geo.s * geo.s);
    let pool = pool();
    geo.fit_pool(pool);
    let mut jobs = vec![];
    for (i, (xi, oi)) in x
        .chunks(c * plane)
        .zip(out.chunks_mut(c * plane_out))
        .enumerate()
    {
        for (g, (xg, og)) in xi
            .chunks(GROUP * plane)
            .zip(oi.chunks_mut(GROUP * plane_out))
            .enumerate()
        {
            jobs.push((i % taps.sets(), g, xg, og));
        }
    }
    jobs.into_par_iter().for_each(|(set, g, xg, og)| {
        let count = xg.len() / plane;
        let mut grid = Grid::new(geo, pool);
        grid.load(geo, xg, count);
        grid.fill_padding(geo);
        let mut f = filters.group(geo, set, g, pool);
        grid.solve_into(geo, &mut f, act, og, count);
        f.release(pool);
        grid.give_back(pool);
    });
    Ok(())
}

#[cfg(test)]
mod speed {
    use super::*;
    use crate::ops::transfer::Taps;
    use candle_core::{Device, Tensor};

    /// Not a test: times the SR upsamplers' builds (kernel 2, scale 2) of one group.
    #[test]
    #[ignore]
    fn scaled_build_speed() {
        let geo = Geometry::new((256, 256), 2, 2, PaddingMode::Replicate);
        let k = Tensor::rand(0f32, 1.0, (1, 16, 2, 2), &Device::Cpu).unwrap();
        let lam = Tensor::full(0.01f32, (1, 16, 1, 1), &Device::Cpu).unwrap();
        let taps = Taps::new(&k, &lam).unwrap();
        let t = std::time::Instant::now();
        for _ in 0..10 {
            build_group(&taps, &geo, 0, 0, &Pool::default());
        }
        println!(
            "s=2 build: {:.2} ms per group",
            t.elapsed().as_secs_f64() * 1e3 / 10.0
        );
    }

    /// Not a test: `cargo test --release --lib speed -- --ignored --nocapture` times one group.
    #[test]
    #[ignore]
    fn group_solve_speed() {
        for (h, pad) in [(256, 2), (256, 6)] {
            let geo = Geometry::new((h, h), pad, 1, PaddingMode::Circular);
            let dev = Device::Cpu;
            let k = Tensor::rand(0f32, 1.0, (1, 16, 3, 3), &dev).unwrap();
            let lam = Tensor::full(0.01f32, (1, 16, 1, 1), &dev).unwrap();
            let taps = Taps::new(&k, &lam).unwrap();
            let pool = Pool::default();
            let planes = vec![0.5f32; 16 * h * h];
            let mut grid = Grid::new(&geo, &pool);
            let g = build_group(&taps, &geo, 0, 0, &pool);
            let mut f = FilterRef::Owned(g);
            let reps = 20;
            let t = std::time::Instant::now();
            for _ in 0..reps {
                grid.load(&geo, &planes, 16);
                grid.fill_padding(&geo);
                grid.solve(&geo, &mut f, true);
            }
            let ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
            let t = std::time::Instant::now();
            for _ in 0..reps {
                let cols = transfer::Columns::new(&taps, 0, &lane_order(0..16), (geo.hp, geo.wp));
                let mut r = FilterRef::Columns(Box::new(cols), 16);
                grid.load(&geo, &planes, 16);
                grid.fill_padding(&geo);
                grid.solve(&geo, &mut r, true);
            }
            let ms_rows = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
            println!("{h}+2*{pad}: {ms:.2} ms per group (stored filter), {ms_rows:.2} ms (made while solving)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transposes between rows and lanes against plain indexing, on every path the CPU
    /// has (AVX-512, AVX2, portable), for full and partial groups and lengths that are not a
    /// multiple of the vector width.
    #[test]
    fn rows_and_lanes_round_trip() {
        use super::super::simd::{FORCE_AVX2, FORCE_PLAIN};
        use std::sync::atomic::Ordering::Relaxed;
        let stride = 37;
        let rows: Vec<f32> = (0..GROUP * stride).map(|i| i as f32 + 0.5).collect();
        for (force_avx2, force_plain) in [(false, false), (true, false), (false, true)] {
            FORCE_AVX2.store(force_avx2, Relaxed);
            FORCE_PLAIN.store(force_plain, Relaxed);
            for n in [1, 7, 8, 9, 16, 29] {
                for count in [GROUP, GROUP - 1, 3, 1] {
                    let mut re = vec![V([9.0; LANES]); n];
                    let mut im = re.clone();
                    rows_to_lanes((&mut re, &mut im), &rows[2..], stride, count);
                    for x in 0..n {
                        for q in 0..GROUP {
                            let v = if q % 2 == 0 { re[x] } else { im[x] };
                            let want = if q < count {
                                rows[2 + q * stride + x]
                            } else {
                                0.0
                            };
                            assert_eq!(v.0[q / 2], want, "n {n} count {count} x {x} q {q}");
                        }
                    }
                    let mut back = vec![-1.0f32; rows.len()];
                    lanes_to_rows((&re, &im), &mut back[2..], stride, count);
                    for (i, (b, want)) in back.iter().zip(&rows).enumerate() {
                        let r = i.wrapping_sub(2);
                        let written = i >= 2 && r / stride < count && r % stride < n;
                        assert_eq!(
                            *b,
                            if written { *want } else { -1.0 },
                            "n {n} count {count} at {i}"
                        );
                    }
                }
            }
        }
        FORCE_AVX2.store(false, Relaxed);
        FORCE_PLAIN.store(false, Relaxed);
    }
}
