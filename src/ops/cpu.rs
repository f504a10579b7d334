//! The f32 CPU fast path: fused kernels on contiguous channels-first planes `(C, H*W)`.
//!
//! The generic candle path (any device, any float) computes the same maths op by op; these
//! kernels only fuse passes over memory: LayerNorm's affine folds into the next 1x1 (done by
//! the caller at load time), bias and GELU run as the GEMM's epilogue, residual adds accumulate
//! inside the GEMM, and the Converse2D solve (pad, FFT, filter, inverse FFT, crop, GELU) runs per
//! plane in place, in cache-sized work buffers.

use std::f32::consts::FRAC_1_SQRT_2;
use std::sync::Arc;

use rayon::prelude::*;
use rustfft::num_complex::Complex;

use super::fft::{plans, Plans};
use super::pad::PaddingMode;
use super::profile::{self, OpKind};
use super::vfft::{self, Plain, Simd, LANES, V};

/// `erf` on f32: the rational approximation of Eigen and XLA (abs. error < 4e-7; clamped to
/// [-4, 4], where f32 `erf` reaches ±1). Plain arithmetic, so loops over it vectorise.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_2e-10_f32;
    for a in [
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_599_8e-3,
        -1.609_603_3e-2,
    ] {
        p = p * x2 + a;
    }
    let mut q = -1.456_607_2e-5_f32;
    for b in [
        -2.133_740_6e-4,
        -1.682_827e-3,
        -7.373_329_2e-3,
        -1.426_473_9e-2,
    ] {
        q = q * x2 + b;
    }
    x * p / q
}

/// Exact (erf) GELU, as `Tensor::gelu_erf`.
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2))
}

/// Runs `$body` (which must inline: loops, not closures) compiled for AVX2 and FMA when the
/// CPU has them, so that the element-wise loops vectorise 8 wide.
macro_rules! fast_simd {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$doc])*
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn avx2(_: vfft::Avx2, $($arg: $ty),*) {
                body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if let Some(s) = vfft::Avx2::detect() {
                // SAFETY: `s` exists, so the CPU has AVX2 and FMA.
                return unsafe { avx2(s, $($arg),*) };
            }
            body($($arg),*)
        }
    };
}

fast_simd! {
    fn gelu_row(row: &mut [f32], b: f32) {
        for v in row.iter_mut() {
            *v = gelu(*v + b);
        }
    }
}

/// `x[r, ..] = gelu(x[r, ..] + b[r])` for each row `r` of length `n`.
pub(crate) fn bias_gelu(x: &mut [f32], b: &[f32], n: usize) {
    let _t = profile::time(OpKind::NormAct, || x.len() as f64);
    x.par_chunks_mut(n).zip(b).for_each(|(row, &b)| {
        // Long rows in pieces, so that both threads get work on small channel counts.
        for piece in row.chunks_mut(1 << 16) {
            gelu_row(piece, b);
        }
    });
}

/// `x[r, ..] += b[r]` (and GELU if `act`) for each row `r` of length `n`.
pub(crate) fn bias_act(x: &mut [f32], b: &[f32], n: usize, act: bool) {
    if act {
        return bias_gelu(x, b, n);
    }
    let _t = profile::time(OpKind::NormAct, || x.len() as f64);
    x.par_chunks_mut(n).zip(b).for_each(|(row, &b)| {
        row.iter_mut().for_each(|v| *v += b);
    });
}

/// GELU in place.
pub(crate) fn gelu_inplace(x: &mut [f32]) {
    let _t = profile::time(OpKind::NormAct, || x.len() as f64);
    x.par_chunks_mut(1 << 14).for_each(|c| gelu_row(c, 0.0));
}

const LN_BLOCK: usize = 256;

fast_simd! {
    fn layer_norm_block(x: &[f32], rows: &mut [&mut [f32]], n: usize, at: usize, len: usize, eps: f32) {
        let c = rows.len();
        let mut mean = [0f32; LN_BLOCK];
        let mut var = [0f32; LN_BLOCK];
        let (mean, var) = (&mut mean[..len], &mut var[..len]);
        for ch in 0..c {
            for (m, v) in mean.iter_mut().zip(&x[ch * n + at..][..len]) {
                *m += v;
            }
        }
        for m in mean.iter_mut() {
            *m /= c as f32;
        }
        for ch in 0..c {
            for ((q, v), m) in var.iter_mut().zip(&x[ch * n + at..][..len]).zip(&*mean) {
                *q += (v - m) * (v - m);
            }
        }
        for q in var.iter_mut() {
            *q = 1.0 / (*q / c as f32 + eps).sqrt();
        }
        for (ch, row) in rows.iter_mut().enumerate() {
            let src = &x[ch * n + at..][..len];
            for (((o, v), m), r) in row[..len].iter_mut().zip(src).zip(&*mean).zip(&*var) {
                *o = (v - m) * r;
            }
        }
    }
}

/// `dst (m, n) = [dst +] w (m, k) · x (k, n)`, all row-major and contiguous.
pub(crate) fn matmul(dst: &mut [f32], w: &[f32], x: &[f32], (m, k, n): (usize, usize, usize)) {
    matmul_impl(dst, w, x, (m, k, n), false)
}

fn matmul_impl(dst: &mut [f32], w: &[f32], x: &[f32], (m, k, n): (usize, usize, usize), acc: bool) {
    let _t = profile::time(OpKind::Gemm, || (2 * m * k * n) as f64);
    gemm_call(
        dst,
        w,
        (x, n),
        (m, k, n),
        acc,
        rayon::current_num_threads() > 1,
    )
}

/// `dst (m, n) = [dst +] w (m, k) · x (k, n)` on this thread only (inside a parallel loop),
/// `x`'s rows `x_rs` apart.
fn matmul_seq(
    dst: &mut [f32],
    w: &[f32],
    x: (&[f32], usize),
    (m, k, n): (usize, usize, usize),
    acc: bool,
) {
    let _t = profile::time_shared(OpKind::Gemm, || (2 * m * k * n) as f64);
    gemm_call(dst, w, x, (m, k, n), acc, false)
}

/// `dst (m, n) = [dst +] w (m, k) · x (k, n)`, `x`'s rows `x_rs` apart.
fn gemm_call(
    dst: &mut [f32],
    w: &[f32],
    (x, x_rs): (&[f32], usize),
    (m, k, n): (usize, usize, usize),
    acc: bool,
    parallel: bool,
) {
    assert!(dst.len() >= m * n && w.len() >= m * k && x_rs >= n);
    assert!(k == 0 || x.len() >= (k - 1) * x_rs + n);
    let threads = rayon::current_num_threads();
    let par = if parallel {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the three slices hold at least the row-major matrices the sizes and strides
    // describe (asserted above); `dst` is borrowed mutably, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            acc,
            w.as_ptr(),
            1,
            k as isize,
            x.as_ptr(),
            1,
            x_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// Pixels per column tile of the fused pointwise branches.
const TILE: usize = LN_BLOCK;

/// A `ConverseBlock` branch's 1x1 weights, LayerNorm's affine and `alpha` folded in: `expand`
/// `(2c, c)` with `bias` `(2c)`, and `reduce` `(c, 2c + 1)`, its bias as the last column.
pub(crate) struct BranchWeights<'a> {
    pub(crate) expand: &'a [f32],
    pub(crate) bias: &'a [f32],
    pub(crate) reduce: &'a [f32],
}

/// The row pieces of each column tile of a `(rows, n)` matrix, from each row's pieces:
/// `tiles[t][r]` is row `r`, columns `t * TILE..`.
fn tiles<P, R: Iterator<Item = P>>(rows: impl Iterator<Item = R>, n: usize) -> Vec<Vec<P>> {
    let mut tiles: Vec<Vec<P>> = (0..n.div_ceil(TILE)).map(|_| vec![]).collect();
    for row in rows {
        for (tile, piece) in tiles.iter_mut().zip(row) {
            tile.push(piece);
        }
    }
    tiles
}

fn tiles_mut(x: &mut [f32], rows: usize, n: usize) -> Vec<Vec<&mut [f32]>> {
    tiles(x[..rows * n].chunks_mut(n).map(|r| r.chunks_mut(TILE)), n)
}

fn tiles_ref(x: &[f32], rows: usize, n: usize) -> Vec<Vec<&[f32]>> {
    tiles(x[..rows * n].chunks(n).map(|r| r.chunks(TILE)), n)
}

/// Copies row pieces into `dst` as a contiguous `(rows, len)` matrix.
fn gather<R: AsRef<[f32]>>(rows: &[R], dst: &mut [f32]) {
    let len = rows.first().map_or(0, |r| r.as_ref().len());
    for (d, r) in dst.chunks_mut(len).zip(rows) {
        d.copy_from_slice(r.as_ref());
    }
}

fn scatter(src: &[f32], rows: &mut [&mut [f32]]) {
    let len = rows.first().map_or(0, |r| r.len());
    for (r, s) in rows.iter_mut().zip(src.chunks(len)) {
        r.copy_from_slice(s);
    }
}

/// Per-thread buffers of one column tile: `x` `(c, TILE)`, `norm` `(c, TILE)`, `h`
/// `(2c + 1, TILE)`.
struct TileWork {
    x: Vec<f32>,
    norm: Vec<f32>,
    h: Vec<f32>,
}

impl TileWork {
    fn new(c: usize) -> Self {
        Self {
            x: vec![0.0; c * TILE],
            norm: vec![0.0; c * TILE],
            h: vec![0.0; (2 * c + 1) * TILE],
        }
    }

    /// `h[..2c] = gelu(expand · norm(x) + bias)` and `h[2c] = 1` on the gathered tile of
    /// `len` pixels.
    fn expand(&mut self, c: usize, len: usize, w: &BranchWeights) {
        {
            let _t = profile::time_shared(OpKind::NormAct, || (c * len) as f64);
            let mut rows: Vec<&mut [f32]> = self.norm[..c * len].chunks_mut(len).collect();
            layer_norm_block(&self.x, &mut rows, len, 0, len, 1e-5);
        }
        matmul_seq(
            &mut self.h,
            w.expand,
            (&self.norm, len),
            (2 * c, c, len),
            false,
        );
        let _t = profile::time_shared(OpKind::NormAct, || (2 * c * len) as f64);
        for (row, &b) in self.h.chunks_mut(len).zip(w.bias) {
            gelu_row(row, b);
        }
        self.h[2 * c * len..(2 * c + 1) * len].fill(1.0);
    }
}

/// A `ConverseBlock` branch without Converse2D, in place on `x` `(c, n)`:
/// `x += reduce · [gelu(expand · norm(x) + bias); 1]`, tile by tile in cache.
pub(crate) fn branch(x: &mut [f32], (c, n): (usize, usize), w: &BranchWeights) {
    tiles_mut(x, c, n).into_par_iter().for_each_init(
        || TileWork::new(c),
        |tw, mut rows| {
            let len = rows[0].len();
            gather(&rows, &mut tw.x);
            tw.expand(c, len, w);
            matmul_seq(&mut tw.x, w.reduce, (&tw.h, len), (c, 2 * c + 1, len), true);
            scatter(&tw.x[..c * len], &mut rows);
        },
    );
}

/// The first half of a branch with Converse2D: `hidden` `(2c, n)` `= gelu(expand · norm(x) +
/// bias)`.
pub(crate) fn branch_expand(
    x: &[f32],
    hidden: &mut [f32],
    (c, n): (usize, usize),
    w: &BranchWeights,
) {
    let inputs = tiles_ref(x, c, n);
    tiles_mut(hidden, 2 * c, n)
        .into_par_iter()
        .zip(inputs)
        .for_each_init(
            || TileWork::new(c),
            |tw, (mut out, rows)| {
                let len = rows[0].len();
                gather(&rows, &mut tw.x);
                tw.expand(c, len, w);
                scatter(&tw.h[..2 * c * len], &mut out);
            },
        );
}

/// The second half: `x += reduce · hidden` for `hidden` `(2c + 1, n)` (last row ones), read
/// in place.
pub(crate) fn branch_reduce(
    x: &mut [f32],
    hidden: &[f32],
    (c, n): (usize, usize),
    w: &BranchWeights,
) {
    tiles_mut(x, c, n)
        .into_par_iter()
        .enumerate()
        .for_each_init(
            || TileWork::new(c),
            |tw, (t, mut rows)| {
                let len = rows[0].len();
                gather(&rows, &mut tw.x);
                let h = (&hidden[t * TILE..], n);
                matmul_seq(&mut tw.x, w.reduce, h, (c, 2 * c + 1, len), true);
                scatter(&tw.x[..c * len], &mut rows);
            },
        );
}

/// A Converse2D transfer function for the solves below, scaled by `1/(hs*ws)` (the inverse
/// FFT's normalisation), over the padded output grid `(hs, ws)`. At scale 1 it is laid out for
/// the lane-batched solve: groups of `2 * LANES` filters (channels `16g..16g+16` of one kernel),
/// per frequency `(u, v)` of the half spectrum `(hs, ws/2+1)` four vectors: the real and
/// imaginary parts of filter `2l`, then of filter `2l+1`, in lane `l`. Above scale 1: per
/// filter, its half spectrum column-major `(ws/2+1, hs)`.
#[derive(Debug)]
pub(crate) struct Filter {
    h: usize,
    w: usize,
    /// Filters per kernel (the channels).
    channels: usize,
    g: Vec<Complex<f32>>,
    lanes: Vec<V>,
}

/// Filters per lane group.
const GROUP: usize = 2 * LANES;

impl Filter {
    /// From `G` as planar `re`, `im`, each `(filters, h, w/2+1)` row-major (scale > 1).
    pub(crate) fn new(re: &[f64], im: &[f64], h: usize, w: usize) -> Self {
        let wq = w / 2 + 1;
        let norm = 1.0 / (h * w) as f64;
        let plane = h * wq;
        let mut g = Vec::with_capacity(re.len());
        for (re, im) in re.chunks(plane).zip(im.chunks(plane)) {
            for j in 0..wq {
                g.extend((0..h).map(|i| {
                    let q = i * wq + j;
                    Complex::new((re[q] * norm) as f32, (im[q] * norm) as f32)
                }));
            }
        }
        Self {
            h,
            w,
            channels: re.len() / plane,
            g,
            lanes: vec![],
        }
    }

    /// The scale-1 filters of `kernels` `(kn, c, kh, kw)` with `lam` `(c)` over the padded
    /// grid `(h, w)`, in the lane layout ([`lane_group`] per group, groups in parallel).
    pub(crate) fn lanes(
        kernels: &[f64],
        lam: &[f64],
        (kn, c): (usize, usize),
        (kh, kw): (usize, usize),
        (h, w): (usize, usize),
    ) -> Self {
        let per = c.div_ceil(GROUP);
        let group_len = 4 * h * (w / 2 + 1);
        let mut lanes = vec![V::default(); kn * per * group_len];
        lanes
            .par_chunks_mut(group_len)
            .enumerate()
            .for_each(|(i, g)| {
                let c0 = (i % per) * GROUP;
                let count = GROUP.min(c - c0);
                let k = &kernels[((i / per) * c + c0) * kh * kw..][..count * kh * kw];
                lane_group(g, k, &lam[c0..c0 + count], [kh, kw, h, w]);
            });
        Self {
            h,
            w,
            channels: c,
            g: vec![],
            lanes,
        }
    }

    /// The filters of `parts`, in order (all of one size), for `channels` channels.
    pub(crate) fn concat(parts: Vec<Self>, channels: usize) -> Self {
        let (h, w) = parts.first().map_or((0, 0), |f| (f.h, f.w));
        let (mut g, mut lanes) = (vec![], vec![]);
        for f in parts {
            g.extend(f.g);
            lanes.extend(f.lanes);
        }
        Self {
            h,
            w,
            channels,
            g,
            lanes,
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        self.g.len() * std::mem::size_of::<Complex<f32>>()
            + self.lanes.len() * std::mem::size_of::<V>()
    }
}

fast_simd! {
    /// One lane group of scale-1 transfer functions `G = (conj FK + λ) / (|FK|² + λ)`, scaled by
    /// `1/(h*w)`, for `count = lam.len()` kernels `(count, kh, kw)` centred at `(kh/2, kw/2)`:
    /// `FK` by a separable DFT straight from the taps, in f64 (`kh * (w/2+1)` row sums, then
    /// `kh` terms per frequency), which is cheaper than an FFT of the padded kernel.
    fn lane_group(g: &mut [V], kernels: &[f64], lam: &[f64], dims: [usize; 4]) {
        let [kh, kw, h, w] = dims;
        let wq = w / 2 + 1;
        let norm = 1.0 / (h * w) as f64;
        // e^{-2 pi i t / n}, the angle reduced exactly first.
        let unit = |t: isize, n: usize| {
            let a = -2.0 * std::f64::consts::PI * t.rem_euclid(n as isize) as f64 / n as f64;
            (a.cos(), a.sin())
        };
        let (ca, cb) = ((kh / 2) as isize, (kw / 2) as isize);
        let (mut rc, mut rs) = (vec![0.0; kw * wq], vec![0.0; kw * wq]);
        for b in 0..kw {
            for v in 0..wq {
                (rc[b * wq + v], rs[b * wq + v]) = unit(v as isize * (b as isize - cb), w);
            }
        }
        let (mut hc, mut hs) = (vec![0.0; h * kh], vec![0.0; h * kh]);
        for u in 0..h {
            for a in 0..kh {
                (hc[u * kh + a], hs[u * kh + a]) = unit(u as isize * (a as isize - ca), h);
            }
        }
        // Row sums of every kernel first; then one frequency row `u` at a time for all the
        // kernels, so that the group's output row stays in cache.
        let count = lam.len();
        let (mut rr, mut ri) = (vec![0.0; count * kh * wq], vec![0.0; count * kh * wq]);
        for (f, k) in kernels.chunks(kh * kw).take(count).enumerate() {
            for a in 0..kh {
                let at = (f * kh + a) * wq;
                let (ra, ia) = (&mut rr[at..][..wq], &mut ri[at..][..wq]);
                for b in 0..kw {
                    let t = k[a * kw + b];
                    let (c, s) = (&rc[b * wq..][..wq], &rs[b * wq..][..wq]);
                    for v in 0..wq {
                        ra[v] += t * c[v];
                        ia[v] += t * s[v];
                    }
                }
            }
        }
        let (mut fr, mut fi) = (vec![0.0; wq], vec![0.0; wq]);
        for u in 0..h {
            let row = &mut g[4 * u * wq..][..4 * wq];
            for (f, &l) in lam.iter().enumerate() {
                fr.fill(0.0);
                fi.fill(0.0);
                for a in 0..kh {
                    let (c, s) = (hc[u * kh + a], hs[u * kh + a]);
                    let at = (f * kh + a) * wq;
                    let (ra, ia) = (&rr[at..][..wq], &ri[at..][..wq]);
                    for v in 0..wq {
                        fr[v] += ra[v] * c - ia[v] * s;
                        fi[v] += ra[v] * s + ia[v] * c;
                    }
                }
                let (lane, part) = (f / 2, 2 * (f % 2));
                for v in 0..wq {
                    let den = fr[v] * fr[v] + fi[v] * fi[v] + l;
                    row[4 * v + part].0[lane] = ((fr[v] + l) / den * norm) as f32;
                    row[4 * v + part + 1].0[lane] = (-fi[v] / den * norm) as f32;
                }
            }
        }
    }
}

/// Per-thread buffers of one plane's solve: the low-resolution padded grid `(hp, wp)` and, at
/// scale `s > 1`, the output grid `(s*hp, s*wp)`.
struct Work {
    /// Half spectrum, column-major `(wp/2+1, hp)`.
    cols: Vec<Complex<f32>>,
    /// At `s > 1`: the tiled, filtered half spectrum `(s*wp/2+1, s*hp)`.
    big: Vec<Complex<f32>>,
    row: Vec<f32>,
    spec: Vec<Complex<f32>>,
    scratch: Vec<Complex<f32>>,
}

impl Work {
    fn new(lo: &Plans<f32>, hi: &Plans<f32>, (hp, wp): (usize, usize), s: usize) -> Self {
        let zero = Complex::new(0.0, 0.0);
        let scratch = [
            lo.r2c.get_scratch_len(),
            hi.c2r.get_scratch_len(),
            lo.fwd.get_inplace_scratch_len(),
            hi.inv.get_inplace_scratch_len(),
        ];
        let big = if s > 1 { (s * wp / 2 + 1) * s * hp } else { 0 };
        Self {
            cols: vec![zero; (wp / 2 + 1) * hp],
            big: vec![zero; big],
            row: vec![0.0; s * wp],
            spec: vec![zero; s * wp / 2 + 1],
            scratch: vec![zero; scratch.into_iter().max().unwrap_or(0)],
        }
    }
}

/// One Converse2D solve's geometry: input planes `(h, w)`, padding, scale and source maps.
struct Geometry {
    hw: (usize, usize),
    pad: usize,
    s: usize,
    /// Source row of each padded row (`None`: zeros).
    rows: Vec<Option<isize>>,
    /// Source column of each padded column outside the image.
    edges: Vec<(usize, Option<isize>)>,
    lo: Arc<Plans<f32>>,
    hi: Arc<Plans<f32>>,
}

impl Geometry {
    fn new((h, w): (usize, usize), pad: usize, s: usize, mode: PaddingMode) -> Self {
        let (hp, wp) = (h + 2 * pad, w + 2 * pad);
        let src = |i: usize, n: usize| match i.checked_sub(pad).filter(|&i| i < n) {
            Some(i) => Some(i as isize),
            None => mode.source(i as isize - pad as isize, n as isize),
        };
        Self {
            hw: (h, w),
            pad,
            s,
            rows: (0..hp).map(|i| src(i, h)).collect(),
            edges: (0..pad)
                .chain(pad + w..wp)
                .map(|j| (j, src(j, w)))
                .collect(),
            lo: plans::<f32>(hp, wp),
            hi: plans::<f32>(s * hp, s * wp),
        }
    }

    fn padded(&self) -> (usize, usize) {
        (self.hw.0 + 2 * self.pad, self.hw.1 + 2 * self.pad)
    }

    fn work(&self) -> Work {
        Work::new(&self.lo, &self.hi, self.padded(), self.s)
    }

    /// Pads `plane` and leaves its 2-D half spectrum in `work.cols`.
    fn forward(&self, work: &mut Work, plane: &[f32]) {
        let (hp, wp) = self.padded();
        let (w, pad) = (self.hw.1, self.pad);
        let wq = wp / 2 + 1;
        let (row, spec) = (&mut work.row[..wp], &mut work.spec[..wq]);
        // Padded rows: real FFTs, stored transposed so the column FFTs run on contiguous data.
        for (i, r) in self.rows.iter().enumerate() {
            match r {
                None => spec.fill(Complex::new(0.0, 0.0)),
                Some(r) => {
                    let line = &plane[*r as usize * w..][..w];
                    row[pad..pad + w].copy_from_slice(line);
                    for &(j, s) in &self.edges {
                        row[j] = s.map_or(0.0, |s| line[s as usize]);
                    }
                    // Lengths match the plan, so this cannot fail.
                    let _ = self
                        .lo
                        .r2c
                        .process_with_scratch(row, spec, &mut work.scratch);
                }
            }
            for (j, v) in spec.iter().enumerate() {
                work.cols[j * hp + i] = *v;
            }
        }
        self.lo
            .fwd
            .process_with_scratch(&mut work.cols, &mut work.scratch);
    }

    /// Multiplies the spectrum in `work` by `g` (tiled `s x s` times first when `s > 1`), inverts
    /// it and writes the cropped result to `out` `(s*h, s*w)`, through GELU if `act`.
    fn filter_inverse(&self, work: &mut Work, g: &[Complex<f32>], out: &mut [f32], act: bool) {
        let (hp, wp) = self.padded();
        let s = self.s;
        let (hs, ws) = (s * hp, s * wp);
        let spectrum = if s == 1 {
            work.cols.iter_mut().zip(g).for_each(|(v, g)| *v *= g);
            &mut work.cols
        } else {
            // The zero-inserted input's spectrum is the small one tiled: entry (u, v) of the big
            // grid is (u mod hp, v mod wp) of the small full spectrum, read from the stored half
            // through Hermitian symmetry when v mod wp > wp/2.
            for (j, (col, g)) in work.big.chunks_mut(hs).zip(g.chunks(hs)).enumerate() {
                let v = j % wp;
                if v <= wp / 2 {
                    let src = &work.cols[v * hp..(v + 1) * hp];
                    for (u, (o, g)) in col.iter_mut().zip(g).enumerate() {
                        *o = src[u % hp] * g;
                    }
                } else {
                    let src = &work.cols[(wp - v) * hp..(wp - v + 1) * hp];
                    for (u, (o, g)) in col.iter_mut().zip(g).enumerate() {
                        *o = src[(hp - u % hp) % hp].conj() * g;
                    }
                }
            }
            &mut work.big
        };
        self.hi
            .inv
            .process_with_scratch(spectrum, &mut work.scratch);
        // Only the rows and columns kept by the crop are transformed back and written.
        let (ho, wo) = (s * self.hw.0, s * self.hw.1);
        let crop = s * self.pad;
        let wq = ws / 2 + 1;
        for (i, out) in out.chunks_mut(wo).enumerate().take(ho) {
            for (j, v) in work.spec[..wq].iter_mut().enumerate() {
                *v = spectrum[j * hs + i + crop];
            }
            // A real signal's DC and Nyquist bins are real: drop rounding noise there.
            work.spec[0].im = 0.0;
            if ws % 2 == 0 {
                work.spec[ws / 2].im = 0.0;
            }
            let _ = self.hi.c2r.process_with_scratch(
                &mut work.spec[..wq],
                &mut work.row[..ws],
                &mut work.scratch,
            );
            let kept = &work.row[crop..crop + wo];
            if act {
                out.iter_mut().zip(kept).for_each(|(o, v)| *o = gelu(*v));
            } else {
                out.copy_from_slice(kept);
            }
        }
    }
}

fn check_filter(filter: &Filter, geo: &Geometry) -> usize {
    let (hp, wp) = geo.padded();
    let (hs, ws) = (geo.s * hp, geo.s * wp);
    assert_eq!((filter.h, filter.w), (hs, ws), "Converse2D filter size");
    (ws / 2 + 1) * hs
}

/// Solves Converse2D at scale 1 in place for `planes` `(N*C, h, w)`: each plane is padded by
/// `pad` (`mode`), multiplied in the Fourier domain by its transfer function and cropped back;
/// with `act`, GELU is applied to the result. Planes go in batches of [`GROUP`] channels of one
/// image, two per lane as the real and imaginary parts of one complex 2-D FFT ([`vfft`]).
pub(crate) fn converse_solve(
    planes: &mut [f32],
    (h, w): (usize, usize),
    pad: usize,
    mode: PaddingMode,
    filter: &Filter,
    act: bool,
) {
    let geo = LaneGeometry::new((h, w), pad, mode);
    let (hp, wp) = (geo.hp, geo.wp);
    assert_eq!((filter.h, filter.w), (hp, wp), "Converse2D filter size");
    let c = filter.channels;
    let group_len = 4 * hp * (wp / 2 + 1);
    let per_kernel = c.div_ceil(GROUP);
    let kernels = filter.lanes.len() / (group_len * per_kernel);
    assert!(
        kernels > 0 && c > 0 && planes.len() % (c * h * w) == 0,
        "Converse2D lane filter"
    );
    let _t = profile::time(OpKind::Fft, || {
        profile::fft_flops(planes.len() / (h * w), hp, wp)
    });
    let mut batches = vec![];
    for (n, image) in planes.chunks_mut(c * h * w).enumerate() {
        for (g, batch) in image.chunks_mut(GROUP * h * w).enumerate() {
            let group = (n % kernels) * per_kernel + g;
            batches.push((&filter.lanes[group * group_len..][..group_len], batch));
        }
    }
    batches.into_par_iter().for_each(|(g, batch)| {
        LANE_WORK.with(|cell| {
            let mut cell = cell.borrow_mut();
            // One set of buffers per thread, kept between calls of the same grid size.
            if cell.as_ref().map(|w| w.shape) != Some((hp, wp)) {
                *cell = None;
                *cell = Some(LaneWork::new(&geo));
            }
            if let Some(work) = cell.as_mut() {
                solve_batch(&geo, work, batch, g, act);
            }
        })
    });
}

thread_local! {
    static LANE_WORK: std::cell::RefCell<Option<LaneWork>> = const { std::cell::RefCell::new(None) };
}

/// The geometry of the lane-batched solve: source row and column of each padded one, and the
/// two 1-D plans.
struct LaneGeometry {
    hw: (usize, usize),
    pad: usize,
    hp: usize,
    wp: usize,
    rows: Vec<Option<usize>>,
    cols: Vec<Option<usize>>,
    plan_h: Arc<vfft::Plan>,
    plan_w: Arc<vfft::Plan>,
}

impl LaneGeometry {
    fn new((h, w): (usize, usize), pad: usize, mode: PaddingMode) -> Self {
        let (hp, wp) = (h + 2 * pad, w + 2 * pad);
        let src = |i: usize, n: usize| match i.checked_sub(pad).filter(|&i| i < n) {
            Some(i) => Some(i),
            None => mode
                .source(i as isize - pad as isize, n as isize)
                .map(|s| s as usize),
        };
        Self {
            hw: (h, w),
            pad,
            hp,
            wp,
            rows: (0..hp).map(|i| src(i, h)).collect(),
            cols: (0..wp).map(|j| src(j, w)).collect(),
            plan_h: lane_plan(hp),
            plan_w: lane_plan(wp),
        }
    }
}

fn lane_plan(n: usize) -> Arc<vfft::Plan> {
    static PLANS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<usize, Arc<vfft::Plan>>>,
    > = std::sync::OnceLock::new();
    let mut plans = PLANS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    plans
        .entry(n)
        .or_insert_with(|| Arc::new(vfft::Plan::new(n)))
        .clone()
}

/// Per-thread buffers: the batch's complex grid `(hp, wp)` and one line.
struct LaneWork {
    shape: (usize, usize),
    re: Vec<V>,
    im: Vec<V>,
    line_re: Vec<V>,
    line_im: Vec<V>,
    scratch: Vec<V>,
}

impl LaneWork {
    fn new(geo: &LaneGeometry) -> Self {
        let (n, line) = (geo.hp * geo.wp, geo.hp.max(geo.wp));
        let scratch = geo.plan_h.scratch_len().max(geo.plan_w.scratch_len());
        Self {
            shape: (geo.hp, geo.wp),
            re: vec![V::default(); n],
            im: vec![V::default(); n],
            line_re: vec![V::default(); line],
            line_im: vec![V::default(); line],
            scratch: vec![V::default(); scratch],
        }
    }
}

fn solve_batch(geo: &LaneGeometry, work: &mut LaneWork, batch: &mut [f32], g: &[V], act: bool) {
    #[cfg(target_arch = "x86_64")]
    if let Some(s) = vfft::Avx2::detect() {
        // SAFETY: `s` exists, so the CPU has AVX2 and FMA.
        return unsafe { solve_batch_avx2(s, geo, work, batch, g, act) };
    }
    solve_batch_impl(Plain, geo, work, batch, g, act)
}

/// [`solve_batch_impl`] compiled for AVX2 and FMA, which the arithmetic of `s` uses.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn solve_batch_avx2(
    s: vfft::Avx2,
    geo: &LaneGeometry,
    work: &mut LaneWork,
    batch: &mut [f32],
    g: &[V],
    act: bool,
) {
    solve_batch_impl(s, geo, work, batch, g, act)
}

/// One batch of up to [`GROUP`] planes `(h, w)`: plane `2l` is lane `l`'s real part and plane
/// `2l+1` its imaginary part. The two spectra are separated with Hermitian symmetry,
/// filtered each by its own transfer function and recombined before one inverse transform.
#[inline(always)]
fn solve_batch_impl<S: Simd>(
    s: S,
    geo: &LaneGeometry,
    work: &mut LaneWork,
    batch: &mut [f32],
    g: &[V],
    act: bool,
) {
    let ((h, w), pad, hp, wp) = (geo.hw, geo.pad, geo.hp, geo.wp);
    let hw = h * w;
    let nq = batch.len() / hw;
    let LaneWork {
        re,
        im,
        line_re,
        line_im,
        scratch,
        ..
    } = work;
    // Pad and interleave: the image columns lane by lane, then the padding columns whole.
    for (i, row) in geo.rows.iter().enumerate() {
        let (gr, gi) = (&mut re[i * wp..][..wp], &mut im[i * wp..][..wp]);
        if nq < GROUP || row.is_none() {
            gr.fill(V::default());
            gi.fill(V::default());
        }
        let Some(r) = *row else { continue };
        for q in 0..nq {
            let src = &batch[q * hw + r * w..][..w];
            let dst = if q % 2 == 0 { &mut *gr } else { &mut *gi };
            for (d, s) in dst[pad..pad + w].iter_mut().zip(src) {
                d.0[q / 2] = *s;
            }
        }
        for (j, col) in geo.cols.iter().enumerate() {
            if j < pad || j >= pad + w {
                (gr[j], gi[j]) = match *col {
                    Some(c) => (gr[pad + c], gi[pad + c]),
                    None => (V::default(), V::default()),
                };
            }
        }
    }
    let (ph, pw) = (&*geo.plan_h, &*geo.plan_w);
    // Forward: rows, then columns.
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
    // Filter: with Z the batch's spectrum, plane a's is Xa = (Z[k] + conj Z[-k]) / 2 and plane
    // b's Xb = (Z[k] - conj Z[-k]) / 2i; the result is Y[k] = Ga Xa + i Gb Xb, and at -k its
    // conjugate parts (the filters are Hermitian).
    let wq = wp / 2 + 1;
    for u in 0..hp {
        for v in 1..wp.div_ceil(2) {
            filter_pair(s, (re, im), g, (hp, wp, wq), (u, v));
        }
    }
    let last = if wp % 2 == 0 {
        vec![0, wp / 2]
    } else {
        vec![0]
    };
    for v in last {
        for u in 0..=hp / 2 {
            filter_pair(s, (re, im), g, (hp, wp, wq), (u, v));
        }
    }
    // Inverse (parts swapped): columns, then the kept rows, cropped into the planes.
    for j in 0..wp {
        ph.forward(s, (im, re), (j, wp), (line_im, line_re), scratch);
        for i in 0..hp {
            re[i * wp + j] = line_re[i];
            im[i * wp + j] = line_im[i];
        }
    }
    for i in 0..h {
        pw.forward(
            s,
            (im, re),
            ((i + pad) * wp, 1),
            (line_im, line_re),
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
        for q in 0..nq {
            let src = if q % 2 == 0 { &*kr } else { &*ki };
            let dst = &mut batch[q * hw + i * w..][..w];
            for (d, s) in dst.iter_mut().zip(src) {
                *d = s.0[q / 2];
            }
        }
    }
}

/// One step of the filter in [`solve_batch_impl`]: frequency `(u, v)` and its mirror.
#[inline(always)]
fn filter_pair<S: Simd>(
    s: S,
    (re, im): (&mut [V], &mut [V]),
    g: &[V],
    (hp, wp, wq): (usize, usize, usize),
    (u, v): (usize, usize),
) {
    let (mu, mv) = ((hp - u) % hp, (wp - v) % wp);
    let (k, mk) = (u * wp + v, mu * wp + mv);
    let (zr, zi, mr, mi) = (re[k], im[k], re[mk], im[mk]);
    let (ar, ai) = (s.scale(s.add(zr, mr), 0.5), s.scale(s.sub(zi, mi), 0.5));
    let (br, bi) = (s.scale(s.add(zi, mi), 0.5), s.scale(s.sub(mr, zr), 0.5));
    let f = &g[4 * (u * wq + v)..][..4];
    let (pr, pi) = s.cmul(f[0], f[1], ar, ai);
    let (qr, qi) = s.cmul(f[2], f[3], br, bi);
    (re[mk], im[mk]) = (s.add(pr, qi), s.sub(qr, pi));
    (re[k], im[k]) = (s.sub(pr, qi), s.add(pi, qr));
}

/// [`converse_solve`] at scale `s`: `input` `(N*C, h, w)` to `out` `(N*C, s*h, s*w)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn converse_solve_scaled(
    input: &[f32],
    out: &mut [f32],
    (h, w): (usize, usize),
    s: usize,
    pad: usize,
    mode: PaddingMode,
    filter: &Filter,
    act: bool,
) {
    if s == 1 {
        out.copy_from_slice(input);
        return converse_solve(out, (h, w), pad, mode, filter, act);
    }
    let geo = Geometry::new((h, w), pad, s, mode);
    let len = check_filter(filter, &geo);
    let (hp, wp) = geo.padded();
    let _t = profile::time(OpKind::Fft, || {
        profile::fft_flops(input.len() / (h * w), s * hp, s * wp)
    });
    let nf = filter.g.len() / len;
    out.par_chunks_mut(s * s * h * w)
        .zip(input.par_chunks(h * w))
        .enumerate()
        .for_each_init(
            || geo.work(),
            |work, (i, (o, x))| {
                geo.forward(work, x);
                let g = &filter.g[(i % nf) * len..][..len];
                geo.filter_inverse(work, g, o, act);
            },
        );
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn gelu_matches_the_f64_erf_gelu() {
        let xs: Vec<f64> = (-12000..=12000).map(|i| i as f64 * 1e-3).collect();
        let want = Tensor::new(xs.as_slice(), &Device::Cpu)
            .unwrap()
            .gelu_erf()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let worst = xs
            .iter()
            .zip(&want)
            .map(|(x, y)| (gelu(*x as f32) as f64 - y).abs() / y.abs().max(1.0))
            .fold(0.0, f64::max);
        // Worst near x = -5.6, where GELU's `1 + erf` cancels: erf's ~4e-7 error times x/2.
        assert!(worst < 1.5e-6, "gelu error {worst}");
    }

    #[test]
    fn layer_norm_and_matmul_match_plain_loops() {
        let (c, n, m) = (5, 300, 4);
        let x: Vec<f32> = (0..c * n).map(|i| ((i * 37 % 101) as f32).sin()).collect();
        let mut out = vec![0f32; c * 200];
        let mut rows: Vec<&mut [f32]> = out.chunks_mut(200).collect();
        // Columns 100..300 of `x`.
        layer_norm_block(&x, &mut rows, n, 100, 200, 1e-5);
        for p in [0, 1, 150, 199] {
            let v: Vec<f32> = (0..c).map(|ch| x[ch * n + 100 + p]).collect();
            let mean = v.iter().sum::<f32>() / c as f32;
            let var = v.iter().map(|a| (a - mean) * (a - mean)).sum::<f32>() / c as f32;
            for ch in 0..c {
                let want = (v[ch] - mean) / (var + 1e-5).sqrt();
                assert!((out[ch * 200 + p] - want).abs() < 1e-5);
            }
        }
        let w: Vec<f32> = (0..m * c).map(|i| i as f32 * 0.1 - 1.0).collect();
        let mut y = vec![1f32; m * n];
        matmul_seq(&mut y, &w, (&x, n), (m, c, n), true);
        for (o, p) in [(0, 0), (3, 299), (2, 123)] {
            let want = 1.0 + (0..c).map(|k| w[o * c + k] * x[k * n + p]).sum::<f32>();
            assert!((y[o * n + p] - want).abs() < 1e-5);
        }
    }

    #[test]
    fn fused_branch_matches_the_unfused_maths() {
        // 600 pixels: two whole tiles and a partial one.
        let (c, n) = (3, 600);
        let x0: Vec<f32> = (0..c * n)
            .map(|i| ((i * 13 % 97) as f32 * 0.3).cos())
            .collect();
        let expand: Vec<f32> = (0..2 * c * c).map(|i| (i as f32 * 0.7).sin()).collect();
        let bias: Vec<f32> = (0..2 * c).map(|i| i as f32 * 0.1 - 0.2).collect();
        let reduce: Vec<f32> = (0..c * (2 * c + 1))
            .map(|i| (i as f32 * 0.3).cos())
            .collect();
        let w = BranchWeights {
            expand: &expand,
            bias: &bias,
            reduce: &reduce,
        };
        let want: Vec<f32> = {
            let mut y = x0.clone();
            for p in 0..n {
                let v: Vec<f32> = (0..c).map(|ch| x0[ch * n + p]).collect();
                let mean = v.iter().sum::<f32>() / c as f32;
                let var = v.iter().map(|a| (a - mean) * (a - mean)).sum::<f32>() / c as f32;
                let z: Vec<f32> = v.iter().map(|a| (a - mean) / (var + 1e-5).sqrt()).collect();
                let mut h: Vec<f32> = (0..2 * c)
                    .map(|o| gelu((0..c).map(|k| expand[o * c + k] * z[k]).sum::<f32>() + bias[o]))
                    .collect();
                h.push(1.0);
                for o in 0..c {
                    y[o * n + p] += (0..=2 * c)
                        .map(|k| reduce[o * (2 * c + 1) + k] * h[k])
                        .sum::<f32>();
                }
            }
            y
        };
        let mut x = x0.clone();
        branch(&mut x, (c, n), &w);
        let mut hidden = vec![1f32; (2 * c + 1) * n];
        let mut y = x0.clone();
        branch_expand(&x0, &mut hidden, (c, n), &w);
        branch_reduce(&mut y, &hidden, (c, n), &w);
        for i in 0..c * n {
            assert!(
                (x[i] - want[i]).abs() < 1e-5,
                "branch at {i}: {} vs {}",
                x[i],
                want[i]
            );
            assert!((y[i] - want[i]).abs() < 1e-5, "expand + reduce at {i}");
        }
    }
}
