//! A complex FFT over vectors: [`LANES`](crate::ops::cpu::simd::LANES) independent transforms
//! at once, real and imaginary parts in separate arrays of [`V`]. Mixed radix, decimation in time, iterative (so that it
//! inlines whole into the caller's AVX2 code); factors 4 and 2 have their own butterflies, odd
//! factors use a direct DFT over conjugate pairs. rustfft handles one transform at a time and is
//! 5x slower per point on sizes such as 268 = 4 x 67 that the Converse2D padding produces; here
//! every operation works on `LANES` values, whatever the factors. The CPU's fused Converse2D
//! solve ([`crate::ops::cpu::solve`]) is its only user.

use std::f64::consts::PI;

use crate::ops::cpu::simd::{Simd, V};

/// `cos` and `sin` of `2 pi n k / p` for `n, k` in `1..=(p-1)/2`, row `k - 1`.
#[derive(Debug)]
struct Odd {
    p: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
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
    max_half: usize,
}

fn factors(mut n: usize) -> Vec<usize> {
    let mut f = vec![];
    while n % 4 == 0 {
        f.push(4);
        n /= 4;
    }
    if n % 2 == 0 {
        f.push(2);
        n /= 2;
    }
    let mut p = 3;
    while p * p <= n {
        while n % p == 0 {
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
        for &p in &f {
            if p % 2 == 1 && p > 1 && !odd.iter().any(|o| o.p == p) {
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
            max_half,
        }
    }

    /// Scratch (in vectors) that [`Self::forward`] needs.
    pub(crate) fn scratch_len(&self) -> usize {
        4 * self.max_half
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
        let (n, p) = (self.n, self.leaf);
        let (re, im) = (&mut re[..n], &mut im[..n]);
        let gap = n / p;
        for (b, &o) in self.leaf_offsets.iter().enumerate() {
            for r in 0..p {
                let i = off + (o + r * gap) * stride;
                re[b * p + r] = x_re[i];
                im[b * p + r] = x_im[i];
            }
            self.butterfly(s, p, (re, im), (b * p, 1), scratch);
        }
        for st in &self.stages {
            let (p, m) = (st.p, st.m);
            for base in (0..n).step_by(p * m) {
                for r in 1..p {
                    let tw = (r - 1) * m;
                    let (tr, ti) = (&st.tw_re[tw..][..m], &st.tw_im[tw..][..m]);
                    let at = base + r * m;
                    let (vr, vi) = (&mut re[at..at + m], &mut im[at..at + m]);
                    for k in 0..m {
                        let (a, b) = (vr[k], vi[k]);
                        vr[k] = s.sub(s.scale(a, tr[k]), s.scale(b, ti[k]));
                        vi[k] = s.madd(s.scale(a, ti[k]), b, tr[k]);
                    }
                }
                for k in 0..m {
                    self.butterfly(s, p, (re, im), (base + k, m), scratch);
                }
            }
        }
    }

    /// An in-place DFT of length `p` on `x[base + q * stride]`.
    #[inline(always)]
    fn butterfly<S: Simd>(
        &self,
        s: S,
        p: usize,
        (re, im): (&mut [V], &mut [V]),
        (base, stride): (usize, usize),
        scratch: &mut [V],
    ) {
        match p {
            1 => {}
            2 => {
                let (i0, i1) = (base, base + stride);
                let (ar, ai, br, bi) = (re[i0], im[i0], re[i1], im[i1]);
                (re[i0], im[i0]) = (s.add(ar, br), s.add(ai, bi));
                (re[i1], im[i1]) = (s.sub(ar, br), s.sub(ai, bi));
            }
            4 => {
                let i = [base, base + stride, base + 2 * stride, base + 3 * stride];
                let (x0r, x0i, x1r, x1i) = (re[i[0]], im[i[0]], re[i[1]], im[i[1]]);
                let (x2r, x2i, x3r, x3i) = (re[i[2]], im[i[2]], re[i[3]], im[i[3]]);
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
            _ => self.odd_butterfly(s, p, (re, im), (base, stride), scratch),
        }
    }

    /// [`Self::butterfly`] for odd `p`: a direct DFT over the conjugate pairs `(j, p - j)`.
    #[inline(always)]
    fn odd_butterfly<S: Simd>(
        &self,
        s: S,
        p: usize,
        (re, im): (&mut [V], &mut [V]),
        (base, stride): (usize, usize),
        scratch: &mut [V],
    ) {
        let Some(odd) = self.odd.iter().find(|o| o.p == p) else {
            unreachable!("factor {p} without tables")
        };
        let h = (p - 1) / 2;
        let (ar, rest) = scratch.split_at_mut(h);
        let (ai, rest) = rest.split_at_mut(h);
        let (br, bi) = rest.split_at_mut(h);
        let (x0r, x0i) = (re[base], im[base]);
        let (mut sr, mut si) = (x0r, x0i);
        for j in 0..h {
            let (u, w) = (base + (j + 1) * stride, base + (p - 1 - j) * stride);
            ar[j] = s.add(re[u], re[w]);
            ai[j] = s.add(im[u], im[w]);
            br[j] = s.sub(re[u], re[w]);
            bi[j] = s.sub(im[u], im[w]);
            sr = s.add(sr, ar[j]);
            si = s.add(si, ai[j]);
        }
        re[base] = sr;
        im[base] = si;
        let (ar, ai, br, bi) = (&ar[..h], &ai[..h], &br[..h], &bi[..h]);
        // X[k] = A - i B and X[p - k] = A + i B, with A = x0 + sum a_j cos, B = sum b_j sin.
        // (A macro, not a closure: closures do not inherit the caller's target features.)
        macro_rules! put {
            ($k:expr, $cr:expr, $ci:expr, $dr:expr, $di:expr) => {{
                let (u, w) = (base + ($k + 1) * stride, base + (p - 1 - $k) * stride);
                (re[u], im[u]) = (s.add($cr, $di), s.sub($ci, $dr));
                (re[w], im[w]) = (s.sub($cr, $di), s.add($ci, $dr));
            }};
        }
        // Two rows of the tables at a time: eight independent sums.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::cpu::simd::{Plain, LANES};
    use crate::ops::fft::reference;

    fn check_against_the_plain_dft<S: Simd>(s: S) {
        for n in (1..=72).chain([97, 128, 131, 134, 136, 260, 264, 268, 270, 524]) {
            let plan = Plan::new(n);
            let value = |i: usize, l: usize, f: f64| ((i * 31 + l * 7) as f64 * f).sin() as f32;
            let x_re: Vec<V> = (0..n)
                .map(|i| V(std::array::from_fn(|l| value(i, l, 0.37))))
                .collect();
            let x_im: Vec<V> = (0..n)
                .map(|i| V(std::array::from_fn(|l| value(i, l, 0.91))))
                .collect();
            let mut scratch = vec![V::default(); plan.scratch_len()];
            let (mut re, mut im) = (vec![V::default(); n], vec![V::default(); n]);
            plan.forward(s, (&x_re, &x_im), (0, 1), (&mut re, &mut im), &mut scratch);
            // The inverse: parts swapped in and out; normalised, it must give x back.
            let (mut back_im, mut back_re) = (vec![V::default(); n], vec![V::default(); n]);
            plan.forward(
                s,
                (&im, &re),
                (0, 1),
                (&mut back_im, &mut back_re),
                &mut scratch,
            );
            let tol = 2e-6 * (n as f64).sqrt() * (n as f64).log2().max(1.0);
            for l in 0..LANES {
                let lane = |v: &[V]| v.iter().map(|v| v.0[l] as f64).collect::<Vec<_>>();
                let (wr, wi) = reference::dft(&lane(&x_re), &lane(&x_im));
                for i in 0..n {
                    let (gr, gi) = (re[i].0[l] as f64, im[i].0[l] as f64);
                    let err = (gr - wr[i]).hypot(gi - wi[i]);
                    assert!(
                        err < tol,
                        "n={n} lane {l} bin {i}: ({gr}, {gi}) vs ({}, {})",
                        wr[i],
                        wi[i]
                    );
                    let (br, bi) = (
                        back_re[i].0[l] as f64 / n as f64,
                        back_im[i].0[l] as f64 / n as f64,
                    );
                    let err = (br - x_re[i].0[l] as f64).hypot(bi - x_im[i].0[l] as f64);
                    assert!(err < 1e-5, "n={n} inverse lane {l} at {i}");
                }
            }
        }
    }

    #[test]
    fn matches_the_plain_dft_forward_and_inverse() {
        check_against_the_plain_dft(Plain);
        #[cfg(target_arch = "x86_64")]
        match crate::ops::cpu::simd::Avx2::get() {
            Some(a) => check_against_the_plain_dft(a),
            None => println!("no AVX2 + FMA on this CPU: only the portable path checked"),
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
}
