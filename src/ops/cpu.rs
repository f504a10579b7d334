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

/// `x[r, ..] = gelu(x[r, ..] + b[r])` for each row `r` of length `n`.
pub(crate) fn bias_gelu(x: &mut [f32], b: &[f32], n: usize) {
    let _t = profile::time(OpKind::NormAct, || x.len() as f64);
    x.par_chunks_mut(n).zip(b).for_each(|(row, &b)| {
        row.iter_mut().for_each(|v| *v = gelu(*v + b));
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
    x.par_chunks_mut(1 << 14)
        .for_each(|c| c.iter_mut().for_each(|v| *v = gelu(*v)));
}

/// Channels-first LayerNorm without its affine (the caller folds that into the next 1x1):
/// `out[c, p] = (x[c, p] - mean_c x[., p]) / sqrt(var_c x[., p] + eps)` for `x` `(c, n)`.
pub(crate) fn layer_norm(x: &[f32], out: &mut [f32], c: usize, n: usize, eps: f32) {
    const CHUNK: usize = 2048;
    const BLOCK: usize = 256;
    let _t = profile::time(OpKind::NormAct, || (c * n) as f64);
    // Each task owns a range of pixels: one slice per output row.
    let mut parts: Vec<Vec<&mut [f32]>> = (0..n.div_ceil(CHUNK))
        .map(|_| Vec::with_capacity(c))
        .collect();
    for row in out[..c * n].chunks_mut(n) {
        for (part, piece) in parts.iter_mut().zip(row.chunks_mut(CHUNK)) {
            part.push(piece);
        }
    }
    parts.into_par_iter().enumerate().for_each(|(k, mut rows)| {
        let len = rows[0].len();
        for s in (0..len).step_by(BLOCK) {
            let e = (s + BLOCK).min(len);
            let at = |ch: usize| &x[ch * n + k * CHUNK + s..ch * n + k * CHUNK + e];
            let (mut mean, mut var) = ([0f32; BLOCK], [0f32; BLOCK]);
            let (mean, var) = (&mut mean[..e - s], &mut var[..e - s]);
            for ch in 0..c {
                mean.iter_mut().zip(at(ch)).for_each(|(m, v)| *m += v);
            }
            mean.iter_mut().for_each(|m| *m /= c as f32);
            for ch in 0..c {
                var.iter_mut()
                    .zip(at(ch))
                    .zip(&*mean)
                    .for_each(|((q, v), m)| *q += (v - m) * (v - m));
            }
            var.iter_mut()
                .for_each(|q| *q = 1.0 / (*q / c as f32 + eps).sqrt());
            for (ch, row) in rows.iter_mut().enumerate() {
                row[s..e]
                    .iter_mut()
                    .zip(at(ch))
                    .zip(mean.iter().zip(&*var))
                    .for_each(|((o, v), (m, r))| *o = (v - m) * r);
            }
        }
    });
}

/// `dst (m, n) = [dst +] w (m, k) · x (k, n)`, all row-major and contiguous.
pub(crate) fn matmul(dst: &mut [f32], w: &[f32], x: &[f32], (m, k, n): (usize, usize, usize)) {
    matmul_impl(dst, w, x, (m, k, n), false)
}

/// `dst += w · x`, as [`matmul`].
pub(crate) fn matmul_acc(dst: &mut [f32], w: &[f32], x: &[f32], (m, k, n): (usize, usize, usize)) {
    matmul_impl(dst, w, x, (m, k, n), true)
}

fn matmul_impl(dst: &mut [f32], w: &[f32], x: &[f32], (m, k, n): (usize, usize, usize), acc: bool) {
    assert!(dst.len() >= m * n && w.len() >= m * k && x.len() >= k * n);
    let _t = profile::time(OpKind::Gemm, || (2 * m * k * n) as f64);
    let threads = rayon::current_num_threads();
    let par = if threads > 1 {
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
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// A Converse2D transfer function laid out for [`converse_solve`]: per filter, its half
/// spectrum column-major `(w/2+1, h)` over the padded `(h, w)` grid, scaled by `1/(h*w)` (the
/// inverse FFT's normalisation).
#[derive(Debug)]
pub(crate) struct Filter {
    h: usize,
    w: usize,
    g: Vec<Complex<f32>>,
}

impl Filter {
    /// From `G` as planar `re`, `im`, each `(filters, h, w/2+1)` row-major.
    pub(crate) fn new(re: &[f64], im: &[f64], h: usize, w: usize) -> Self {
        let wq = w / 2 + 1;
        let norm = 1.0 / (h * w) as f64;
        let mut g = Vec::with_capacity(re.len());
        for (re, im) in re.chunks(h * wq).zip(im.chunks(h * wq)) {
            for j in 0..wq {
                g.extend((0..h).map(|i| {
                    let q = i * wq + j;
                    Complex::new((re[q] * norm) as f32, (im[q] * norm) as f32)
                }));
            }
        }
        Self { h, w, g }
    }

    /// The filters of `parts`, in order (all of one size).
    pub(crate) fn concat(parts: Vec<Self>) -> Self {
        let (h, w) = parts.first().map_or((0, 0), |f| (f.h, f.w));
        let g = parts.into_iter().flat_map(|f| f.g).collect();
        Self { h, w, g }
    }

    pub(crate) fn bytes(&self) -> usize {
        self.g.len() * std::mem::size_of::<Complex<f32>>()
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
/// `pad` (`mode`), multiplied in the Fourier domain by its transfer function (plane `i` takes
/// filter `i % filters`) and cropped back; with `act`, GELU is applied to the result.
pub(crate) fn converse_solve(
    planes: &mut [f32],
    (h, w): (usize, usize),
    pad: usize,
    mode: PaddingMode,
    filter: &Filter,
    act: bool,
) {
    let geo = Geometry::new((h, w), pad, 1, mode);
    let len = check_filter(filter, &geo);
    let (hp, wp) = geo.padded();
    let _t = profile::time(OpKind::Fft, || {
        profile::fft_flops(planes.len() / (h * w), hp, wp)
    });
    let nf = filter.g.len() / len;
    planes.par_chunks_mut(h * w).enumerate().for_each_init(
        || geo.work(),
        |work, (i, plane)| {
            geo.forward(work, plane);
            let g = &filter.g[(i % nf) * len..][..len];
            geo.filter_inverse(work, g, plane, act);
        },
    );
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
        let (c, n, m) = (5, 3000, 4);
        let x: Vec<f32> = (0..c * n).map(|i| ((i * 37 % 101) as f32).sin()).collect();
        let mut out = vec![0f32; c * n];
        layer_norm(&x, &mut out, c, n, 1e-5);
        for p in [0, 1, 2047, 2048, 2999] {
            let v: Vec<f32> = (0..c).map(|ch| x[ch * n + p]).collect();
            let mean = v.iter().sum::<f32>() / c as f32;
            let var = v.iter().map(|a| (a - mean) * (a - mean)).sum::<f32>() / c as f32;
            for ch in 0..c {
                let want = (v[ch] - mean) / (var + 1e-5).sqrt();
                assert!((out[ch * n + p] - want).abs() < 1e-5);
            }
        }
        let w: Vec<f32> = (0..m * c).map(|i| i as f32 * 0.1 - 1.0).collect();
        let mut y = vec![1f32; m * n];
        matmul_acc(&mut y, &w, &x, (m, c, n));
        for (o, p) in [(0, 0), (3, 2999), (2, 1234)] {
            let want = 1.0 + (0..c).map(|k| w[o * c + k] * x[k * n + p]).sum::<f32>();
            assert!((y[o * n + p] - want).abs() < 1e-5);
        }
    }
}
