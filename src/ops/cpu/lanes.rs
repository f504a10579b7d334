//! A complex FFT over vectors: [`LANES`](crate::ops::cpu::simd::LANES) independent transforms
//! at once, real and imaginary parts in separate arrays of [`V`]. Mixed radix, decimation in
//! time, iterative (so that it inlines whole into the transform's AVX2 or AVX-512 code);
//! factors 4 and 2 have their own butterflies, the primes 3 to 13 unrolled ones, odd factors
//! up to [`RADER_ABOVE`] a direct DFT over conjugate pairs. Larger primes (photo sizes pad to
//! e.g. 1028 = 4 x 257, 3004 = 4 x 751) take Rader's algorithm, a cyclic convolution of length
//! `p - 1` by a sub-plan of that length, where `p - 1` has no prime factor above
//! [`RADER_ABOVE`]; the others the cheapest, by a cost model ([`cost`]), of the direct DFT,
//! Rader's (its sub-plan planned the same way) and Bluestein's, a convolution by a sub-plan of
//! a length without a prime factor above 13. So every length is O(n log n). rustfft handles
//! one transform at a time; here every operation works on `LANES` values, whatever the
//! factors, or on twice as many: the transform is generic over the vector it runs on
//! ([`Line`]: [`V`], or [`V2`], two lines side by side, one AVX-512 register), each lane
//! taking the same operations either way. Where a transform's points fit in half of L1
//! ([`IN_CACHE`]) the stages run depth first, sub-transform by sub-transform. The CPU's fused
//! Converse2D solve ([`crate::ops::cpu::solve`]) is its only user.

use std::f64::consts::PI;
use std::marker::PhantomData;
use std::ops::Range;

use rustfft::num_complex::Complex;

use crate::ops::cpu::simd::{simd_fn, Simd, V, V2};

/// Primes above this take Rader's algorithm where `p - 1` has no prime factor above it (so
/// its sub-plan is direct): the direct DFT's O(p²) is as fast up to about here (`cargo bench
/// --bench ops -- lanes` prints the direct DFT, Rader's and Bluestein's per length).
const RADER_ABOVE: usize = 90;

/// How a plan takes its primes above the unrolled ones.
#[derive(Debug, Clone, Copy)]
enum Pick {
    /// By the cost model ([`cost::method`]).
    Cheapest,
    /// Rader's algorithm above the first where `p - 1` has no prime factor above it,
    /// Bluestein's above the second (at a length `2^a` or `3 x 2^a`), else the direct DFT.
    Thresholds(usize, usize),
}

/// How one prime factor is transformed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Method {
    Direct,
    Rader,
    /// At this convolution length.
    Bluestein(usize),
}

/// The planner's model of what a transform costs, in nanoseconds per point on one line of
/// [`V`] (fitted to `cargo bench --bench ops -- lanes` on AVX-512 at 100 to 4096 points). It
/// only ranks the ways of transforming one large prime, so its scale does not matter.
mod cost {
    use super::{factors, Method, RADER_ABOVE};

    /// A stage of radix 4, 2 or an unrolled prime, per point.
    fn stage(p: usize) -> f64 {
        match p {
            1 => 0.0,
            2 => 1.8,
            3 | 5 => 2.2,
            4 => 1.9,
            7 => 2.4,
            11 => 2.7,
            13 => 3.4,
            _ => method(p).1,
        }
    }

    /// A whole transform of length `n` planned by [`method`].
    pub(super) fn plan(n: usize) -> f64 {
        n as f64 * factors(n).into_iter().map(stage).sum::<f64>()
    }

    /// How the odd prime `p` above the unrolled ones is transformed, and what it costs per
    /// point: the direct DFT up to [`RADER_ABOVE`] and Rader's algorithm where `p - 1` has no
    /// prime factor above it (as measured); otherwise the cheapest of the direct DFT
    /// (`O(p)` per point), Rader's (two transforms of `p - 1`, planned the same way, and
    /// three passes over the points) and Bluestein's (two transforms of the cheapest length
    /// from `2p - 1` to twice that without a prime factor above 13, and three passes).
    pub(super) fn method(p: usize) -> (Method, f64) {
        let direct = (Method::Direct, 3.3 + 0.135 * p as f64);
        if p <= RADER_ABOVE {
            return direct;
        }
        let rader = (Method::Rader, 4.5 + 2.0 * plan(p - 1) / p as f64);
        if factors(p - 1).iter().all(|&q| q <= RADER_ABOVE) {
            return rader;
        }
        let (lo, hi) = (2 * p - 1, 4 * p - 2);
        let m = smooth_lengths(lo, hi)
            .min_by(|&a, &b| plan(a).total_cmp(&plan(b)))
            .expect("a power of two lies between lo and 2 lo");
        let bluestein = (
            Method::Bluestein(m),
            (2.0 * plan(m) + 4.0 * m as f64) / p as f64,
        );
        [direct, rader, bluestein]
            .into_iter()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("three methods")
    }

    /// The lengths in `lo..=hi` without a prime factor above 13, ascending.
    fn smooth_lengths(lo: usize, hi: usize) -> impl Iterator<Item = usize> {
        let mut all = vec![1usize];
        for p in [2, 3, 5, 7, 11, 13] {
            let mut more = vec![];
            for &a in &all {
                let mut x = a * p;
                while x <= hi {
                    more.push(x);
                    x *= p;
                }
            }
            all.extend(more);
        }
        all.sort_unstable();
        all.into_iter().filter(move |&m| m >= lo)
    }
}

/// Bytes of a transform's points (both parts) that the stages run on depth first, sub-transform
/// by sub-transform, so that they stay in the L1 cache (half of a 48 KiB one, leaving room for
/// the twiddles and the input).
const IN_CACHE: usize = 24 << 10;

/// The odd factors whose butterfly is unrolled.
const UNROLLED: [usize; 5] = [3, 5, 7, 11, 13];

/// `cos` and `sin` of `2 pi n k / p` for `n, k` in `1..=(p-1)/2`, row `k - 1`.
#[derive(Debug)]
struct Odd {
    p: usize,
    /// Whether the butterfly takes its unrolled form (the small primes; off in a test that
    /// compares the two).
    unrolled: bool,
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
    /// Of the smooth length `m` (no prime factor above 13).
    sub: Plan,
}

impl Chirp {
    /// The smallest `2^a` or `3 x 2^a` that holds the linear convolution for the prime `p`.
    fn power_of_two_length(p: usize) -> usize {
        let m = (2 * p - 1).next_power_of_two();
        if m / 4 * 3 >= 2 * p - 1 {
            m / 4 * 3
        } else {
            m
        }
    }

    /// For the prime `p`, convolving at the length `m` (at least `2p - 1`, its prime factors
    /// unrolled ones).
    fn new(p: usize, m: usize) -> Self {
        assert!(m >= 2 * p - 1 && factors(m).iter().all(|&f| f <= 13));
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
        let sub = Plan::build(m, usize::MAX, usize::MAX);
        Self {
            p,
            w_re: w.iter().map(|w| w.re as f32).collect(),
            w_im: w.iter().map(|w| -w.im as f32).collect(),
            b_re: b.iter().map(|b| (b.re * norm) as f32).collect(),
            b_im: b.iter().map(|b| (b.im * norm) as f32).collect(),
            sub,
        }
    }

    /// Scratch for its butterfly.
    fn scratch_len(&self) -> usize {
        4 * self.sub.n + self.sub.scratch_len()
    }
}

/// Rader's algorithm for the prime `p`, with a primitive root `g`: for `m < p - 1`,
/// `X[g^-m] = x_0 + (a * b)_m`, the cyclic convolution of `a_q = x[g^q]` and
/// `b_j = e^{-2 pi i g^-j / p}`, of length `p - 1`; and `X_0 = x_0 + sum a`.
#[derive(Debug)]
struct Rader {
    p: usize,
    /// `g^q mod p`, `q < p - 1`.
    gather: Vec<usize>,
    /// `g^-m mod p`, `m < p - 1`.
    scatter: Vec<usize>,
    /// The DFT of `b`, divided by `p - 1`.
    b_re: Vec<f32>,
    b_im: Vec<f32>,
    /// Of length `p - 1`.
    sub: Plan,
}

fn pow_mod(b: usize, mut e: usize, m: usize) -> usize {
    let (mut r, mut b, m) = (1u64, b as u64 % m as u64, m as u64);
    while e > 0 {
        if e & 1 == 1 {
            r = r * b % m;
        }
        b = b * b % m;
        e >>= 1;
    }
    r as usize
}

/// The smallest primitive root of the prime `p`.
fn primitive_root(p: usize) -> usize {
    let mut fs = factors(p - 1);
    fs.iter_mut().for_each(|f| {
        // `factors` groups 2s as 4s.
        if *f == 4 {
            *f = 2
        }
    });
    fs.dedup();
    (2..p)
        .find(|&g| fs.iter().all(|&f| pow_mod(g, (p - 1) / f, p) != 1))
        .expect("a prime has a primitive root")
}

impl Rader {
    /// For the prime `p`, its convolution by `sub` (a plan of length `p - 1`).
    fn new(p: usize, sub: Plan) -> Self {
        assert_eq!(sub.n, p - 1);
        let l = p - 1;
        let g = primitive_root(p);
        let gather: Vec<usize> = (0..l).map(|q| pow_mod(g, q, p)).collect();
        let scatter: Vec<usize> = (0..l).map(|m| gather[(l - m) % l]).collect();
        // The angle from the integer `g^-j mod p`, so that it stays exact.
        let mut b: Vec<Complex<f64>> = scatter
            .iter()
            .map(|&k| Complex::from_polar(1.0, -2.0 * PI * k as f64 / p as f64))
            .collect();
        rustfft::FftPlanner::new()
            .plan_fft_forward(l)
            .process(&mut b);
        let norm = 1.0 / l as f64;
        Self {
            p,
            gather,
            scatter,
            b_re: b.iter().map(|b| (b.re * norm) as f32).collect(),
            b_im: b.iter().map(|b| (b.im * norm) as f32).collect(),
            sub,
        }
    }

    /// Scratch for its butterfly.
    fn scratch_len(&self) -> usize {
        4 * (self.p - 1) + self.sub.scratch_len()
    }
}

/// What a butterfly of an odd factor reads.
#[derive(Clone, Copy)]
enum Tables<'a> {
    None,
    Odd(&'a Odd),
    Rader(&'a Rader),
    Chirp(&'a Chirp),
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
    raders: Vec<Rader>,
    chirps: Vec<Chirp>,
    max_half: usize,
}

/// Where a butterfly reads its `p` inputs: `x[at.0 + q * at.1]`, or the destination array
/// itself when `x` is `None`; with `tw`, input `q >= 1` is first multiplied by the twiddle at
/// `(q - 1) * step`.
#[derive(Clone, Copy)]
struct Input<'a, T> {
    x: Option<(&'a [T], &'a [T])>,
    at: (usize, usize),
    tw: Option<(&'a [f32], &'a [f32], usize)>,
}

/// `(a + ib)(c + id)` for the scalar twiddle `c + id`.
#[inline(always)]
fn twiddle<S: Simd, T: Line>(s: On<S, T>, (a, b): (T, T), (c, d): (f32, f32)) -> (T, T) {
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
    /// The plan the solve uses: each prime factor above the unrolled ones by the cheapest of
    /// the direct DFT, Rader's and Bluestein's algorithms ([`cost::method`]).
    pub(crate) fn new(n: usize) -> Self {
        Self::picking(n, Pick::Cheapest)
    }

    /// A plan whose primes above `rader` take Rader's algorithm (the sub-plan direct) where
    /// `p - 1` has no prime factor above `rader`, the other primes above `bluestein` Bluestein's
    /// (at a length `2^a` or `3 x 2^a`), and the rest the direct DFT; the bench sets them side
    /// by side.
    pub(crate) fn build(n: usize, rader: usize, bluestein: usize) -> Self {
        Self::picking(n, Pick::Thresholds(rader, bluestein))
    }

    fn picking(n: usize, pick: Pick) -> Self {
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
        let mut raders: Vec<Rader> = vec![];
        let mut chirps: Vec<Chirp> = vec![];
        for &p in &f {
            if p.is_multiple_of(2) || p == 1 {
                continue;
            }
            let seen = raders.iter().any(|r| r.p == p) || chirps.iter().any(|c| c.p == p);
            let method = match pick {
                Pick::Cheapest => cost::method(p).0,
                Pick::Thresholds(rader, _)
                    if p > rader && factors(p - 1).iter().all(|&q| q <= rader) =>
                {
                    Method::Rader
                }
                Pick::Thresholds(_, bluestein) if p > bluestein => {
                    Method::Bluestein(Chirp::power_of_two_length(p))
                }
                Pick::Thresholds(..) => Method::Direct,
            };
            if let Method::Rader = method {
                if !seen {
                    let sub = match pick {
                        Pick::Cheapest => Plan::new(p - 1),
                        Pick::Thresholds(..) => Plan::build(p - 1, usize::MAX, usize::MAX),
                    };
                    raders.push(Rader::new(p, sub));
                }
            } else if let Method::Bluestein(m) = method {
                if !seen {
                    chirps.push(Chirp::new(p, m));
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
                let unrolled = UNROLLED.contains(&p);
                odd.push(Odd {
                    p,
                    unrolled,
                    cos,
                    sin,
                });
            }
        }
        let max_half = odd.iter().map(|o| (o.p - 1) / 2).max().unwrap_or(0);
        Self {
            n,
            leaf,
            leaf_offsets,
            stages,
            odd,
            raders,
            chirps,
            max_half,
        }
    }

    /// The length of the transform.
    pub(crate) fn len(&self) -> usize {
        self.n
    }

    /// The primes that take Rader's algorithm.
    pub(crate) fn rader_primes(&self) -> Vec<usize> {
        self.raders.iter().map(|r| r.p).collect()
    }

    /// The primes that take Bluestein's algorithm.
    pub(crate) fn bluestein_primes(&self) -> Vec<usize> {
        self.chirps.iter().map(|c| c.p).collect()
    }

    /// Scratch (in vectors) that [`Self::forward`] needs.
    pub(crate) fn scratch_len(&self) -> usize {
        let rader = self.raders.iter().map(Rader::scratch_len);
        let chirp = self.chirps.iter().map(Chirp::scratch_len);
        rader.chain(chirp).fold(4 * self.max_half, usize::max)
    }

    /// Forward DFT of the strided input `x[off + i * stride]`, `i < n`, into `out[..n]`
    /// (unnormalised; the inverse is this with real and imaginary parts swapped on both sides).
    /// It runs on the instruction set [`Isa::current`](crate::ops::cpu::simd::Isa::current)
    /// names, as the caller's `_s` does: the transform is compiled once per instruction set
    /// (not inlined into each caller), which keeps the code and its build time small.
    #[inline(always)]
    pub(crate) fn forward<S: Simd, T: Line>(
        &self,
        _s: S,
        x: (&[T], &[T]),
        at: (usize, usize),
        out: (&mut [T], &mut [T]),
        scratch: &mut [T],
    ) {
        T::transform(self, x, at, out, scratch)
    }

    /// [`Self::forward`], inlined into [`transform`] and [`transform2`].
    #[inline(always)]
    fn run<S: Simd, T: Line>(
        &self,
        s: S,
        (x_re, x_im): (&[T], &[T]),
        (off, stride): (usize, usize),
        (re, im): (&mut [T], &mut [T]),
        scratch: &mut [T],
    ) {
        let s = On::<S, T>(s, PhantomData);
        let (n, p) = (self.n, self.leaf);
        let (re, im) = (&mut re[..n], &mut im[..n]);
        let gap = n / p;
        let leaf_tables = self.tables(p);
        // Depth first while the sub-transforms fit in the L1 cache: the leaves of a span and
        // the stages within it run before the next span, then the stages above on the whole.
        let fits = |len: usize| len * 2 * size_of::<T>() <= IN_CACHE;
        let lower = self
            .stages
            .iter()
            .take_while(|st| fits(st.p * st.m))
            .count();
        let span = self.stages[..lower].last().map_or(p, |st| st.p * st.m);
        for start in (0..n).step_by(span) {
            for b in start / p..(start + span) / p {
                let src = Input {
                    x: Some((x_re, x_im)),
                    at: (off + self.leaf_offsets[b] * stride, gap * stride),
                    tw: None,
                };
                Self::butterfly(s, p, leaf_tables, src, (re, im), (b * p, 1), scratch);
            }
            for st in &self.stages[..lower] {
                self.stage(s, st, start..start + span, (re, im), scratch);
            }
        }
        for st in &self.stages[lower..] {
            self.stage(s, st, 0..n, (re, im), scratch);
        }
    }

    /// The butterflies of stage `st` over the points `range` (whole sub-transforms of it).
    #[inline(always)]
    fn stage<S: Simd, T: Line>(
        &self,
        s: On<S, T>,
        st: &Stage,
        range: Range<usize>,
        (re, im): (&mut [T], &mut [T]),
        scratch: &mut [T],
    ) {
        let (p, m) = (st.p, st.m);
        let tables = self.tables(p);
        for base in range.step_by(p * m) {
            for k in 0..m {
                let src = Input {
                    x: None,
                    at: (base + k, m),
                    tw: Some((&st.tw_re[k..], &st.tw_im[k..], m)),
                };
                Self::butterfly(
                    s,
                    p,
                    tables,
                    src,
                    (&mut *re, &mut *im),
                    (base + k, m),
                    scratch,
                );
            }
        }
    }

    /// The tables of the odd factor `p` (none for 1, 2 and 4).
    fn tables(&self, p: usize) -> Tables<'_> {
        if let Some(r) = self.raders.iter().find(|r| r.p == p) {
            Tables::Rader(r)
        } else if let Some(c) = self.chirps.iter().find(|c| c.p == p) {
            Tables::Chirp(c)
        } else if let Some(o) = self.odd.iter().find(|o| o.p == p) {
            Tables::Odd(o)
        } else {
            Tables::None
        }
    }

    /// A DFT of length `p` of `src` into `dst[base + q * stride]`, `q < p`, with the factor's
    /// `tables`.
    #[inline(always)]
    fn butterfly<S: Simd, T: Line>(
        s: On<S, T>,
        p: usize,
        tables: Tables,
        src: Input<T>,
        (re, im): (&mut [T], &mut [T]),
        (base, stride): (usize, usize),
        scratch: &mut [T],
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
                if let Tables::Rader(r) = tables {
                    // Every input is read before the first output is written (in place at
                    // the stages). The sub-transforms run through `transform`, not inlined.
                    let l = p - 1;
                    let (ar, rest) = scratch.split_at_mut(l);
                    let (ai, rest) = rest.split_at_mut(l);
                    let (fr, rest) = rest.split_at_mut(l);
                    let (fi, rest) = rest.split_at_mut(l);
                    let (x0r, x0i) = get!(0);
                    for q in 0..l {
                        (ar[q], ai[q]) = get!(r.gather[q]);
                    }
                    T::transform(&r.sub, (&*ar, &*ai), (0, 1), (&mut *fr, &mut *fi), rest);
                    (re[base], im[base]) = (s.add(x0r, fr[0]), s.add(x0i, fi[0]));
                    let (br, bi) = (&r.b_re[..l], &r.b_im[..l]);
                    for k in 0..l {
                        (fr[k], fi[k]) = twiddle(s, (fr[k], fi[k]), (br[k], bi[k]));
                    }
                    // The inverse: parts swapped on both sides.
                    T::transform(&r.sub, (&*fi, &*fr), (0, 1), (&mut *ai, &mut *ar), rest);
                    for (m, &k) in r.scatter.iter().enumerate() {
                        let i = base + k * stride;
                        (re[i], im[i]) = (s.add(x0r, ar[m]), s.add(x0i, ai[m]));
                    }
                    return;
                }
                if let Tables::Chirp(c) = tables {
                    // `X_k = conj(w_k) (a * b)_k` with `a_j = x_j conj(w_j)`, the circular
                    // convolution by the sub-plan; inputs read first, as above.
                    let m = c.sub.n;
                    let (ar, rest) = scratch.split_at_mut(m);
                    let (ai, rest) = rest.split_at_mut(m);
                    let (fr, rest) = rest.split_at_mut(m);
                    let (fi, rest) = rest.split_at_mut(m);
                    let (wr, wi) = (&c.w_re[..p], &c.w_im[..p]);
                    for j in 0..p {
                        (ar[j], ai[j]) = twiddle(s, get!(j), (wr[j], wi[j]));
                    }
                    ar[p..].fill(T::default());
                    ai[p..].fill(T::default());
                    T::transform(&c.sub, (&*ar, &*ai), (0, 1), (&mut *fr, &mut *fi), rest);
                    let (br, bi) = (&c.b_re[..m], &c.b_im[..m]);
                    for k in 0..m {
                        (fr[k], fi[k]) = twiddle(s, (fr[k], fi[k]), (br[k], bi[k]));
                    }
                    T::transform(&c.sub, (&*fi, &*fr), (0, 1), (&mut *ai, &mut *ar), rest);
                    for k in 0..p {
                        let i = base + k * stride;
                        (re[i], im[i]) = twiddle(s, (ar[k], ai[k]), (wr[k], wi[k]));
                    }
                    return;
                }
                let Tables::Odd(odd) = tables else {
                    unreachable!("factor {p} without tables")
                };
                // X[k] = A - i B and X[p - k] = A + i B, with A = x0 + sum a_j cos, B = sum b_j sin.
                macro_rules! put {
                    ($k:expr, $cr:expr, $ci:expr, $dr:expr, $di:expr) => {{
                        let (u, w) = (base + ($k + 1) * stride, base + (p - 1 - $k) * stride);
                        (re[u], im[u]) = (s.add($cr, $di), s.sub($ci, $dr));
                        (re[w], im[w]) = (s.sub($cr, $di), s.add($ci, $dr));
                    }};
                }
                // The sums and differences of the conjugate pairs `(j, p - j)` into `a` and `b`
                // (`h` of each), `X_0` written; gives `x_0`.
                macro_rules! pairs {
                    ($ar:expr, $ai:expr, $br:expr, $bi:expr, $h:expr) => {{
                        let (x0r, x0i) = get!(0);
                        let (mut sr, mut si) = (x0r, x0i);
                        for j in 0..$h {
                            let ((ur, ui), (wr, wi)) = (get!(j + 1), get!(p - 1 - j));
                            $ar[j] = s.add(ur, wr);
                            $ai[j] = s.add(ui, wi);
                            $br[j] = s.sub(ur, wr);
                            $bi[j] = s.sub(ui, wi);
                            sr = s.add(sr, $ar[j]);
                            si = s.add(si, $ai[j]);
                        }
                        re[base] = sr;
                        im[base] = si;
                        (x0r, x0i)
                    }};
                }
                // Row `k` of the tables against `a` and `b`, written as `X_{k+1}` and `X_{p-k-1}`.
                macro_rules! row {
                    ($k:expr, $x0:expr, $ar:expr, $ai:expr, $br:expr, $bi:expr, $h:expr) => {{
                        let (k, h) = ($k, $h);
                        let (c, sn) = (&odd.cos[k * h..][..h], &odd.sin[k * h..][..h]);
                        let (mut cr, mut ci, mut dr, mut di) =
                            ($x0.0, $x0.1, T::default(), T::default());
                        for j in 0..h {
                            cr = s.madd(cr, $ar[j], c[j]);
                            ci = s.madd(ci, $ai[j], c[j]);
                            dr = s.madd(dr, $br[j], sn[j]);
                            di = s.madd(di, $bi[j], sn[j]);
                        }
                        put!(k, cr, ci, dr, di);
                    }};
                }
                // The small primes: the general case's arithmetic below, operation for
                // operation (so the same bits), on the stack with constant bounds, unrolled.
                macro_rules! fixed {
                    ($h:literal) => {{
                        const H: usize = $h;
                        let z = T::default();
                        let (mut ar, mut ai, mut br, mut bi) = ([z; H], [z; H], [z; H], [z; H]);
                        let x0 = pairs!(ar, ai, br, bi, H);
                        for k in 0..H {
                            row!(k, x0, ar, ai, br, bi, H);
                        }
                    }};
                }
                if odd.unrolled {
                    match p {
                        3 => return fixed!(1),
                        5 => return fixed!(2),
                        7 => return fixed!(3),
                        11 => return fixed!(5),
                        13 => return fixed!(6),
                        _ => unreachable!("no unrolled butterfly for {p}"),
                    }
                }
                // The direct DFT: the pairs into scratch, then two rows of the tables at a time.
                let h = (p - 1) / 2;
                let (ar, rest) = scratch.split_at_mut(h);
                let (ai, rest) = rest.split_at_mut(h);
                let (br, bi) = rest.split_at_mut(h);
                let (x0r, x0i) = pairs!(ar, ai, br, bi, h);
                let (ar, ai, br, bi) = (&ar[..h], &ai[..h], &br[..h], &bi[..h]);
                // Eight independent sums.
                let mut k = 0;
                while k + 1 < h {
                    let (c0, s0) = (&odd.cos[k * h..][..h], &odd.sin[k * h..][..h]);
                    let (c1, s1) = (&odd.cos[(k + 1) * h..][..h], &odd.sin[(k + 1) * h..][..h]);
                    let z = T::default();
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
                    row!(k, (x0r, x0i), ar, ai, br, bi, h);
                }
            }
        }
    }
}

simd_fn! {
    /// [`Plan::forward`] on [`V`].
    fn transform(
        s,
        plan: &Plan,
        x: (&[V], &[V]),
        at: (usize, usize),
        out: (&mut [V], &mut [V]),
        scratch: &mut [V],
    ) {
        plan.run(s, x, at, out, scratch)
    }
}

simd_fn! {
    /// [`Plan::forward`] on [`V2`].
    fn transform2(
        s,
        plan: &Plan,
        x: (&[V2], &[V2]),
        at: (usize, usize),
        out: (&mut [V2], &mut [V2]),
        scratch: &mut [V2],
    ) {
        plan.run(s, x, at, out, scratch)
    }
}

/// What the lane FFT transforms: [`V`], a line of [`LANES`](crate::ops::cpu::simd::LANES)
/// transforms, or [`V2`], two lines side by side (one AVX-512 register). Each lane takes the
/// same operations either way, so the same bits.
pub(crate) trait Line: Copy + Default {
    fn add<S: Simd>(s: S, a: Self, b: Self) -> Self;
    fn sub<S: Simd>(s: S, a: Self, b: Self) -> Self;
    fn scale<S: Simd>(s: S, a: Self, c: f32) -> Self;
    fn madd<S: Simd>(s: S, acc: Self, a: Self, c: f32) -> Self;
    /// [`Plan::forward`], compiled once per instruction set.
    fn transform(
        plan: &Plan,
        x: (&[Self], &[Self]),
        at: (usize, usize),
        out: (&mut [Self], &mut [Self]),
        scratch: &mut [Self],
    );
}

/// [`Line`] for a vector type: the token's arithmetic for it and its compiled transform.
macro_rules! line {
    ($t:ty, $add:ident, $sub:ident, $scale:ident, $madd:ident, $transform:ident) => {
        impl Line for $t {
            #[inline(always)]
            fn add<S: Simd>(s: S, a: $t, b: $t) -> $t {
                s.$add(a, b)
            }
            #[inline(always)]
            fn sub<S: Simd>(s: S, a: $t, b: $t) -> $t {
                s.$sub(a, b)
            }
            #[inline(always)]
            fn scale<S: Simd>(s: S, a: $t, c: f32) -> $t {
                s.$scale(a, c)
            }
            #[inline(always)]
            fn madd<S: Simd>(s: S, acc: $t, a: $t, c: f32) -> $t {
                s.$madd(acc, a, c)
            }
            fn transform(
                plan: &Plan,
                x: (&[$t], &[$t]),
                at: (usize, usize),
                out: (&mut [$t], &mut [$t]),
                scratch: &mut [$t],
            ) {
                $transform(plan, x, at, out, scratch)
            }
        }
    };
}

line!(V, add, sub, scale, madd, transform);
line!(V2, add2, sub2, scale2, madd2, transform2);

/// `S`'s arithmetic on `T`, which the transform calls as it would the token's on [`V`].
struct On<S, T>(S, PhantomData<T>);

impl<S: Copy, T> Clone for On<S, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S: Copy, T> Copy for On<S, T> {}

impl<S: Simd, T: Line> On<S, T> {
    #[inline(always)]
    fn add(self, a: T, b: T) -> T {
        T::add(self.0, a, b)
    }
    #[inline(always)]
    fn sub(self, a: T, b: T) -> T {
        T::sub(self.0, a, b)
    }
    #[inline(always)]
    fn scale(self, a: T, c: f32) -> T {
        T::scale(self.0, a, c)
    }
    #[inline(always)]
    fn madd(self, acc: T, a: T, c: f32) -> T {
        T::madd(self.0, acc, a, c)
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
    use crate::ops::cpu::simd::{Isa, Plain, LANES, V2};
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

    simd_fn! {
        /// The forward transform of strided pairs on the instruction set [`Isa::current`]
        /// names.
        fn forward_pairs_simd(s, plan: &Plan, x: (&[V2], &[V2]), at: (usize, usize)) -> (Vec<V2>, Vec<V2>) {
            let n = plan.n;
            let mut scratch = vec![V2::default(); plan.scratch_len()];
            let (mut re, mut im) = (vec![V2::default(); n], vec![V2::default(); n]);
            plan.forward(s, x, at, (&mut re, &mut im), &mut scratch);
            (re, im)
        }
    }

    simd_fn! {
        /// [`forward_pairs_simd`] on single lines.
        fn forward_simd(s, plan: &Plan, x: (&[V], &[V]), at: (usize, usize)) -> (Vec<V>, Vec<V>) {
            let n = plan.n;
            let mut scratch = vec![V::default(); plan.scratch_len()];
            let (mut re, mut im) = (vec![V::default(); n], vec![V::default(); n]);
            plan.forward(s, x, at, (&mut re, &mut im), &mut scratch);
            (re, im)
        }
    }

    /// Two lines transformed at once ([`V2`]) give each line's bits alone, on every
    /// instruction set, on every path (butterflies of 4, 2, the unrolled and the general odd
    /// ones, Rader's and Bluestein's algorithms), from strided input.
    #[test]
    fn pairs_give_the_bits_of_single_lines() {
        for n in [64, 4 * 17, 2 * 3 * 5 * 7, 97, 4 * 257, 751, 2 * 383, 1024] {
            let plan = Plan::new(n);
            let (off, stride) = (1, 3);
            let len = off + stride * n;
            let lines = [signal(len), {
                let (re, im) = signal(len + 5);
                (re[5..].to_vec(), im[5..].to_vec())
            }];
            // Part 0 (real) or 1 (imaginary) of both lines, side by side.
            let pack = |part: usize| -> Vec<V2> {
                let at = |l: &(Vec<V>, Vec<V>), i: usize| if part == 0 { l.0[i] } else { l.1[i] };
                (0..len)
                    .map(|i| V2([at(&lines[0], i), at(&lines[1], i)]))
                    .collect()
            };
            let (x_re, x_im) = (pack(0), pack(1));
            for isa in Isa::available() {
                let (re, im) = isa.run(|| forward_pairs_simd(&plan, (&x_re, &x_im), (off, stride)));
                for (h, line) in lines.iter().enumerate() {
                    let (want_re, want_im) =
                        isa.run(|| forward_simd(&plan, (&line.0, &line.1), (off, stride)));
                    let got_re: Vec<V> = re.iter().map(|v| v.0[h]).collect();
                    let got_im: Vec<V> = im.iter().map(|v| v.0[h]).collect();
                    let bits = |v: &[V]| -> Vec<u32> {
                        v.iter().flat_map(|v| v.0.map(f32::to_bits)).collect()
                    };
                    assert!(bits(&got_re) == bits(&want_re), "{isa:?} n={n} line {h} re");
                    assert!(bits(&got_im) == bits(&want_im), "{isa:?} n={n} line {h} im");
                }
            }
        }
    }

    /// Checks length `n` on every instruction set this CPU has against the plain DFT: absolute
    /// error `2e-6 sqrt(n) log2(n)` on the direct path; where Rader's or Bluestein's algorithm runs, error relative to
    /// the largest bin, `1e-5 log2(n)` (and the same, absolute, on the round trip).
    fn check_against_the_plain_dft(plan: Plan) {
        let n = plan.n;
        let rader = !plan.rader_primes().is_empty() || !plan.bluestein_primes().is_empty();
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
                let (tol, tol_back) = if rader {
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
            if rader {
                println!("{name} n={n}: error / largest bin {worst:.2e}");
            }
        }
    }

    #[test]
    fn matches_the_plain_dft_forward_and_inverse() {
        let small = (1..=72).chain([97, 128, 131, 134, 136, 260, 264, 268, 270, 524]);
        // Rader: primes, a prime times 2 or 4, at a leaf and a stage (101 x 103); Bluestein:
        // 503 and 383, where `p - 1` has a large prime factor.
        let rader = [
            101,
            107,
            257,
            4 * 257,
            367,
            2 * 367,
            751,
            3004,
            4006,
            101 * 103,
        ];
        // The cost model's other choices: Rader's algorithm over a sub-plan with Rader's in
        // it (809 - 1 = 8 x 101), Bluestein's at lengths with factors 5 to 13 (1031 at
        // 2156 = 4 x 7² x 11, 389 at 847 = 7 x 11²), the direct DFT of 227.
        let modelled = [809, 1031, 2 * 389, 2 * 227];
        for n in small.chain(rader).chain([1006, 2 * 383]).chain(modelled) {
            check_against_the_plain_dft(Plan::new(n));
        }
        // The direct DFT of primes above the thresholds, and Bluestein's algorithm at a stage,
        // which the bench sets beside the others.
        for n in [97, 2 * 131] {
            check_against_the_plain_dft(Plan::build(n, usize::MAX, usize::MAX));
        }
        check_against_the_plain_dft(Plan::build(101 * 103, usize::MAX, 100));
    }

    /// Which algorithm each prime takes.
    #[test]
    fn primes_take_rader_bluestein_or_the_direct_dft() {
        let plan = Plan::new(4 * 257 * 503 * 89);
        assert_eq!(plan.rader_primes(), [257]);
        assert_eq!(plan.bluestein_primes(), [503]);
        assert!(plan.odd.iter().any(|o| o.p == 89));
        // 383 - 1 = 2 x 191.
        assert_eq!(Plan::new(2 * 383).bluestein_primes(), [383]);
        // Where `p - 1` has a prime factor above RADER_ABOVE: the cheapest by the model.
        let nested = Plan::new(809);
        assert_eq!(nested.rader_primes(), [809]);
        assert_eq!(nested.raders[0].sub.rader_primes(), [101]);
        let chirp = Plan::new(1031);
        assert_eq!(chirp.bluestein_primes(), [1031]);
        assert_eq!(chirp.chirps[0].sub.n, 4 * 7 * 7 * 11);
        assert_eq!(Plan::new(2 * 389).chirps[0].sub.n, 7 * 11 * 11);
        assert!(Plan::new(2 * 227).odd.iter().any(|o| o.p == 227));
        // The thresholds the bench sets keep the power-of-two lengths and direct sub-plans.
        let old = Plan::build(1031, 90, 360);
        assert_eq!(old.chirps[0].sub.n, 3 * 1024);
        let old = Plan::build(809, 101, usize::MAX);
        assert_eq!(old.raders[0].sub.rader_primes(), Vec::<usize>::new());
    }

    /// The unrolled butterflies of the small primes give the general odd butterfly's bits.
    #[test]
    fn unrolled_butterflies_match_the_general_one_bit_for_bit() {
        for n in [
            3,
            5,
            7,
            11,
            13,
            4 * 3 * 11,
            2 * 5 * 13,
            7 * 9,
            3 * 5 * 7 * 11,
            13 * 8,
        ] {
            let plan = Plan::new(n);
            let mut general = Plan::new(n);
            assert!(plan.odd.iter().all(|o| o.unrolled));
            general.odd.iter_mut().for_each(|o| o.unrolled = false);
            let (x_re, x_im) = signal(n);
            for isa in Isa::available() {
                let got = isa.run(|| forward_and_back_simd(&plan, (&x_re, &x_im)));
                let want = isa.run(|| forward_and_back_simd(&general, (&x_re, &x_im)));
                let bits = |v: &[Vec<V>; 4]| -> Vec<u32> {
                    v.iter()
                        .flatten()
                        .flat_map(|v| v.0.map(f32::to_bits))
                        .collect()
                };
                assert_eq!(bits(&got), bits(&want), "n={n} on {}", isa.name());
            }
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

    /// Rader's and Bluestein's butterflies read strided input at the leaves.
    #[test]
    fn reads_strided_input_on_the_rader_and_bluestein_paths() {
        for (n, rader) in [(2 * 367, true), (2 * 383, false)] {
            let (off, stride) = (2, 5);
            let plan = Plan::new(n);
            let primes = if rader {
                plan.rader_primes()
            } else {
                plan.bluestein_primes()
            };
            assert_eq!(primes, [n / 2]);
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
}
