//! Bit-exact `scipy.ndimage.convolve(img_uint8, kernel[..., np.newaxis],
//! mode='wrap')`, the blur degradation of the official ConverseNet USRNet
//! test script.
//!
//! scipy semantics (all confirmed empirically against scipy 1.17):
//! - true convolution with the kernel centre at `(kh / 2, kw / 2)` for odd
//!   and even sizes: `out[y][x] = Σ k[a][b] · in[y + kh/2 − a][x + kw/2 − b]`;
//! - indices wrap periodically, also when the kernel exceeds the image;
//! - the sum is a float64 accumulation starting at 0.0, over the taps in
//!   reverse row-major kernel order (scipy walks the flipped kernel), and
//!   weights with `|w| <= f64::EPSILON` are skipped;
//! - the result is converted to uint8 by **truncation toward zero** (not
//!   rounding: 9.9999999 → 9), and out-of-range values wrap modulo 256
//!   (280 → 24, -0.4 → 0, -1.2 → 255), as C's double→uint8 cast does on
//!   x86-64. With a kernel summing to 1 the float sum can land just below an
//!   integer, so a flat region of value v may come out as v − 1.

/// Convolve each channel of an HWC uint8 image (row-major, channels
/// interleaved) with the `kh × kw` row-major `kernel`, with periodic borders,
/// exactly as `scipy.ndimage.convolve(img, kernel[..., None], mode='wrap')`.
///
/// # Panics
/// If `img.len() != h * w * c` or `kernel.len() != kh * kw`.
pub fn convolve_wrap_u8(
    img: &[u8],
    h: usize,
    w: usize,
    c: usize,
    kernel: &[f64],
    kh: usize,
    kw: usize,
) -> Vec<u8> {
    assert_eq!(
        img.len(),
        h * w * c,
        "convolve_wrap_u8: image size mismatch"
    );
    assert_eq!(
        kernel.len(),
        kh * kw,
        "convolve_wrap_u8: kernel size mismatch"
    );
    if img.is_empty() {
        return Vec::new();
    }
    // `(centre - k) mod n`, kept non-negative by adding `k * n`.
    let offset = |centre: usize, k: usize, n: usize| (centre + k * n - k) % n;
    // (row offset, column offset, weight) in scipy's summation order.
    let taps: Vec<(usize, usize, f64)> = kernel
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, wt)| wt.abs() > f64::EPSILON)
        .map(|(i, &wt)| {
            let (a, b) = (i / kw, i % kw);
            (offset(kh / 2, a, h), offset(kw / 2, b, w), wt)
        })
        .collect();
    let mut out = Vec::with_capacity(img.len());
    for y in 0..h {
        for x in 0..w {
            for ch in 0..c {
                let sum = taps.iter().fold(0.0, |acc, &(dy, dx, wt)| {
                    let (yy, xx) = ((y + dy) % h, (x + dx) % w);
                    acc + f64::from(img[(yy * w + xx) * c + ch]) * wt
                });
                // Truncate toward zero, then keep the low byte.
                out.push(sum as i64 as u8);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic "random" bytes: `((i + salt) * 2654435761) >> 13 & 255`.
    fn hashed(len: usize, salt: u64) -> Vec<u8> {
        (0..len as u64)
            .map(|i| (((i + salt) * 2_654_435_761) >> 13 & 255) as u8)
            .collect()
    }

    /// Kernel `f(a, b)` normalised by its (exact, integer) sum.
    fn kernel(kh: usize, kw: usize, f: impl Fn(usize, usize) -> usize) -> Vec<f64> {
        let raw: Vec<f64> = (0..kh * kw).map(|i| f(i / kw, i % kw) as f64).collect();
        let sum: f64 = raw.iter().sum();
        raw.iter().map(|v| v / sum).collect()
    }

    // Expected outputs: scipy 1.17.1
    // `ndimage.convolve(img, k[..., None], mode='wrap')` with
    // img = hashed(5*6*2, 0).reshape(5, 6, 2) and the same kernels.
    const SCIPY_7X7: [u8; 60] = [
        115, 125, 125, 111, 123, 126, 124, 111, 113, 124, 132, 110, 125, 127, 115, 105, 125, 128,
        118, 115, 128, 120, 118, 114, 119, 123, 114, 128, 130, 115, 105, 128, 127, 119, 113, 126,
        119, 112, 119, 125, 126, 117, 116, 130, 118, 110, 127, 129, 109, 130, 129, 120, 114, 116,
        125, 134, 116, 115, 127, 124,
    ];
    const SCIPY_4X6: [u8; 60] = [
        118, 139, 110, 119, 102, 127, 110, 130, 118, 128, 134, 133, 137, 121, 129, 124, 121, 109,
        129, 109, 111, 109, 127, 111, 127, 122, 123, 125, 127, 136, 119, 110, 112, 137, 107, 113,
        113, 108, 127, 122, 124, 111, 127, 122, 139, 108, 100, 121, 110, 108, 117, 115, 124, 123,
        120, 126, 125, 123, 130, 129,
    ];

    #[test]
    fn matches_scipy_7x7() {
        let img = hashed(5 * 6 * 2, 0);
        let k = kernel(7, 7, |a, b| (a * 7 + b * 3) % 11 + 1);
        assert_eq!(convolve_wrap_u8(&img, 5, 6, 2, &k, 7, 7), SCIPY_7X7);
    }

    #[test]
    fn matches_scipy_asymmetric_even() {
        // 4x6 kernel with zero taps, even sizes in both directions.
        let img = hashed(5 * 6 * 2, 0);
        let k = kernel(4, 6, |a, b| (a * 5 + b * 2) % 7);
        assert_eq!(convolve_wrap_u8(&img, 5, 6, 2, &k, 4, 6), SCIPY_4X6);
    }

    #[test]
    fn truncates_and_skips_tiny_weights() {
        // Ten taps of 0.1 sum to 0.9999999999999999 -> 0. A tap of 2e-16
        // (<= EPSILON, first in scipy's order) is skipped; 2.3e-16 is not and
        // lifts the sum to 1.0000000000000002 -> 1.
        let ones = [1u8; 12];
        let mut k = vec![0.1; 10];
        k.push(2e-16);
        assert_eq!(convolve_wrap_u8(&ones, 1, 12, 1, &k, 1, 11), [0; 12]);
        k[10] = 2.3e-16;
        assert_eq!(convolve_wrap_u8(&ones, 1, 12, 1, &k, 1, 11), [1; 12]);
        // Wrapping of out-of-range results, as scipy: [10, 20, 30, 40] * w.
        let img = [10u8, 20, 30, 40];
        assert_eq!(
            convolve_wrap_u8(&img, 2, 2, 1, &[7.0], 1, 1),
            [70, 140, 210, 24]
        );
        assert_eq!(
            convolve_wrap_u8(&img, 2, 2, 1, &[-0.04], 1, 1),
            [0, 0, 255, 255]
        );
    }
}
