//! PSNR / SSIM and RGB→Y exactly as KAIR's `utils_image.calculate_psnr`,
//! `calculate_ssim` and `rgb2ycbcr(img, only_y=True)` (the functions the
//! official ConverseNet test scripts report).
//!
//! All images are uint8, HWC, row-major with channels interleaved.

/// `cv2.getGaussianKernel(11, 1.5)` as OpenCV returns it (its bit-exact
/// soft-float path differs from `exp(-x²/4.5)/Σ` by up to 4 ulps).
const GAUSS_11: [f64; 11] = [
    0.0010283800844791097,
    0.007598758135239182,
    0.03600077212843082,
    0.10936068950970002,
    0.21300553771125372,
    0.2660117248617943,
    0.21300553771125372,
    0.10936068950970002,
    0.03600077212843082,
    0.007598758135239182,
    0.0010283800844791097,
];

/// Channel `ch` of the HWC image with `border` pixels shaved from each side,
/// as float64; returns the plane and its height and width.
fn shaved_plane(
    img: &[u8],
    h: usize,
    w: usize,
    c: usize,
    ch: usize,
    border: usize,
) -> (Vec<f64>, usize, usize) {
    let sh = h.saturating_sub(2 * border);
    let sw = w.saturating_sub(2 * border);
    let plane = (border..border + sh)
        .flat_map(|y| (border..border + sw).map(move |x| f64::from(img[(y * w + x) * c + ch])))
        .collect();
    (plane, sh, sw)
}

fn check_dims(a: &[u8], b: &[u8], h: usize, w: usize, c: usize) {
    assert_eq!(a.len(), h * w * c, "image buffer size mismatch");
    assert_eq!(b.len(), h * w * c, "image buffer size mismatch");
}

/// KAIR `calculate_psnr(a, b, border)`: PSNR in dB over all channels of the
/// images with `border` pixels shaved from each side.
///
/// Bit-exact: the squared differences are integers, so their sum is exact
/// whatever numpy's summation order. Returns `+inf` for identical images
/// and NaN if nothing is left after shaving.
///
/// # Panics
/// If a buffer is not `h * w * c` long.
pub fn psnr(a: &[u8], b: &[u8], h: usize, w: usize, c: usize, border: usize) -> f64 {
    check_dims(a, b, h, w, c);
    let sh = h.saturating_sub(2 * border);
    let sw = w.saturating_sub(2 * border);
    let row_len = sw * c;
    let sse: u64 = (border..border + sh)
        .map(|y| {
            let start = (y * w + border) * c;
            a[start..start + row_len]
                .iter()
                .zip(&b[start..start + row_len])
                .map(|(&p, &q)| u64::from(p.abs_diff(q)).pow(2))
                .sum::<u64>()
        })
        .sum();
    let n = sh * row_len;
    if n == 0 {
        return f64::NAN;
    }
    // Both are far below 2^53, so the conversions are exact.
    let mse = sse as f64 / n as f64;
    if mse == 0.0 {
        return f64::INFINITY;
    }
    20.0 * (255.0 / mse.sqrt()).log10()
}

/// 11×11 Gaussian filter (separable form of KAIR's `np.outer` window) over
/// the 'valid' region, i.e. `cv2.filter2D(img, -1, window)[5:-5, 5:-5]`.
/// OpenCV filters a 64-bit image of this kernel size via the DFT, so results
/// agree to rounding error (~1e-12), not bit for bit.
fn gaussian_valid(img: &[f64], h: usize, w: usize) -> Vec<f64> {
    let (vh, vw) = (h - 10, w - 10);
    let rows: Vec<f64> = img
        .chunks_exact(w)
        .flat_map(|row| {
            row.windows(11)
                .map(|win| win.iter().zip(&GAUSS_11).map(|(v, g)| v * g).sum::<f64>())
        })
        .collect();
    (0..vh)
        .flat_map(|y| {
            let rows = &rows;
            (0..vw).map(move |x| {
                GAUSS_11
                    .iter()
                    .enumerate()
                    .map(|(k, g)| g * rows[(y + k) * vw + x])
                    .sum::<f64>()
            })
        })
        .collect()
}

/// KAIR `ssim(img1, img2)` on one float64 plane of at least 11×11.
fn ssim_plane(x: &[f64], y: &[f64], h: usize, w: usize) -> f64 {
    let c1 = (0.01 * 255.0f64).powi(2);
    let c2 = (0.03 * 255.0f64).powi(2);
    let prod = |p: &[f64], q: &[f64]| -> Vec<f64> { p.iter().zip(q).map(|(a, b)| a * b).collect() };
    let mu1 = gaussian_valid(x, h, w);
    let mu2 = gaussian_valid(y, h, w);
    let e11 = gaussian_valid(&prod(x, x), h, w);
    let e22 = gaussian_valid(&prod(y, y), h, w);
    let e12 = gaussian_valid(&prod(x, y), h, w);
    let n = mu1.len();
    let total: f64 = (0..n)
        .map(|i| {
            let (m1, m2) = (mu1[i], mu2[i]);
            let (m1_sq, m2_sq, m1_m2) = (m1 * m1, m2 * m2, m1 * m2);
            let s1 = e11[i] - m1_sq;
            let s2 = e22[i] - m2_sq;
            let s12 = e12[i] - m1_m2;
            ((2.0 * m1_m2 + c1) * (2.0 * s12 + c2)) / ((m1_sq + m2_sq + c1) * (s1 + s2 + c2))
        })
        .sum();
    total / n as f64
}

/// KAIR `calculate_ssim(a, b, border)`: Gaussian-window SSIM (11×11,
/// σ = 1.5, C1 = (0.01·255)², C2 = (0.03·255)², 'valid' region, mean of the
/// map), averaged over channels. KAIR only accepts 1 or 3 channels; here any
/// `c` is averaged the same way.
///
/// Matches KAIR to ~1e-12 (OpenCV's DFT filtering is not reproduced bit for
/// bit). Returns NaN when the shaved image is smaller than 11×11 (KAIR's
/// mean of an empty map).
///
/// # Panics
/// If a buffer is not `h * w * c` long.
pub fn ssim(a: &[u8], b: &[u8], h: usize, w: usize, c: usize, border: usize) -> f64 {
    check_dims(a, b, h, w, c);
    if c == 0 || h < 2 * border + 11 || w < 2 * border + 11 {
        return f64::NAN;
    }
    let sum: f64 = (0..c)
        .map(|ch| {
            let (x, sh, sw) = shaved_plane(a, h, w, c, ch, border);
            let (y, _, _) = shaved_plane(b, h, w, c, ch, border);
            ssim_plane(&x, &y, sh, sw)
        })
        .sum();
    sum / c as f64
}

/// KAIR `rgb2ycbcr(img, only_y=True)` for a uint8 RGB HWC image: per pixel
/// `Y = (65.481 R + 128.553 G + 24.966 B) / 255 + 16` in float64 (summed in
/// that order), rounded half to even (`np.round`) and stored as uint8.
///
/// Checked against KAIR for all 2^24 RGB triples; 152 of them land exactly
/// on `.5`, where ties-to-even matters.
///
/// # Panics
/// If `rgb.len()` is not a multiple of 3.
pub fn rgb_to_y(rgb: &[u8]) -> Vec<u8> {
    assert_eq!(rgb.len() % 3, 0, "rgb_to_y: length must be a multiple of 3");
    rgb.chunks_exact(3)
        .map(|p| {
            let dot =
                f64::from(p[0]) * 65.481 + f64::from(p[1]) * 128.553 + f64::from(p[2]) * 24.966;
            // Always within [16, 235], so the cast is exact.
            (dot / 255.0 + 16.0).round_ties_even() as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_window_matches_formula() {
        let sum: f64 = GAUSS_11.iter().sum();
        assert!((sum - 1.0).abs() < 1e-15);
        for (i, g) in GAUSS_11.iter().enumerate() {
            let x = i as f64 - 5.0;
            assert!((g - (-x * x / 4.5).exp() / 3.759_232_795_169_263).abs() < 1e-15);
        }
    }

    /// Deterministic "random" bytes: `((i + salt) * 2654435761) >> 13 & 255`.
    fn hashed(len: usize, salt: u64) -> Vec<u8> {
        (0..len as u64)
            .map(|i| (((i + salt) * 2_654_435_761) >> 13 & 255) as u8)
            .collect()
    }

    /// `clip(img + noise // div, 0, 255)` with `noise = hashed(.., 99) % 41 - 20`.
    fn noisy(img: &[u8], div: i16) -> Vec<u8> {
        img.iter()
            .zip(hashed(img.len(), 99))
            .map(|(&v, n)| {
                let noise = i16::from(n % 41) - 20;
                (i16::from(v) + noise.div_euclid(div)).clamp(0, 255) as u8
            })
            .collect()
    }

    /// 24×20 RGB gradients `[(9y + 3x), (4y + 11x), x·y] mod 256`.
    fn smooth() -> Vec<u8> {
        (0..24usize)
            .flat_map(|y| (0..20usize).flat_map(move |x| [9 * y + 3 * x, 4 * y + 11 * x, x * y]))
            .map(|v| (v % 256) as u8)
            .collect()
    }

    fn first_channel(img: &[u8]) -> Vec<u8> {
        img.iter().step_by(3).copied().collect()
    }

    /// Expected values: KAIR `calculate_psnr` / `calculate_ssim` /
    /// `rgb2ycbcr` (numpy 2.4, OpenCV 5.0) on the same arrays shaped
    /// (24, 20, 3). Order: RGB border 0, RGB border 3, first channel
    /// (`a[..., 0]` border 1 for PSNR, `a[..., :1]` border 0 for SSIM),
    /// Y border 4. PSNR must be bit-exact.
    fn check(a: &[u8], b: &[u8], want_psnr: [f64; 4], want_ssim: [f64; 4]) {
        let (h, w) = (24, 20);
        let (a0, b0) = (first_channel(a), first_channel(b));
        let (ya, yb) = (rgb_to_y(a), rgb_to_y(b));
        let got_psnr = [
            psnr(a, b, h, w, 3, 0),
            psnr(a, b, h, w, 3, 3),
            psnr(&a0, &b0, h, w, 1, 1),
            psnr(&ya, &yb, h, w, 1, 4),
        ];
        assert_eq!(got_psnr, want_psnr);
        let got_ssim = [
            ssim(a, b, h, w, 3, 0),
            ssim(a, b, h, w, 3, 3),
            ssim(&a0, &b0, h, w, 1, 0),
            ssim(&ya, &yb, h, w, 1, 4),
        ];
        for (g, e) in got_ssim.iter().zip(want_ssim) {
            assert!((g - e).abs() < 1e-12, "{g} vs {e}");
        }
    }

    #[test]
    fn metrics_match_kair_on_noisy_image() {
        let a = hashed(24 * 20 * 3, 0);
        check(
            &a,
            &noisy(&a, 1),
            [
                26.919812437054873,
                26.876507354149282,
                26.900045259887907,
                34.06983926750178,
            ],
            [
                0.9877150574003316,
                0.987651218647826,
                0.9875385237224614,
                0.9901057132191927,
            ],
        );
    }

    #[test]
    fn metrics_match_kair_on_smooth_image() {
        let a = smooth();
        check(
            &a,
            &noisy(&a, 4),
            [
                38.52385015439923,
                38.426129501179496,
                38.56407545803335,
                45.14318226659752,
            ],
            [
                0.9867011704636348,
                0.9865647061797537,
                0.9814124192792948,
                0.9955228941983029,
            ],
        );
    }

    #[test]
    fn degenerate_cases() {
        let a = smooth();
        assert_eq!(psnr(&a, &a, 24, 20, 3, 0), f64::INFINITY);
        assert!((ssim(&a, &a, 24, 20, 3, 0) - 1.0).abs() < 1e-12);
        // Nothing / too little left after shaving.
        assert!(psnr(&a, &a, 24, 20, 3, 10).is_nan());
        assert!(ssim(&a, &a, 24, 20, 3, 5).is_nan());
    }

    #[test]
    fn rgb_to_y_rounds_half_to_even() {
        // KAIR rgb2ycbcr(np.array([[[0,204,68],[2,44,141],[0,0,0],[255,255,255],[10,200,30]]], np.uint8))
        // The first two are exact ties: 125.5 -> 126 and 52.5 -> 52.
        let rgb = [0, 204, 68, 2, 44, 141, 0, 0, 0, 255, 255, 255, 10, 200, 30];
        assert_eq!(rgb_to_y(&rgb), [126, 52, 16, 235, 122]);
    }
}
