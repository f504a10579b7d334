//! The training kernels of the layers around Converse2D: channels-first LayerNorm with its
//! backward, and the per-channel sums of a bias's gradient (f32 on contiguous `(N, C, H*W)`
//! planes, sums over pixels in f64).
//!
//! Each pass runs in two parallel phases, so that every task writes one contiguous piece: the
//! per-pixel statistics over the channels (pieces of pixels), then the planes (one per image
//! and channel).

use rayon::prelude::*;

use super::simd::{simd_fn, Isa};

/// Pixels per piece of the statistics phase.
const PIECE: usize = 512;

/// `(images, channels, pixels per plane)`.
pub(crate) type Dims = (usize, usize, usize);

simd_fn! {
    /// Per-pixel mean and `1 / sqrt(var + eps)` over the `c` planes of `x` (rows `hw` apart),
    /// for the `mean.len()` pixels of a piece.
    fn stats(_s, x: &[f32], hw: usize, c: usize, eps: f32, mean: &mut [f32], rstd: &mut [f32]) {
        let len = mean.len();
        mean.fill(0.0);
        rstd.fill(0.0);
        for ch in 0..c {
            for (m, v) in mean.iter_mut().zip(&x[ch * hw..][..len]) {
                *m += v;
            }
        }
        for m in mean.iter_mut() {
            *m /= c as f32;
        }
        for ch in 0..c {
            for ((q, v), m) in rstd.iter_mut().zip(&x[ch * hw..][..len]).zip(&*mean) {
                *q += (v - m) * (v - m);
            }
        }
        for q in rstd.iter_mut() {
            *q = 1.0 / (*q / c as f32 + eps).sqrt();
        }
    }
}

/// Runs `f(image, first pixel, outputs)` over the pixel pieces of every image in parallel,
/// each with its piece of the `K` per-pixel arrays `out` (`n * hw` each).
fn per_piece<const K: usize>(
    out: [&mut [f32]; K],
    hw: usize,
    f: impl Fn(usize, usize, [&mut [f32]; K]) + Sync,
) {
    let mut jobs: Vec<(usize, usize, [&mut [f32]; K])> = vec![];
    let mut rest = out;
    let mut at = 0;
    while !rest[0].is_empty() {
        let len = PIECE.min(hw - at % hw);
        let mut piece = vec![];
        let mut tail = vec![];
        for r in rest {
            let (a, b) = r.split_at_mut(len);
            piece.push(a);
            tail.push(b);
        }
        jobs.push((
            at / hw,
            at % hw,
            piece.try_into().unwrap_or_else(|_| unreachable!()),
        ));
        rest = tail.try_into().unwrap_or_else(|_| unreachable!());
        at += len;
    }
    jobs.into_par_iter().for_each(|(i, p, o)| f(i, p, o));
}

/// The mean and reciprocal deviation of every pixel of `x`.
fn statistics(x: &[f32], (n, c, hw): Dims, eps: f32) -> (Vec<f32>, Vec<f32>) {
    let (mut mean, mut rstd) = (vec![0f32; n * hw], vec![0f32; n * hw]);
    let isa = Isa::current();
    per_piece([&mut mean, &mut rstd], hw, |i, p, [m, r]| {
        isa.run(|| stats(&x[i * c * hw + p..], hw, c, eps, m, r))
    });
    (mean, rstd)
}

simd_fn! {
    /// One plane of the LayerNorm: `y = (x - mean) * rstd * w + b`.
    fn norm_plane(_s, x: &[f32], y: &mut [f32], mean: &[f32], rstd: &[f32], w: f32, b: f32) {
        for (((o, v), m), r) in y.iter_mut().zip(x).zip(mean).zip(rstd) {
            *o = (v - m) * r * w + b;
        }
    }
}

/// Channels-first LayerNorm of `x` with affine `w`, `b` (`c` each) into `y`.
pub(crate) fn layer_norm(x: &[f32], y: &mut [f32], dims: Dims, (w, b): (&[f32], &[f32]), eps: f32) {
    let (_, c, hw) = dims;
    let (mean, rstd) = statistics(x, dims, eps);
    let isa = Isa::current();
    y.par_chunks_mut(hw).enumerate().for_each(|(k, y)| {
        let (i, ch) = (k / c, k % c);
        let (m, r) = (&mean[i * hw..][..hw], &rstd[i * hw..][..hw]);
        isa.run(|| norm_plane(&x[k * hw..][..hw], y, m, r, w[ch], b[ch]))
    });
}

simd_fn! {
    /// The channel sums of the backward for a piece: `m1 = mean_c(dy * w)` and
    /// `m2 = mean_c(dy * w * xhat)`.
    fn grad_stats(_s, x: &[f32], dy: &[f32], hw: usize, w: &[f32], mean: &[f32], rstd: &[f32], m1: &mut [f32], m2: &mut [f32]) {
        let len = m1.len();
        m1.fill(0.0);
        m2.fill(0.0);
        for (ch, w) in w.iter().enumerate() {
            let (x, dy) = (&x[ch * hw..][..len], &dy[ch * hw..][..len]);
            for (((((a, b), v), g), m), r) in m1.iter_mut().zip(m2.iter_mut()).zip(x).zip(dy).zip(mean).zip(rstd) {
                let gh = g * w;
                *a += gh;
                *b += gh * ((v - m) * r);
            }
        }
        let inv = 1.0 / w.len() as f32;
        for (a, b) in m1.iter_mut().zip(m2.iter_mut()) {
            *a *= inv;
            *b *= inv;
        }
    }
}

simd_fn! {
    /// One plane of the backward: `dx = rstd * (dy * w - m1 - xhat * m2)`; returns the plane's
    /// `sum(dy * xhat)` and `sum(dy)`.
    fn grad_plane(_s, x: &[f32], dy: &[f32], dx: &mut [f32], w: f32, mean: &[f32], rstd: &[f32], m1: &[f32], m2: &[f32]) -> (f64, f64) {
        let (mut dw, mut db) = (0f64, 0f64);
        for (k, o) in dx.iter_mut().enumerate() {
            let xhat = (x[k] - mean[k]) * rstd[k];
            *o = rstd[k] * (dy[k] * w - m1[k] - xhat * m2[k]);
            dw += (dy[k] * xhat) as f64;
            db += dy[k] as f64;
        }
        (dw, db)
    }
}

/// The backward of [`layer_norm`] for the output gradient `dy`: the input's gradient into
/// `dx`, and the gradients of `w` and `b`.
pub(crate) fn layer_norm_grad(
    x: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dims: Dims,
    w: &[f32],
    eps: f32,
) -> (Vec<f64>, Vec<f64>) {
    let (n, c, hw) = dims;
    let (mean, rstd) = statistics(x, dims, eps);
    let (mut m1, mut m2) = (vec![0f32; n * hw], vec![0f32; n * hw]);
    let isa = Isa::current();
    per_piece([&mut m1, &mut m2], hw, |i, p, [a, b]| {
        let at = i * hw + p;
        let (m, r) = (&mean[at..][..a.len()], &rstd[at..][..a.len()]);
        let (x, dy) = (&x[i * c * hw + p..], &dy[i * c * hw + p..]);
        isa.run(|| grad_stats(x, dy, hw, w, m, r, a, b))
    });
    let sums: Vec<(f64, f64)> = dx
        .par_chunks_mut(hw)
        .enumerate()
        .map(|(k, dx)| {
            let i = k / c;
            fn px(v: &[f32], i: usize, hw: usize) -> &[f32] {
                &v[i * hw..][..hw]
            }
            let (x, dy) = (&x[k * hw..][..hw], &dy[k * hw..][..hw]);
            isa.run(|| {
                let (m, r) = (px(&mean, i, hw), px(&rstd, i, hw));
                let (a, b) = (px(&m1, i, hw), px(&m2, i, hw));
                grad_plane(x, dy, dx, w[k % c], m, r, a, b)
            })
        })
        .collect();
    let (mut dw, mut db) = (vec![0f64; c], vec![0f64; c]);
    for (k, (a, b)) in sums.into_iter().enumerate() {
        dw[k % c] += a;
        db[k % c] += b;
    }
    (dw, db)
}

/// The gradient of a per-channel bias added to `(n, c, hw)` planes: the sum of `dy` over every
/// image and pixel of each channel.
pub(crate) fn channel_sums(dy: &[f32], (_, c, hw): Dims) -> Vec<f64> {
    let planes: Vec<f64> = dy
        .par_chunks(hw)
        .map(|p| p.iter().map(|v| *v as f64).sum())
        .collect();
    let mut out = vec![0f64; c];
    for (k, s) in planes.into_iter().enumerate() {
        out[k % c] += s;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain loops in f64, pixel by pixel: the LayerNorm, and its backward by the chain rule.
    fn reference(x: &[f32], dy: &[f32], (n, c, hw): Dims, w: &[f32], b: &[f32]) -> [Vec<f64>; 4] {
        let (mut y, mut dx) = (vec![0f64; x.len()], vec![0f64; x.len()]);
        let (mut dw, mut db) = (vec![0f64; c], vec![0f64; c]);
        for i in 0..n {
            for p in 0..hw {
                let at = |ch: usize| i * c * hw + ch * hw + p;
                let mean = (0..c).map(|ch| x[at(ch)] as f64).sum::<f64>() / c as f64;
                let var = (0..c)
                    .map(|ch| (x[at(ch)] as f64 - mean).powi(2))
                    .sum::<f64>()
                    / c as f64;
                let r = 1.0 / (var + 1e-5).sqrt();
                let xh = |ch: usize| (x[at(ch)] as f64 - mean) * r;
                let gh = |ch: usize| dy[at(ch)] as f64 * w[ch] as f64;
                let m1 = (0..c).map(gh).sum::<f64>() / c as f64;
                let m2 = (0..c).map(|ch| gh(ch) * xh(ch)).sum::<f64>() / c as f64;
                for ch in 0..c {
                    y[at(ch)] = xh(ch) * w[ch] as f64 + b[ch] as f64;
                    dx[at(ch)] = r * (gh(ch) - m1 - xh(ch) * m2);
                    dw[ch] += dy[at(ch)] as f64 * xh(ch);
                    db[ch] += dy[at(ch)] as f64;
                }
            }
        }
        [y, dx, dw, db]
    }

    fn worst(got: impl IntoIterator<Item = f64>, want: &[f64]) -> f64 {
        let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
        got.into_iter()
            .zip(want)
            .map(|(g, w)| (g - w).abs() / scale)
            .fold(0.0, f64::max)
    }

    #[test]
    fn layer_norm_and_its_backward_match_plain_loops() {
        // 1300 pixels: two whole pieces and a partial one per image.
        for dims @ (n, c, hw) in [(3, 7, 1300), (1, 64, 33)] {
            let mut seed = 1u32;
            let mut rnd = |lo: f32, hi: f32| {
                seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                lo + (hi - lo) * (seed >> 8) as f32 / (1u32 << 24) as f32
            };
            let x: Vec<f32> = (0..n * c * hw).map(|_| rnd(-2.0, 3.0)).collect();
            let dy: Vec<f32> = (0..n * c * hw).map(|_| rnd(-1.0, 1.0)).collect();
            let w: Vec<f32> = (0..c).map(|_| rnd(0.5, 1.5)).collect();
            let b: Vec<f32> = (0..c).map(|_| rnd(-0.5, 0.5)).collect();
            let [y, dx, dw, db] = reference(&x, &dy, dims, &w, &b);
            for isa in Isa::available() {
                isa.run(|| {
                    let mut got = vec![0f32; x.len()];
                    layer_norm(&x, &mut got, dims, (&w, &b), 1e-5);
                    assert!(worst(got.iter().map(|v| *v as f64), &y) < 2e-6, "{isa:?} y");
                    let (gw, gb) = layer_norm_grad(&x, &dy, &mut got, dims, &w, 1e-5);
                    assert!(
                        worst(got.iter().map(|v| *v as f64), &dx) < 2e-5,
                        "{isa:?} dx"
                    );
                    assert!(worst(gw, &dw) < 1e-5, "{isa:?} dw");
                    assert!(worst(gb.iter().copied(), &db) < 1e-12, "{isa:?} db");
                    assert!(worst(channel_sums(&dy, dims), &db) < 1e-12, "{isa:?} sums");
                });
            }
        }
    }
}
