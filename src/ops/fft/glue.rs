//! The glue between the planar half spectra of [`rfft2`](super::rfft2) /
//! [`irfft2`](super::irfft2) and a batched FFT library with interleaved complex spectra (cuFFT):
//! the interleaved/planar conversion, start offsets, batching and chunking, written once over
//! any storage and transform ([`Interleaved`]). The CUDA build runs it with cuFFT on the device;
//! the tests run the same code on the CPU with a plain DFT.
//!
//! - forward: the real planes are transformed into an interleaved buffer `(n, H, Wq, 2)`, which is
//!   then copied through the permutation `(n, 2, H, Wq)` into the planar output;
//! - inverse: the planar input seen through the permutation `(n, H, Wq, 2)` is scaled by
//!   `1/(H*W)` into a fresh interleaved buffer (one pass doing both), then transformed; the
//!   transform may overwrite that private buffer.
//!
//! Every offset handed to the transform is complex-aligned (an even number of reals from the
//! start of an allocation), as cuFFT requires: a chunk of real planes that would start at an odd
//! element is copied to (or written through) an aligned scratch buffer first. A call transforms
//! at most `max_elems` reals of spectrum ([`CUFFT_MAX_ELEMS`] for cuFFT, whose offsets are
//! `i32`), so a large batch is split into chunks; with an odd plane size the chunks hold an even
//! number of planes, so that they stay aligned.

use std::ops::Range;

use candle_core::{Layout, Result};

/// The most reals of spectrum one cuFFT call may span: its element offsets are `i32`.
pub(crate) const CUFFT_MAX_ELEMS: usize = i32::MAX as usize;

/// A storage and a batched 2-D real FFT with interleaved complex spectra. Offsets and lengths
/// count reals; a complex value is two of them.
pub(crate) trait Interleaved {
    /// A buffer of reals.
    type Buf;
    /// A buffer of `len` reals (contents unspecified).
    fn alloc(&self, len: usize) -> Result<Self::Buf>;
    /// A fresh contiguous buffer holding `src` as laid out by `layout`, times `scale`.
    fn gather(&self, src: &Self::Buf, layout: &Layout, scale: f64) -> Result<Self::Buf>;
    /// Copies `src[from]` to `dst[at..]`.
    fn copy(
        &self,
        src: &Self::Buf,
        from: Range<usize>,
        dst: &mut Self::Buf,
        at: usize,
    ) -> Result<()>;
    /// Forward transform, `dims` `(h, w, batch)`: `batch` real planes `(h, w)` at `x[x_at..]`
    /// into interleaved half spectra `(batch, h, w/2+1)` at `y[y_at..]`, unnormalised. Both
    /// offsets are even.
    fn r2c(
        &self,
        dims: (usize, usize, usize),
        x: &Self::Buf,
        x_at: usize,
        y: &mut Self::Buf,
        y_at: usize,
    ) -> Result<()>;
    /// Inverse transform, `dims` `(h, w, batch)`: `batch` interleaved half spectra at `x[x_at..]` (which it may
    /// overwrite) into real planes at `y[y_at..]`, unnormalised. Both offsets are even.
    fn c2r(
        &self,
        dims: (usize, usize, usize),
        x: &mut Self::Buf,
        x_at: usize,
        y: &mut Self::Buf,
        y_at: usize,
    ) -> Result<()>;
}

/// The chunks `(first plane, planes)` that `n` planes are transformed in: each spans at most
/// `max_elems` reals of spectrum (`spectrum` per plane); with an odd real plane size (`real`)
/// each chunk but the last holds an even number of planes.
pub(crate) fn chunks(
    op: &str,
    n: usize,
    real: usize,
    spectrum: usize,
    max_elems: usize,
) -> Result<Vec<(usize, usize)>> {
    let mut per_call = max_elems / spectrum.max(1);
    if per_call == 0 {
        candle_core::bail!("{op}: one plane of {real} values is too large for the FFT library")
    }
    if real % 2 == 1 && per_call > 1 {
        per_call -= per_call % 2;
    }
    Ok((0..n)
        .step_by(per_call)
        .map(|p0| (p0, per_call.min(n - p0)))
        .collect())
}

/// `x` as a contiguous buffer and its start offset: itself when `l` is contiguous, else a copy.
fn contiguous<'a, B: Interleaved>(
    b: &B,
    x: &'a B::Buf,
    l: &Layout,
    copy: &'a mut Option<B::Buf>,
) -> Result<(&'a B::Buf, usize)> {
    if l.is_contiguous() {
        return Ok((x, l.start_offset()));
    }
    Ok((copy.insert(b.gather(x, l, 1.0)?), 0))
}

/// Planes `(.., h, w)` (as laid out by `l`) to planar half spectra `(n * 2 * h * (w/2+1))`.
pub(crate) fn rfft<B: Interleaved>(
    b: &B,
    x: &B::Buf,
    l: &Layout,
    (h, w): (usize, usize),
    max_elems: usize,
) -> Result<B::Buf> {
    let wq = w / 2 + 1;
    let (plane, spectrum) = (h * w, 2 * h * wq);
    let n = l.shape().elem_count() / plane.max(1);
    let mut copy = None;
    let (x, start) = contiguous(b, x, l, &mut copy)?;
    let mut spec = b.alloc(n * spectrum)?;
    for (p0, count) in chunks("rfft2", n, plane, spectrum, max_elems)? {
        let at = start + p0 * plane;
        let dims = (h, w, count);
        if at % 2 == 0 {
            b.r2c(dims, x, at, &mut spec, p0 * spectrum)?;
        } else {
            let mut aligned = b.alloc(count * plane)?;
            b.copy(x, at..at + count * plane, &mut aligned, 0)?;
            b.r2c(dims, &aligned, 0, &mut spec, p0 * spectrum)?;
        }
    }
    // Interleaved (n, h, wq, 2) seen as planar (n, 2, h, wq).
    let planar = Layout::contiguous((n, h, wq, 2)).permute(&[0, 3, 1, 2])?;
    b.gather(&spec, &planar, 1.0)
}

/// Planar half spectra `(.., 2, h, w/2+1)` (as laid out by `l`) to planes `(n * h * w)`,
/// normalised by `1/(h*w)`.
pub(crate) fn irfft<B: Interleaved>(
    b: &B,
    x: &B::Buf,
    l: &Layout,
    (h, w): (usize, usize),
    max_elems: usize,
) -> Result<B::Buf> {
    let wq = w / 2 + 1;
    let (plane, spectrum) = (h * w, 2 * h * wq);
    let n = l.shape().elem_count() / spectrum.max(1);
    let mut copy = None;
    let (x, start) = contiguous(b, x, l, &mut copy)?;
    // Planar (n, 2, h, wq) seen as interleaved (n, h, wq, 2), scaled: the transform's input.
    let interleaved =
        Layout::contiguous_with_offset((n, 2, h, wq), start).permute(&[0, 2, 3, 1])?;
    let mut spec = b.gather(x, &interleaved, 1.0 / plane.max(1) as f64)?;
    let mut out = b.alloc(n * plane)?;
    for (p0, count) in chunks("irfft2", n, plane, spectrum, max_elems)? {
        let at = p0 * plane;
        let dims = (h, w, count);
        if at % 2 == 0 {
            b.c2r(dims, &mut spec, p0 * spectrum, &mut out, at)?;
        } else {
            let mut aligned = b.alloc(count * plane)?;
            b.c2r(dims, &mut spec, p0 * spectrum, &mut aligned, 0)?;
            b.copy(&aligned, 0..count * plane, &mut out, at)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::ops::fft::reference;
    use crate::ops::fft::tests::noise;

    /// The glue's transform on the CPU: a plain DFT with interleaved spectra that records every
    /// call and refuses an offset that is not complex-aligned.
    #[derive(Default)]
    struct PlainDft {
        calls: RefCell<Vec<(&'static str, usize, usize, usize)>>,
    }

    /// The element offsets `l` reads, in order.
    fn strided(l: &Layout) -> Vec<usize> {
        let mut offsets = vec![l.start_offset()];
        for (&d, &st) in l.dims().iter().zip(l.stride()) {
            offsets = offsets
                .iter()
                .flat_map(|&o| (0..d).map(move |i| o + i * st))
                .collect();
        }
        offsets
    }

    fn aligned(what: &str, at: usize) {
        assert_eq!(at % 2, 0, "{what} offset {at} is not complex-aligned");
    }

    impl Interleaved for PlainDft {
        type Buf = Vec<f64>;
        fn alloc(&self, len: usize) -> Result<Vec<f64>> {
            Ok(vec![f64::NAN; len])
        }
        fn gather(&self, src: &Vec<f64>, layout: &Layout, scale: f64) -> Result<Vec<f64>> {
            Ok(strided(layout)
                .into_iter()
                .map(|i| src[i] * scale)
                .collect())
        }
        fn copy(
            &self,
            src: &Vec<f64>,
            from: Range<usize>,
            dst: &mut Vec<f64>,
            at: usize,
        ) -> Result<()> {
            let len = from.len();
            dst[at..at + len].copy_from_slice(&src[from]);
            Ok(())
        }
        fn r2c(
            &self,
            (h, w, batch): (usize, usize, usize),
            x: &Vec<f64>,
            x_at: usize,
            y: &mut Vec<f64>,
            y_at: usize,
        ) -> Result<()> {
            aligned("R2C input", x_at);
            aligned("R2C output", y_at);
            self.calls.borrow_mut().push(("r2c", x_at, y_at, batch));
            let wq = w / 2 + 1;
            for p in 0..batch {
                let plane = &x[x_at + p * h * w..x_at + (p + 1) * h * w];
                let (re, im) = reference::rfft2(plane, h, w);
                for k in 0..h * wq {
                    y[y_at + 2 * (p * h * wq + k)] = re[k];
                    y[y_at + 2 * (p * h * wq + k) + 1] = im[k];
                }
            }
            Ok(())
        }
        fn c2r(
            &self,
            (h, w, batch): (usize, usize, usize),
            x: &mut Vec<f64>,
            x_at: usize,
            y: &mut Vec<f64>,
            y_at: usize,
        ) -> Result<()> {
            aligned("C2R input", x_at);
            aligned("C2R output", y_at);
            self.calls.borrow_mut().push(("c2r", x_at, y_at, batch));
            let wq = w / 2 + 1;
            for p in 0..batch {
                let s = &x[x_at + p * 2 * h * wq..x_at + (p + 1) * 2 * h * wq];
                let re: Vec<f64> = s.iter().step_by(2).copied().collect();
                let im: Vec<f64> = s.iter().skip(1).step_by(2).copied().collect();
                let back = reference::irfft2(&re, &im, h, w);
                for (k, v) in back.iter().enumerate() {
                    // Unnormalised, as cuFFT's C2R.
                    y[y_at + p * h * w + k] = v * (h * w) as f64;
                }
            }
            // A C2R may overwrite its input.
            x[x_at..x_at + batch * 2 * h * wq].fill(f64::NAN);
            Ok(())
        }
    }

    /// The planar spectra of `n` planes at `x[start..]`, by the plain DFT.
    fn want_spectra(x: &[f64], start: usize, n: usize, h: usize, w: usize) -> Vec<f64> {
        let mut out = Vec::new();
        for p in 0..n {
            let (re, im) = reference::rfft2(&x[start + p * h * w..start + (p + 1) * h * w], h, w);
            out.extend(re);
            out.extend(im);
        }
        out
    }

    fn close(got: &[f64], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!((a - b).abs() < 1e-10, "{what}: at {i}: {a} vs {b}");
        }
    }

    #[test]
    fn chunks_split_by_the_limit_and_stay_aligned() {
        assert_eq!(chunks("t", 5, 4, 6, 1 << 20).unwrap(), vec![(0, 5)]);
        assert_eq!(
            chunks("t", 5, 4, 6, 12).unwrap(),
            vec![(0, 2), (2, 2), (4, 1)]
        );
        // Odd planes: an even number per chunk, so every chunk starts aligned.
        assert_eq!(
            chunks("t", 7, 15, 24, 72).unwrap(),
            vec![(0, 2), (2, 2), (4, 2), (6, 1)]
        );
        assert_eq!(
            chunks("t", 3, 15, 24, 24).unwrap(),
            vec![(0, 1), (1, 1), (2, 1)]
        );
        assert_eq!(chunks("t", 0, 15, 24, 24).unwrap(), vec![]);
        let e = chunks("rfft2", 3, 15, 24, 23).unwrap_err().to_string();
        let first = e.lines().next().unwrap_or_default();
        assert_eq!(
            first,
            "rfft2: one plane of 15 values is too large for the FFT library"
        );
    }

    /// Odd and even sizes, odd start offsets, strided inputs and forced small chunk limits, both
    /// ways, against the plain DFT; every transform offset aligned (asserted by [`PlainDft`]).
    #[test]
    fn matches_the_plain_dft_with_odd_offsets_and_small_chunks() {
        for &(h, w) in &[(1, 1), (3, 5), (4, 6), (5, 7), (2, 9), (6, 4)] {
            let (plane, wq) = (h * w, w / 2 + 1);
            let spectrum = 2 * h * wq;
            let n = 5;
            for start in [0, 1, 3, 4] {
                for limit in [CUFFT_MAX_ELEMS, spectrum, 2 * spectrum, 3 * spectrum + 1] {
                    let what = format!("{h}x{w} start {start} limit {limit}");
                    let b = PlainDft::default();
                    let x = noise(start + n * plane, (h * 31 + w + start) as u64);
                    let l = Layout::contiguous_with_offset((n, h, w), start);
                    let got = rfft(&b, &x, &l, (h, w), limit).unwrap();
                    let want = want_spectra(&x, start, n, h, w);
                    close(&got, &want, &format!("rfft {what}"));
                    let per_call = chunks("t", n, plane, spectrum, limit).unwrap();
                    assert_eq!(
                        b.calls.borrow().len(),
                        per_call.len(),
                        "one R2C per chunk: {what}"
                    );
                    // Back, from the spectra placed at an odd offset.
                    let b = PlainDft::default();
                    let mut spec = vec![7.0; start];
                    spec.extend(&want);
                    let l = Layout::contiguous_with_offset((n, 2, h, wq), start);
                    let back = irfft(&b, &spec, &l, (h, w), limit).unwrap();
                    close(&back, &x[start..], &format!("irfft {what}"));
                    assert_eq!(b.calls.borrow().len(), per_call.len());
                }
            }
            // A strided (transposed) input gives the transform of what it shows.
            let b = PlainDft::default();
            let x = noise(2 * plane, 5);
            let l = Layout::contiguous((2, w, h)).transpose(1, 2).unwrap();
            let shown = strided(&l).into_iter().map(|i| x[i]).collect::<Vec<_>>();
            let got = rfft(&b, &x, &l, (h, w), spectrum).unwrap();
            close(&got, &want_spectra(&shown, 0, 2, h, w), "strided");
        }
    }

    /// Odd planes with one plane per call put every other C2R output at an odd element: those
    /// go through an aligned scratch buffer.
    #[test]
    fn odd_planes_one_per_call_go_through_scratch() {
        let (h, w, n) = (3, 5, 4);
        let spectrum = 2 * h * (w / 2 + 1);
        let x = noise(1 + n * h * w, 11);
        let b = PlainDft::default();
        let l = Layout::contiguous_with_offset((n, h, w), 1);
        let spec = rfft(&b, &x, &l, (h, w), spectrum).unwrap();
        // The planes start at 1, 16, 31 and 46: the odd ones came through a scratch buffer.
        let inputs: Vec<usize> = b.calls.borrow().iter().map(|c| c.1).collect();
        assert_eq!(inputs, vec![0, 16, 0, 46]);
        let b = PlainDft::default();
        let back = irfft(
            &b,
            &spec,
            &Layout::contiguous((n, 2, h, 3)),
            (h, w),
            spectrum,
        )
        .unwrap();
        close(&back, &x[1..], "round trip");
        let outputs: Vec<usize> = b.calls.borrow().iter().map(|c| c.2).collect();
        assert_eq!(outputs, vec![0, 0, 30, 0]);
    }
}
