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
pub(crate) fn unit(t: isize, n: usize) -> (f64, f64) {
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

/// Filters a [`Columns`] works on at a time (one f64 vector of AVX-512).
pub(crate) const STEP: usize = 8;

/// `G` at scale 1 for a set of filters, one frequency column `v` at a time (every row `u`),
/// from the separable DFT of their taps.
///
/// With `d = a - kh/2` a tap row's offset and `R_d(v)` the row sums of the DFT along the rows,
/// row `u` weighs `R_d` by `e^{-2 pi i u d / hp} = cos - i sin`, and row `-u` by its conjugate.
/// So with `A = sum_d cos R_d` and `B = sum_d sin R_d`, `FK(u) = A - iB` and `FK(-u) = A + iB`;
/// offsets `d` and `-d` share their cosine and have opposite sines, so `A` sums
/// `cos_d (R_d + R_-d)` and `B` sums `sin_d (R_d - R_-d)`: half the terms. Within a column the
/// row sums of all the filters stay in cache while every row is made.
pub(crate) struct Columns {
    /// Combined row sums for `A` and for `B`: `(terms, wq, fp)` each, as `(re, im)`.
    a_rows: (Vec<f64>, Vec<f64>),
    b_rows: (Vec<f64>, Vec<f64>),
    /// Per row pair `u <= hp/2`: the cosines of the `A` terms and the sines of the `B` terms.
    cos: Vec<f64>,
    sin: Vec<f64>,
    /// `λ` per filter, padded to `fp` (padding filters: no taps, `λ = 1`).
    lam: Vec<f64>,
    /// Terms of `A` and of `B`.
    terms: (usize, usize),
    wq: usize,
    fp: usize,
    /// The column made last: `(hp, 2, fp)`.
    out: Vec<f64>,
}

impl Columns {
    /// The channels `chans` (in that order) of kernel set `set`, over the padded grid
    /// `(hp, wp)`.
    pub(crate) fn new(taps: &Taps, set: usize, chans: &[usize], (hp, wp): (usize, usize)) -> Self {
        let (kh, kw) = (taps.kh, taps.kw);
        let kernel = |c: usize| &taps.k[(set * taps.channels + c) * kh * kw..][..kh * kw];
        let (wq, fp) = (wp / 2 + 1, chans.len().div_ceil(STEP) * STEP);
        // Row sums of every filter: (kh, wq, fp).
        let n = wq * fp;
        let (mut r_re, mut r_im) = (vec![0.0; kh * n], vec![0.0; kh * n]);
        let factors = row_factors(kw, wp, wq);
        for (i, &c) in chans.iter().enumerate() {
            let (re, im) = row_sums(kernel(c), (kh, kw), &factors);
            for a in 0..kh {
                for v in 0..wq {
                    r_re[a * n + v * fp + i] = re[a * wq + v];
                    r_im[a * n + v * fp + i] = im[a * wq + v];
                }
            }
        }
        let (ca, khi) = ((kh / 2) as isize, kh as isize);
        let row = |d: isize| ((d + ca) as usize) * n;
        let (mut a_rows, mut b_rows) = ((vec![], vec![]), (vec![], vec![]));
        let (mut a_off, mut b_off) = (vec![], vec![]);
        for d in -ca..khi - ca {
            let paired = d != 0 && (0..khi).contains(&(ca - d));
            if paired && d < 0 {
                continue;
            }
            let (pr, pi) = (&r_re[row(d)..][..n], &r_im[row(d)..][..n]);
            if !paired {
                // Its own cosine (1 at d = 0) and sine (0 at d = 0).
                a_off.push(d);
                a_rows.0.extend_from_slice(pr);
                a_rows.1.extend_from_slice(pi);
                if d != 0 {
                    b_off.push(d);
                    b_rows.0.extend_from_slice(pr);
                    b_rows.1.extend_from_slice(pi);
                }
                continue;
            }
            let (mr, mi) = (&r_re[row(-d)..][..n], &r_im[row(-d)..][..n]);
            a_off.push(d);
            a_rows.0.extend(pr.iter().zip(mr).map(|(a, b)| a + b));
            a_rows.1.extend(pi.iter().zip(mi).map(|(a, b)| a + b));
            b_off.push(d);
            b_rows.0.extend(pr.iter().zip(mr).map(|(a, b)| a - b));
            b_rows.1.extend(pi.iter().zip(mi).map(|(a, b)| a - b));
        }
        let pairs = hp / 2 + 1;
        let cos = (0..pairs)
            .flat_map(|u| a_off.iter().map(move |&d| unit(u as isize * d, hp).0))
            .collect();
        let sin = (0..pairs)
            .flat_map(|u| b_off.iter().map(move |&d| unit(u as isize * d, hp).1))
            .collect();
        let lam = (0..fp)
            .map(|i| chans.get(i).map_or(1.0, |&c| taps.lam[c]))
            .collect();
        Self {
            terms: (a_off.len(), b_off.len()),
            a_rows,
            b_rows,
            cos,
            sin,
            lam,
            wq,
            fp,
            out: vec![0.0; hp * 2 * fp],
        }
    }

    /// Filters per row of [`Self::column`]: the channels, padded to a multiple of 8.
    pub(crate) fn width(&self) -> usize {
        self.fp
    }

    /// Column `v`: `(hp, 2, width)`, the real then the imaginary parts of every filter per row.
    pub(crate) fn column(&mut self, v: usize) -> &[f64] {
        let (stride, at) = (self.wq * self.fp, v * self.fp);
        g_column(
            (&self.a_rows, self.terms.0),
            (&self.b_rows, self.terms.1),
            (stride, at),
            (&self.cos, &self.sin),
            &self.lam,
            &mut self.out,
        );
        &self.out
    }
}

simd_fn! {
    /// One column of `G = (conj(FK) + λ) / (|FK|² + λ)` for every row: `a` and `b` are the
    /// combined row sums with their term counts (terms `stride` apart, this column at `at`),
    /// `cs` the per-row-pair cosines and sines. `out` is `(hp, 2, fp)`.
    fn g_column(
        _s,
        a: (&(Vec<f64>, Vec<f64>), usize),
        b: (&(Vec<f64>, Vec<f64>), usize),
        pos: (usize, usize),
        cs: (&[f64], &[f64]),
        lam: &[f64],
        out: &mut [f64],
    ) {
        let ((a_rows, ta), (b_rows, tb), (stride, col)) = (a, b, pos);
        let (cos, sin) = cs;
        let fp = lam.len();
        let hp = out.len() / (2 * fp);
        for u in 0..=hp / 2 {
            let m = (hp - u) % hp;
            let (cu, su) = (&cos[u * ta..][..ta], &sin[u * tb..][..tb]);
            for c in (0..fp).step_by(STEP) {
                let mut ar = [0.0; STEP];
                let mut ai = [0.0; STEP];
                let mut br = [0.0; STEP];
                let mut bi = [0.0; STEP];
                for (t, &w) in cu.iter().enumerate() {
                    let at = t * stride + col + c;
                    let (xr, xi) = (&a_rows.0[at..at + STEP], &a_rows.1[at..at + STEP]);
                    for l in 0..STEP {
                        ar[l] += w * xr[l];
                        ai[l] += w * xi[l];
                    }
                }
                for (t, &w) in su.iter().enumerate() {
                    let at = t * stride + col + c;
                    let (yr, yi) = (&b_rows.0[at..at + STEP], &b_rows.1[at..at + STEP]);
                    for l in 0..STEP {
                        br[l] += w * yr[l];
                        bi[l] += w * yi[l];
                    }
                }
                // FK(u) = A - iB = p, FK(-u) = A + iB = q; one division for both. In place: A
                // and B become G at u (real, imaginary) and G at -u.
                let lam = &lam[c..c + STEP];
                for l in 0..STEP {
                    let (pr, pi) = (ar[l] + bi[l], ai[l] - br[l]);
                    let (qr, qi) = (ar[l] - bi[l], ai[l] + br[l]);
                    let dp = pr * pr + pi * pi + lam[l];
                    let dq = qr * qr + qi * qi + lam[l];
                    let inv = 1.0 / (dp * dq);
                    let (ip, iq) = (dq * inv, dp * inv);
                    ar[l] = (pr + lam[l]) * ip;
                    ai[l] = -pi * ip;
                    br[l] = (qr + lam[l]) * iq;
                    bi[l] = -qi * iq;
                }
                let o = &mut out[u * 2 * fp..][..2 * fp];
                o[c..c + STEP].copy_from_slice(&ar);
                o[fp + c..fp + c + STEP].copy_from_slice(&ai);
                if m != u {
                    let o = &mut out[m * 2 * fp..][..2 * fp];
                    o[c..c + STEP].copy_from_slice(&br);
                    o[fp + c..fp + c + STEP].copy_from_slice(&bi);
                }
            }
        }
    }
}

/// Builds the transfer functions of the channels `chans` of kernel set `set` over the padded grid
/// `(hp, wp)` at scale `s`: for each output phase `(a, b)` (the pixels `(s*i + a, s*j + b)`;
/// one phase at scale 1), the filter `H_ab` on the half grid `(hp, wp/2+1)`, unnormalised (the
/// solution's phase is the inverse transform of `H_ab · FFT(y)` times `1/(s² hp wp)`). It hands
/// each frequency row to `emit(a * s + b, u, re, im)`: `re` and `im` hold `(wp/2+1, chans.len())`,
/// the filters innermost.
pub(crate) fn build(
    taps: &Taps,
    set: usize,
    chans: Range<usize>,
    (hp, wp): (usize, usize),
    s: usize,
    mut emit: impl FnMut(usize, usize, &[f64], &[f64]),
) {
    if s > 1 {
        let chans: Vec<usize> = chans.collect();
        let (wq, f) = (wp / 2 + 1, chans.len());
        let fp = f.div_ceil(STEP) * STEP;
        let (mut re, mut im) = (vec![0.0; wq * f], vec![0.0; wq * f]);
        return build_scaled(taps, set, &chans, (hp, wp), s, |phase, u, row| {
            let (rr, ri) = row.split_at(wq * fp);
            for v in 0..wq {
                re[v * f..][..f].copy_from_slice(&rr[v * fp..][..f]);
                im[v * f..][..f].copy_from_slice(&ri[v * fp..][..f]);
            }
            emit(phase, u, &re, &im)
        });
    }
    // Every column, then the rows out of them.
    let chans: Vec<usize> = chans.collect();
    let f = chans.len();
    let wq = wp / 2 + 1;
    let mut cols = Columns::new(taps, set, &chans, (hp, wp));
    let fp = cols.width();
    let (mut re, mut im) = (vec![0.0; hp * wq * f], vec![0.0; hp * wq * f]);
    for v in 0..wq {
        let col = cols.column(v);
        for u in 0..hp {
            let at = (u * wq + v) * f;
            re[at..at + f].copy_from_slice(&col[u * 2 * fp..][..f]);
            im[at..at + f].copy_from_slice(&col[u * 2 * fp + fp..][..f]);
        }
    }
    for u in 0..hp {
        emit(
            0,
            u,
            &re[u * wq * f..][..wq * f],
            &im[u * wq * f..][..wq * f],
        );
    }
}

/// `e^{2 pi i t d / n}` for `t < len`, per offset `d`, made once per offset.
struct Twiddles {
    n: usize,
    len: usize,
    tables: Vec<(isize, Vec<(f64, f64)>)>,
}

impl Twiddles {
    fn new(n: usize, len: usize) -> Self {
        Self {
            n,
            len,
            tables: vec![],
        }
    }

    fn get(&mut self, d: isize) -> &[(f64, f64)] {
        let i = match self.tables.iter().position(|t| t.0 == d) {
            Some(i) => i,
            None => {
                let t = (0..self.len)
                    .map(|t| unit(t as isize * d, self.n))
                    .collect();
                self.tables.push((d, t));
                self.tables.len() - 1
            }
        };
        &self.tables[i].1
    }
}

/// `sum_t w_t e^{sign 2 pi i (u ea_t / hh + v eb_t / ww)}` for tap positions `(ea, eb)` with
/// one weight per filter, row by row: a separable DFT, with the row sums `R_ea(v)` per distinct
/// `ea` made once. Entries are `(v, filter)`, filters innermost.
struct TapSum {
    sign: f64,
    /// `(ea, re, im)`, each `(wq, fp)`.
    rows: Vec<(isize, Vec<f64>, Vec<f64>)>,
    /// Per member: the kernel tap it reads, its position `(ea, eb)`, and the factor of the
    /// tap's weight in it.
    members: Vec<Member>,
}

/// A tap in a [`TapSum`]: `(tap index, ea, eb, factor)`.
type Member = (usize, isize, isize, f64);

impl TapSum {
    /// `taps`: the members, and their weights per filter (`fp` of them: the tap's times the
    /// factor).
    fn new(taps: &[(Member, Vec<f64>)], sign: f64, tw: &mut Twiddles, fp: usize) -> Self {
        let wq = tw.len;
        let mut rows: Vec<(isize, Vec<f64>, Vec<f64>)> = vec![];
        for ((_, ea, eb, _), w) in taps {
            let at = match rows.iter().position(|r| r.0 == *ea) {
                Some(i) => i,
                None => {
                    rows.push((*ea, vec![0.0; wq * fp], vec![0.0; wq * fp]));
                    rows.len() - 1
                }
            };
            let (_, re, im) = &mut rows[at];
            for (v, &(c, s)) in tw.get(*eb).iter().enumerate() {
                let (re, im) = (&mut re[v * fp..][..fp], &mut im[v * fp..][..fp]);
                for ((r, i), w) in re.iter_mut().zip(im.iter_mut()).zip(w) {
                    *r += w * c;
                    *i += sign * w * s;
                }
            }
        }
        let members = taps.iter().map(|(m, _)| *m).collect();
        Self {
            sign,
            rows,
            members,
        }
    }

    /// The adjoint of [`Self::row`] for row `u`, given the gradient `g` `(re, im)` of that
    /// row: adds `conj(g(v)) e^{sign 2 pi i u ea / hh}` to `acc`, one `(re, im)` `(wq, fp)`
    /// per entry of `rows`.
    fn adjoint_row(
        &self,
        u: usize,
        th: &mut Twiddles,
        g: (&[f64], &[f64]),
        acc: &mut [(Vec<f64>, Vec<f64>)],
    ) {
        for ((ea, _, _), (ar, ai)) in self.rows.iter().zip(acc.iter_mut()) {
            let (c, s) = th.get(*ea)[u];
            add_conj_scaled(ar, ai, (c, self.sign * s), g);
        }
    }

    /// The taps' gradients from the accumulated adjoint rows `acc` ([`Self::adjoint_row`]
    /// over every row): adds `factor · Re sum_v acc_ea(v) e^{sign 2 pi i v eb / ww}` to
    /// `dw[tap]` (`fp` filters each).
    fn adjoint_taps(&self, acc: &[(Vec<f64>, Vec<f64>)], tw: &mut Twiddles, dw: &mut [f64]) {
        let fp = acc.first().map_or(0, |a| a.0.len() / tw.len.max(1));
        for &(tap, ea, eb, factor) in &self.members {
            let Some(at) = self.rows.iter().position(|r| r.0 == ea) else {
                continue;
            };
            let (ar, ai) = &acc[at];
            let out = &mut dw[tap * fp..][..fp];
            for (v, &(c, s)) in tw.get(eb).iter().enumerate() {
                let (c, s) = (factor * c, factor * self.sign * s);
                let (ar, ai) = (&ar[v * fp..][..fp], &ai[v * fp..][..fp]);
                for ((o, r), i) in out.iter_mut().zip(ar).zip(ai) {
                    *o += r * c - i * s;
                }
            }
        }
    }

    /// Zeroed accumulators for [`Self::adjoint_row`].
    fn adjoint_acc(&self, len: usize) -> Vec<(Vec<f64>, Vec<f64>)> {
        self.rows
            .iter()
            .map(|_| (vec![0.0; len], vec![0.0; len]))
            .collect()
    }

    /// Frequency row `u` into `(re, im)`.
    fn row(&self, u: usize, th: &mut Twiddles, (re, im): (&mut [f64], &mut [f64])) {
        re.fill(0.0);
        im.fill(0.0);
        for (ea, rr, ri) in &self.rows {
            let (c, s) = th.get(*ea)[u];
            add_scaled(re, im, (c, self.sign * s), (rr, ri));
        }
    }
}

simd_fn! {
    /// `out += (c + i s) (rr + i ri)`.
    fn add_scaled(_s, re: &mut [f64], im: &mut [f64], cs: (f64, f64), row: (&[f64], &[f64])) {
        let ((c, s), (rr, ri)) = (cs, row);
        for (((or, oi), r), i) in re.iter_mut().zip(im.iter_mut()).zip(rr).zip(ri) {
            *or += r * c - i * s;
            *oi += r * s + i * c;
        }
    }
}

simd_fn! {
    /// `out += conj(g) (c + i s)`.
    fn add_conj_scaled(_s, re: &mut [f64], im: &mut [f64], cs: (f64, f64), g: (&[f64], &[f64])) {
        let ((c, s), (gr, gi)) = (cs, g);
        for (((or, oi), r), i) in re.iter_mut().zip(im.iter_mut()).zip(gr).zip(gi) {
            *or += r * c + i * s;
            *oi += r * s - i * c;
        }
    }
}

simd_fn! {
    /// `out += a conj(b)`.
    fn add_conj_product(_s, out: (&mut [f64], &mut [f64]), a: (&[f64], &[f64]), b: (&[f64], &[f64])) {
        let ((or, oi), (ar, ai), (br, bi)) = (out, a, b);
        for i in 0..or.len() {
            or[i] += ar[i] * br[i] + ai[i] * bi[i];
            oi[i] += ai[i] * br[i] - ar[i] * bi[i];
        }
    }
}

simd_fn! {
    /// `P += |c|²` over a row.
    fn add_norm(_s, p: &mut [f64], re: &[f64], im: &[f64]) {
        for ((p, r), i) in p.iter_mut().zip(re).zip(im) {
            *p += r * r + i * i;
        }
    }
}

simd_fn! {
    /// One row of the scaled transfer functions: `q = (1 - M) / (P + lam)` from `M` and `P`
    /// (into `m`), then for each phase `H = s² + q F`; `f` holds the phases' `F` rows
    /// `(phases, 2, n)` and becomes their `H`.
    fn scaled_row(_s, m: (&mut [f64], &mut [f64]), p: &[f64], lam: &[f64], s2: f64, f: &mut [f64]) {
        let (mr, mi) = m;
        for (((mr, mi), p), l) in mr.iter_mut().zip(mi.iter_mut()).zip(p).zip(lam) {
            let inv = 1.0 / (p + l);
            (*mr, *mi) = ((1.0 - *mr) * inv, -*mi * inv);
        }
        let n = p.len();
        for fab in f.chunks_exact_mut(2 * n) {
            let (fr, fi) = fab.split_at_mut(n);
            for (((fr, fi), qr), qi) in fr.iter_mut().zip(fi.iter_mut()).zip(&*mr).zip(&*mi) {
                let (a, b) = (*fr, *fi);
                *fr = s2 + a * qr - b * qi;
                *fi = a * qi + b * qr;
            }
        }
    }
}

/// [`build`] at scale `s > 1`, for the channels `chans` at once, on the input grid alone.
///
/// With `(da, db)` a tap's offset from the kernel's centre, the sums of `G`'s `s x s` aliases
/// each keep only the taps whose offsets fall in one residue class mod `s`: the box response
/// sums to `s²` for every phase, `mean(FK·B)` is the DFT `M` of the taps moved up to the next
/// multiple of `s`, `mean(|FK|²)` is `P = sum over the classes r of |FK_r|²`, and the aliases of
/// `conj(FK)` for phase `(a, b)` give `F_ab`, `s²` times the DFT of the taps with
/// `da + a = db + b = 0 (mod s)`. So `H_ab = s² + F_ab (1 - M) / (P + λ)`: no `s`-fold grid, and
/// a few tap sums per frequency, row by row. Rows go to `emit(phase, u, row)`, `row`
/// `(2, wq, fp)` with the filters (padded to `fp`) innermost.
pub(crate) fn build_scaled(
    taps: &Taps,
    set: usize,
    chans: &[usize],
    (hp, wp): (usize, usize),
    s: usize,
    mut emit: impl FnMut(usize, usize, &[f64]),
) {
    let wq = wp / 2 + 1;
    let s2 = (s * s) as f64;
    let (sums, mut th) = Scaled::new(taps, set, chans, (hp, wp), s);
    let n = wq * sums.fp;
    let (mut mr, mut mi, mut p) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    let (mut cr, mut ci) = (vec![0.0; n], vec![0.0; n]);
    let mut f = vec![0.0; sums.phases.len() * 2 * n];
    for u in 0..hp {
        sums.m.row(u, &mut th, (&mut mr, &mut mi));
        p.fill(0.0);
        for class in &sums.classes {
            class.row(u, &mut th, (&mut cr, &mut ci));
            add_norm(&mut p, &cr, &ci);
        }
        for (phase, fab) in sums.phases.iter().zip(f.chunks_exact_mut(2 * n)) {
            let (fr, fi) = fab.split_at_mut(n);
            phase.row(u, &mut th, (fr, fi));
        }
        scaled_row((&mut mr, &mut mi), &p, &sums.lam, s2, &mut f);
        for (phase, fab) in f.chunks_exact(2 * n).enumerate() {
            emit(phase, u, fab);
        }
    }
}

/// The tap sums of [`build_scaled`] for the channels `chans` of kernel set `set`: `M`, the
/// classes (`P` sums their norms) and the phases' `F`, with `λ` per filter and the column
/// twiddles.
struct Scaled {
    m: TapSum,
    classes: Vec<TapSum>,
    phases: Vec<TapSum>,
    /// `λ` per `(v, filter)`, `(wq, fp)` (padding filters: 1).
    lam: Vec<f64>,
    /// The column twiddles `(ws, wq)`.
    tw: Twiddles,
    fp: usize,
}

impl Scaled {
    /// The sums, and the row twiddles `(hs, hp)` they are read with.
    fn new(
        taps: &Taps,
        set: usize,
        chans: &[usize],
        (hp, wp): (usize, usize),
        s: usize,
    ) -> (Self, Twiddles) {
        let (kh, kw) = (taps.kh, taps.kw);
        let (hs, ws, wq) = (s * hp, s * wp, wp / 2 + 1);
        let fp = chans.len().div_ceil(STEP) * STEP;
        let (si, s2) = (s as isize, (s * s) as f64);
        let lam: Vec<f64> = (0..wq * fp)
            .map(|e| chans.get(e % fp).map_or(1.0, |&c| taps.lam[c]))
            .collect();
        // Each tap's offsets and its weight in every filter.
        let weights: Vec<(usize, isize, isize, Vec<f64>)> = (0..kh * kw)
            .map(|i| {
                let da = (i / kw) as isize - (kh / 2) as isize;
                let db = (i % kw) as isize - (kw / 2) as isize;
                let w = (0..fp)
                    .map(|f| {
                        chans
                            .get(f)
                            .map_or(0.0, |&c| taps.k[(set * taps.channels + c) * kh * kw + i])
                    })
                    .collect();
                (i, da, db, w)
            })
            .collect();
        let (th, mut tw) = (Twiddles::new(hs, hp), Twiddles::new(ws, wq));
        let up = |d: isize| d + (-d).rem_euclid(si);
        let moved: Vec<_> = weights
            .iter()
            .map(|(i, a, b, w)| ((*i, up(*a), up(*b), 1.0), w.clone()))
            .collect();
        let m = TapSum::new(&moved, -1.0, &mut tw, fp);
        let (mut classes, mut phases) = (vec![], vec![]);
        for ra in 0..si {
            for rb in 0..si {
                let class: Vec<_> = weights
                    .iter()
                    .filter(|(_, a, b, _)| a.rem_euclid(si) == ra && b.rem_euclid(si) == rb)
                    .map(|(i, a, b, w)| ((*i, *a, *b, 1.0), w.clone()))
                    .collect();
                classes.push(TapSum::new(&class, -1.0, &mut tw, fp));
                // Phase (ra, rb).
                let phase: Vec<_> = weights
                    .iter()
                    .filter(|(_, da, db, _)| {
                        (da + ra).rem_euclid(si) == 0 && (db + rb).rem_euclid(si) == 0
                    })
                    .map(|(i, da, db, w)| {
                        let w = w.iter().map(|w| s2 * w).collect();
                        ((*i, da + ra, db + rb, s2), w)
                    })
                    .collect();
                phases.push(TapSum::new(&phase, 1.0, &mut tw, fp));
            }
        }
        let sums = Self {
            m,
            classes,
            phases,
            lam,
            tw,
            fp,
        };
        (sums, th)
    }
}

/// The vector-Jacobian product of the transfer functions [`build`] makes for the channels
/// `chans` of kernel set `set` (at every scale, in the form of [`build_scaled`]:
/// `H_ab = s² + F_ab Q`, `Q = (1 - M) / (P + λ)`): `grad(phase, u, re, im)` fills the gradient
/// of row `u` of phase `phase`'s `H` (`(wq, fp)` each, the filters innermost, padding filters
/// zero). Returns the gradients to the taps `(chans, kh * kw)` and to `λ` `(chans)`.
///
/// Per frequency, with `h` the gradient of `H`: `F_ab` gets `h_ab conj(Q)`, `Q` gets
/// `q = sum_ab h_ab conj(F_ab)`, so `M` gets `-q / (P + λ)` and `P + λ` gets
/// `d = -Re(q conj(Q)) / (P + λ)` (`λ`'s gradient sums it), and each class `C_r` gets
/// `2 d C_r`. The tap sums then carry these to the taps ([`TapSum::adjoint_row`],
/// [`TapSum::adjoint_taps`]).
pub(crate) fn vjp(
    taps: &Taps,
    set: usize,
    chans: &[usize],
    (hp, wp): (usize, usize),
    s: usize,
    mut grad: impl FnMut(usize, usize, &mut [f64], &mut [f64]),
) -> (Vec<f64>, Vec<f64>) {
    let wq = wp / 2 + 1;
    let (mut sums, mut th) = Scaled::new(taps, set, chans, (hp, wp), s);
    let fp = sums.fp;
    let n = wq * fp;
    let row = || (vec![0.0; n], vec![0.0; n]);
    let nph = sums.phases.len();
    // Forward rows: M, the classes, the phases' F; the gradient rows of H.
    let (mut m, mut p) = (row(), vec![0.0; n]);
    let mut cls: Vec<_> = sums.classes.iter().map(|_| row()).collect();
    let mut f: Vec<_> = (0..nph).map(|_| row()).collect();
    let mut h: Vec<_> = (0..nph).map(|_| row()).collect();
    // Gradient rows of M, the classes and the F, and the adjoint accumulators of each sum.
    let (mut gm, mut gc, mut gf) = (row(), row(), row());
    let mut acc_m = sums.m.adjoint_acc(n);
    let mut acc_c: Vec<_> = sums.classes.iter().map(|t| t.adjoint_acc(n)).collect();
    let mut acc_f: Vec<_> = sums.phases.iter().map(|t| t.adjoint_acc(n)).collect();
    let mut dlam = vec![0.0; fp];
    for u in 0..hp {
        sums.m.row(u, &mut th, (&mut m.0, &mut m.1));
        p.fill(0.0);
        for (class, c) in sums.classes.iter().zip(cls.iter_mut()) {
            class.row(u, &mut th, (&mut c.0, &mut c.1));
            add_norm(&mut p, &c.0, &c.1);
        }
        for (ph, (phase, fab)) in sums.phases.iter().zip(f.iter_mut()).enumerate() {
            phase.row(u, &mut th, (&mut fab.0, &mut fab.1));
            let hab = &mut h[ph];
            grad(ph, u, &mut hab.0, &mut hab.1);
        }
        // q (into gm), then d per entry (into p), then M's gradient (into gm).
        gm.0.fill(0.0);
        gm.1.fill(0.0);
        for (fab, hab) in f.iter().zip(&h) {
            add_conj_product((&mut gm.0, &mut gm.1), (&hab.0, &hab.1), (&fab.0, &fab.1));
        }
        for e in 0..n {
            let inv = 1.0 / (p[e] + sums.lam[e]);
            let (qr, qi) = ((1.0 - m.0[e]) * inv, -m.1[e] * inv);
            let (gr, gi) = (gm.0[e], gm.1[e]);
            let d = -(gr * qr + gi * qi) * inv;
            dlam[e % fp] += d;
            p[e] = d;
            (gm.0[e], gm.1[e]) = (-gr * inv, -gi * inv);
            // Q itself, for the phases' gradient.
            (m.0[e], m.1[e]) = (qr, qi);
        }
        sums.m.adjoint_row(u, &mut th, (&gm.0, &gm.1), &mut acc_m);
        for ((class, c), acc) in sums.classes.iter().zip(&cls).zip(acc_c.iter_mut()) {
            let ((gr, gi), (cr, ci)) = ((&mut gc.0, &mut gc.1), (&c.0, &c.1));
            for ((((gr, gi), p), cr), ci) in
                gr.iter_mut().zip(gi.iter_mut()).zip(&p).zip(cr).zip(ci)
            {
                (*gr, *gi) = (2.0 * p * cr, 2.0 * p * ci);
            }
            class.adjoint_row(u, &mut th, (&gc.0, &gc.1), acc);
        }
        for ((phase, hab), acc) in sums.phases.iter().zip(&h).zip(acc_f.iter_mut()) {
            gf.0.fill(0.0);
            gf.1.fill(0.0);
            add_conj_product((&mut gf.0, &mut gf.1), (&hab.0, &hab.1), (&m.0, &m.1));
            phase.adjoint_row(u, &mut th, (&gf.0, &gf.1), acc);
        }
    }
    let (kk, count) = (taps.kh * taps.kw, chans.len());
    let mut dw = vec![0.0; kk * fp];
    let tw = &mut sums.tw;
    sums.m.adjoint_taps(&acc_m, tw, &mut dw);
    for (class, acc) in sums.classes.iter().zip(&acc_c) {
        class.adjoint_taps(acc, tw, &mut dw);
    }
    for (phase, acc) in sums.phases.iter().zip(&acc_f) {
        phase.adjoint_taps(acc, tw, &mut dw);
    }
    // (taps, fp) to (chans, taps).
    let dk = (0..count * kk)
        .map(|i| dw[(i % kk) * fp + i / kk])
        .collect();
    dlam.truncate(count);
    (dk, dlam)
}

/// The transfer functions of every filter of `taps` as a planar tensor
/// `(sets, C, s², 2, hp, wp/2+1)` (phases, then real and imaginary parts) in `dtype` on `dev`,
/// scaled by `1/s²` for `irfft2`'s normalisation: for the reference solve (built on the host in
/// parallel, then uploaded once).
pub(crate) fn planar(
    taps: &Taps,
    (hp, wp): (usize, usize),
    s: usize,
    dtype: DType,
    dev: &candle_core::Device,
) -> Result<Tensor> {
    taps.check_fits((hp, wp), s)?;
    let wq = wp / 2 + 1;
    let plane = hp * wq;
    let (c, phases) = (taps.channels, s * s);
    let len = taps.sets * c * phases * 2 * plane;
    let shape = (taps.sets, c, phases, 2, hp, wq);
    let cpu = &candle_core::Device::Cpu;
    // f32 is written directly (rounded as a conversion of the f64 values would be).
    let t = match dtype {
        DType::F32 => Tensor::from_vec(planar_values::<f32>(taps, (hp, wp), s, len), shape, cpu)?,
        _ => Tensor::from_vec(planar_values::<f64>(taps, (hp, wp), s, len), shape, cpu)?
            .to_dtype(dtype)?,
    };
    t.to_device(dev)
}

/// The values of [`planar`], `len` of them, in `T`.
fn planar_values<T: candle_core::WithDType>(
    taps: &Taps,
    (hp, wp): (usize, usize),
    s: usize,
    len: usize,
) -> Vec<T> {
    use rayon::prelude::*;
    let (wq, c, phases) = (wp / 2 + 1, taps.channels, s * s);
    let plane = hp * wq;
    let norm = 1.0 / phases as f64;
    let mut data = vec![T::zero(); len];
    let isa = super::cpu::simd::Isa::current();
    // [`STEP`] channels of a set at a time, one per lane of the builder's vectors.
    let groups = c.div_ceil(STEP);
    let mut chunks: Vec<(usize, usize, &mut [T])> = Vec::with_capacity(taps.sets * groups);
    for (set, set_data) in data.chunks_mut(c * phases * 2 * plane).enumerate() {
        for (grp, dst) in set_data.chunks_mut(STEP * phases * 2 * plane).enumerate() {
            chunks.push((set, grp * STEP, dst));
        }
    }
    chunks.into_par_iter().for_each(|(set, first, dst)| {
        let count = dst.len() / (phases * 2 * plane);
        isa.run(|| {
            build(
                taps,
                set,
                first..first + count,
                (hp, wp),
                s,
                |phase, u, re, im| {
                    for q in 0..count {
                        let at = (q * phases + phase) * 2 * plane + u * wq;
                        for (v, d) in dst[at..][..wq].iter_mut().enumerate() {
                            *d = T::from_f64(re[v * count + q] * norm);
                        }
                        for (v, d) in dst[at + plane..][..wq].iter_mut().enumerate() {
                            *d = T::from_f64(im[v * count + q] * norm);
                        }
                    }
                },
            )
        });
    });
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// [`planar`] builds [`STEP`] channels per call; each channel's values are bit for bit those
    /// of building that channel alone, at scales 1 to 3, with a partial group and two kernel
    /// sets, and in f32 those values rounded.
    #[test]
    fn planar_equals_building_each_channel_alone() {
        let dev = Device::Cpu;
        for s in 1..=3 {
            let (sets, c, k, (hp, wp)) = (2, 11, 3, (9, 10));
            let kernel = Tensor::rand(-0.5f64, 1.0, (sets, c, k, k), &dev).unwrap();
            let lam = Tensor::rand(1e-3f64, 0.5, (1, c, 1, 1), &dev).unwrap();
            let taps = Taps::new(&kernel, &lam).unwrap();
            let got = planar(&taps, (hp, wp), s, DType::F64, &dev).unwrap();
            let got: Vec<f64> = got.flatten_all().unwrap().to_vec1().unwrap();
            // f32, written directly, is the f64 values rounded.
            let got32 = planar(&taps, (hp, wp), s, DType::F32, &dev).unwrap();
            let got32: Vec<f32> = got32.flatten_all().unwrap().to_vec1().unwrap();
            for (a, b) in got32.iter().zip(&got) {
                assert_eq!(a.to_bits(), (*b as f32).to_bits());
            }
            let (wq, phases) = (wp / 2 + 1, s * s);
            let plane = hp * wq;
            let norm = 1.0 / phases as f64;
            for set in 0..sets {
                for ch in 0..c {
                    build(&taps, set, ch..ch + 1, (hp, wp), s, |phase, u, re, im| {
                        let at = ((set * c + ch) * phases + phase) * 2 * plane + u * wq;
                        for v in 0..wq {
                            assert_eq!(got[at + v].to_bits(), (re[v] * norm).to_bits());
                            assert_eq!(got[at + plane + v].to_bits(), (im[v] * norm).to_bits());
                        }
                    });
                }
            }
        }
    }
}
