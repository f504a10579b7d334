//! A group's transfer functions in the lane layout: at scale 1 made a frequency column at a
//! time while the solve uses them, at scale `s > 1` built whole, all `s x s` phases, before it.

use super::grid::Geometry;
use super::pool::Pool;
use super::GROUP;
use crate::ops::cpu::simd::{simd_fn, LANES, V};
use crate::ops::profile::{self, OpKind};
use crate::ops::transfer::{self, Taps};

/// The kernels a solve's transfer functions are made from: a learned layer's, or per call
/// (Converse-USRNet's data module). Built per call and group.
#[derive(Clone, Copy)]
pub(crate) struct Filters<'a>(pub(crate) &'a Taps);

/// A group's transfer function.
pub(crate) enum FilterRef {
    /// At scale 1: made a frequency column at a time while the solve uses it (no group-sized
    /// buffer at all), for the given number of channels.
    Columns(Box<transfer::Columns>, usize),
    /// At scale `s > 1`: every phase, from the pool (given back by [`FilterRef::release`]).
    Phases(Vec<V>),
}

impl FilterRef {
    pub(crate) fn release(self, pool: &Pool) {
        if let Self::Phases(v) = self {
            pool.give(v)
        }
    }
}

impl Filters<'_> {
    pub(crate) fn taps(&self) -> &Taps {
        self.0
    }

    /// The transfer function of group `g` (channels `16g..`) of kernel set `set`.
    pub(crate) fn group(&self, geo: &Geometry, set: usize, g: usize, pool: &Pool) -> FilterRef {
        let taps = self.0;
        if geo.s > 1 {
            return FilterRef::Phases(build_group(taps, geo, set, g, pool));
        }
        let chans = g * GROUP..taps.channels().min((g + 1) * GROUP);
        let count = chans.len();
        let cols = transfer::Columns::new(taps, set, &lane_order(chans), (geo.hp, geo.wp));
        FilterRef::Columns(Box::new(cols), count)
    }
}

/// Builds group `g` of kernel set `set` at scale `s > 1` in the lane layout, scaled by
/// `1/(hs*ws)` (the transforms are unnormalised): per phase, at each frequency `(u, v)` of the
/// half grid four vectors, the real and imaginary parts of filter `2l`, then of filter `2l+1`,
/// in lane `l`.
fn build_group(taps: &Taps, geo: &Geometry, set: usize, g: usize, pool: &Pool) -> Vec<V> {
    let s = geo.s;
    let _t = profile::time_shared(OpKind::Transfer, || {
        (GROUP * s * s * geo.hp * geo.wp) as f64
    });
    let c0 = g * GROUP;
    let count = GROUP.min(taps.channels() - c0);
    let mut out = pool.take(geo.filter_len());
    if count < GROUP {
        out.fill(V::default());
    }
    let (hp, wp) = (geo.hp, geo.wp);
    let wq = wp / 2 + 1;
    let norm = 1.0 / (s * s * hp * wp) as f64;
    let chans = c0..c0 + count;
    // Every filter at once, a row of every phase at a time.
    transfer::build_scaled(
        taps,
        set,
        &lane_order(chans),
        (hp, wp),
        s,
        |phase, u, row| {
            let width = row.len() / (2 * wq);
            let (re, im) = row.split_at(wq * width);
            let dst = &mut out[phase * geo.phase_len() + 4 * u * wq..][..4 * wq];
            for (v, d) in dst.chunks_exact_mut(4).enumerate() {
                lanes_entry(
                    d,
                    (&re[v * width..][..width], &im[v * width..][..width]),
                    count,
                    norm,
                );
            }
        },
    );
    out
}

/// The order in which a group's transfer functions are made: for a whole group the even
/// channels then the odd ones, so that each frequency's 16 values are the four lane vectors in a
/// row (real and imaginary parts of the even channels, then of the odd ones).
fn lane_order(chans: std::ops::Range<usize>) -> Vec<usize> {
    if chans.len() == GROUP {
        chans
            .clone()
            .step_by(2)
            .chain(chans.skip(1).step_by(2))
            .collect()
    } else {
        chans.collect()
    }
}

/// One frequency of a group's transfer functions into its four lane vectors: `(gr, gi)` per
/// filter in [`lane_order`].
#[inline(always)]
fn lanes_entry(d: &mut [V], (gr, gi): (&[f64], &[f64]), count: usize, norm: f64) {
    if count == GROUP {
        for l in 0..LANES {
            d[0].0[l] = (gr[l] * norm) as f32;
            d[1].0[l] = (gi[l] * norm) as f32;
            d[2].0[l] = (gr[LANES + l] * norm) as f32;
            d[3].0[l] = (gi[LANES + l] * norm) as f32;
        }
    } else {
        for f in 0..count {
            let (lane, part) = (f / 2, 2 * (f % 2));
            d[part].0[lane] = (gr[f] * norm) as f32;
            d[part + 1].0[lane] = (gi[f] * norm) as f32;
        }
    }
}

simd_fn! {
    /// One frequency column of a group's transfer functions into the lane layout: `col` holds
    /// `(hp, 2, width)`, the filters innermost in [`lane_order`]; `out` gets four vectors per row.
    pub(super) fn lanes_column(
        _s,
        out: &mut [V],
        col: &[f64],
        width: usize,
        count: usize,
        norm: f64,
    ) {
        for (d, row) in out.chunks_exact_mut(4).zip(col.chunks_exact(2 * width)) {
            lanes_entry(d, row.split_at(width), count, norm);
        }
    }
}
