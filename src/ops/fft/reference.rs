//! A plain O(N²) DFT in f64, obviously correct, for the tests of every other transform.

use std::f64::consts::PI;

/// `e^{sign 2 pi i t / n}` with `t` reduced mod `n` first, so the angle is exact.
fn unit(sign: f64, t: usize, n: usize) -> (f64, f64) {
    let a = sign * 2.0 * PI * (t % n) as f64 / n as f64;
    (a.cos(), a.sin())
}

/// 1-D complex forward DFT.
pub(crate) fn dft(re: &[f64], im: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let n = re.len();
    let mut out = (vec![0.0; n], vec![0.0; n]);
    for k in 0..n {
        for j in 0..n {
            let (c, s) = unit(-1.0, k * j, n);
            out.0[k] += re[j] * c - im[j] * s;
            out.1[k] += re[j] * s + im[j] * c;
        }
    }
    out
}

/// 2-D complex DFT of `(h, w)`: `sign` -1 forward, +1 inverse (normalised by `1/(h*w)`).
pub(crate) fn dft2(re: &[f64], im: &[f64], h: usize, w: usize, sign: f64) -> (Vec<f64>, Vec<f64>) {
    let norm = if sign > 0.0 {
        1.0 / (h * w) as f64
    } else {
        1.0
    };
    let (mut or, mut oi) = (vec![0.0; h * w], vec![0.0; h * w]);
    for u in 0..h {
        for v in 0..w {
            let (mut a, mut b) = (0.0, 0.0);
            for i in 0..h {
                for j in 0..w {
                    let (c1, s1) = unit(sign, u * i, h);
                    let (c2, s2) = unit(sign, v * j, w);
                    let (c, s) = (c1 * c2 - s1 * s2, c1 * s2 + s1 * c2);
                    a += re[i * w + j] * c - im[i * w + j] * s;
                    b += re[i * w + j] * s + im[i * w + j] * c;
                }
            }
            or[u * w + v] = a * norm;
            oi[u * w + v] = b * norm;
        }
    }
    (or, oi)
}

/// Real `(h, w)` to the half spectrum `(re, im)`, each `(h, w/2+1)`.
pub(crate) fn rfft2(x: &[f64], h: usize, w: usize) -> (Vec<f64>, Vec<f64>) {
    let (re, im) = dft2(x, &vec![0.0; h * w], h, w, -1.0);
    let wq = w / 2 + 1;
    let half = |t: &[f64]| (0..h * wq).map(|q| t[(q / wq) * w + q % wq]).collect();
    (half(&re), half(&im))
}

/// Half spectrum back to real `(h, w)`, using Hermitian symmetry for the missing half.
pub(crate) fn irfft2(re: &[f64], im: &[f64], h: usize, w: usize) -> Vec<f64> {
    let wq = w / 2 + 1;
    let (mut fr, mut fi) = (vec![0.0; h * w], vec![0.0; h * w]);
    for u in 0..h {
        for v in 0..w {
            let (a, b) = if v < wq {
                (re[u * wq + v], im[u * wq + v])
            } else {
                let (u2, v2) = ((h - u) % h, w - v);
                (re[u2 * wq + v2], -im[u2 * wq + v2])
            };
            fr[u * w + v] = a;
            fi[u * w + v] = b;
        }
    }
    dft2(&fr, &fi, h, w, 1.0).0
}
