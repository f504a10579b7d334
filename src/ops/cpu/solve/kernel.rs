//! The solve of one group on its grid: the forward transforms, the filter step, the inverse
//! transforms (of the rows the crop keeps only) and the crop, through GELU when asked.
//!
//! The transforms along the rows run as the rows are written or read, while they are in cache:
//! [`Grid::load`] and the fused block's expand ([`RowWork::transform`]) transform each row as it
//! is loaded, and the inverse of each row is read straight into the output
//! ([`Grid::solve_into`]) or, in the fused block, into a thread's buffer that the reducing 1x1
//! reads ([`RowWork::inverse_rows`]). A grid then goes through memory once between its load and
//! its solve, and once back, rather than three times.

use std::ops::Range;

use super::filters::{lanes_column, FilterRef};
use super::grid::{fill_padding_rows, fill_row_padding, lanes_to_rows, load_row};
use super::grid::{Geometry, Grid, BLOCK};
use super::GROUP;
use crate::ops::cpu::act::gelu;
use crate::ops::cpu::simd::{halves_mut, pairs, pairs_mut, prefetch, simd_fn, Simd, V, V2};
use crate::ops::profile::{self, OpKind};

impl Grid {
    /// Writes `count` planes `(h, w)` into the interior of the grid, zeros in the unused lanes,
    /// and transforms each row as it is written (its padding columns filled first); the
    /// padding rows are filled from them by the solve.
    pub(crate) fn load(&mut self, geo: &Geometry, planes: &[f32], count: usize) {
        let wp = geo.wp;
        let Grid {
            re,
            im,
            line_re,
            line_im,
            scratch,
            ..
        } = self;
        let scratch = halves_mut(scratch);
        for i in 0..geo.h {
            load_row(geo, (re, im), planes, count, i);
            let row = (geo.pad + i) * wp;
            let row = (&mut re[row..][..wp], &mut im[row..][..wp]);
            transform_rows(geo, row, (line_re, line_im), scratch);
        }
    }

    /// Solves the group at scale 1 on a grid whose interior rows are transformed (by
    /// [`Grid::load`] or [`transform_rows`]): the padding rows, the column transforms, the
    /// filter and the inverse column transforms, in place. The grid is left with the row
    /// transforms of the solution, which [`RowWork::inverse_rows`] reads. `g` is the group's
    /// transfer function.
    pub(crate) fn solve(&mut self, geo: &Geometry, g: &mut FilterRef) {
        assert!(geo.s == 1, "the in-place solve is for scale 1");
        let _t = profile::time_shared(OpKind::Fft, || geo.flops(GROUP));
        solve_grid(geo, self, g, false, None)
    }

    /// Solves the group at any scale into `count` planes `(s*h, s*w)` of `out`, through GELU
    /// if `act`; the grid as [`Grid::solve`] takes it.
    pub(crate) fn solve_into(
        &mut self,
        geo: &Geometry,
        g: &mut FilterRef,
        act: bool,
        out: &mut [f32],
        count: usize,
    ) {
        let _t = profile::time_shared(OpKind::Fft, || geo.flops(GROUP));
        solve_grid(geo, self, g, act, Some((out, count)))
    }
}

/// A thread's buffers for transforming rows of grids outside a group's solve (the fused
/// block's expand and reduce, which run bands of rows of every grid in parallel). Rows go two
/// at a time where there are two, side by side in one [`V2`] a point.
pub(crate) struct RowWork {
    line_re: Vec<V>,
    line_im: Vec<V>,
    /// Two rows side by side, and their transforms.
    zip_re: Vec<V2>,
    zip_im: Vec<V2>,
    line2_re: Vec<V2>,
    line2_im: Vec<V2>,
    scratch: Vec<V2>,
}

/// Transforms, in place, the rows of a grid that `rows` holds (`wp` points each, one after
/// the other, their interior written), their padding columns filled first.
pub(crate) fn transform_rows(
    geo: &Geometry,
    rows: (&mut [V], &mut [V]),
    (line_re, line_im): (&mut [V], &mut [V]),
    scratch: &mut [V],
) {
    let _t = profile::time_shared(OpKind::Rows, || rows.0.len() as f64);
    transform_rows_in(geo, rows, (line_re, line_im), scratch)
}

simd_fn! {
    fn transform_rows_in(
        s,
        geo: &Geometry,
        rows: (&mut [V], &mut [V]),
        line: (&mut [V], &mut [V]),
        scratch: &mut [V],
    ) {
        let wp = geo.wp;
        let ((re, im), (line_re, line_im)) = (rows, line);
        for (gr, gi) in re.chunks_exact_mut(wp).zip(im.chunks_exact_mut(wp)) {
            fill_row_padding(geo, (&mut *gr, &mut *gi));
            geo.plan_w.forward(s, (&*gr, &*gi), (0, 1), (&mut *line_re, &mut *line_im), scratch);
            gr.copy_from_slice(&line_re[..wp]);
            gi.copy_from_slice(&line_im[..wp]);
        }
    }
}

simd_fn! {
    /// [`transform_rows_in`], two rows at a time where there are two.
    fn transform_row_pairs(s, geo: &Geometry, rows: (&mut [V], &mut [V]), work: &mut RowWork) {
        let wp = geo.wp;
        let (re, im) = rows;
        let n = re.len() / wp;
        let RowWork { line_re, line_im, zip_re, zip_im, line2_re, line2_im, scratch } = work;
        for i in (0..n / 2).map(|i| 2 * i) {
            let (r0, r1) = re[i * wp..][..2 * wp].split_at_mut(wp);
            let (i0, i1) = im[i * wp..][..2 * wp].split_at_mut(wp);
            fill_row_padding(geo, (&mut *r0, &mut *i0));
            fill_row_padding(geo, (&mut *r1, &mut *i1));
            zip_rows((r0, i0), (r1, i1), (zip_re, zip_im));
            let line = (&mut line2_re[..], &mut line2_im[..]);
            geo.plan_w.forward(s, (&zip_re[..], &zip_im[..]), (0, 1), line, scratch);
            for j in 0..wp {
                [r0[j], r1[j]] = line2_re[j].0;
                [i0[j], i1[j]] = line2_im[j].0;
            }
        }
        if n % 2 == 1 {
            let last = ((&mut re[(n - 1) * wp..]), (&mut im[(n - 1) * wp..]));
            let line = (&mut line_re[..], &mut line_im[..]);
            transform_rows_in(geo, last, line, halves_mut(scratch));
        }
    }
}

/// Two rows side by side: point `j` of row `h` (both parts) in half `h` of `zip[j]`.
#[inline(always)]
fn zip_rows(
    (r0, i0): (&[V], &[V]),
    (r1, i1): (&[V], &[V]),
    (zip_re, zip_im): (&mut [V2], &mut [V2]),
) {
    for (j, (zr, zi)) in zip_re.iter_mut().zip(zip_im.iter_mut()).enumerate() {
        (*zr, *zi) = (V2([r0[j], r1[j]]), V2([i0[j], i1[j]]));
    }
}

impl RowWork {
    pub(crate) fn new(geo: &Geometry) -> Self {
        let wp = geo.wp;
        Self {
            line_re: vec![V::default(); wp],
            line_im: vec![V::default(); wp],
            zip_re: vec![V2::default(); wp],
            zip_im: vec![V2::default(); wp],
            line2_re: vec![V2::default(); wp],
            line2_im: vec![V2::default(); wp],
            scratch: vec![V2::default(); geo.plan_w.scratch_len()],
        }
    }

    /// Transforms rows of a grid in place, as [`transform_rows`].
    pub(crate) fn transform(&mut self, geo: &Geometry, rows: (&mut [V], &mut [V])) {
        let _t = profile::time_shared(OpKind::Rows, || rows.0.len() as f64);
        transform_row_pairs(geo, rows, self)
    }

    /// The inverse transforms of the image rows `rows` of a solved grid `(re, im)`
    /// ([`Grid::solve`]), through GELU if `act`: row `i`'s `w` interior points go to
    /// `(i - rows.start) * w` of `(out_re, out_im)`.
    pub(crate) fn inverse_rows(
        &mut self,
        geo: &Geometry,
        grid: &Grid,
        rows: Range<usize>,
        act: bool,
        out: (&mut [V], &mut [V]),
    ) {
        let work = || (rows.len() * geo.wp) as f64;
        let _t = profile::time_shared(OpKind::Rows, work);
        let grid = (&grid.re[..], &grid.im[..]);
        inverse_rows_in(geo, grid, rows, act, self, out)
    }
}

simd_fn! {
    /// [`RowWork::inverse_rows`], two rows at a time where there are two.
    fn inverse_rows_in(
        s,
        geo: &Geometry,
        grid: (&[V], &[V]),
        rows: Range<usize>,
        act: bool,
        work: &mut RowWork,
        out: (&mut [V], &mut [V]),
    ) {
        let RowWork { line_re, line_im, zip_re, zip_im, line2_re, line2_im, scratch } = work;
        let (out_re, out_im) = out;
        let (dr, di) = grid;
        let (wp, pad, w) = (geo.wp, geo.pad, geo.w);
        let n = rows.len();
        for k in (0..n / 2).map(|k| 2 * k) {
            let i = rows.start + k;
            let at = (pad + i) * wp;
            if geo.reads_ahead && i + 3 < geo.h {
                prefetch_row((dr, di), at + 2 * wp, 2 * wp);
            }
            let row = |h: usize| (&dr[at + h * wp..][..wp], &di[at + h * wp..][..wp]);
            zip_rows(row(0), row(1), (zip_re, zip_im));
            // The inverse: the forward transform with the parts swapped.
            let line = (&mut line2_im[..], &mut line2_re[..]);
            geo.plan_w.forward(s, (&zip_im[..], &zip_re[..]), (0, 1), line, scratch);
            let inner = (&mut line2_re[pad..pad + w], &mut line2_im[pad..pad + w]);
            if act {
                for v in inner.0.iter_mut().chain(inner.1.iter_mut()) {
                    for half in v.0.iter_mut() {
                        for x in half.0.iter_mut() {
                            *x = gelu(*x);
                        }
                    }
                }
            }
            for h in 0..2 {
                let (or, oi) = (&mut out_re[(k + h) * w..][..w], &mut out_im[(k + h) * w..][..w]);
                for j in 0..w {
                    (or[j], oi[j]) = (inner.0[j].0[h], inner.1[j].0[h]);
                }
            }
        }
        if n % 2 == 1 {
            let (k, i) = (n - 1, rows.end - 1);
            let line = (&mut line_re[..], &mut line_im[..]);
            inverse_row(s, geo, grid, i, line, halves_mut(scratch), act);
            out_re[k * w..][..w].copy_from_slice(&line_re[pad..pad + w]);
            out_im[k * w..][..w].copy_from_slice(&line_im[pad..pad + w]);
        }
    }
}

simd_fn! {
    /// The solve of one group on its row-transformed grid: the padding rows, the column
    /// transforms, then per phase the filter and the inverse column transforms, and when `out`
    /// is given the inverse row transforms and the crop into it (else the grid keeps the
    /// solution's row transforms, at scale 1).
    fn solve_grid(
        s,
        geo: &Geometry,
        grid: &mut Grid,
        filter: &mut FilterRef,
        act: bool,
        out: Option<(&mut [f32], usize)>,
    ) {
        let (hp, wp) = (geo.hp, geo.wp);
        let Grid {
            re,
            im,
            phase_re,
            phase_im,
            line_re,
            line_im,
            pair_re,
            pair_im,
            block_re,
            block_im,
            line2_re,
            line2_im,
            scratch,
            column,
        } = grid;
        let (block_re, block_im) = (halves_mut(block_re), halves_mut(block_im));
        let (pair_re, pair_im) = (halves_mut(pair_re), halves_mut(pair_im));
        let scratch2 = scratch;
        fill_padding_rows(geo, (re, im));
        let (mut out, count) = match out {
            Some((o, c)) => (Some(o), c),
            None => (None, 0),
        };
        let wq = wp / 2 + 1;
        if geo.s == 1 {
            let FilterRef::Columns(made, made_count) = filter else {
                panic!("at scale 1 the transfer functions are made by column")
            };
            // Column by column pair (v, -v), which the filter couples, in blocks of up to
            // BLOCK adjacent columns and the block of their mirrors: each block is gathered
            // row by row; the forward transforms (of two adjacent columns at once, one V2 a
            // row, where `column_pairs`), the filter and the inverse transforms run on the
            // pairs' buffers; and the blocks are scattered back.
            let norm = 1.0 / (hp * wp) as f64;
            let t = profile::time_shared(OpKind::Columns, || (hp * wp) as f64);
            // Columns 1..half have their mirror among half..wp; 0 and wp / 2 (wp even) are
            // their own.
            let half = wp.div_ceil(2);
            // The block of columns (a) and the block of their mirrors (b).
            let (a_re, b_re) = block_re.split_at_mut(BLOCK * hp);
            let (a_im, b_im) = block_im.split_at_mut(BLOCK * hp);
            let (a, b) = ((a_re, a_im), (b_re, b_im));
            let mut v0 = 0;
            while v0 < wq {
                let paired = v0 > 0 && v0 < half;
                let v1 = if paired { (v0 + BLOCK).min(half) } else { v0 + 1 };
                let nb = v1 - v0;
                gather_columns((re, im), wp, v0, nb, (&mut a.0[..], &mut a.1[..]), hp);
                if paired {
                    let into = (&mut b.0[..], &mut b.1[..]);
                    gather_columns((re, im), wp, wp + 1 - v1, nb, into, hp);
                }
                // Columns k and k + 1 at once where the block holds both as one V2 (and so
                // does the mirror block: nb even), else one at a time.
                let by = if paired && geo.column_pairs && nb % 2 == 0 { 2 } else { 1 };
                for k in (0..nb).step_by(by) {
                    let v = v0 + k;
                    // Where each column's spectrum and its mirror's lie in `pair`: (offset of
                    // the column, of its mirror, stride).
                    let spots: &[(usize, usize, usize)] = if by == 2 {
                        // The column pair from block a, its mirrors (nb - 2 - k, nb - 1 - k)
                        // from block b: spectra interleaved, b's after a's.
                        let blocks = [(&*a.0, &*a.1, k / 2), (&*b.0, &*b.1, (nb - 2 - k) / 2)];
                        for (t, (br, bi, at)) in blocks.into_iter().enumerate() {
                            let src = (pairs(br), pairs(bi));
                            let (pr, pi) = (pairs_mut(pair_re), pairs_mut(pair_im));
                            let spectrum = (&mut pr[t * hp..][..hp], &mut pi[t * hp..][..hp]);
                            geo.plan_h.forward(s, src, (at, nb / 2), spectrum, scratch2);
                        }
                        &[(0, 2 * hp + 1, 2), (1, 2 * hp, 2)]
                    } else {
                        // The column at k of the first block, its mirror at nb - 1 - k of the
                        // second.
                        let cols: &[(usize, bool)] = if paired {
                            &[(k, false), (nb - 1 - k, true)]
                        } else {
                            &[(k, false)]
                        };
                        for (t, &(at, mirror)) in cols.iter().enumerate() {
                            let src = if mirror { (&*b.0, &*b.1) } else { (&*a.0, &*a.1) };
                            let spectrum =
                                (&mut pair_re[t * hp..][..hp], &mut pair_im[t * hp..][..hp]);
                            let scratch = halves_mut(scratch2);
                            geo.plan_h.forward(s, src, (at, nb), spectrum, scratch);
                        }
                        &[(0, (cols.len() - 1) * hp, 1)]
                    };
                    for (j, &at) in spots.iter().enumerate() {
                        let pair = (&mut pair_re[..], &mut pair_im[..]);
                        // Each column of the transfer function used as it is made.
                        let work = || (*made_count * hp) as f64;
                        let t = profile::time_shared(OpKind::Transfer, work);
                        let width = made.width();
                        lanes_column(column, made.column(v + j), width, *made_count, norm);
                        drop(t);
                        filter_column(s, geo, (column, 0, 1), v + j, None, pair, at);
                    }
                    if by == 2 {
                        // The inverses (the forward transform with the parts swapped), stored
                        // straight into the blocks.
                        let blocks = [(&mut *a.0, &mut *a.1, k / 2), (&mut *b.0, &mut *b.1, (nb - 2 - k) / 2)];
                        for (t, (dr, di, at)) in blocks.into_iter().enumerate() {
                            let (pr, pi) = (pairs(pair_re), pairs(pair_im));
                            let spectrum = (&pi[t * hp..][..hp], &pr[t * hp..][..hp]);
                            let line = (&mut line2_im[..], &mut line2_re[..]);
                            geo.plan_h.forward(s, spectrum, (0, 1), line, scratch2);
                            let (dr, di) = (pairs_mut(dr), pairs_mut(di));
                            for i in 0..hp {
                                let at = i * (nb / 2) + at;
                                (dr[at], di[at]) = (line2_re[i], line2_im[i]);
                            }
                        }
                        continue;
                    }
                    let n_cols = if paired { 2 } else { 1 };
                    for t in 0..n_cols {
                        let (at, mirror) = if t == 0 { (k, false) } else { (nb - 1 - k, true) };
                        // The inverse: the forward transform with the parts swapped.
                        let spectrum = (&pair_im[t * hp..][..hp], &pair_re[t * hp..][..hp]);
                        let scratch = halves_mut(scratch2);
                        geo.plan_h.forward(s, spectrum, (0, 1), (line_im, line_re), scratch);
                        let (dr, di) = if mirror {
                            (&mut *b.0, &mut *b.1)
                        } else {
                            (&mut *a.0, &mut *a.1)
                        };
                        for i in 0..hp {
                            (dr[i * nb + at], di[i * nb + at]) = (line_re[i], line_im[i]);
                        }
                    }
                }
                scatter_columns(geo, (&a.0[..], &a.1[..]), nb, (re, im), v0);
                if paired {
                    scatter_columns(geo, (&b.0[..], &b.1[..]), nb, (re, im), wp + 1 - v1);
                }
                v0 = v1;
            }
            drop(t);
            if let Some(out) = out {
                let _t = profile::time_shared(OpKind::Rows, || (geo.h * wp) as f64);
                let scratch = halves_mut(scratch2);
                for i in 0..geo.h {
                    let line = (&mut line_re[..], &mut line_im[..]);
                    inverse_row(s, geo, (re, im), i, line, scratch, act);
                    store_row(geo, (line_re, line_im), out, count, (i, 0, 0));
                }
            }
            return;
        }
        // The columns in blocks of BLOCK adjacent ones, as at scale 1 (no mirror blocks).
        let (block_re, block_im) = (&mut block_re[..BLOCK * hp], &mut block_im[..BLOCK * hp]);
        let t = profile::time_shared(OpKind::Columns, || (hp * wp) as f64);
        let block = (&mut *block_re, &mut *block_im);
        let lines = ((&mut line_re[..], &mut line_im[..]), (&mut line2_re[..], &mut line2_im[..]));
        transform_columns(s, geo, (re, im), block, lines, scratch2, false);
        drop(t);
        let FilterRef::Phases(g) = filter else {
            panic!("at scale s > 1 the transfer functions are built whole")
        };
        assert_eq!(g.len(), geo.filter_len(), "Converse2D filter size");
        for phase in 0..geo.s * geo.s {
            // Filter from the spectrum into the phase grid, then invert.
            let gp = &g[phase * geo.phase_len()..][..geo.phase_len()];
            let t = profile::time_shared(OpKind::Columns, || (hp * wp) as f64);
            for v in 0..wq {
                let src = Some((&**re, &**im));
                let at = (v, (wp - v) % wp, wp);
                filter_column(s, geo, (gp, v, wq), v, src, (phase_re, phase_im), at);
            }
            let (grid, block) = ((&mut **phase_re, &mut **phase_im), (&mut *block_re, &mut *block_im));
            let lines = ((&mut line_re[..], &mut line_im[..]), (&mut line2_re[..], &mut line2_im[..]));
            transform_columns(s, geo, grid, block, lines, scratch2, true);
            drop(t);
            if let Some(out) = out.as_deref_mut() {
                let _t = profile::time_shared(OpKind::Rows, || (geo.h * wp) as f64);
                let (a, b) = (phase / geo.s, phase % geo.s);
                let scratch = halves_mut(scratch2);
                for i in 0..geo.h {
                    let line = (&mut line_re[..], &mut line_im[..]);
                    inverse_row(s, geo, (phase_re, phase_im), i, line, scratch, act);
                    store_row(geo, (line_re, line_im), out, count, (i, a, b));
                }
            }
        }
    }
}

/// Asks the caches for the grid points `k..k + len` of both parts, the next row of a row pass:
/// one row is transformed while the next comes in from memory.
#[inline(always)]
fn prefetch_row((re, im): (&[V], &[V]), k: usize, len: usize) {
    // Two vectors per 64-byte cache line; the last one too, for a run that starts mid-line.
    for j in (k..k + len).step_by(2).chain([k + len - 1]) {
        prefetch(&re[j]);
        prefetch(&im[j]);
    }
}

/// Rows ahead of the one they copy that the column gathers and scatters ask the caches for: a
/// column block takes a few cache lines of each row, rows a grid width apart, which the
/// hardware does not fetch ahead on its own.
const ROWS_AHEAD: usize = 8;

/// The transforms of every column of the grid `(re, im)`, in place (`inverse`: the forward
/// transform with the parts swapped), a block of up to [`BLOCK`] adjacent columns at a time:
/// gathered row by row (whole cache lines), transformed there (two at a time where
/// [`Geometry::column_pairs`] says so, one [`V2`] each row), scattered back.
#[inline(always)]
fn transform_columns<S: Simd>(
    s: S,
    geo: &Geometry,
    (re, im): (&mut [V], &mut [V]),
    (br, bi): (&mut [V], &mut [V]),
    ((line_re, line_im), (line2_re, line2_im)): Lines,
    scratch: &mut [V2],
    inverse: bool,
) {
    let (hp, wp) = (geo.hp, geo.wp);
    for c0 in (0..wp).step_by(BLOCK) {
        let nb = BLOCK.min(wp - c0);
        gather_columns((re, im), wp, c0, nb, (&mut *br, &mut *bi), hp);
        let by = if geo.column_pairs && nb % 2 == 0 {
            2
        } else {
            1
        };
        for k in (0..nb).step_by(by) {
            if by == 2 {
                let (pr, pi) = (pairs(br), pairs(bi));
                let at = (k / 2, nb / 2);
                if inverse {
                    let out = (&mut *line2_im, &mut *line2_re);
                    geo.plan_h.forward(s, (pi, pr), at, out, scratch);
                } else {
                    let out = (&mut *line2_re, &mut *line2_im);
                    geo.plan_h.forward(s, (pr, pi), at, out, scratch);
                }
                let (pr, pi) = (pairs_mut(br), pairs_mut(bi));
                for i in 0..hp {
                    (pr[i * (nb / 2) + k / 2], pi[i * (nb / 2) + k / 2]) =
                        (line2_re[i], line2_im[i]);
                }
                continue;
            }
            let scratch = halves_mut(scratch);
            if inverse {
                let out = (&mut *line_im, &mut *line_re);
                geo.plan_h.forward(s, (&*bi, &*br), (k, nb), out, scratch);
            } else {
                let out = (&mut *line_re, &mut *line_im);
                geo.plan_h.forward(s, (&*br, &*bi), (k, nb), out, scratch);
            }
            for i in 0..hp {
                (br[i * nb + k], bi[i * nb + k]) = (line_re[i], line_im[i]);
            }
        }
        scatter_columns(geo, (&*br, &*bi), nb, (re, im), c0);
    }
}

/// A line of vectors and a line of pairs, both parts of each.
type Lines<'a> = ((&'a mut [V], &'a mut [V]), (&'a mut [V2], &'a mut [V2]));

/// Copies the columns `c0..c0 + nb` of the grid `(re, im)` (`wp` wide, `hp` rows) into a block:
/// row `i` of column `c0 + b` at `i * nb + b`.
#[inline(always)]
fn gather_columns(
    (re, im): (&[V], &[V]),
    wp: usize,
    c0: usize,
    nb: usize,
    (br, bi): (&mut [V], &mut [V]),
    hp: usize,
) {
    for i in 0..hp {
        if i + ROWS_AHEAD < hp {
            prefetch_row((re, im), (i + ROWS_AHEAD) * wp + c0, nb);
        }
        copy_run(&mut br[i * nb..][..nb], &re[i * wp + c0..][..nb]);
        copy_run(&mut bi[i * nb..][..nb], &im[i * wp + c0..][..nb]);
    }
}

/// `dst.copy_from_slice(src)` for the runs of a column block: a full block's [`BLOCK`] vectors
/// as register moves rather than a call to `memcpy`.
#[inline(always)]
fn copy_run(dst: &mut [V], src: &[V]) {
    match (
        <&mut [V; BLOCK]>::try_from(&mut *dst),
        <&[V; BLOCK]>::try_from(src),
    ) {
        (Ok(d), Ok(s)) => *d = *s,
        _ => dst.copy_from_slice(src),
    }
}

/// Writes a block of [`gather_columns`] back into the columns `c0..c0 + nb` of the grid.
#[inline(always)]
fn scatter_columns(
    geo: &Geometry,
    (br, bi): (&[V], &[V]),
    nb: usize,
    (re, im): (&mut [V], &mut [V]),
    c0: usize,
) {
    let wp = geo.wp;
    for i in 0..geo.hp {
        if i + ROWS_AHEAD < geo.hp {
            prefetch_row((re, im), (i + ROWS_AHEAD) * wp + c0, nb);
        }
        copy_run(&mut re[i * wp + c0..][..nb], &br[i * nb..][..nb]);
        copy_run(&mut im[i * wp + c0..][..nb], &bi[i * nb..][..nb]);
    }
}

/// The forward transform of column `j` of the grid, in place.
#[inline(always)]
pub(super) fn forward_column<S: Simd>(
    s: S,
    geo: &Geometry,
    (re, im): (&mut [V], &mut [V]),
    j: usize,
    (line_re, line_im): (&mut [V], &mut [V]),
    scratch: &mut [V],
) {
    let wp = geo.wp;
    geo.plan_h.forward(
        s,
        (&*re, &*im),
        (j, wp),
        (&mut *line_re, &mut *line_im),
        scratch,
    );
    for i in 0..geo.hp {
        re[i * wp + j] = line_re[i];
        im[i * wp + j] = line_im[i];
    }
}

/// The inverse transform of column `j` of the grid `(dr, di)`, in place: the forward one with
/// the parts swapped.
#[inline(always)]
pub(super) fn inverse_column<S: Simd>(
    s: S,
    geo: &Geometry,
    (dr, di): (&mut [V], &mut [V]),
    j: usize,
    (line_re, line_im): (&mut [V], &mut [V]),
    scratch: &mut [V],
) {
    forward_column(s, geo, (di, dr), j, (line_im, line_re), scratch)
}

/// The inverse transform of the interior row `i` of the image (row `pad + i` of the grid
/// `(dr, di)`, its columns done) into `line`, whose interior `pad..pad + w` goes through GELU
/// if `act`: the forward transform with the parts swapped.
#[inline(always)]
fn inverse_row<S: Simd>(
    s: S,
    geo: &Geometry,
    (dr, di): (&[V], &[V]),
    i: usize,
    (line_re, line_im): (&mut [V], &mut [V]),
    scratch: &mut [V],
    act: bool,
) {
    let (wp, pad, w) = (geo.wp, geo.pad, geo.w);
    let row = (pad + i) * wp;
    if geo.reads_ahead && i + 1 < geo.h {
        prefetch_row((dr, di), row + wp, wp);
    }
    geo.plan_w.forward(
        s,
        (di, dr),
        (row, 1),
        (&mut *line_im, &mut *line_re),
        scratch,
    );
    if act {
        for v in line_re[pad..pad + w]
            .iter_mut()
            .chain(&mut line_im[pad..pad + w])
        {
            for x in v.0.iter_mut() {
                *x = gelu(*x);
            }
        }
    }
}

/// Copies row `i` of phase `(a, b)` of the solution, the interior of an inverse-transformed
/// `line` ([`inverse_row`]), into `count` planes `(s*h, s*w)` at the pixels
/// `(s*i + a, s*j + b)`.
#[inline(always)]
fn store_row(
    geo: &Geometry,
    (lr, li): (&[V], &[V]),
    out: &mut [f32],
    count: usize,
    (i, a, b): (usize, usize, usize),
) {
    let (s, h, w, pad) = (geo.s, geo.h, geo.w, geo.pad);
    let (ho, wo) = (s * h, s * w);
    let (gr, gi) = (&lr[pad..pad + w], &li[pad..pad + w]);
    if s == 1 {
        lanes_to_rows((gr, gi), &mut out[i * w..], h * w, count);
        return;
    }
    for q in 0..count {
        let src = if q % 2 == 0 { gr } else { gi };
        let dst = &mut out[(q * ho + s * i + a) * wo..][..wo];
        for (j, v) in src.iter().enumerate() {
            dst[s * j + b] = v.0[q / 2];
        }
    }
}

/// The filter step for frequency column `v` (of the half spectrum), whose transfer functions
/// are column `gv` of `g` (`g_cols` columns, four vectors per frequency, row-major): with Z the spectrum, channel a's is
/// Xa = (Z[k] + conj Z[-k]) / 2 and channel b's Xb = (Z[k] - conj Z[-k]) / 2i; the result is
/// Y[k] = Ga Xa + i Gb Xb, and at -k its conjugate parts (the filters are Hermitian). So each
/// `k = (u, v)` sets `Y[k]` and `Y[-k]`; in the columns that are their own mirror (0, and
/// `wp/2` when `wp` is even) only the rows `u <= hp/2` do. Z is read from `src` when given
/// (kept for the next phase), else from `dst`. Frequency `(u, v)` is at `off_v + u * stride`
/// of both, and `(u, -v)` at `off_mv + u * stride`.
#[inline(always)]
fn filter_column<S: Simd>(
    s: S,
    geo: &Geometry,
    (g, gv, g_cols): (&[V], usize, usize),
    v: usize,
    src: Option<(&[V], &[V])>,
    (dr, di): (&mut [V], &mut [V]),
    (off_v, off_mv, stride): (usize, usize, usize),
) {
    let (hp, wp) = (geo.hp, geo.wp);
    let mv = (wp - v) % wp;
    let rows = if mv == v { hp / 2 + 1 } else { hp };
    for u in 0..rows {
        let f = &g[4 * (u * g_cols + gv)..][..4];
        let mu = (hp - u) % hp;
        let (k, mk) = (off_v + u * stride, off_mv + mu * stride);
        let (zr, zi, mr, mi) = match src {
            Some((sr, si)) => (sr[k], si[k], sr[mk], si[mk]),
            None => (dr[k], di[k], dr[mk], di[mk]),
        };
        let (ar, ai) = (s.scale(s.add(zr, mr), 0.5), s.scale(s.sub(zi, mi), 0.5));
        let (br, bi) = (s.scale(s.add(zi, mi), 0.5), s.scale(s.sub(mr, zr), 0.5));
        let (pr, pi) = s.cmul(f[0], f[1], ar, ai);
        let (qr, qi) = s.cmul(f[2], f[3], br, bi);
        (dr[mk], di[mk]) = (s.add(pr, qi), s.sub(qr, pi));
        (dr[k], di[k]) = (s.sub(pr, qi), s.add(pi, qr));
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::super::{Filters, Geometry, Grid, Pool, GROUP};
    use crate::ops::cpu::simd::Isa;
    use crate::ops::pad::PaddingMode;
    use crate::ops::transfer::Taps;

    /// One group solved with its columns two at a time gives the bits of one at a time, on
    /// every instruction set, at scale 1 and 2; and AVX-512 gives AVX2's bits. Padded sizes
    /// with full and partial blocks of four columns, even and odd, and columns that are their
    /// own mirror.
    #[test]
    fn columns_two_at_a_time_give_the_bits_of_one_at_a_time() {
        let dev = Device::Cpu;
        let cases = [
            (1, (9, 12)),
            (1, (7, 15)),
            (1, (26, 31)),
            (2, (9, 12)),
            (2, (7, 15)),
        ];
        for (s, (h, w)) in cases {
            let kernel = Tensor::rand(0f32, 0.2, (1, GROUP, 3, 3), &dev).unwrap();
            let lam = Tensor::full(0.05f32, (1, GROUP, 1, 1), &dev).unwrap();
            let taps = Taps::new(&kernel, &lam).unwrap();
            let planes: Vec<f32> = (0..GROUP * h * w)
                .map(|i| (i as f32 * 0.37).sin())
                .collect();
            let run = |pairs: bool| {
                let mut geo = Geometry::new((h, w), 2, s, PaddingMode::Reflect);
                geo.column_pairs = pairs;
                let pool = Pool::default();
                let mut grid = Grid::new(&geo, &pool);
                let mut out = vec![0f32; GROUP * s * s * h * w];
                grid.load(&geo, &planes, GROUP);
                let mut f = Filters(&taps).group(&geo, 0, 0, &pool);
                grid.solve_into(&geo, &mut f, true, &mut out, GROUP);
                out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            };
            let mut by_isa = vec![];
            for isa in Isa::available() {
                let (one, two) = (isa.run(|| run(false)), isa.run(|| run(true)));
                assert!(one == two, "{isa:?} s={s} {h}x{w}");
                by_isa.push((isa, two));
            }
            if let [.., (Isa::Avx2, avx2), (Isa::Avx512, avx512)] = &by_isa[..] {
                assert!(avx2 == avx512, "s={s} {h}x{w}: AVX-512 against AVX2");
            }
        }
    }
}
