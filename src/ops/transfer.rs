//! Converse2D's transfer functions, built in f64 straight from the kernel taps: the one place
//! where `G` is computed, for both solves (the fused CPU one takes it in its lane layout, the
//! reference one as a planar tensor on its device).
//!
//! With `y` the padded input `(hp, wp)`, its zero-inserted upsampling has the spectrum
//! `tile(FFT(y))` over the grid `(hs, ws) = (s*hp, s*wp)`, and its nearest upsampling `x0` that
//! times the box response `B` of an `s x s` block. Eq. (6) of the paper then reduces to one
//! filter, `X = G · tile(FFT(y))`, with
//! `G = B + conj(FK) · tile((1 - mean(FK·B)) / (mean(|FK|²) + λ))`, the means taken over the
//! `s x s` frequency blocks, and at `s = 1` simply `G = (conj(FK) + λ) / (|FK|² + λ)`. Unlike
//! the official form it never divides by `λ`, so it stays accurate when `λ` is tiny.
//!
//! `FK`, the spectrum of the kernel zero-padded to the grid and rolled by `-floor(k/2)`, comes
//! from a separable DFT of the taps: `k` row sums per frequency column, then `k` terms per
//! frequency, computed for the rows `u` and `-u` together. For a 7x7 kernel this costs about one
//! FFT pass and needs no padded copy of the kernel.

use std::f64::consts::PI;
use std::ops::Range;

use candle_core::{DType, Result, Tensor};

use super::cpu::simd::simd_fn;

/// A set of depthwise kernels and their `λ`, on the host in f64.
#[derive(Debug, Clone)]
pub(crate) struct Taps {
    /// `(sets, channels, kh, kw)`, row-major.
    k: Vec<f64>,
    /// `(channels)`.
    lam: Vec<f64>,
    sets: usize,
    channels: usize,
    kh: usize,
    kw: usize,
}

impl Taps {
    /// From `kernel` `(sets, C, kh, kw)` and `lam` `(1, C, 1, 1)`, on any device.
    pub(crate) fn new(kernel: &Tensor, lam: &Tensor) -> Result<Self> {
        let (sets, channels, kh, kw) = kernel.dims4()?;
        if lam.dims() != [1, channels, 1, 1] {
            candle_core::bail!(
                "Converse2D: lambda {:?} is not (1, {channels}, 1, 1)",
                lam.shape()
            )
        }
        let flat = |t: &Tensor| t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>();
        Ok(Self {
            k: flat(kernel)?,
            lam: flat(lam)?,
            sets,
            channels,
            kh,
            kw,
        })
    }

    /// Kernels per channel: 1 for a learned layer, N for per-image kernels.
    pub(crate) fn sets(&self) -> usize {
        self.sets
    }

    pub(crate) fn channels(&self) -> usize {
        self.channels
    }

    /// Fails when the kernel does not fit in the padded grid `(hp, wp)` at scale `s`.
    pub(crate) fn check_fits(&self, (hp, wp): (usize, usize), s: usize) -> Result<()> {
        let (kh, kw) = (self.kh, self.kw);
        if kh > hp * s || kw > wp * s || kh == 0 || kw == 0 {
            candle_core::bail!(
                "Converse2D: kernel {kh}x{kw} is larger than the padded input {hp}x{wp}"
            )
        }
        Ok(())
    }
}

/// `(cos, sin)` of `2 pi t / n`, the angle reduced exactly first.
fn unit(t: isize, n: usize) -> (f64, f64) {
    let a = 2.0 * PI * t.rem_euclid(n as isize) as f64 / n as f64;
    (a.cos(), a.sin())
}

/// The row factors of a separable DFT over `w` columns: `(cos, sin)` of
/// `2 pi v (b - kw/2) / w` for tap column `b < kw` and frequency `v < cols`, `(kw, cols)`.
fn row_factors(kw: usize, w: usize, cols: usize) -> Vec<(f64, f64)> {
    let cb = (kw / 2) as isize;
    (0..kw * cols)
        .map(|i| unit((i % cols) as isize * ((i / cols) as isize - cb), w))
        .collect()
}

/// The row sums of one kernel `(kh, kw)`: `R_a(v) = sum_b k[a, b] e^{-2 pi i v (b - kw/2) / w}`
/// from the [`row_factors`] `(kw, cols)`, as `(re, im)`, each `(kh, cols)`.
fn row_sums(k: &[f64], (kh, kw): (usize, usize), factors: &[(f64, f64)]) -> (Vec<f64>, Vec<f64>) {
    let cols = factors.len() / kw.max(1);
    let (mut re, mut im) = (vec![0.0; kh * cols], vec![0.0; kh * cols]);
    for b in 0..kw {
        for (v, &(c, s)) in factors[b * cols..][..cols].iter().enumerate() {
            for a in 0..kh {
                let t = k[a * kw + b];
                re[a * cols + v] += t * c;
                im[a * cols + v] -= t * s;
            }
        }
    }
    (re, im)
}

/// The column sums of a separable DFT, arranged for rows `u` and `-u` at once.
///
/// With `d = a - kh/2` a tap row's offset, row `u` weighs `R_a` by `e^{-2 pi i u d / h}`
/// `= cos - i sin`, and row `-u` by its conjugate. So with `A = sum_a cos R_a` and
/// `B = sum_a sin R_a`, `FK(u) = A - iB` and `FK(-u) = A + iB`. Offsets `d` and `-d` share their
/// cosine and have opposite sines: `A` sums `cos_d (R_d + R_-d)` and `B` sums
/// `sin_d (R_d - R_-d)`, half the terms. `a_rows` and `b_rows` hold those combined rows,
/// `a_offsets` and `b_offsets` the offset whose cosine or sine weighs each.
struct ColumnSums {
    a_offsets: Vec<isize>,
    b_offsets: Vec<isize>,
    /// `(terms, n)` each, as `(re, im)`.
    a_rows: (Vec<f64>, Vec<f64>),
    b_rows: (Vec<f64>, Vec<f64>),
}

impl ColumnSums {
    /// From row sums `(re, im)` `(kh, n)`.
    fn new((re, im): (&[f64], &[f64]), kh: usize) -> Self {
        let n = re.len() / kh.max(1);
        let (ca, kh) = ((kh / 2) as isize, kh as isize);
        let row = |d: isize| ((d + ca) as usize) * n;
        let mut sums = Self {
            a_offsets: vec![],
            b_offsets: vec![],
            a_rows: (vec![], vec![]),
            b_rows: (vec![], vec![]),
        };
        for d in -ca..kh - ca {
            let paired = d != 0 && (0..kh).contains(&(ca - d));
            if paired && d < 0 {
                continue;
            }
            let (pr, pi) = (&re[row(d)..][..n], &im[row(d)..][..n]);
            if !paired {
                // Its own cosine (1 at d = 0) and sine (0 at d = 0).
                sums.a_offsets.push(d);
                sums.a_rows.0.extend_from_slice(pr);
                sums.a_rows.1.extend_from_slice(pi);
                if d != 0 {
                    sums.b_offsets.push(d);
                    sums.b_rows.0.extend_from_slice(pr);
                    sums.b_rows.1.extend_from_slice(pi);
                }
                continue;
            }
            let (mr, mi) = (&re[row(-d)..][..n], &im[row(-d)..][..n]);
            sums.a_offsets.push(d);
            sums.a_rows.0.extend(pr.iter().zip(mr).map(|(a, b)| a + b));
            sums.a_rows.1.extend(pi.iter().zip(mi).map(|(a, b)| a + b));
            sums.b_offsets.push(d);
            sums.b_rows.0.extend(pr.iter().zip(mr).map(|(a, b)| a - b));
            sums.b_rows.1.extend(pi.iter().zip(mi).map(|(a, b)| a - b));
        }
        sums
    }

    /// The weights of row `u` of an `h`-row grid: the cosines for `A`, the sines for `B`.
    fn weights(&self, u: usize, h: usize) -> (Vec<f64>, Vec<f64>) {
        let angle = |d: isize| unit(u as isize * d, h);
        (
            self.a_offsets.iter().map(|&d| angle(d).0).collect(),
            self.b_offsets.iter().map(|&d| angle(d).1).collect(),
        )
    }
}

/// `A` and `B` ([`ColumnSums`]) for the four entries `v..v + 4`.
#[inline(always)]
fn column_sums4(
    sums: &ColumnSums,
    (ca, sb): (&[f64], &[f64]),
    v: usize,
    n: usize,
) -> [[f64; 4]; 4] {
    let (mut ar, mut ai, mut br, mut bi) = ([0.0; 4], [0.0; 4], [0.0; 4], [0.0; 4]);
    for (t, &c) in ca.iter().enumerate() {
        let (xr, xi) = (
            &sums.a_rows.0[t * n + v..][..4],
            &sums.a_rows.1[t * n + v..][..4],
        );
        for l in 0..4 {
            ar[l] += c * xr[l];
            ai[l] += c * xi[l];
        }
    }
    for (t, &s) in sb.iter().enumerate() {
        let (yr, yi) = (
            &sums.b_rows.0[t * n + v..][..4],
            &sums.b_rows.1[t * n + v..][..4],
        );
        for l in 0..4 {
            br[l] += s * yr[l];
            bi[l] += s * yi[l];
        }
    }
    [ar, ai, br, bi]
}

simd_fn! {
    /// `G = (conj(FK) + lam) / (|FK|² + lam)` on rows `u` and `-u` of every filter at once, from
    /// the column sums of `n` entries (frequencies times filters, filters innermost; `n` a
    /// multiple of 4) and row `u`'s weights; `lam` per entry. `out` is
    /// `[re(u), im(u), re(-u), im(-u)]`, each `n` long.
    fn g_pair(_s, sums: &ColumnSums, ca: &[f64], sb: &[f64], lam: &[f64], out: &mut [f64]) {
        let n = out.len() / 4;
        let (ur, rest) = out.split_at_mut(n);
        let (ui, rest) = rest.split_at_mut(n);
        let (mr, mi) = rest.split_at_mut(n);
        let outs = ur
            .chunks_exact_mut(4)
            .zip(ui.chunks_exact_mut(4))
            .zip(mr.chunks_exact_mut(4).zip(mi.chunks_exact_mut(4)))
            .zip(lam.chunks_exact(4));
        for (v, (((ur, ui), (mr, mi)), lam)) in outs.enumerate() {
            let [ar, ai, br, bi] = column_sums4(sums, (ca, sb), 4 * v, n);
            let lam: [f64; 4] = std::array::from_fn(|l| lam[l]);
            let g = |re: [f64; 4], im: [f64; 4]| {
                let inv: [f64; 4] =
                    std::array::from_fn(|l| 1.0 / (re[l] * re[l] + im[l] * im[l] + lam[l]));
                let gr: [f64; 4] = std::array::from_fn(|l| (re[l] + lam[l]) * inv[l]);
                let gi: [f64; 4] = std::array::from_fn(|l| -im[l] * inv[l]);
                (gr, gi)
            };
            let (gr, gi) = g(std::array::from_fn(|l| ar[l] + bi[l]), std::array::from_fn(|l| ai[l] - br[l]));
            ur.copy_from_slice(&gr);
            ui.copy_from_slice(&gi);
            let (gr, gi) = g(std::array::from_fn(|l| ar[l] - bi[l]), std::array::from_fn(|l| ai[l] + br[l]));
            mr.copy_from_slice(&gr);
            mi.copy_from_slice(&gi);
        }
    }
}

simd_fn! {
    /// `FK` on rows `u` and `-u`, as [`g_pair`] without the transfer function.
    fn fk_pair(_s, sums: &ColumnSums, ca: &[f64], sb: &[f64], out: &mut [f64]) {
        let n = out.len() / 4;
        let (ur, rest) = out.split_at_mut(n);
        let (ui, rest) = rest.split_at_mut(n);
        let (mr, mi) = rest.split_at_mut(n);
        for v in (0..n).step_by(4) {
            let [ar, ai, br, bi] = column_sums4(sums, (ca, sb), v, n);
            for l in 0..4 {
                ur[v + l] = ar[l] + bi[l];
                ui[v + l] = ai[l] - br[l];
                mr[v + l] = ar[l] - bi[l];
                mi[v + l] = ai[l] + br[l];
            }
        }
    }
}

/// `n` rounded up to a multiple of 4 (the kernels above take 4 entries at a time).
fn padded4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// Builds `G` for the channels `chans` of kernel set `set`, over the padded grid `(hp, wp)` at
/// scale `s`, on the half grid `(s*hp, s*wp/2+1)`, unnormalised. It hands each frequency row to
/// `emit(u, re, im)`: `re` and `im` hold `(s*wp/2+1, chans.len())`, the filters innermost. At
/// `s > 1`, `chans` must be one channel.
pub(crate) fn build(
    taps: &Taps,
    set: usize,
    chans: Range<usize>,
    (hp, wp): (usize, usize),
    s: usize,
    mut emit: impl FnMut(usize, &[f64], &[f64]),
) {
    let (kh, kw) = (taps.kh, taps.kw);
    let kernel = |c: usize| &taps.k[(set * taps.channels + c) * kh * kw..][..kh * kw];
    if s > 1 {
        assert_eq!(chans.len(), 1, "one filter at a time at scale > 1");
        let c = chans.start;
        return build_scaled(kernel(c), (kh, kw), taps.lam[c], (hp, wp), s, emit);
    }
    let (wq, f) = (wp / 2 + 1, chans.len());
    let (n, np) = (wq * f, padded4(wq * f));
    // Row sums of every filter, filters innermost: (kh, np), zero padded.
    let (mut r_re, mut r_im) = (vec![0.0; kh * np], vec![0.0; kh * np]);
    let factors = row_factors(kw, wp, wq);
    for (i, c) in chans.clone().enumerate() {
        let (re, im) = row_sums(kernel(c), (kh, kw), &factors);
        for a in 0..kh {
            for v in 0..wq {
                r_re[a * np + v * f + i] = re[a * wq + v];
                r_im[a * np + v * f + i] = im[a * wq + v];
            }
        }
    }
    let sums = ColumnSums::new((&r_re, &r_im), kh);
    let lam: Vec<f64> = (0..np).map(|i| taps.lam[chans.start + i % f]).collect();
    let mut rows = vec![0.0; 4 * np];
    for u in 0..=hp / 2 {
        let (ca, sb) = sums.weights(u, hp);
        g_pair(&sums, &ca, &sb, &lam, &mut rows);
        emit(u, &rows[..n], &rows[np..np + n]);
        let m = (hp - u) % hp;
        if m != u {
            emit(m, &rows[2 * np..2 * np + n], &rows[3 * np..3 * np + n]);
        }
    }
}

/// [`build`] for one kernel at scale `s > 1`: `FK` over the whole grid, the block means, then
/// `G` row by row.
fn build_scaled(
    k: &[f64],
    (kh, kw): (usize, usize),
    lam: f64,
    (hp, wp): (usize, usize),
    s: usize,
    mut emit: impl FnMut(usize, &[f64], &[f64]),
) {
    let (hs, ws) = (s * hp, s * wp);
    let np = padded4(ws);
    let (re, im) = row_sums(k, (kh, kw), &row_factors(kw, ws, ws));
    let (mut r_re, mut r_im) = (vec![0.0; kh * np], vec![0.0; kh * np]);
    for a in 0..kh {
        r_re[a * np..][..ws].copy_from_slice(&re[a * ws..][..ws]);
        r_im[a * np..][..ws].copy_from_slice(&im[a * ws..][..ws]);
    }
    let sums = ColumnSums::new((&r_re, &r_im), kh);
    // FK over the whole grid, row-major.
    let (mut fr, mut fi) = (vec![0.0; hs * ws], vec![0.0; hs * ws]);
    let mut pair = vec![0.0; 4 * np];
    for u in 0..=hs / 2 {
        let (ca, sb) = sums.weights(u, hs);
        fk_pair(&sums, &ca, &sb, &mut pair);
        let m = (hs - u) % hs;
        fr[u * ws..][..ws].copy_from_slice(&pair[..ws]);
        fi[u * ws..][..ws].copy_from_slice(&pair[np..np + ws]);
        fr[m * ws..][..ws].copy_from_slice(&pair[2 * np..2 * np + ws]);
        fi[m * ws..][..ws].copy_from_slice(&pair[3 * np..3 * np + ws]);
    }
    // The box response: B(u, v) = b(hs, u) b(ws, v), b(n, f) = sum_{a<s} e^{-2 pi i f a / n}.
    let bax = |n: usize, f: usize| {
        (0..s).fold((0.0, 0.0), |(re, im), a| {
            let (c, sn) = unit((f * a) as isize, n);
            (re + c, im - sn)
        })
    };
    let bh: Vec<(f64, f64)> = (0..hs).map(|u| bax(hs, u)).collect();
    let bw: Vec<(f64, f64)> = (0..ws).map(|v| bax(ws, v)).collect();
    let b = |u: usize, v: usize| {
        let ((ar, ai), (br, bi)) = (bh[u], bw[v]);
        (ar * br - ai * bi, ar * bi + ai * br)
    };
    // Q = (1 - mean(FK B)) / (mean |FK|² + lam) over the small grid.
    let mut q = vec![(0.0, 0.0); hp * wp];
    let blocks = (s * s) as f64;
    for u in 0..hp {
        for v in 0..wp {
            let (mut mr, mut mi, mut p) = (0.0, 0.0, 0.0);
            for a in 0..s {
                for c in 0..s {
                    let (uu, vv) = (u + a * hp, v + c * wp);
                    let (kr, ki) = (fr[uu * ws + vv], fi[uu * ws + vv]);
                    let (br, bi) = b(uu, vv);
                    mr += kr * br - ki * bi;
                    mi += kr * bi + ki * br;
                    p += kr * kr + ki * ki;
                }
            }
            let den = p / blocks + lam;
            q[u * wp + v] = ((1.0 - mr / blocks) / den, -mi / blocks / den);
        }
    }
    let wq = ws / 2 + 1;
    let (mut gr, mut gi) = (vec![0.0; wq], vec![0.0; wq]);
    for u in 0..hs {
        for v in 0..wq {
            let (kr, ki) = (fr[u * ws + v], fi[u * ws + v]);
            let (qr, qi) = q[(u % hp) * wp + v % wp];
            let (br, bi) = b(u, v);
            // B + conj(FK) Q
            gr[v] = br + kr * qr + ki * qi;
            gi[v] = bi + kr * qi - ki * qr;
        }
        emit(u, &gr, &gi);
    }
}

/// `G` of every filter of `taps` as a planar tensor `(sets, C, 2, s*hp, s*wp/2+1)` in `dtype`
/// on `dev`, for the reference solve (built on the host in parallel, then uploaded once).
pub(crate) fn planar(
    taps: &Taps,
    (hp, wp): (usize, usize),
    s: usize,
    dtype: DType,
    dev: &candle_core::Device,
) -> Result<Tensor> {
    use rayon::prelude::*;
    taps.check_fits((hp, wp), s)?;
    let (hs, wq) = (s * hp, s * wp / 2 + 1);
    let plane = hs * wq;
    let c = taps.channels;
    let mut data = vec![0.0f64; taps.sets * c * 2 * plane];
    data.par_chunks_mut(2 * plane)
        .enumerate()
        .for_each(|(i, dst)| {
            let (set, ch) = (i / c, i % c);
            build(taps, set, ch..ch + 1, (hp, wp), s, |u, re, im| {
                dst[u * wq..][..wq].copy_from_slice(re);
                dst[plane + u * wq..][..wq].copy_from_slice(im);
            });
        });
    let shape = (taps.sets, c, 2, hs, wq);
    Tensor::from_vec(data, shape, &candle_core::Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(dev)
}

/// The phases of a scale-`s` transfer function `g` (its half grid `(s*hp, s*wp/2+1)` as `re`
/// and `im`, row-major): for each output phase `(a, b)`, the filter over the input grid
/// `(hp, wp)` whose inverse transform gives the solution's pixels `(s*i + a, s*j + b)`,
/// `H_ab(u, v) = sum_{α, β < s} G(u + α hp, v + β wp) e^{2πi((u + α hp) a / hs + (v + β wp) b / ws)}`,
/// on the half grid `(hp, wp/2+1)`. Calls `emit(a * s + b, u, re, im)`. The sums run in f64,
/// so the aliases' cancellation costs no f32 precision.
pub(crate) fn phases(
    (g_re, g_im): (&[f64], &[f64]),
    (hp, wp): (usize, usize),
    s: usize,
    mut emit: impl FnMut(usize, usize, &[f64], &[f64]),
) {
    let (hs, ws) = (s * hp, s * wp);
    let (wq_big, wq) = (ws / 2 + 1, wp / 2 + 1);
    // G over the whole grid from its half: G(u, v) = conj G(-u, -v).
    let at = |u: usize, v: usize| {
        if v < wq_big {
            (g_re[u * wq_big + v], g_im[u * wq_big + v])
        } else {
            let (mu, mv) = ((hs - u) % hs, ws - v);
            (g_re[mu * wq_big + mv], -g_im[mu * wq_big + mv])
        }
    };
    let (eh, ew): (Vec<_>, Vec<_>) = (
        (0..hs * s)
            .map(|i| unit(((i / s) * (i % s)) as isize, hs))
            .collect(),
        (0..ws * s)
            .map(|i| unit(((i / s) * (i % s)) as isize, ws))
            .collect(),
    );
    // T_b(u, v) = sum_β G(u, v + β wp) e^{2πi (v + β wp) b / ws}, for every row u.
    let mut t = vec![(0.0, 0.0); s * hs * wq];
    for b in 0..s {
        for u in 0..hs {
            for v in 0..wq {
                let (mut re, mut im) = (0.0, 0.0);
                for beta in 0..s {
                    let vv = v + beta * wp;
                    let (gr, gi) = at(u, vv);
                    let (c, sn) = ew[vv * s + b];
                    re += gr * c - gi * sn;
                    im += gr * sn + gi * c;
                }
                t[(b * hs + u) * wq + v] = (re, im);
            }
        }
    }
    let (mut hr, mut hi) = (vec![0.0; wq], vec![0.0; wq]);
    for a in 0..s {
        for b in 0..s {
            for u in 0..hp {
                hr.fill(0.0);
                hi.fill(0.0);
                for alpha in 0..s {
                    let uu = u + alpha * hp;
                    let (c, sn) = eh[uu * s + a];
                    let row = &t[(b * hs + uu) * wq..][..wq];
                    for (v, &(tr, ti)) in row.iter().enumerate() {
                        hr[v] += tr * c - ti * sn;
                        hi[v] += tr * sn + ti * c;
                    }
                }
                emit(a * s + b, u, &hr, &hi);
            }
        }
    }
}
