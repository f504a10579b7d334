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
    scratch: Vec<V>,
}

impl Grid {
    pub(crate) fn new(geo: &Geometry, pool: &Pool) -> Self {
        let n = geo.hp * geo.wp;
        let phase = if geo.s > 1 { n } else { 0 };
        let line = geo.hp.max(geo.wp);
        let scratch = geo.plan_h.scratch_len().max(geo.plan_w.scratch_len());
        Self {
            re: pool.take(n),
            im: pool.take(n),
            phase_re: pool.take(phase),
            phase_im: pool.take(phase),
            line_re: vec![V::default(); line],
            line_im: vec![V::default(); line],
            scratch: vec![V::default(); scratch],
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
        let (gr, gi) = (&self.re[k..][..len], &self.im[k..][..len]);
        if count == GROUP {
            for (x, (r, i)) in gr.iter().zip(gi).enumerate() {
                for l in 0..LANES {
                    h[2 * l * stride + j + x] = r.0[l];
                    h[(2 * l + 1) * stride + j + x] = i.0[l];
                }
            }
            return;
        }
        for q in 0..count {
            let (src, lane) = if q % 2 == 0 { (gr, q / 2) } else { (gi, q / 2) };
            for (d, v) in h[q * stride + j..][..len].iter_mut().zip(src) {
                *d = v.0[lane];
            }
        }
    }

    /// Writes `count` planes `(h, w)` into the interior of the grid, zeros in the unused lanes.
    pub(crate) fn load(&mut self, geo: &Geometry, planes: &[f32], count: usize) {
        let hw = geo.h * geo.w;
        for i in 0..geo.h {
            let at = geo.inner(i, 0);
            let (gr, gi) = (&mut self.re[at..][..geo.w], &mut self.im[at..][..geo.w]);
            if count < GROUP {
                gr.fill(V::default());
                gi.fill(V::default());
            }
            for q in 0..count {
                let src = &planes[q * hw + i * geo.w..][..geo.w];
                let dst = if q % 2 == 0 { &mut *gr } else { &mut *gi };
                for (d, s) in dst.iter_mut().zip(src) {
                    d.0[q / 2] = *s;
                }
            }
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
    /// group's transfer function in the lane layout, scaled by `1/(hp*wp)`.
    pub(crate) fn solve(&mut self, geo: &Geometry, g: &[V], act: bool) {
        assert!(
            geo.s == 1 && g.len() == geo.filter_len(),
            "Converse2D filter"
        );
        let _t = profile::time_shared(OpKind::Fft, || geo.flops(GROUP));
        solve_grid(geo, self, g, act, None)
    }

    /// Solves the group at any scale into `count` planes `(s*h, s*w)` of `out`.
    pub(crate) fn solve_into(
        &mut self,
        geo: &Geometry,
        g: &[V],
        act: bool,
        out: &mut [f32],
        count: usize,
    ) {
        assert_eq!(g.len(), geo.filter_len(), "Converse2D filter size");
        let _t = profile::time_shared(OpKind::Fft, || geo.flops(GROUP));
        solve_grid(geo, self, g, act, Some((out, count)))
    }
}

simd_fn! {
    /// The solve of one group: forward transform, then per phase the filter, the inverse and
    /// the crop (into `out` when given, else left in the grid at scale 1).
    fn solve_grid(
        s,
        geo: &Geometry,
        grid: &mut Grid,
        g: &[V],
        act: bool,
        out: Option<(&mut [f32], usize)>,
    ) {
        let (hp, wp) = (geo.hp, geo.wp);
        let Grid { re, im, phase_re, phase_im, line_re, line_im, scratch } = grid;
        let (ph, pw) = (&geo.plan_h, &geo.plan_w);
        // Forward: the rows that are not all zeros, then every column.
        for (i, row) in geo.rows.iter().enumerate() {
            if row.is_some() {
                pw.forward(s, (re, im), (i * wp, 1), (line_re, line_im), scratch);
                re[i * wp..][..wp].copy_from_slice(&line_re[..wp]);
                im[i * wp..][..wp].copy_from_slice(&line_im[..wp]);
            }
        }
        for j in 0..wp {
            ph.forward(s, (re, im), (j, wp), (line_re, line_im), scratch);
            for i in 0..hp {
                re[i * wp + j] = line_re[i];
                im[i * wp + j] = line_im[i];
            }
        }
        let phases = geo.s * geo.s;
        let (mut out, count) = match out {
            Some((o, c)) => (Some(o), c),
            None => (None, 0),
        };
        for phase in 0..phases {
            let gp = &g[phase * geo.phase_len()..][..geo.phase_len()];
            // Filter, then invert: in place at scale 1, from the spectrum into the phase grid
            // above it.
            let (dr, di) = if phases == 1 {
                filter_all(s, geo, gp, None, (re, im));
                (&mut *re, &mut *im)
            } else {
                filter_all(s, geo, gp, Some((re, im)), (phase_re, phase_im));
                (&mut *phase_re, &mut *phase_im)
            };
            inverse_kept(s, geo, (dr, di), (line_re, line_im), scratch, act);
            if let Some(out) = out.as_deref_mut() {
                let (a, b) = (phase / geo.s, phase % geo.s);
                store_phase(geo, (dr, di), out, count, (a, b));
            }
        }
    }
}

/// The inverse transform (parts swapped) of the grid `(dr, di)`: every column, then the
/// interior rows, whose interior columns are written back through GELU if `act`.
#[inline(always)]
fn inverse_kept<S: Simd>(
    s: S,
    geo: &Geometry,
    (dr, di): (&mut [V], &mut [V]),
    (line_re, line_im): (&mut [V], &mut [V]),
    scratch: &mut [V],
    act: bool,
) {
    let (hp, wp, pad, w) = (geo.hp, geo.wp, geo.pad, geo.w);
    for j in 0..wp {
        geo.plan_h.forward(
            s,
            (&*di, &*dr),
            (j, wp),
            (&mut *line_im, &mut *line_re),
            scratch,
        );
        for i in 0..hp {
            dr[i * wp + j] = line_re[i];
            di[i * wp + j] = line_im[i];
        }
    }
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
        for q in 0..count {
            let src = if q % 2 == 0 { gr } else { gi };
            let dst = &mut out[(q * ho + s * i + a) * wo..][..wo];
            for (j, v) in src.iter().enumerate() {
                dst[s * j + b] = v.0[q / 2];
            }
        }
    }
}

/// The filter step of [`solve_grid`], on the padded grid: with Z the spectrum, channel a's is
/// Xa = (Z[k] + conj Z[-k]) / 2 and channel b's Xb = (Z[k] - conj Z[-k]) / 2i; the result is
/// Y[k] = Ga Xa + i Gb Xb, and at -k its conjugate parts (the filters are Hermitian). Z is read
/// from `src` when given (kept for the next phase), else from `dst`.
#[inline(always)]
fn filter_all<S: Simd>(
    s: S,
    geo: &Geometry,
    g: &[V],
    src: Option<(&[V], &[V])>,
    (dr, di): (&mut [V], &mut [V]),
) {
    let (hp, wp) = (geo.hp, geo.wp);
    let wq = wp / 2 + 1;
    #[inline(always)]
    fn pair<S: Simd>(
        s: S,
        (hp, wp, wq): (usize, usize, usize),
        g: &[V],
        src: Option<(&[V], &[V])>,
        (dr, di): (&mut [V], &mut [V]),
        (u, v): (usize, usize),
    ) {
        let (mu, mv) = ((hp - u) % hp, (wp - v) % wp);
        let (k, mk) = (u * wp + v, mu * wp + mv);
        let (zr, zi, mr, mi) = match src {
            Some((sr, si)) => (sr[k], si[k], sr[mk], si[mk]),
            None => (dr[k], di[k], dr[mk], di[mk]),
        };
        let (ar, ai) = (s.scale(s.add(zr, mr), 0.5), s.scale(s.sub(zi, mi), 0.5));
        let (br, bi) = (s.scale(s.add(zi, mi), 0.5), s.scale(s.sub(mr, zr), 0.5));
        let f = &g[4 * (u * wq + v)..][..4];
        let (pr, pi) = s.cmul(f[0], f[1], ar, ai);
        let (qr, qi) = s.cmul(f[2], f[3], br, bi);
        (dr[mk], di[mk]) = (s.add(pr, qi), s.sub(qr, pi));
        (dr[k], di[k]) = (s.sub(pr, qi), s.add(pi, qr));
    }
    let dims = (hp, wp, wq);
    for u in 0..hp {
        for v in 1..wp.div_ceil(2) {
            pair(s, dims, g, src, (&mut *dr, &mut *di), (u, v));
        }
    }
    // The columns that are their own mirror: 0, and wp/2 when wp is even.
    let self_mirrored = if wp % 2 == 0 && wp > 1 { 2 } else { 1 };
    for v in [0, wp / 2].into_iter().take(self_mirrored) {
        for u in 0..=hp / 2 {
            pair(s, dims, g, src, (&mut *dr, &mut *di), (u, v));
        }
    }
}

/// Reusable vector buffers for the groups in flight, shared by every fused solve of the
/// process: fresh allocations this large are page-faulted in on every call, which costs more
/// than the solve of a small image. It keeps what the widest call had in flight at the current
/// size, and [`clear`](Self::clear) (through [`crate::ops::clear_caches`]) frees it.
#[derive(Default)]
pub(crate) struct Pool(Mutex<Vec<Vec<V>>>);

impl Pool {
    /// A buffer of `len` vectors (contents unspecified).
    pub(crate) fn take(&self, len: usize) -> Vec<V> {
        if len == 0 {
            return Vec::new();
        }
        let mut bufs = lock(&self.0);
        let best = bufs
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        let mut v = match best {
            Some(i) => bufs.swap_remove(i),
            None => {
                // Buffers too small for this size are not going to fit the next ones either.
                bufs.retain(|b| b.capacity() >= len);
                drop(bufs);
                Vec::with_capacity(len)
            }
        };
        v.resize(len, V::default());
        v.truncate(len);
        v
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

/// Environment variable: MiB that kept CPU transfer functions may take in all (default 1024).
pub const FILTER_CACHE_ENV: &str = "CONVERSE_FILTER_CACHE_MB";

static CACHED_BYTES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn cache_budget() -> usize {
    static BUDGET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BUDGET.get_or_init(|| {
        std::env::var(FILTER_CACHE_ENV)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1024)
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

/// A group's transfer function, shared from a cache or owned (and given back to the pool).
pub(crate) enum FilterRef {
    Shared(Arc<Vec<V>>),
    Owned(Vec<V>),
}

impl std::ops::Deref for FilterRef {
    type Target = [V];
    fn deref(&self) -> &[V] {
        match self {
            Self::Shared(v) => v,
            Self::Owned(v) => v,
        }
    }
}

impl FilterRef {
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
        let cache = match self {
            Self::Cached(_, cache) if cache.keep.load(std::sync::atomic::Ordering::Relaxed) => {
                cache
            }
            _ => return FilterRef::Owned(build_group(taps, geo, set, g, pool)),
        };
        let groups = taps.channels().div_ceil(GROUP);
        let key = (geo.hp, geo.wp, geo.s);
        if let Some(Some(f)) = lock(&cache.groups)
            .get(&key)
            .and_then(|v| v.get(set * groups + g))
        {
            return FilterRef::Shared(f.clone());
        }
        let f = build_group(taps, geo, set, g, pool);
        let bytes = f.len() * size_of::<V>();
        let fits = CACHED_BYTES
            .fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                |used| (used + bytes <= cache_budget()).then_some(used + bytes),
            )
            .is_ok();
        if !fits {
            return FilterRef::Owned(f);
        }
        let f = Arc::new(f);
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
    let phase_len = geo.phase_len();
    let chans = c0..c0 + count;
    if s == 1 {
        transfer::build(taps, set, chans, (hp, wp), 1, |u, re, im| {
            lanes_row(&mut out[4 * u * wq..][..4 * wq], re, im, count, norm)
        });
        return out;
    }
    let wq_big = s * wp / 2 + 1;
    let (mut g_re, mut g_im) = (vec![0.0; s * hp * wq_big], vec![0.0; s * hp * wq_big]);
    for (f, c) in chans.enumerate() {
        transfer::build(taps, set, c..c + 1, (hp, wp), s, |u, re, im| {
            g_re[u * wq_big..][..wq_big].copy_from_slice(re);
            g_im[u * wq_big..][..wq_big].copy_from_slice(im);
        });
        transfer::phases((&g_re, &g_im), (hp, wp), s, |phase, u, re, im| {
            let row = &mut out[phase * phase_len + 4 * u * wq..][..4 * wq];
            let (lane, part) = (f / 2, 2 * (f % 2));
            for (v, (r, i)) in re.iter().zip(im).enumerate() {
                row[4 * v + part].0[lane] = (r * norm) as f32;
                row[4 * v + part + 1].0[lane] = (i * norm) as f32;
            }
        });
    }
    out
}

simd_fn! {
    /// One frequency row of a group's transfer functions into the lane layout: `re` and `im`
    /// hold `(wq, count)`, filters innermost; `row` gets four vectors per frequency.
    fn lanes_row(_s, row: &mut [V], re: &[f64], im: &[f64], count: usize, norm: f64) {
        if count == GROUP {
            for (v, out) in row.chunks_exact_mut(4).enumerate() {
                let (gr, gi) = (&re[v * GROUP..][..GROUP], &im[v * GROUP..][..GROUP]);
                for l in 0..LANES {
                    out[0].0[l] = (gr[2 * l] * norm) as f32;
                    out[1].0[l] = (gi[2 * l] * norm) as f32;
                    out[2].0[l] = (gr[2 * l + 1] * norm) as f32;
                    out[3].0[l] = (gi[2 * l + 1] * norm) as f32;
                }
            }
            return;
        }
        for (v, out) in row.chunks_exact_mut(4).enumerate() {
            let (gr, gi) = (&re[v * count..][..count], &im[v * count..][..count]);
            for f in 0..count {
                let (lane, part) = (f / 2, 2 * (f % 2));
                out[part].0[lane] = (gr[f] * norm) as f32;
                out[part + 1].0[lane] = (gi[f] * norm) as f32;
            }
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
        let f = filters.group(geo, set, g, pool);
        grid.solve_into(geo, &f, act, og, count);
        f.release(pool);
        grid.give_back(pool);
    });
    Ok(())
}
