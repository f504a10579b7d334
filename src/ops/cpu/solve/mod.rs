//! The fused Converse2D solve: f32 on the CPU, [`GROUP`] channels at a time.
//!
//! Channel `2l` of a group is the real part and channel `2l + 1` the imaginary part of lane `l`
//! of one complex 2-D FFT over vectors ([`lanes`]), so every operation of the transform works on
//! 16 planes at once and awkward sizes (268 = 4 x 67) cost no more than smooth ones. After the
//! forward transform of the padded input the two channels' spectra are separated by Hermitian
//! symmetry, each is multiplied by its own transfer function and they are recombined before one
//! inverse transform, of which only the rows kept by the crop are computed.
//!
//! At scale `s > 1` the output's `s x s` phases (the pixels `(s*i + a, s*j + b)`) are solved one
//! by one on the input's grid: the inverse transform of `G · tile(Z)` over the `s`-fold grid,
//! read at one phase, is the inverse over the input grid of `Z` times `G`'s `s x s` aliases
//! summed with their phase factors (built in f64 with the transfer function). So the scaled solve
//! needs no larger grid, and the aliases' cancellation happens in f64 rather than in the f32
//! transform.
//!
//! | file | what |
//! | --- | --- |
//! | [`grid`] | the geometry of a solve, a group's grid and its buffers, the row/lane transposes |
//! | [`kernel`] | the transforms, the filter step and the crop of one group |
//! | [`filters`] | a group's transfer functions in the lane layout |
//! | [`pool`] | the process's pool of grid-sized buffers |
//! | [`backward`] | the solve of a training step on lanes (f32): the backward, and at scale 1 a forward that keeps its input's spectrum |

pub(crate) mod backward;
mod filters;
mod grid;
mod kernel;
mod pool;

use candle_core::Result;
use rayon::prelude::*;

use super::simd::{Isa, LANES};

pub(crate) use filters::Filters;
pub(crate) use grid::{lanes_to_rows, rows_to_lanes, Geometry, Grid};
pub(crate) use kernel::RowWork;
pub(crate) use pool::{pool, Pool};

/// Channels per lane group.
pub(crate) const GROUP: usize = 2 * LANES;

/// Solves `x` `(n, c, h, w)` into `out` `(n, c, s*h, s*w)`, GELU after if `act`: each image's
/// groups of [`GROUP`] channels in parallel, kernel set `i % sets` for image `i`.
pub(crate) fn solve(
    x: &[f32],
    out: &mut [f32],
    (c, h, w): (usize, usize, usize),
    geo: &Geometry,
    filters: Filters,
    act: bool,
) -> Result<()> {
    let taps = filters.taps();
    if taps.channels() != c || (geo.h, geo.w) != (h, w) {
        candle_core::bail!("Converse2D: {c} channels of {h}x{w} do not fit the layer")
    }
    taps.check_fits((geo.hp, geo.wp), geo.s)?;
    let (plane, plane_out) = (h * w, h * w * geo.s * geo.s);
    let pool = pool();
    geo.fit_pool(pool);
    let mut jobs = vec![];
    for (i, (xi, oi)) in x
        .chunks(c * plane)
        .zip(out.chunks_mut(c * plane_out))
        .enumerate()
    {
        for (g, (xg, og)) in xi
            .chunks(GROUP * plane)
            .zip(oi.chunks_mut(GROUP * plane_out))
            .enumerate()
        {
            jobs.push((i % taps.sets(), g, xg, og));
        }
    }
    let isa = Isa::current();
    jobs.into_par_iter().for_each(|(set, g, xg, og)| {
        isa.run(|| {
            let count = xg.len() / plane;
            let mut grid = Grid::new(geo, pool);
            grid.load(geo, xg, count);
            let mut f = filters.group(geo, set, g, pool);
            grid.solve_into(geo, &mut f, act, og, count);
            f.release(pool);
            grid.give_back(pool);
        })
    });
    Ok(())
}
