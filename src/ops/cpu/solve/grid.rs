//! The geometry of a solve, the buffers of one group in flight and the transposes between
//! channel rows and lanes.

use super::pool::Pool;
use super::GROUP;
use crate::ops::cpu::lanes::Plan;
use crate::ops::cpu::simd::{simd_fn, LANES, V, V2};
use crate::ops::pad::PaddingMode;
use crate::ops::profile;

/// Columns the scale-1 column pass gathers at once: each row of the grid then gives a run of
/// `BLOCK` vectors (whole cache lines) rather than one, and the block stays in cache while its
/// columns are transformed, filtered and transformed back.
pub(super) const BLOCK: usize = 4;

/// The geometry of one solve: input planes `(h, w)` padded by `pad` to `(hp, wp)`, solved on
/// that grid (one phase at a time at scale `s`) and cropped to `(s*h, s*w)`.
#[derive(Debug)]
pub(crate) struct Geometry {
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) pad: usize,
    pub(crate) s: usize,
    pub(crate) hp: usize,
    pub(crate) wp: usize,
    /// Padding sources of the rows and columns.
    pub(crate) rows: Vec<Option<usize>>,
    pub(crate) cols: Vec<Option<usize>>,
    pub(super) plan_h: Plan,
    pub(super) plan_w: Plan,
    /// Whether the inverse row transforms ask for the next row while transforming one: where
    /// the grid (both parts) is [`PREFETCHED_FROM`] bytes or more, and so comes from memory.
    pub(super) reads_ahead: bool,
    /// Whether the column pass transforms two adjacent columns at once ([`V2`]; the columns
    /// of a block whose count is odd and the columns that are their own mirror go one at a
    /// time). Always, but in the bench and the test that set it beside one at a time
    /// (`cargo bench --bench ops -- solve`: two at a time was faster at every size measured,
    /// from 260 to 8004 rows).
    pub(crate) column_pairs: bool,
}

/// Grids from this size on are read ahead by the inverse row transforms.
const PREFETCHED_FROM: usize = 32 << 20;

impl Geometry {
    pub(crate) fn new((h, w): (usize, usize), pad: usize, s: usize, mode: PaddingMode) -> Self {
        let (hp, wp) = (h + 2 * pad, w + 2 * pad);
        Self {
            h,
            w,
            pad,
            s,
            hp,
            wp,
            rows: mode.sources(h, pad),
            cols: mode.sources(w, pad),
            plan_h: Plan::new(hp),
            plan_w: Plan::new(wp),
            reads_ahead: hp * wp * 2 * size_of::<V>() >= PREFETCHED_FROM,
            column_pairs: true,
        }
    }

    /// Vectors of one phase's transfer function: four per frequency of the half grid.
    pub(super) fn phase_len(&self) -> usize {
        4 * self.hp * (self.wp / 2 + 1)
    }

    /// Vectors of one group's transfer functions (all `s x s` phases).
    pub(crate) fn filter_len(&self) -> usize {
        self.s * self.s * self.phase_len()
    }

    /// Fits the [`Pool`] to the buffers a solve of this geometry takes: grids, and at `s > 1`
    /// transfer functions (at scale 1 they are made a column at a time while solving).
    pub(crate) fn fit_pool(&self, pool: &Pool) {
        let filters = if self.s > 1 { self.filter_len() } else { 0 };
        pool.fit(&[self.hp * self.wp, filters]);
    }

    /// Where input pixel `(i, j)` lies in the padded grid (and, at scale 1, output pixel
    /// `(i, j)` after the solve).
    #[inline(always)]
    pub(crate) fn inner(&self, i: usize, j: usize) -> usize {
        (i + self.pad) * self.wp + self.pad + j
    }

    /// Nominal FFT flops of solving `planes` planes (for the op timers).
    pub(crate) fn flops(&self, planes: usize) -> f64 {
        profile::fft_flops(planes, self.s * self.hp, self.s * self.wp)
    }
}

/// The buffers of one group in flight, from the [`Pool`]: the padded grid, at `s > 1` a second
/// grid for the phases, and a line of each.
pub(crate) struct Grid {
    pub(super) re: Vec<V>,
    pub(super) im: Vec<V>,
    pub(super) phase_re: Vec<V>,
    pub(super) phase_im: Vec<V>,
    pub(super) line_re: Vec<V>,
    pub(super) line_im: Vec<V>,
    /// At scale 1, the spectra of a column pair `(v, -v)`, one after the other; or, where the
    /// columns are transformed two at a time, of two adjacent columns (interleaved, one
    /// [`V2`] per row) and then of their mirrors.
    pub(super) pair_re: Vec<V2>,
    pub(super) pair_im: Vec<V2>,
    /// A block of up to [`BLOCK`] columns and at scale 1 the block of their mirrors, gathered
    /// row by row: row `i` of column `b` of a block of `nb` at `i * nb + b`, the mirrors' after
    /// `BLOCK * hp` (in [`V2`]s, so that two adjacent columns are one).
    pub(super) block_re: Vec<V2>,
    pub(super) block_im: Vec<V2>,
    /// A line of [`V2`], for the columns transformed two at a time.
    pub(super) line2_re: Vec<V2>,
    pub(super) line2_im: Vec<V2>,
    pub(super) scratch: Vec<V2>,
    /// A frequency column of a transfer function made while solving.
    pub(super) column: Vec<V>,
}

impl Grid {
    pub(crate) fn new(geo: &Geometry, pool: &Pool) -> Self {
        let n = geo.hp * geo.wp;
        let (phase, pair) = if geo.s > 1 { (n, 0) } else { (0, 2 * geo.hp) };
        let block = if geo.s > 1 { BLOCK } else { 2 * BLOCK } * geo.hp / 2;
        let line = geo.hp.max(geo.wp);
        let line2 = if geo.column_pairs { geo.hp } else { 0 };
        // A plan's scratch in pairs (for two lines at once; a line alone takes its vectors).
        let scratch = geo.plan_h.scratch_len().max(geo.plan_w.scratch_len());
        Self {
            re: pool.take(n),
            im: pool.take(n),
            phase_re: pool.take(phase),
            phase_im: pool.take(phase),
            line_re: vec![V::default(); line],
            line_im: vec![V::default(); line],
            pair_re: vec![V2::default(); pair],
            pair_im: vec![V2::default(); pair],
            block_re: vec![V2::default(); block],
            block_im: vec![V2::default(); block],
            line2_re: vec![V2::default(); line2],
            line2_im: vec![V2::default(); line2],
            scratch: vec![V2::default(); scratch],
            column: vec![V::default(); 4 * geo.hp],
        }
    }

    pub(crate) fn give_back(self, pool: &Pool) {
        for v in [self.re, self.im, self.phase_re, self.phase_im] {
            pool.give(v);
        }
    }

    /// The grid's vectors, for the caller to cut into bands of rows.
    pub(crate) fn parts_mut(&mut self) -> (&mut [V], &mut [V]) {
        (&mut self.re, &mut self.im)
    }
}

/// Writes row `i` of `count` planes `(h, w)` into the interior of the grid `(re, im)`, zeros in
/// the unused lanes.
#[inline(always)]
pub(super) fn load_row(
    geo: &Geometry,
    (re, im): (&mut [V], &mut [V]),
    planes: &[f32],
    count: usize,
    i: usize,
) {
    let at = geo.inner(i, 0);
    let lanes = (&mut re[at..][..geo.w], &mut im[at..][..geo.w]);
    rows_to_lanes(lanes, &planes[i * geo.w..], geo.h * geo.w, count);
}

/// Fills the padding of the grid `(re, im)` from its interior.
pub(super) fn fill_padding(geo: &Geometry, (re, im): (&mut [V], &mut [V])) {
    let (pad, wp) = (geo.pad, geo.wp);
    for i in pad..pad + geo.h {
        fill_row_padding(geo, (&mut re[i * wp..][..wp], &mut im[i * wp..][..wp]));
    }
    fill_padding_rows(geo, (re, im));
}

/// Fills the padding columns of one grid row (`wp` points) from its interior.
#[inline(always)]
pub(super) fn fill_row_padding(geo: &Geometry, (gr, gi): (&mut [V], &mut [V])) {
    let (pad, w) = (geo.pad, geo.w);
    for (j, col) in geo.cols.iter().enumerate() {
        if j < pad || j >= pad + w {
            (gr[j], gi[j]) = match *col {
                Some(c) => (gr[pad + c], gi[pad + c]),
                None => (V::default(), V::default()),
            };
        }
    }
}

/// Fills the padding rows of the grid `(re, im)` from its interior rows (copies, or zeros).
/// The rows may hold their points or, all alike, their transforms along the row.
pub(super) fn fill_padding_rows(geo: &Geometry, (re, im): (&mut [V], &mut [V])) {
    let (pad, wp) = (geo.pad, geo.wp);
    for (i, row) in geo.rows.iter().enumerate() {
        if i >= pad && i < pad + geo.h {
            continue;
        }
        match *row {
            Some(r) => {
                let src = (r + pad) * wp;
                re.copy_within(src..src + wp, i * wp);
                im.copy_within(src..src + wp, i * wp);
            }
            None => {
                re[i * wp..][..wp].fill(V::default());
                im[i * wp..][..wp].fill(V::default());
            }
        }
    }
}

simd_fn! {
    /// Lanes from rows: channel `q < count` of point `x` (lane `q / 2` of `re` for even `q`, of
    /// `im` for odd) is `rows[q * stride + x]`; the unused lanes are zero. The reference for the
    /// transposes is the loop the portable build runs at `count < GROUP`.
    pub(crate) fn rows_to_lanes(
        s,
        lanes: (&mut [V], &mut [V]),
        rows: &[f32],
        stride: usize,
        count: usize,
    ) {
        let (re, im) = lanes;
        let (n, full) = (re.len(), transposed(re.len(), count));
        for x in (0..full).step_by(LANES) {
            let (mut even, mut odd) = ([V::default(); LANES], [V::default(); LANES]);
            for l in 0..LANES {
                even[l] = load_v(rows, 2 * l * stride + x);
                odd[l] = load_v(rows, (2 * l + 1) * stride + x);
            }
            re[x..x + LANES].copy_from_slice(&s.transpose(even));
            im[x..x + LANES].copy_from_slice(&s.transpose(odd));
        }
        let (re, im) = (&mut re[full..], &mut im[full..]);
        if count < GROUP {
            re.fill(V::default());
            im.fill(V::default());
        }
        for q in 0..count {
            let dst = if q % 2 == 0 { &mut *re } else { &mut *im };
            for (d, v) in dst.iter_mut().zip(&rows[q * stride + full..][..n - full]) {
                d.0[q / 2] = *v;
            }
        }
    }
}

simd_fn! {
    /// Rows from lanes, the inverse of [`rows_to_lanes`] for the channels `q < count`.
    pub(crate) fn lanes_to_rows(
        s,
        lanes: (&[V], &[V]),
        rows: &mut [f32],
        stride: usize,
        count: usize,
    ) {
        let (re, im) = lanes;
        let (n, full) = (re.len(), transposed(re.len(), count));
        for x in (0..full).step_by(LANES) {
            let even = s.transpose(re[x..x + LANES].try_into().unwrap());
            let odd = s.transpose(im[x..x + LANES].try_into().unwrap());
            for l in 0..LANES {
                store_v(rows, 2 * l * stride + x, even[l]);
                store_v(rows, (2 * l + 1) * stride + x, odd[l]);
            }
        }
        for q in 0..count {
            let src = if q % 2 == 0 { &re[full..] } else { &im[full..] };
            for (d, v) in rows[q * stride + full..][..n - full].iter_mut().zip(src) {
                *d = v.0[q / 2];
            }
        }
    }
}

/// How many of `n` points the transposes move: whole vectors, and only for full groups (the
/// rest take the plain loop).
#[inline(always)]
fn transposed(n: usize, count: usize) -> usize {
    if count == GROUP {
        n / LANES * LANES
    } else {
        0
    }
}

#[inline(always)]
fn load_v(x: &[f32], at: usize) -> V {
    V(x[at..at + LANES].try_into().unwrap())
}

#[inline(always)]
fn store_v(x: &mut [f32], at: usize, v: V) {
    x[at..at + LANES].copy_from_slice(&v.0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::cpu::simd::Isa;

    /// The transposes between rows and lanes against plain indexing, on every path the CPU
    /// has (AVX-512, AVX2, portable), for full and partial groups and lengths that are not a
    /// multiple of the vector width.
    #[test]
    fn rows_and_lanes_round_trip() {
        let stride = 37;
        let rows: Vec<f32> = (0..GROUP * stride).map(|i| i as f32 + 0.5).collect();
        for isa in Isa::available() {
            isa.run(|| round_trips(&rows, stride, isa));
        }
    }

    fn round_trips(rows: &[f32], stride: usize, isa: Isa) {
        for n in [1, 7, 8, 9, 16, 29] {
            for count in [GROUP, GROUP - 1, 3, 1] {
                let mut re = vec![V([9.0; LANES]); n];
                let mut im = re.clone();
                rows_to_lanes((&mut re, &mut im), &rows[2..], stride, count);
                for x in 0..n {
                    for q in 0..GROUP {
                        let v = if q % 2 == 0 { re[x] } else { im[x] };
                        let want = if q < count {
                            rows[2 + q * stride + x]
                        } else {
                            0.0
                        };
                        assert_eq!(v.0[q / 2], want, "{isa:?} n {n} count {count} x {x} q {q}");
                    }
                }
                let mut back = vec![-1.0f32; rows.len()];
                lanes_to_rows((&re, &im), &mut back[2..], stride, count);
                for (i, (b, want)) in back.iter().zip(rows).enumerate() {
                    let r = i.wrapping_sub(2);
                    let written = i >= 2 && r / stride < count && r % stride < n;
                    assert_eq!(
                        *b,
                        if written { *want } else { -1.0 },
                        "{isa:?} n {n} count {count} at {i}"
                    );
                }
            }
        }
    }
}
