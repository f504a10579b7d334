//! Exact reproductions of the degradations and metrics used by the official
//! ConverseNet / KAIR test scripts: numpy's legacy Gaussian noise, KAIR's
//! MATLAB-style bicubic `imresize_np` ([`crate::image_io::resize`]), `scipy.ndimage.convolve` with wrap
//! borders, and KAIR's PSNR / SSIM / RGB→Y.
//!
//! Images are flat buffers in numpy's C order for an `(H, W, C)` array.

pub mod blur;
pub mod metrics;
pub mod numpy_rng;
pub mod protocol;
pub mod run;

/// KAIR `modcrop(img, m)`: keep the top-left `(h - h % m) × (w - w % m)`
/// region of an HWC image. Returns the cropped image and its height and width.
///
/// # Panics
/// If `m == 0` or `img.len() != h * w * c`.
pub fn modcrop<T: Copy>(
    img: &[T],
    h: usize,
    w: usize,
    c: usize,
    m: usize,
) -> (Vec<T>, usize, usize) {
    assert!(m > 0, "modcrop: modulus must be positive");
    assert_eq!(img.len(), h * w * c, "modcrop: buffer size mismatch");
    let (ch, cw) = (h - h % m, w - w % m);
    if img.is_empty() {
        return (Vec::new(), ch, cw);
    }
    let out = img
        .chunks_exact(w * c)
        .take(ch)
        .flat_map(|row| &row[..cw * c])
        .copied()
        .collect();
    (out, ch, cw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modcrop_keeps_top_left() {
        let img: Vec<u16> = (0..5 * 7 * 2).collect();
        let (out, h, w) = modcrop(&img, 5, 7, 2, 4);
        assert_eq!((h, w), (4, 4));
        let want: Vec<u16> = (0..4)
            .flat_map(|y| (0..8).map(move |i| y * 14 + i))
            .collect();
        assert_eq!(out, want);
        assert_eq!(modcrop(&img, 5, 7, 2, 1), (img.clone(), 5, 7));
        assert_eq!(modcrop(&img, 5, 7, 2, 8), (Vec::new(), 0, 0));
    }
}
