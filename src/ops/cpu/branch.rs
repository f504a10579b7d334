//! The fused `ConverseBlock`: both residual branches in cache-sized pieces.
//!
//! LayerNorm's affine is folded into the expanding 1x1 and `alpha` into the reducing one (in
//! f64, once). The branch without Converse2D runs tile by tile: a column tile of the image is
//! gathered, normalised, expanded, activated, reduced and added back while it stays in cache.
//! The branch with Converse2D cannot, since the solve needs a whole image per channel: it runs
//! [`GROUP`] hidden channels at a time, each group expanded straight into its solve grid,
//! solved, and read back by the reducing 1x1, which accumulates into the output. The expand and
//! the reduce run band of rows by band (a tile of whole rows, or the tiles of one row): each
//! band's grid rows are transformed along the rows right after the expand writes them, and
//! transformed back right before the reduce reads them, while they are in cache, so that the
//! group's solve is left with the columns. Groups are taken in passes of as many as the memory
//! allows, spread evenly (each pass reads and adds to the output once).

use std::ops::Range;

use candle_core::Result;
use rayon::prelude::*;

use super::act::bias_gelu;
use super::gemm::gemm;
use super::simd::V;
use super::simd::{simd_fn, Isa};
use super::solve::{lanes_to_rows, pool, rows_to_lanes, Filters, Geometry, Grid, RowWork, GROUP};
use crate::ops::profile::{self, OpKind};

/// Pixels per column tile.
const TILE: usize = 256;

/// One branch `x += reduce(gelu(expand(norm(x))))`'s weights, folded: `expand` `(2c, c)` with
/// LayerNorm's affine in it, `expand_bias` `(2c)`, and `reduce` `(c, 2c + 1)` with `alpha` in
/// it and its bias as the last column (applied to a row of ones).
#[derive(Debug)]
pub(crate) struct BranchWeights {
    c: usize,
    expand: Vec<f32>,
    expand_bias: Vec<f32>,
    reduce: Vec<f32>,
}

impl BranchWeights {
    /// Folds LayerNorm `(ln_w, ln_b)` `(c)` into the expanding 1x1 `(e_w (2c, c), e_b (2c))`
    /// and `alpha` `(c)` into the reducing 1x1 `(r_w (c, 2c), r_b (c))`, in f64.
    pub(crate) fn fold(
        (ln_w, ln_b): (&[f64], &[f64]),
        (e_w, e_b): (&[f64], &[f64]),
        (r_w, r_b): (&[f64], &[f64]),
        alpha: &[f64],
    ) -> Self {
        let (c, c2) = (ln_w.len(), e_b.len());
        let mut expand = Vec::with_capacity(c2 * c);
        let mut expand_bias = Vec::with_capacity(c2);
        for o in 0..c2 {
            let row = &e_w[o * c..(o + 1) * c];
            expand.extend(row.iter().zip(ln_w).map(|(w, s)| (w * s) as f32));
            let shift: f64 = row.iter().zip(ln_b).map(|(w, b)| w * b).sum();
            expand_bias.push((e_b[o] + shift) as f32);
        }
        let mut reduce = Vec::with_capacity(c * (c2 + 1));
        for o in 0..c {
            let row = &r_w[o * c2..(o + 1) * c2];
            reduce.extend(row.iter().map(|w| (w * alpha[o]) as f32));
            reduce.push((r_b[o] * alpha[o]) as f32);
        }
        Self {
            c,
            expand,
            expand_bias,
            reduce,
        }
    }
}

/// A `ConverseBlock`'s two branches: the first with Converse2D, the second without.
#[derive(Debug)]
pub(crate) struct BlockWeights {
    pub(crate) converse: BranchWeights,
    pub(crate) plain: BranchWeights,
}

simd_fn! {
    /// Channels-first LayerNorm (no affine) of a gathered tile `x` `(c, len)` into `out`.
    fn layer_norm(_s, x: &[f32], out: &mut [f32], c: usize, len: usize) {
        let mut mean = [0f32; TILE];
        let mut var = [0f32; TILE];
        let (mean, var) = (&mut mean[..len], &mut var[..len]);
        for ch in 0..c {
            for (m, v) in mean.iter_mut().zip(&x[ch * len..][..len]) {
                *m += v;
            }
        }
        for m in mean.iter_mut() {
            *m /= c as f32;
        }
        for ch in 0..c {
            for ((q, v), m) in var.iter_mut().zip(&x[ch * len..][..len]).zip(&*mean) {
                *q += (v - m) * (v - m);
            }
        }
        for q in var.iter_mut() {
            *q = 1.0 / (*q / c as f32 + 1e-5).sqrt();
        }
        for ch in 0..c {
            let (src, dst) = (&x[ch * len..][..len], &mut out[ch * len..][..len]);
            for (((o, v), m), r) in dst.iter_mut().zip(src).zip(&*mean).zip(&*var) {
                *o = (v - m) * r;
            }
        }
    }
}

/// The pixel tiles of an `h x w` image, as `(first pixel, length)`: runs of whole rows while
/// a row fits in a tile, else pieces of one row, so that a tile's pixels are contiguous in a
/// row of the solve grids too (or a few whole rows of it).
fn tile_plan(h: usize, w: usize) -> Vec<(usize, usize)> {
    if w <= TILE {
        let rows = TILE / w.max(1);
        (0..h)
            .step_by(rows)
            .map(|i| (i * w, rows.min(h - i) * w))
            .collect()
    } else {
        (0..h)
            .flat_map(|i| {
                (0..w)
                    .step_by(TILE)
                    .map(move |j| (i * w + j, TILE.min(w - j)))
            })
            .collect()
    }
}

/// The row segments of the pixels `p..p + len` of an image `w` wide: `(j, i, col, n)`, tile
/// columns `j..j + n` being row `i`, columns `col..col + n`.
fn segments(p: usize, len: usize, w: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    let mut j = 0;
    std::iter::from_fn(move || {
        (j < len).then(|| {
            let (i, col) = ((p + j) / w, (p + j) % w);
            let n = (w - col).min(len - j);
            let seg = (j, i, col, n);
            j += n;
            seg
        })
    })
}

/// Cuts `buf` into the pieces `ranges` (ascending, disjoint `(start, len)`).
fn carve<T>(mut buf: &mut [T], ranges: impl Iterator<Item = (usize, usize)>) -> Vec<&mut [T]> {
    let mut at = 0;
    let mut pieces = vec![];
    for (start, len) in ranges {
        let (piece, rest) = std::mem::take(&mut buf)[start - at..].split_at_mut(len);
        pieces.push(piece);
        buf = rest;
        at = start + len;
    }
    pieces
}

/// The pieces of each tile of a `(rows, n)` matrix: `tiles[t][r]` is row `r` over tile `t`.
fn tiles_mut<'a>(
    x: &'a mut [f32],
    rows: usize,
    plan: &[(usize, usize)],
) -> Vec<Vec<&'a mut [f32]>> {
    let n = x.len() / rows.max(1);
    let mut tiles: Vec<Vec<&mut [f32]>> = plan.iter().map(|_| vec![]).collect();
    for row in x.chunks_mut(n) {
        for (tile, piece) in tiles.iter_mut().zip(carve(row, plan.iter().copied())) {
            tile.push(piece);
        }
    }
    tiles
}

fn tiles_ref<'a>(x: &'a [f32], rows: usize, plan: &[(usize, usize)]) -> Vec<Vec<&'a [f32]>> {
    let n = x.len() / rows.max(1);
    plan.iter()
        .map(|&(p, len)| x.chunks(n).map(|r| &r[p..p + len]).collect())
        .collect()
}

/// Copies row pieces into `dst` as a contiguous `(rows, len)` matrix.
fn gather<R: AsRef<[f32]>>(rows: &[R], dst: &mut [f32]) {
    let len = rows.first().map_or(0, |r| r.as_ref().len());
    for (d, r) in dst.chunks_mut(len).zip(rows) {
        d.copy_from_slice(r.as_ref());
    }
}

fn scatter(src: &[f32], rows: &mut [&mut [f32]]) {
    let len = rows.first().map_or(0, |r| r.len());
    for (r, s) in rows.iter_mut().zip(src.chunks(len)) {
        r.copy_from_slice(s);
    }
}

/// Buffers of one tile: the input `x` `(c, TILE)`, its norm `(c, TILE)` and the hidden maps
/// `(2c + 1, TILE)` (room for the row of ones).
struct TileWork {
    x: Vec<f32>,
    norm: Vec<f32>,
    h: Vec<f32>,
}

impl TileWork {
    fn new(c: usize) -> Self {
        Self {
            x: vec![0.0; c * TILE],
            norm: vec![0.0; c * TILE],
            h: vec![0.0; (2 * c + 1) * TILE],
        }
    }

    /// `h[..rows] = gelu(expand[rows] · norm(x) + bias[rows])` on the gathered tile of `len`
    /// pixels.
    fn expand(&mut self, w: &BranchWeights, rows: std::ops::Range<usize>, len: usize) {
        let c = w.c;
        {
            let _t = profile::time_shared(OpKind::NormAct, || (c * len) as f64);
            layer_norm(&self.x, &mut self.norm, c, len);
        }
        let m = rows.len();
        let e = &w.expand[rows.start * c..];
        gemm(&mut self.h, (e, c), (&self.norm, len), (m, c, len), false);
        let _t = profile::time_shared(OpKind::NormAct, || (m * len) as f64);
        for (row, &b) in self.h.chunks_mut(len).zip(&w.expand_bias[rows]) {
            bias_gelu(row, b);
        }
    }

    /// `x[..c] += reduce[:, cols] · h[..cols.len()]`, plus the bias when `cols` is the last
    /// block of columns (through a row of ones after them in `h`).
    fn reduce(&mut self, w: &BranchWeights, cols: std::ops::Range<usize>, len: usize) {
        let c = w.c;
        let mut k = cols.len();
        if cols.end == 2 * c {
            self.h[k * len..(k + 1) * len].fill(1.0);
            k += 1;
        }
        let r = (&w.reduce[cols.start..], 2 * c + 1);
        gemm(&mut self.x, r, (&self.h, len), (c, k, len), true);
    }
}

/// The bands of whole image rows that the tiles `plan` ([`tile_plan`]) of an image `w` wide
/// make: `(rows, tiles)`, the rows `rows` being the tiles `tiles` (one tile of whole rows, or
/// the pieces of one row).
fn bands(plan: &[(usize, usize)], w: usize) -> Vec<(Range<usize>, Range<usize>)> {
    let mut bands = vec![];
    let mut first = 0;
    for (t, &(p, len)) in plan.iter().enumerate() {
        if (p + len) % w == 0 {
            bands.push((plan[first].0 / w..(p + len) / w, first..t + 1));
            first = t + 1;
        }
    }
    bands
}

/// The fewest bands a parallel job over `bands` bands takes: at most eight jobs per thread, so
/// that each job's buffers (a tile's, a row's and a band's of every group: about 1.5 MB at 2048
/// pixels wide) are made a few times per block rather than once per band, when threads steal
/// work from each other.
fn min_len(bands: usize) -> usize {
    bands.div_ceil(8 * rayon::current_num_threads()).max(1)
}

/// One group's grid cut into bands of rows: `(re, im)` pieces.
type GridRows<'a> = (&'a mut [V], &'a mut [V]);

/// The hidden channels of the groups `grids` (group `g0 + i` in `grids[i]`) of the branch with
/// Converse2D, `gelu(expand · norm(x) + bias)`, written straight into the grids' interiors, tile
/// by tile, and each band of rows transformed along the rows while it is in cache.
fn expand_groups(
    x: &[f32],
    w: &BranchWeights,
    g0: usize,
    grids: &mut [Grid],
    geo: &Geometry,
    plan: &[(usize, usize)],
) {
    let c = w.c;
    let rows = g0 * GROUP..(2 * c).min((g0 + grids.len()) * GROUP);
    let bands = bands(plan, geo.w);
    // Each band's rows of the grids (their padding columns too), per group.
    let band_ranges = || {
        let wp = geo.wp;
        bands
            .iter()
            .map(move |(r, _)| ((r.start + geo.pad) * wp, r.len() * wp))
    };
    let mut per_band: Vec<Vec<GridRows>> = bands.iter().map(|_| vec![]).collect();
    for grid in grids.iter_mut() {
        let (re, im) = grid.parts_mut();
        let pieces = carve(re, band_ranges())
            .into_iter()
            .zip(carve(im, band_ranges()));
        for (band, piece) in per_band.iter_mut().zip(pieces) {
            band.push(piece);
        }
    }
    let inputs = tiles_ref(x, c, plan);
    let isa = Isa::current();
    let min_len = min_len(bands.len());
    per_band
        .into_par_iter()
        .zip(&bands)
        .with_min_len(min_len)
        .for_each_init(
            || (TileWork::new(c), RowWork::new(geo)),
            |(tw, rw), (mut outs, (band_rows, tiles))| {
                isa.run(|| {
                    for t in tiles.clone() {
                        let (p, len) = plan[t];
                        gather(&inputs[t], &mut tw.x[..c * len]);
                        tw.expand(w, rows.clone(), len);
                        for (gi, (re, im)) in outs.iter_mut().enumerate() {
                            let base = gi * GROUP;
                            let count = GROUP.min(rows.len() - base);
                            let h = &tw.h[base * len..];
                            for (j, i, col, n) in segments(p, len, geo.w) {
                                let at = (i - band_rows.start) * geo.wp + geo.pad + col;
                                let seg = (&mut re[at..][..n], &mut im[at..][..n]);
                                rows_to_lanes(seg, &h[j..], len, count);
                            }
                        }
                    }
                    for (re, im) in outs.iter_mut() {
                        rw.transform(geo, (re, im));
                    }
                })
            },
        );
}

/// `out` `(c, n)` `= x + reduce[:, groups] · hidden(groups)` (or `out +=` the product when
/// `first` is false), reading the hidden maps from the solved `grids` (group `g0 + i` in
/// `grids[i]`) band of rows by band, each band's rows transformed back first (through GELU);
/// the last pass adds the bias and, given `then`, runs that branch on each tile while it is in
/// cache.
fn reduce_groups(
    (x, out): (&[f32], &mut [f32]),
    w: &BranchWeights,
    (g0, grids): (usize, &[Grid]),
    geo: &Geometry,
    plan: &[(usize, usize)],
    (first, then): (bool, Option<&BranchWeights>),
) {
    let c = w.c;
    let c2 = 2 * c;
    let cols = g0 * GROUP..c2.min((g0 + grids.len()) * GROUP);
    let bands = bands(plan, geo.w);
    let mut tiles = tiles_mut(out, c, plan).into_iter();
    let per_band: Vec<Vec<Vec<&mut [f32]>>> = bands
        .iter()
        .map(|(_, t)| tiles.by_ref().take(t.len()).collect())
        .collect();
    let inputs = tiles_ref(x, c, plan);
    // A band's hidden maps, per group: its rows' interiors, one after the other.
    let band_len = TILE.max(geo.w);
    let isa = Isa::current();
    let min_len = min_len(bands.len());
    per_band
        .into_par_iter()
        .zip(&bands)
        .with_min_len(min_len)
        .for_each_init(
            || {
                let hidden = vec![V::default(); grids.len() * band_len];
                (TileWork::new(c), RowWork::new(geo), hidden.clone(), hidden)
            },
            |(tw, rw, hr, hi), (outs, (band_rows, tiles))| {
                isa.run(|| {
                    for (gi, grid) in grids.iter().enumerate() {
                        let band = (&mut hr[gi * band_len..], &mut hi[gi * band_len..]);
                        rw.inverse_rows(geo, grid, band_rows.clone(), true, band);
                    }
                    for (mut rows, t) in outs.into_iter().zip(tiles.clone()) {
                        let (p, len) = plan[t];
                        if first {
                            gather(&inputs[t], &mut tw.x[..c * len]);
                        } else {
                            gather(&rows, &mut tw.x[..c * len]);
                        }
                        for gi in 0..grids.len() {
                            let base = gi * GROUP;
                            let count = GROUP.min(cols.len() - base);
                            let h = &mut tw.h[base * len..];
                            let (br, bi) = (&hr[gi * band_len..], &hi[gi * band_len..]);
                            for (j, i, col, n) in segments(p, len, geo.w) {
                                let at = (i - band_rows.start) * geo.w + col;
                                lanes_to_rows(
                                    (&br[at..][..n], &bi[at..][..n]),
                                    &mut h[j..],
                                    len,
                                    count,
                                );
                            }
                        }
                        tw.reduce(w, cols.clone(), len);
                        if let Some(plain) = then {
                            tw.expand(plain, 0..2 * c, len);
                            tw.reduce(plain, 0..2 * c, len);
                        }
                        scatter(&tw.x[..c * len], &mut rows);
                    }
                })
            },
        );
}

/// How many groups of the branch with Converse2D run in one pass, each with a grid of `grid`
/// bytes: all of them while their grids take no more than `grid_budget` bytes, else fewer (at least one per thread), spread evenly
/// over the fewest passes (8 groups of which 5 fit run as 4 and 4, not 5 and 3: the solves of
/// a pass run a group per thread, and 5 on 2 threads take as long as 6).
pub(crate) fn groups_per_pass(
    groups: usize,
    grid: usize,
    grid_budget: usize,
    threads: usize,
) -> usize {
    let fit = (grid_budget / grid.max(1))
        .max(threads)
        .clamp(1, groups.max(1));
    groups.div_ceil(groups.div_ceil(fit).max(1)).max(1)
}

/// Bytes the solve grids of one fused block may take at once (beyond the block's input and
/// output), unless the run was planned with more ([`with_grid_budget`]).
pub(crate) const GRID_BUDGET: usize = 256 << 20;

thread_local! {
    static GRID_BUDGET_NOW: std::cell::Cell<usize> = const { std::cell::Cell::new(GRID_BUDGET) };
}

/// Runs `f` with the fused blocks called on this thread holding up to `bytes` of solve grids at
/// once (the memory planner's choice for a whole image: fewer passes over the feature maps).
pub(crate) fn with_grid_budget<R>(bytes: usize, f: impl FnOnce() -> R) -> R {
    crate::ops::with_thread_setting(&GRID_BUDGET_NOW, bytes, f)
}

/// The grid budget of the fused blocks called on this thread: [`GRID_BUDGET`] unless set by
/// [`with_grid_budget`].
pub(crate) fn grid_budget() -> usize {
    GRID_BUDGET_NOW.with(std::cell::Cell::get)
}

/// The fused `ConverseBlock` on images `x` `(N, c, h, w)` into `out` (same shape):
/// `out = x + converse_branch(x)`, then `out += plain_branch(out)`, the second branch in the
/// last pass of the first, tile by tile; the branch with Converse2D holds at most
/// `grid_budget` bytes of solve grids at once ([`GRID_BUDGET`]).
pub(crate) fn converse_block(
    x: &[f32],
    out: &mut [f32],
    (c, h, w): (usize, usize, usize),
    weights: &BlockWeights,
    (geo, filters): (&Geometry, Filters),
    grid_budget: usize,
) -> Result<()> {
    let n = h * w;
    let groups = (2 * c).div_ceil(GROUP);
    let grid = geo.hp * geo.wp * 2 * size_of::<V>();
    let per_pass = groups_per_pass(groups, grid, grid_budget, rayon::current_num_threads());
    let plan = tile_plan(h, w);
    let pool = pool();
    geo.fit_pool(pool);
    let wc = &weights.converse;
    let isa = Isa::current();
    for (xi, oi) in x.chunks(c * n).zip(out.chunks_mut(c * n)) {
        for g0 in (0..groups).step_by(per_pass) {
            let count = per_pass.min(groups - g0);
            let mut grids: Vec<Grid> = (0..count).map(|_| Grid::new(geo, pool)).collect();
            expand_groups(xi, wc, g0, &mut grids, geo, &plan);
            grids.par_iter_mut().enumerate().for_each(|(i, grid)| {
                isa.run(|| {
                    let mut f = filters.group(geo, 0, g0 + i, pool);
                    grid.solve(geo, &mut f);
                    f.release(pool);
                })
            });
            let last = (g0 + count == groups).then_some(&weights.plain);
            reduce_groups((xi, oi), wc, (g0, &grids), geo, &plan, (g0 == 0, last));
            grids.into_iter().for_each(|g| g.give_back(pool));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_matches_plain_loops() {
        let (c, len) = (5, 200);
        let x: Vec<f32> = (0..c * len)
            .map(|i| ((i * 37 % 101) as f32).sin())
            .collect();
        let mut out = vec![0f32; c * len];
        layer_norm(&x, &mut out, c, len);
        for p in [0, 1, 150, 199] {
            let v: Vec<f32> = (0..c).map(|ch| x[ch * len + p]).collect();
            let mean = v.iter().sum::<f32>() / c as f32;
            let var = v.iter().map(|a| (a - mean) * (a - mean)).sum::<f32>() / c as f32;
            for ch in 0..c {
                let want = (v[ch] - mean) / (var + 1e-5).sqrt();
                assert!((out[ch * len + p] - want).abs() < 1e-5);
            }
        }
    }

    /// Passes of groups: all at once where they fit, else as few passes as fit, evenly filled,
    /// and never fewer groups than threads.
    #[test]
    fn groups_spread_evenly_over_the_passes() {
        let grid = 104 * 104 * 2 * size_of::<V>();
        for (groups, fit, threads, want) in [
            (8, 8, 2, 8),
            (8, 20, 2, 8),
            (8, 5, 2, 4),
            (8, 3, 2, 3),
            (8, 1, 2, 2),
            (8, 0, 2, 2),
            (8, 0, 16, 8),
            (5, 4, 2, 3),
            (1, 0, 2, 1),
        ] {
            let got = groups_per_pass(groups, grid, fit * grid, threads);
            assert_eq!(got, want, "{groups} groups, {fit} fit, {threads} threads");
        }
    }

    #[test]
    fn tiles_and_bands_cover_every_pixel_once() {
        for (h, w) in [(1, 1), (7, 300), (20, 16), (5, 256), (3, 600), (33, 100)] {
            let plan = tile_plan(h, w);
            let mut next = 0;
            for &(p, len) in &plan {
                assert_eq!(p, next, "{h}x{w}");
                assert!(len > 0 && len <= TILE);
                assert!(segments(p, len, w).all(|(_, i, col, n)| i < h && col + n <= w));
                next = p + len;
            }
            assert_eq!(next, h * w);
            let mut row = 0;
            let mut tile = 0;
            for (rows, tiles) in bands(&plan, w) {
                assert_eq!((rows.start, tiles.start), (row, tile), "{h}x{w}");
                assert!(!rows.is_empty() && !tiles.is_empty());
                let (first, last) = (plan[tiles.start], plan[tiles.end - 1]);
                assert_eq!(first.0, rows.start * w);
                assert_eq!(last.0 + last.1, rows.end * w);
                (row, tile) = (rows.end, tiles.end);
            }
            assert_eq!((row, tile), (h, plan.len()), "{h}x{w}");
        }
    }
}
