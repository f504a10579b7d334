//! The solve of one group on its grid: the forward transforms, the filter step, the inverse
//! transforms (of the rows the crop keeps only) and the crop, through GELU when asked.

use super::filters::{lanes_column, FilterRef};
use super::grid::{lanes_to_rows, Geometry, Grid, BLOCK};
use super::GROUP;
use crate::ops::cpu::act::gelu;
use crate::ops::cpu::simd::{prefetch, simd_fn, Simd, V};
use crate::ops::profile::{self, OpKind};

impl Grid {
    /// Solves the group at scale 1, in place: the padded grid (interior and padding filled) in,
    /// the solution at the interior ([`Geometry::inner`]) out, through GELU if `act`. `g` is the
    /// group's transfer function.
    pub(crate) fn solve(&mut self, geo: &Geometry, g: &mut FilterRef, act: bool) {
        assert!(geo.s == 1, "the in-place solve is for scale 1");
        let _t = profile::time_shared(OpKind::Fft, || geo.flops(GROUP));
        solve_grid(geo, self, g, act, None)
    }

    /// Solves the group at any scale into `count` planes `(s*h, s*w)` of `out`.
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

simd_fn! {
    /// The solve of one group: forward transform, then per phase the filter, the inverse and
    /// the crop (into `out` when given, else left in the grid at scale 1).
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
            scratch,
            column,
        } = grid;
        let pw = &geo.plan_w;
        // Forward: the rows that are not all zeros, then the columns.
        let t = profile::time_shared(OpKind::Rows, || (hp * wp) as f64);
        for (i, row) in geo.rows.iter().enumerate() {
            if row.is_some() {
                if geo.reads_ahead && i + 1 < hp {
                    prefetch_row((re, im), (i + 1) * wp, wp);
                }
                pw.forward(s, (re, im), (i * wp, 1), (line_re, line_im), scratch);
                re[i * wp..][..wp].copy_from_slice(&line_re[..wp]);
                im[i * wp..][..wp].copy_from_slice(&line_im[..wp]);
            }
        }
        drop(t);
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
            // row by row, each column's forward transform, the filter and its inverse run on
            // the pair's contiguous buffers, and the blocks are scattered back.
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
                for k in 0..nb {
                    let v = v0 + k;
                    // The column at k of the first block, its mirror at nb - 1 - k of the second.
                    let cols: &[(usize, bool)] = if paired {
                        &[(k, false), (nb - 1 - k, true)]
                    } else {
                        &[(k, false)]
                    };
                    for (t, &(at, mirror)) in cols.iter().enumerate() {
                        let src = if mirror { (&*b.0, &*b.1) } else { (&*a.0, &*a.1) };
                        let spectrum =
                            (&mut pair_re[t * hp..][..hp], &mut pair_im[t * hp..][..hp]);
                        geo.plan_h.forward(s, src, (at, nb), spectrum, scratch);
                    }
                    let at = (0, (cols.len() - 1) * hp, 1);
                    let pair = (&mut pair_re[..], &mut pair_im[..]);
                    // Each column of the transfer function used as it is made.
                    let work = || (*made_count * hp) as f64;
                    let t = profile::time_shared(OpKind::Transfer, work);
                    let width = made.width();
                    lanes_column(column, made.column(v), width, *made_count, norm);
                    drop(t);
                    filter_column(s, geo, (column, 0, 1), v, None, pair, at);
                    for (t, &(at, mirror)) in cols.iter().enumerate() {
                        // The inverse: the forward transform with the parts swapped.
                        let spectrum = (&pair_im[t * hp..][..hp], &pair_re[t * hp..][..hp]);
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
            inverse_rows(s, geo, (re, im), (line_re, line_im), scratch, act);
            if let Some(out) = out.as_deref_mut() {
                store_phase(geo, (re, im), out, count, (0, 0));
            }
            return;
        }
        let t = profile::time_shared(OpKind::Columns, || (hp * wp) as f64);
        for j in 0..wp {
            forward_column(s, geo, (re, im), j, (line_re, line_im), scratch);
        }
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
            for j in 0..wp {
                inverse_column(s, geo, (phase_re, phase_im), j, (line_re, line_im), scratch);
            }
            drop(t);
            inverse_rows(s, geo, (phase_re, phase_im), (line_re, line_im), scratch, act);
            if let Some(out) = out.as_deref_mut() {
                let (a, b) = (phase / geo.s, phase % geo.s);
                store_phase(geo, (phase_re, phase_im), out, count, (a, b));
            }
        }
    }
}

/// Asks the caches for the grid points `k..k + len` of both parts, the next row of a row pass:
/// one row is transformed while the next comes in from memory.
#[inline(always)]
fn prefetch_row((re, im): (&[V], &[V]), k: usize, len: usize) {
    // Two vectors per 64-byte cache line.
    for j in (k..k + len).step_by(2) {
        prefetch(&re[j]);
        prefetch(&im[j]);
    }
}

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

/// The inverse transform along the interior rows of the grid `(dr, di)` (its columns done),
/// whose interior columns are written back through GELU if `act`.
#[inline(always)]
fn inverse_rows<S: Simd>(
    s: S,
    geo: &Geometry,
    (dr, di): (&mut [V], &mut [V]),
    (line_re, line_im): (&mut [V], &mut [V]),
    scratch: &mut [V],
    act: bool,
) {
    let (wp, pad, w) = (geo.wp, geo.pad, geo.w);
    let _t = profile::time_shared(OpKind::Rows, || (geo.h * wp) as f64);
    for i in pad..pad + geo.h {
        let row = i * wp;
        if geo.reads_ahead && i + 1 < pad + geo.h {
            prefetch_row((dr, di), row + wp, wp);
        }
        geo.plan_w.forward(
            s,
            (&*di, &*dr),
            (row, 1),
            (&mut *line_im, &mut *line_re),
            scratch,
        );
        let (kr, ki) = (&mut line_re[pad..pad + w], &mut line_im[pad..pad + w]);
        if act {
            for v in kr.iter_mut().chain(ki.iter_mut()) {
                for x in v.0.iter_mut() {
                    *x = gelu(*x);
                }
            }
        }
        dr[row + pad..][..w].copy_from_slice(kr);
        di[row + pad..][..w].copy_from_slice(ki);
    }
}

/// Copies phase `(a, b)` of the solution, the grid's interior, into `count` planes
/// `(s*h, s*w)` at the pixels `(s*i + a, s*j + b)`.
#[inline(always)]
fn store_phase(
    geo: &Geometry,
    (dr, di): (&[V], &[V]),
    out: &mut [f32],
    count: usize,
    (a, b): (usize, usize),
) {
    let (s, h, w) = (geo.s, geo.h, geo.w);
    let (ho, wo) = (s * h, s * w);
    for i in 0..h {
        let at = geo.inner(i, 0);
        let (gr, gi) = (&dr[at..][..w], &di[at..][..w]);
        if s == 1 {
            lanes_to_rows((gr, gi), &mut out[i * w..], h * w, count);
            continue;
        }
        for q in 0..count {
            let src = if q % 2 == 0 { gr } else { gi };
            let dst = &mut out[(q * ho + s * i + a) * wo..][..wo];
            for (j, v) in src.iter().enumerate() {
                dst[s * j + b] = v.0[q / 2];
            }
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
