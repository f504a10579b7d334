//! f32 matrix products through the `gemm` crate: row-major on the calling thread (the fused
//! kernels call them inside their own parallel loops), and strided on all threads (the
//! training layers).

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

/// A strided view of a matrix: element `(r, c)` is `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Strided<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl<'a> Strided<'a> {
    /// A row-major `(rows, cols)` matrix.
    pub(crate) fn rows(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub(crate) fn transposed(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: cols,
        }
    }

    fn holds(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || self.data.len() > (rows - 1) * self.rs + (cols - 1) * self.cs
    }
}

/// `dst (m, n) = [dst +] a (m, k) · b (k, n)`, `dst` row-major, `a` and `b` strided (a
/// transpose costs nothing); on the calling thread, or on all threads if `parallel`.
pub(crate) fn gemm_strided(
    dst: &mut [f32],
    a: Strided,
    b: Strided,
    (m, k, n): (usize, usize, usize),
    acc: bool,
    parallel: bool,
) {
    let _t = profile::time_shared(OpKind::Gemm, || (2 * m * k * n) as f64);
    let parallelism = match parallel {
        true => gemm::Parallelism::Rayon(0),
        false => gemm::Parallelism::None,
    };
    assert!(dst.len() >= m * n && a.holds(m, k) && b.holds(k, n));
    // SAFETY: every element the sizes and strides reach lies inside its slice (asserted
    // above); `dst` is borrowed mutably, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            acc,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
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

    #[test]
    fn strided_products_match_plain_loops() {
        let (m, k, n) = (6, 40, 9);
        let a: Vec<f32> = (0..k * m).map(|i| ((i * 13 % 17) as f32).cos()).collect();
        let b: Vec<f32> = (0..n * k).map(|i| ((i * 7 % 23) as f32).sin()).collect();
        let mut y = vec![0.5f32; m * n];
        // a: the transpose of a (k, m) matrix; b: the transpose of a (n, k) one.
        let (at, bt) = (Strided::transposed(&a, m), Strided::transposed(&b, k));
        gemm_strided(&mut y, at, bt, (m, k, n), true, true);
        for o in 0..m {
            for p in 0..n {
                let want = 0.5 + (0..k).map(|q| a[q * m + o] * b[p * k + q]).sum::<f32>();
                assert!((y[o * n + p] - want).abs() < 1e-4, "({o}, {p})");
            }
        }
        let mut z = vec![0f32; m * n];
        let ar: Vec<f32> = (0..m * k).map(|i| a[(i % k) * m + i / k]).collect();
        gemm_strided(&mut z, Strided::rows(&ar, k), bt, (m, k, n), false, false);
        for (z, y) in z.iter().zip(&y) {
            assert!((z + 0.5 - y).abs() < 1e-4);
        }
    }
}
