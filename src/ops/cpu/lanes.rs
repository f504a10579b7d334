//! A complex FFT over vectors: [`LANES`](crate::ops::cpu::simd::LANES) independent transforms
//! at once, real and imaginary parts in separate arrays of [`V`]. Mixed radix, decimation in
//! time, iterative (so that it inlines whole into the caller's AVX2 or AVX-512 code); factors 4
//! and 2 have
//! their own butterflies, odd factors up to [`BLUESTEIN_ABOVE`] a direct DFT over conjugate
//! pairs. Larger primes (photo sizes pad to e.g. 3004 = 4 x 751, 4006 = 2 x 2003) take
//! Bluestein's algorithm, a convolution by a sub-plan of length 2^a or 3 x 2^a, so that every
//! length is O(n log n) and the tables O(n). rustfft handles one transform at a time; here
//! every operation works on `LANES` values, whatever the factors. The CPU's fused Converse2D
//! solve ([`crate::ops::cpu::solve`]) is its only user.

use std::f64::consts::PI;

use rustfft::num_complex::Complex;

use crate::ops::cpu::simd::{Simd, V};

/// Odd factors above this take Bluestein's algorithm, the rest the direct DFT, whose O(p²) is
/// as fast up to about here (`cargo bench --bench ops -- lanes` prints both per length).
const BLUESTEIN_ABOVE: usize = 360;

/// `cos` and `sin` of `2 pi n k / p` for `n, k` in `1..=(p-1)/2`, row `k - 1`.
#[derive(Debug)]
struct Odd {
    p: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// Bluestein's algorithm for the prime `p`: the DFT as a circular convolution of length
/// `sub.n >= 2p - 1` with the chirp `w_j = e^{i pi j^2 / p}`.
#[derive(Debug)]
struct Chirp {
    p: usize,
    /// `conj(w_j)`, `j < p`.
    w_re: Vec<f32>,
    w_im: Vec<f32>,
    /// The DFT of the chirp (`w_j` at `j` and `m - j`), divided by `m`.
    b_re: Vec<f32>,
    b_im: Vec<f32>,
    /// Of the smooth length `m` (factors 4, 2 and 3 only).
    sub: Plan,
}

impl Chirp {
    fn new(p: usize) -> Self {
        // The smallest 2^a or 3 * 2^a that holds the linear convolution.
        let m = (2 * p - 1).next_power_of_two();
        let m = if m / 4 * 3 >= 2 * p - 1 { m / 4 * 3 } else { m };
        // j^2 mod 2p in integers, so the angle stays exact.
        let w: Vec<Complex<f64>> = (0..p as u64)
            .map(|j| {
                let t = (j * j) % (2 * p as u64);
                Complex::from_polar(1.0, PI * t as f64 / p as f64)
            })
            .collect();
        let mut b = vec![Complex::new(0.0, 0.0); m];
        b[0] = w[0];
        for j in 1..p {
            (b[j], b[m - j]) = (w[j], w[j]);
        }
        rustfft::FftPlanner::new()
            .plan_fft_forward(m)
            .process(&mut b);
        let norm = 1.0 / m as f64;
        let sub = Plan::build(m, usize::MAX);
        Self {
            p,
            w_re: w.iter().map(|w| w.re as f32).collect(),
            w_im: w.iter().map(|w| -w.im as f32).collect(),
            b_re: b.iter().map(|b| (b.re * norm) as f32).collect(),
            b_im: b.iter().map(|b| (b.im * norm) as f32).collect(),
            sub,
        }
    }

    /// Scratch for [`Plan::bluestein`].
    fn scratch_len(&self) -> usize {
        4 * self.sub.n + self.sub.scratch_len()
    }
}

/// One stage above the leaves: radix `p` over sub-transforms of length `m`, with the twiddles
/// `W_{pm}^{rk}` at `(r - 1) * m + k`.
#[derive(Debug)]
struct Stage {
    p: usize,
    m: usize,
    tw_re: Vec<f32>,
    tw_im: Vec<f32>,
}

/// A forward transform of length `n` (the inverse swaps real and imaginary parts).
#[derive(Debug)]
pub(crate) struct Plan {
    n: usize,
    leaf: usize,
    /// Where each leaf's inputs start (they are `n / leaf` apart).
    leaf_offsets: Vec<usize>,
    /// From the leaves up.
    stages: Vec<Stage>,
    odd: Vec<Odd>,
    chirps: Vec<Chirp>,
    max_half: usize,
}

/// Where a butterfly reads its `p` inputs: `x[at.0 + q * at.1]`, or the destination array
/// itself when `x` is `None`; with `tw`, input `q >= 1` is first multiplied by the twiddle at
/// `(q - 1) * step`.
#[derive(Clone, Copy)]
struct Input<'a> {
    x: Option<(&'a [V], &'a [V])>,
    at: (usize, usize),
    tw: Option<(&'a [f32], &'a [f32], usize)>,
}

impl Input<'_> {
    /// In place, untwiddled.
    fn in_place(base: usize, stride: usize) -> Self {
        Self {
            x: None,
            at: (base, stride),
            tw: None,
        }
    }
}

/// `(a + ib)(c + id)` for the scalar twiddle `c + id`.
#[inline(always)]
fn twiddle<S: Simd>(s: S, (a, b): (V, V), (c, d): (f32, f32)) -> (V, V) {
    (
        s.sub(s.scale(a, c), s.scale(b, d)),
        s.madd(s.scale(a, d), b, c),
    )
}

pub(crate) fn factors(mut n: usize) -> Vec<usize> {
    let mut f = vec![];
    while n.is_multiple_of(4) {
        f.push(4);
        n /= 4;
    }
    if n.is_multiple_of(2) {
        f.push(2);
        n /= 2;
    }
    let mut p = 3;
    while p * p <= n {
        while n.is_multiple_of(p) {
            f.push(p);
            n /= p;
        }
        p += 2;
    }
    if n > 1 || f.is_empty() {
        f.push(n);
    }
    f
}

impl Plan {
    pub(crate) fn new(n: usize) -> Self {
        Self::build(n, BLUESTEIN_ABOVE)
    }

    /// A plan whose odd factors above `above` take Bluestein's algorithm.
    pub(crate) fn build(n: usize, above: usize) -> Self {
        assert!(n >= 1);
        // Top level first; the largest factor ends up at the leaves, where it needs no twiddles.
        let f = factors(n);
        let leaf = *f.last().unwrap_or(&1);
        let mut leaf_offsets = vec![];
        fn walk(f: &[usize], off: usize, stride: usize, out: &mut Vec<usize>) {
            match f {
                [] | [_] => out.push(off),
                [p, rest @ ..] => {
                    (0..*p).for_each(|r| walk(rest, off + r * stride, stride * p, out))
                }
            }
        }
        walk(&f, 0, 1, &mut leaf_offsets);
        let mut stages = vec![];
        let mut m = leaf;
        for &p in f.iter().rev().skip(1) {
            let len = p * m;
            let (mut tw_re, mut tw_im) = (vec![], vec![]);
            for r in 1..p {
                for k in 0..m {
                    let a = -2.0 * PI * (r * k) as f64 / len as f64;
                    tw_re.push(a.cos() as f32);
                    tw_im.push(a.sin() as f32);
                }
            }
            stages.push(Stage { p, m, tw_re, tw_im });
            m = len;
        }
        let mut odd: Vec<Odd> = vec![];
        let mut chirps: Vec<Chirp> = vec![];
        for &p in &f {
            if p.is_multiple_of(2) || p == 1 {
                continue;
            }
            if p > above {
                if !chirps.iter().any(|c| c.p == p) {
                    chirps.push(Chirp::new(p));
                }
            } else if !odd.iter().any(|o| o.p == p) {
                let h = (p - 1) / 2;
                let (mut cos, mut sin) = (vec![], vec![]);
                for k in 1..=h {
                    for j in 1..=h {
                        // Reduced mod p first, so the angle stays exact.
                        let a = 2.0 * PI * ((j * k) % p) as f64 / p as f64;
                        cos.push(a.cos() as f32);
                        sin.push(a.sin() as f32);
                    }
                }
                odd.push(Odd { p, cos, sin });
            }
        }
        let max_half = odd.iter().map(|o| (o.p - 1) / 2).max().unwrap_or(0);
        Self {
            n,
            leaf,
            leaf_offsets,
            stages,
            odd,
            chirps,
            max_half,
        }
    }

    /// Scratch (in vectors) that [`Self::forward`] needs.
    /// The length of the transform.
    pub(crate) fn len(&self) -> usize {
        self.n
    }

    /// The length of Bluestein's sub-transforms, 0 where the plan takes none.
    pub(crate) fn bluestein_len(&self) -> usize {
        self.chirps.iter().map(|c| c.sub.n).max().unwrap_or(0)
    }

    pub(crate) fn scratch_len(&self) -> usize {
        let chirp = self.chirps.iter().map(Chirp::scratch_len).max();
        (4 * self.max_half).max(chirp.unwrap_or(0))
    }

    /// Forward DFT of the strided input `x[off + i * stride]`, `i < n`, into `out[..n]`
    /// (unnormalised; the inverse is this with real and imaginary parts swapped on both sides).
    #[inline(always)]
    pub(crate) fn forward<S: Simd>(
        &self,
        s: S,
        (x_re, x_im): (&[V], &[V]),
        (off, stride): (usize, usize),
        (re, im): (&mut [V], &mut [V]),
        scratch: &mut [V],
    ) {
        self.run::<S, true>(s, (x_re, x_im), (off, stride), (re, im), scratch)
    }

    /// [`Self::forward`]; `CHIRP` false for the sub-plans of [`Chirp`], which have no such
    /// factors (and so that the code does not recurse).
    #[inline(always)]
    fn run<S: Simd, const CHIRP: bool>(
        &self,
        s: S,
        (x_re, x_im): (&[V], &[V]),
        (off, stride): (usize, usize),
        (re, im): (&mut [V], &mut [V]),
        scratch: &mut [V],
    ) {
        let (n, p) = (self.n, self.leaf);
        let (re, im) = (&mut re[..n], &mut im[..n]);
        let gap = n / p;
        // Bluestein's step works in place: its leaves are copied in first and its stages
        // twiddled first. The other butterflies read their inputs where they are.
        let chirp = |p| CHIRP && self.chirps.iter().any(|c| c.p == p);
        let chirp_leaf = chirp(p);
        for (b, &o) in self.leaf_offsets.iter().enumerate() {
            let from = off + o * stride;
            let src = if chirp_leaf {
                for r in 0..p {
                    let i = from + r * gap * stride;
                    re[b * p + r] = x_re[i];
                    im[b * p + r] = x_im[i];
                }
                Input::in_place(b * p, 1)
            } else {
                Input {
                    x: Some((x_re, x_im)),
                    at: (from, gap * stride),
                    tw: None,
                }
            };
            self.butterfly::<S, CHIRP>(s, p, src, (re, im), (b * p, 1), scratch);
        }
        for st in &self.stages {
            let (p, m) = (st.p, st.m);
            let chirp_stage = chirp(p);
            for base in (0..n).step_by(p * m) {
                if chirp_stage {
                    for r in 1..p {
                        let tw = (r - 1) * m;
                        let (tr, ti) = (&st.tw_re[tw..][..m], &st.tw_im[tw..][..m]);
                        let at = base + r * m;
                        let (vr, vi) = (&mut re[at..at + m], &mut im[at..at + m]);
                        for k in 0..m {
                            (vr[k], vi[k]) = twiddle(s, (vr[k], vi[k]), (tr[k], ti[k]));
                        }
                    }
                }
                for k in 0..m {
                    let mut src = Input::in_place(base + k, m);
                    if !chirp_stage {
                        src.tw = Some((&st.tw_re[k..], &st.tw_im[k..], m));
                    }
                    self.butterfly::<S, CHIRP>(s, p, src, (re, im), (base + k, m), scratch);
                }
            }
        }
    }

    /// A DFT of length `p` of `src` into `dst[base + q * stride]`, `q < p`.
    #[inline(always)]
    fn butterfly<S: Simd, const CHIRP: bool>(
        &self,
        s: S,
        p: usize,
        src: Input,
        (re, im): (&mut [V], &mut [V]),
        (base, stride): (usize, usize),
        scratch: &mut [V],
    ) {
        // Input `q`, twiddled (a macro, not a closure: closures do not inherit the caller's
        // target features).
        macro_rules! get {
            ($q:expr) => {{
                let q = $q;
                let i = src.at.0 + q * src.at.1;
                let x = match src.x {
                    Some((xr, xi)) => (xr[i], xi[i]),
                    None => (re[i], im[i]),
                };
                match src.tw {
                    Some((tr, ti, step)) if q > 0 => {
                        twiddle(s, x, (tr[(q - 1) * step], ti[(q - 1) * step]))
                    }
                    _ => x,
                }
            }};
        }
        match p {
            1 => (re[base], im[base]) = get!(0),
            2 => {
                let ((ar, ai), (br, bi)) = (get!(0), get!(1));
                let (i0, i1) = (base, base + stride);
                (re[i0], im[i0]) = (s.add(ar, br), s.add(ai, bi));
                (re[i1], im[i1]) = (s.sub(ar, br), s.sub(ai, bi));
            }
            4 => {
                let i = [base, base + stride, base + 2 * stride, base + 3 * stride];
                let ((x0r, x0i), (x1r, x1i)) = (get!(0), get!(1));
                let ((x2r, x2i), (x3r, x3i)) = (get!(2), get!(3));
                let (t0r, t0i) = (s.add(x0r, x2r), s.add(x0i, x2i));
                let (t1r, t1i) = (s.sub(x0r, x2r), s.sub(x0i, x2i));
                let (t2r, t2i) = (s.add(x1r, x3r), s.add(x1i, x3i));
                let (t3r, t3i) = (s.sub(x1r, x3r), s.sub(x1i, x3i));
                (re[i[0]], im[i[0]]) = (s.add(t0r, t2r), s.add(t0i, t2i));
                (re[i[2]], im[i[2]]) = (s.sub(t0r, t2r), s.sub(t0i, t2i));
                // t1 - i t3 and t1 + i t3.
                (re[i[1]], im[i[1]]) = (s.add(t1r, t3i), s.sub(t1i, t3r));
                (re[i[3]], im[i[3]]) = (s.sub(t1r, t3i), s.add(t1i, t3r));
            }
            _ => {
                if CHIRP {
                    if let Some(c) = self.chirps.iter().find(|c| c.p == p) {
                        debug_assert!(src.x.is_none() && src.tw.is_none());
                        return Self::bluestein(s, c, (re, im), (base, stride), scratch);
                    }
                }
                let Some(odd) = self.odd.iter().find(|o| o.p == p) else {
                    unreachable!("factor {p} without tables")
                };
                // A direct DFT over the conjugate pairs `(j, p - j)`: their sums and
                // differences first, then two rows of the tables at a time.
                let h = (p - 1) / 2;
                let (ar, rest) = scratch.split_at_mut(h);
                let (ai, rest) = rest.split_at_mut(h);
                let (br, bi) = rest.split_at_mut(h);
                let (x0r, x0i) = get!(0);
                let (mut sr, mut si) = (x0r, x0i);
                for j in 0..h {
                    let ((ur, ui), (wr, wi)) = (get!(j + 1), get!(p - 1 - j));
                    ar[j] = s.add(ur, wr);
                    ai[j] = s.add(ui, wi);
                    br[j] = s.sub(ur, wr);
                    bi[j] = s.sub(ui, wi);
                    sr = s.add(sr, ar[j]);
                    si = s.add(si, ai[j]);
                }
                re[base] = sr;
                im[base] = si;
                let (ar, ai, br, bi) = (&ar[..h], &ai[..h], &br[..h], &bi[..h]);
                // X[k] = A - i B and X[p - k] = A + i B, with A = x0 + sum a_j cos, B = sum b_j sin.
                macro_rules! put {
                    ($k:expr, $cr:expr, $ci:expr, $dr:expr, $di:expr) => {{
                        let (u, w) = (base + ($k + 1) * stride, base + (p - 1 - $k) * stride);
                        (re[u], im[u]) = (s.add($cr, $di), s.sub($ci, $dr));
                        (re[w], im[w]) = (s.sub($cr, $di), s.add($ci, $dr));
                    }};
                }
                // Eight independent sums.
                let mut k = 0;
                while k + 1 < h {
                    let (c0, s0) = (&odd.cos[k * h..][..h], &odd.sin[k * h..][..h]);
                    let (c1, s1) = (&odd.cos[(k + 1) * h..][..h], &odd.sin[(k + 1) * h..][..h]);
                    let z = V::default();
                    let (mut cr0, mut ci0, mut dr0, mut di0) = (x0r, x0i, z, z);
                    let (mut cr1, mut ci1, mut dr1, mut di1) = (x0r, x0i, z, z);
                    for j in 0..h {
                        cr0 = s.madd(cr0, ar[j], c0[j]);
                        ci0 = s.madd(ci0, ai[j], c0[j]);
                        dr0 = s.madd(dr0, br[j], s0[j]);
                        di0 = s.madd(di0, bi[j], s0[j]);
                        cr1 = s.madd(cr1, ar[j], c1[j]);
                        ci1 = s.madd(ci1, ai[j], c1[j]);
                        dr1 = s.madd(dr1, br[j], s1[j]);
                        di1 = s.madd(di1, bi[j], s1[j]);
                    }
                    put!(k, cr0, ci0, dr0, di0);
                    put!(k + 1, cr1, ci1, dr1, di1);
                    k += 2;
                }
                if k < h {
                    let (c, sn) = (&odd.cos[k * h..][..h], &odd.sin[k * h..][..h]);
                    let (mut cr, mut ci, mut dr, mut di) = (x0r, x0i, V::default(), V::default());
                    for j in 0..h {
                        cr = s.madd(cr, ar[j], c[j]);
                        ci = s.madd(ci, ai[j], c[j]);
                        dr = s.madd(dr, br[j], sn[j]);
                        di = s.madd(di, bi[j], sn[j]);
                    }
                    put!(k, cr, ci, dr, di);
                }
            }
        }
    }

    /// [`Self::butterfly`] for a prime with a [`Chirp`]: `X_k = conj(w_k) (a * b)_k` with
    /// `a_j = x_j conj(w_j)`, the circular convolution done by the sub-plan.
    #[inline(always)]
    fn bluestein<S: Simd>(
        s: S,
        c: &Chirp,
        (re, im): (&mut [V], &mut [V]),
        (base, stride): (usize, usize),
        scratch: &mut [V],
    ) {
        let (p, m) = (c.p, c.sub.n);
        let (ar, rest) = scratch.split_at_mut(m);
        let (ai, rest) = rest.split_at_mut(m);
        let (fr, rest) = rest.split_at_mut(m);
        let (fi, rest) = rest.split_at_mut(m);
        let (wr, wi) = (&c.w_re[..p], &c.w_im[..p]);
        for j in 0..p {
            let i = base + j * stride;
            (ar[j], ai[j]) = twiddle(s, (re[i], im[i]), (wr[j], wi[j]));
        }
        ar[p..].fill(V::default());
        ai[p..].fill(V::default());
        c.sub
            .run::<S, false>(s, (&*ar, &*ai), (0, 1), (&mut *fr, &mut *fi), rest);
        let (br, bi) = (&c.b_re[..m], &c.b_im[..m]);
        for k in 0..m {
            (fr[k], fi[k]) = twiddle(s, (fr[k], fi[k]), (br[k], bi[k]));
        }
        // The inverse: parts swapped on both sides.
        c.sub
            .run::<S, false>(s, (&*fi, &*fr), (0, 1), (&mut *ai, &mut *ar), rest);
        for k in 0..p {
            let i = base + k * stride;
            (re[i], im[i]) = twiddle(s, (ar[k], ai[k]), (wr[k], wi[k]));
        }
    }
}

/// A fixed test signal of `n` points for the tests and the bench: a sine of a different
/// frequency in each lane and part.
pub(crate) fn signal(n: usize) -> (Vec<V>, Vec<V>) {
    let value = |i: usize, l: usize, f: f64| ((i * 31 + l * 7) as f64 * f).sin() as f32;
    let part = |f: f64| (0..n).map(move |i| V(std::array::from_fn(|l| value(i, l, f))));
    (part(0.37).collect(), part(0.91).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::cpu::simd::{simd_fn, Isa, Plain, LANES};
    use crate::ops::fft::reference;

    /// The forward transform, and the inverse of it (parts swapped in and out), unnormalised.
    #[inline(always)]
    fn forward_and_back<S: Simd>(s: S, plan: &Plan, (x_re, x_im): (&[V], &[V])) -> [Vec<V>; 4] {
        let n = plan.n;
        let mut scratch = vec![V::default(); plan.scratch_len()];
        let (mut re, mut im) = (vec![V::default(); n], vec![V::default(); n]);
        plan.forward(s, (x_re, x_im), (0, 1), (&mut re, &mut im), &mut scratch);
        let (mut back_im, mut back_re) = (vec![V::default(); n], vec![V::default(); n]);
        plan.forward(
            s,
            (&im, &re),
            (0, 1),
            (&mut back_im, &mut back_re),
            &mut scratch,
        );
        [re, im, back_re, back_im]
    }

    simd_fn! {
        /// [`forward_and_back`] on the instruction set [`Isa::current`] names, as the solve
        /// runs it.
        fn forward_and_back_simd(s, plan: &Plan, x: (&[V], &[V])) -> [Vec<V>; 4] {
            forward_and_back(s, plan, x)
        }
    }

    /// Checks length `n` on every instruction set this CPU has against the plain DFT: absolute
    /// error `2e-6 sqrt(n) log2(n)` on the direct path; on the Bluestein path error relative to
    /// the largest bin, `1e-5 log2(n)` (and the same, absolute, on the round trip).
    fn check_against_the_plain_dft(plan: Plan) {
        let n = plan.n;
        let bluestein = !plan.chirps.is_empty();
        let (x_re, x_im) = signal(n);
        // The O(n²) reference is slow: fewer lanes at the largest sizes.
        let lanes: Vec<usize> = if n <= 2000 {
            (0..LANES).collect()
        } else if n <= 5000 {
            vec![0, LANES - 1]
        } else {
            vec![LANES - 1]
        };
        let lane = |v: &[V], l: usize| v.iter().map(|v| v.0[l] as f64).collect::<Vec<_>>();
        let want: Vec<_> = lanes
            .iter()
            .map(|&l| reference::dft(&lane(&x_re, l), &lane(&x_im, l)))
            .collect();
        let runs: Vec<_> = Isa::available()
            .into_iter()
            .map(|isa| {
                let got = isa.run(|| forward_and_back_simd(&plan, (&x_re, &x_im)));
                (isa.name(), got)
            })
            .collect();
        let log = (n as f64).log2().max(1.0);
        for (name, [re, im, back_re, back_im]) in &runs {
            let mut worst: f64 = 0.0;
            for (&l, (wr, wi)) in lanes.iter().zip(&want) {
                let peak = (0..n).map(|i| wr[i].hypot(wi[i])).fold(0.0, f64::max);
                let (tol, tol_back) = if bluestein {
                    (1e-5 * log * peak, 1e-5 * log)
                } else {
                    (2e-6 * (n as f64).sqrt() * log, 1e-5)
                };
                for i in 0..n {
                    let (gr, gi) = (re[i].0[l] as f64, im[i].0[l] as f64);
                    let err = (gr - wr[i]).hypot(gi - wi[i]);
                    worst = worst.max(err / peak);
                    assert!(
                        err < tol,
                        "{name} n={n} lane {l} bin {i}: ({gr}, {gi}) vs ({}, {})",
                        wr[i],
                        wi[i]
                    );
                    let (br, bi) = (
                        back_re[i].0[l] as f64 / n as f64,
                        back_im[i].0[l] as f64 / n as f64,
                    );
                    let err = (br - x_re[i].0[l] as f64).hypot(bi - x_im[i].0[l] as f64);
                    assert!(err < tol_back, "{name} n={n} inverse lane {l} at {i}");
                }
            }
            if bluestein {
                println!("{name} n={n}: error / largest bin {worst:.2e}");
            }
        }
    }

    #[test]
    fn matches_the_plain_dft_forward_and_inverse() {
        let direct = (1..=72).chain([97, 128, 131, 134, 136, 260, 264, 268, 270, 524]);
        // Bluestein: prime, prime times 2 or 4, two such primes (at a leaf and a stage).
        for n in direct.chain([367, 2 * 367, 751, 1006, 3004, 4006]) {
            check_against_the_plain_dft(Plan::new(n));
        }
        // Bluestein from 101 up, so that it also runs at a stage (101 * 103) at a size the
        // reference can check.
        for n in [101, 202, 101 * 103] {
            check_against_the_plain_dft(Plan::build(n, 100));
        }
    }

    #[test]
    fn reads_strided_input() {
        let n = 12;
        let plan = Plan::new(n);
        let x: Vec<V> = (0..3 * n + 1).map(|i| V([i as f32; LANES])).collect();
        let zeros = vec![V::default(); x.len()];
        let mut scratch = vec![V::default(); plan.scratch_len()];
        let (mut re, mut im) = (vec![V::default(); n], vec![V::default(); n]);
        plan.forward(
            Plain,
            (&x, &zeros),
            (1, 3),
            (&mut re, &mut im),
            &mut scratch,
        );
        // DC bin: the sum of x[1 + 3i].
        let dc: f32 = (0..n).map(|i| (1 + 3 * i) as f32).sum();
        assert_eq!(re[0].0[0], dc);
    }

    #[test]
    fn reads_strided_input_on_the_bluestein_path() {
        let (n, off, stride) = (2 * 367, 2, 5);
        let plan = Plan::new(n);
        assert_eq!(plan.chirps.len(), 1);
        let (x_re, x_im) = signal(off + stride * n);
        let mut scratch = vec![V::default(); plan.scratch_len()];
        let (mut re, mut im) = (vec![V::default(); n], vec![V::default(); n]);
        let xs = (&x_re[..], &x_im[..]);
        plan.forward(Plain, xs, (off, stride), (&mut re, &mut im), &mut scratch);
        let pick = |v: &[V]| (0..n).map(|i| v[off + i * stride]).collect::<Vec<_>>();
        let (y_re, y_im) = (pick(&x_re), pick(&x_im));
        let (mut want_re, mut want_im) = (vec![V::default(); n], vec![V::default(); n]);
        let ys = (&y_re[..], &y_im[..]);
        plan.forward(
            Plain,
            ys,
            (0, 1),
            (&mut want_re, &mut want_im),
            &mut scratch,
        );
        assert_eq!((re, im), (want_re, want_im));
    }
}
