//! Row-major f32 matrix products on the calling thread (the fused kernels call them inside
//! their own parallel loops), through the `gemm` crate.

use crate::ops::profile::{self, OpKind};

/// `dst (m, n) = [dst +] w (m, k) · x (k, n)`, all row-major; `x`'s rows are `x_rs` apart and
/// `w`'s `w_rs` apart (`w_rs >= k`: a column block of a wider matrix).
pub(crate) fn gemm(
    dst: &mut [f32],
    (w, w_rs): (&[f32], usize),
    (x, x_rs): (&[f32], usize),
    (m, k, n): (usize, usize, usize),
    acc: bool,
) {
    let _t = profile::time_shared(OpKind::Gemm, || (2 * m * k * n) as f64);
    assert!(dst.len() >= m * n && x_rs >= n && w_rs >= k);
    assert!(m == 0 || w.len() >= (m - 1) * w_rs + k);
    assert!(k == 0 || x.len() >= (k - 1) * x_rs + n);
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
            w_rs as isize,
            x.as_ptr(),
            1,
            x_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_plain_loops_with_strides_and_accumulation() {
        let (m, k, n) = (4, 5, 7);
        let w: Vec<f32> = (0..m * 9).map(|i| i as f32 * 0.1 - 1.0).collect();
        let x: Vec<f32> = (0..k * 11).map(|i| ((i * 37 % 101) as f32).sin()).collect();
        let mut y = vec![1f32; m * n];
        // w: columns 2..7 of a (4, 9) matrix; x: columns 0..7 of a (5, 11) one.
        gemm(&mut y, (&w[2..], 9), (&x, 11), (m, k, n), true);
        for o in 0..m {
            for p in 0..n {
                let want = 1.0
                    + (0..k)
                        .map(|q| w[o * 9 + 2 + q] * x[q * 11 + p])
                        .sum::<f32>();
                assert!((y[o * n + p] - want).abs() < 1e-5);
            }
        }
    }
}
