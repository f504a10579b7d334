//! The solve of a training step in f32 on lanes, [`GROUP`] channels of one image at a time:
//! the backward, what [`crate::ops::cpu::solve_grad::backward`] computes plane by plane (its
//! reference, and the f64 path), with the channel pairs packed as in the forward; and at scale
//! 1 a forward ([`forward`]) from the planar transfer functions that keeps each job's input
//! spectrum for the backward.
//!
//! With `Z` the packed spectrum of a grid, channel `a`'s spectrum is `(Z[k] + conj Z[-k]) / 2`
//! and channel `b`'s `(Z[k] - conj Z[-k]) / 2i`. Per phase `(a, b)` of the output gradient,
//! zero-embedded in the interior of a grid and transformed (`D`):
//!
//! - the input's gradient accumulates `conj(G) · D` of each channel, recombined as `Pa + i Pb`
//!   at `k` and `conj Pa + i conj Pb` at `-k`, and goes back through one inverse transform and
//!   the padding's adjoint;
//! - the filters' gradient is `(c_v / (hp wp)) conj(X) · D` per channel, `X` the spectrum of the
//!   padded input (kept by [`forward`], else transformed once per job), summed over the images
//!   of a kernel set.

use rayon::prelude::*;

use super::grid::{fill_padding, lanes_to_rows, load_row, rows_to_lanes, Geometry, Grid};
use super::kernel::{forward_column, inverse_column};
use super::{pool, GROUP};
use crate::ops::cpu::simd::{halves_mut, simd_fn, Isa, Simd, LANES, V};
use crate::ops::cpu::solve_grad::{Dims, Wanted};
use crate::ops::profile::{self, OpKind};

/// The inputs of one job: a group of `count` channels of one image.
struct Job<'a> {
    /// Input planes `(count, h, w)`.
    x: &'a [f32],
    /// Output-gradient planes `(count, s*h, s*w)` (none in the forward: empty).
    dy: &'a [f32],
    /// The group's transfer functions, one slice `(s², 2, hp, wq)` per channel.
    g: Vec<&'a [f32]>,
    count: usize,
}

impl<'a> Job<'a> {
    /// Job `j`: group `j % groups` of image `j / groups`, over `x`, `g` and `dy` (none in the
    /// forward).
    fn new(
        j: usize,
        (x, g, dy): (&'a [f32], &'a [f32], Option<&'a [f32]>),
        d: Dims,
        geo: &Geometry,
    ) -> Self {
        let (s, plane) = (geo.s, geo.h * geo.w);
        let block = s * s * 2 * geo.hp * (geo.wp / 2 + 1);
        let groups = d.c.div_ceil(GROUP);
        let (img, grp) = (j / groups, j % groups);
        let first = img * d.c + grp * GROUP;
        let count = GROUP.min(d.c - grp * GROUP);
        let set = img % d.sets;
        let g = (0..count)
            .map(|q| &g[(set * d.c + grp * GROUP + q) * block..][..block])
            .collect();
        let dy = dy.map_or(&[][..], |dy| {
            &dy[first * plane * s * s..][..count * plane * s * s]
        });
        Job {
            x: &x[first * plane..][..count * plane],
            dy,
            g,
            count,
        }
    }
}

/// Each job's packed spectrum of the padded input, `(re, im)` grids in job order, kept by
/// [`forward`] for [`backward`]: `n * ceil(c / 16) * 2 * hp * wp` vectors, as many floats as
/// the padded input (a complex value per channel pair and frequency).
pub(crate) struct Spectra(Vec<(Vec<V>, Vec<V>)>);

impl Spectra {
    /// Gives the grids back to the buffer pool.
    pub(crate) fn release(self) {
        for (re, im) in self.0 {
            pool().give(re);
            pool().give(im);
        }
    }
}

/// The solve at scale 1 in f32 for a training step: `out` `(n, c, h, w)` from `x` with the
/// planar transfer functions `g` `(sets, c, 1, 2, hp, wq)`, as the inference solve computes it
/// (the transform of the padded input, the filter per channel, the inverse of the kept rows),
/// keeping each job's input spectrum for [`backward`], which then need not transform `x`
/// again.
pub(crate) fn forward(x: &[f32], g: &[f32], out: &mut [f32], d: Dims, geo: &Geometry) -> Spectra {
    let plane = geo.h * geo.w;
    let _t = profile::time(OpKind::Fft, || geo.flops(d.n * d.c));
    let mut outs: Vec<&mut [f32]> = Vec::with_capacity(d.n * d.c.div_ceil(GROUP));
    for img in out.chunks_mut(d.c * plane) {
        outs.extend(img.chunks_mut(GROUP * plane));
    }
    let isa = Isa::current();
    let spectra = outs
        .into_par_iter()
        .enumerate()
        .map(|(j, out)| {
            let job = Job::new(j, (x, g, None), d, geo);
            isa.run(|| forward_job(geo, &job, out))
        })
        .collect();
    Spectra(spectra)
}

/// The group's transfer functions in the lane layout, `(re, im)` of the a-channels' and the
/// b-channels' filters per phase and frequency of the half grid, scaled by `norm`: eight
/// frequencies of the eight channels of a parity at a time, through one transpose.
#[inline(always)]
fn lane_filters<S: Simd>(s: S, job: &Job, geo: &Geometry, norm: f32, g: &mut [Vec<V>; 4]) {
    let half = geo.hp * (geo.wp / 2 + 1);
    let phases = geo.s * geo.s;
    if job.count < GROUP {
        g.iter_mut().for_each(|g| g.fill(V::default()));
    }
    let [ga_re, ga_im, gb_re, gb_im] = g;
    for ph in 0..phases {
        let (at, to) = (ph * 2 * half, ph * half);
        for (parity, (dst_re, dst_im)) in [(0, (&mut *ga_re, &mut *ga_im)), (1, (gb_re, gb_im))] {
            // Lane `l`: channel `2l + parity`.
            let chans: Vec<&[f32]> = job.g.iter().skip(parity).step_by(2).copied().collect();
            for (from, dst) in [
                (at, &mut dst_re[to..][..half]),
                (at + half, &mut dst_im[to..][..half]),
            ] {
                let mut k = 0;
                while k + LANES <= half {
                    // A loop, not a closure, so that it keeps the caller's target features.
                    let mut rows = [V::default(); LANES];
                    for (row, c) in rows.iter_mut().zip(&chans) {
                        let mut v = V::default();
                        v.0.copy_from_slice(&c[from + k..][..LANES]);
                        *row = s.scale(v, norm);
                    }
                    let cols = s.transpose(rows);
                    dst[k..k + LANES].copy_from_slice(&cols);
                    k += LANES;
                }
                for (k, d) in dst.iter_mut().enumerate().skip(k) {
                    for (l, c) in chans.iter().enumerate() {
                        d.0[l] = c[from + k] * norm;
                    }
                }
            }
        }
    }
}

simd_fn! {
    /// One job of [`forward`]: writes the group's output into `out` and returns its input's
    /// packed spectrum.
    fn forward_job(s, geo: &Geometry, job: &Job, out: &mut [f32]) -> (Vec<V>, Vec<V>) {
        let (h, w, hp, wp, pad) = (geo.h, geo.w, geo.hp, geo.wp, geo.pad);
        let (wq, n, hw) = (wp / 2 + 1, hp * wp, h * w);
        let half = hp * wq;
        let count = job.count;
        let mut grid = Grid::new(geo, pool());
        let mut g: [Vec<V>; 4] = std::array::from_fn(|_| pool().take(half));
        lane_filters(s, job, geo, 1.0 / n as f32, &mut g);
        // The filtered spectrum: every point is `k` or `mk` of exactly one `(u, v)`.
        let (mut zr, mut zi) = (pool().take(n), pool().take(n));
        {
            let Grid { re, im, line_re, line_im, scratch, .. } = &mut grid;
            let scratch = halves_mut(scratch);
            load_padded(geo, (re, im), job.x, count);
            transform(s, geo, (re, im), line_re, line_im, scratch, false);
            let mul = |gr: V, gi: V, (xr, xi): (V, V)| {
                (s.sub(s.mul(gr, xr), s.mul(gi, xi)), s.add(s.mul(gr, xi), s.mul(gi, xr)))
            };
            for u in 0..hp {
                let mu = (hp - u) % hp;
                for v in 0..wq {
                    let mv = (wp - v) % wp;
                    let (k, mk, f) = (u * wp + v, mu * wp + mv, u * wq + v);
                    let (xa, xb) = split(s, (re[k], im[k]), (re[mk], im[mk]));
                    let (ar, ai) = mul(g[0][f], g[1][f], xa);
                    let (br, bi) = mul(g[2][f], g[3][f], xb);
                    (zr[k], zi[k]) = (s.sub(ar, bi), s.add(ai, br));
                    if mv != v {
                        (zr[mk], zi[mk]) = (s.add(ar, bi), s.sub(br, ai));
                    }
                }
            }
            for j in 0..wp {
                inverse_column(s, geo, (&mut zr, &mut zi), j, (&mut line_re[..], &mut line_im[..]), scratch);
            }
            for i in 0..h {
                let row = (pad + i) * wp;
                geo.plan_w.forward(s, (&*zi, &*zr), (row, 1), (&mut line_im[..], &mut line_re[..]), scratch);
                lanes_to_rows((&line_re[pad..][..w], &line_im[pad..][..w]), &mut out[i * w..], hw, count);
            }
        }
        let spectrum = (std::mem::take(&mut grid.re), std::mem::take(&mut grid.im));
        grid.give_back(pool());
        for v in g.into_iter().chain([zr, zi]) {
            pool().give(v);
        }
        spectrum
    }
}

/// The wanted gradients of `sum(y * dy)` for `y = solve(x, g)` with planar transfer functions
/// `g` `(sets, c, s², 2, hp, wq)`: to `x` `(n, c, h, w)` and to `g`, each only if wanted (else
/// empty). Jobs are an image's groups; each job's filter gradient is summed over the images of
/// its kernel set in image order.
pub(crate) fn backward(
    x: &[f32],
    g: &[f32],
    dy: &[f32],
    d: Dims,
    geo: &Geometry,
    want: Wanted,
    spectra: Option<&Spectra>,
) -> (Vec<f32>, Vec<f32>) {
    let (h, w, s, hp, wp) = (geo.h, geo.w, geo.s, geo.hp, geo.wp);
    let (plane, wq) = (h * w, wp / 2 + 1);
    let block = s * s * 2 * hp * wq;
    let _t = profile::time(OpKind::Fft, || geo.flops(d.n * d.c) * 1.5);
    let mut dx = crate::alloc::zeros_to_overwrite(if want.dx { d.n * d.c * plane } else { 0 });
    let groups = d.c.div_ceil(GROUP);
    let mut dx_groups: Vec<Option<&mut [f32]>> = Vec::with_capacity(d.n * groups);
    if want.dx {
        for img in dx.chunks_mut(d.c * plane) {
            dx_groups.extend(img.chunks_mut(GROUP * plane).map(Some));
        }
    } else {
        dx_groups.extend((0..d.n * groups).map(|_| None));
    }
    let jobs: Vec<(Job, Option<&mut [f32]>)> = dx_groups
        .into_iter()
        .enumerate()
        .map(|(j, out)| (Job::new(j, (x, g, Some(dy)), d, geo), out))
        .collect();
    let isa = Isa::current();
    let partials: Vec<Vec<f32>> = jobs
        .into_par_iter()
        .enumerate()
        .map(|(j, (job, out))| {
            let kept = spectra
                .and_then(|sp| sp.0.get(j))
                .map(|(r, i)| (&r[..], &i[..]));
            isa.run(|| backward_job(geo, &job, out, want, kept))
        })
        .collect();
    let mut dg = vec![0f32; if want.dg { d.sets * d.c * block } else { 0 }];
    if want.dg {
        for (j, part) in partials.iter().enumerate() {
            let (img, grp) = (j / groups, j % groups);
            let at = ((img % d.sets) * d.c + grp * GROUP) * block;
            for (o, v) in dg[at..][..part.len()].iter_mut().zip(part) {
                *o += v;
            }
        }
    }
    (dx, dg)
}

/// The job's buffers: three grids (the input's spectrum, a phase's, the accumulated input
/// gradient) and the group's transfer functions in the lane layout.
struct Bufs {
    grid: Grid,
    d: (Vec<V>, Vec<V>),
    acc: (Vec<V>, Vec<V>),
    /// `(re, im)` of the a-channels' and the b-channels' filters, per phase and frequency of
    /// the half grid.
    g: [Vec<V>; 4],
    /// The filters' gradient, as `g`.
    dg: [Vec<V>; 4],
    /// One phase of the output gradient `(count, h, w)`.
    phase: Vec<f32>,
}

simd_fn! {
    /// One job of [`backward`]: writes the group's input gradient into `out` (when wanted) and
    /// returns its filters' gradient `(count, s², 2, hp, wq)` (empty when not wanted); `kept`
    /// is the input's packed spectrum when [`forward`] kept it.
    fn backward_job(
        s,
        geo: &Geometry,
        job: &Job,
        out: Option<&mut [f32]>,
        want: Wanted,
        kept: Option<(&[V], &[V])>,
    ) -> Vec<f32> {
        let (h, w, sc, hp, wp) = (geo.h, geo.w, geo.s, geo.hp, geo.wp);
        let (wq, n, hw) = (wp / 2 + 1, hp * wp, h * w);
        let half = hp * wq;
        let phases = sc * sc;
        let count = job.count;
        // Buffers from the pool, contents unspecified: `d` is cleared per phase, `acc` is
        // written by the first phase, `dg` once per phase and frequency, `g` whole (cleared
        // first for a partial group, whose spare lanes would stay unset).
        let take = |len: usize| pool().take(len);
        let (nx, ng, ndg) = (
            if want.dx { n } else { 0 },
            if want.dx { phases * half } else { 0 },
            if want.dg { phases * half } else { 0 },
        );
        let mut b = Bufs {
            grid: Grid::new(geo, pool()),
            d: (take(n), take(n)),
            acc: (take(nx), take(nx)),
            g: std::array::from_fn(|_| take(ng)),
            dg: std::array::from_fn(|_| take(ndg)),
            phase: vec![0f32; if sc > 1 { count * hw } else { 0 }],
        };
        if want.dx {
            // The inverse's 1 / (hp wp) folded in.
            lane_filters(s, job, geo, 1.0 / n as f32, &mut b.g);
        }
        let Grid { re, im, line_re, line_im, scratch, .. } = &mut b.grid;
        let scratch = halves_mut(scratch);
        let (xr, xi): (&[V], &[V]) = match kept {
            Some(spectrum) => spectrum,
            None if want.dg => {
                // The padded input's spectrum.
                load_padded(geo, (re, im), job.x, count);
                transform(s, geo, (re, im), line_re, line_im, scratch, false);
                (re, im)
            }
            None => (&[], &[]),
        };
        for ph in 0..phases {
            let (pa, pb) = (ph / sc, ph % sc);
            let src: &[f32] = if sc == 1 {
                job.dy
            } else {
                for q in 0..count {
                    let dyq = &job.dy[q * hw * phases..][..hw * phases];
                    for i in 0..h {
                        let row = &dyq[(sc * i + pa) * sc * w..][..sc * w];
                        for (j, o) in b.phase[q * hw + i * w..][..w].iter_mut().enumerate() {
                            *o = row[sc * j + pb];
                        }
                    }
                }
                &b.phase
            };
            let (dr, di) = (&mut b.d.0, &mut b.d.1);
            dr.fill(V::default());
            di.fill(V::default());
            for i in 0..h {
                let at = geo.inner(i, 0);
                rows_to_lanes((&mut dr[at..][..w], &mut di[at..][..w]), &src[i * w..], hw, count);
            }
            transform(s, geo, (dr, di), &mut line_re[..], &mut line_im[..], scratch, true);
            for u in 0..hp {
                let mu = (hp - u) % hp;
                for v in 0..wq {
                    let mv = (wp - v) % wp;
                    let (k, mk, f) = (u * wp + v, mu * wp + mv, ph * half + u * wq + v);
                    let (da, db) = split(s, (dr[k], di[k]), (dr[mk], di[mk]));
                    if want.dg {
                        let (xa, xb) = split(s, (xr[k], xi[k]), (xr[mk], xi[mk]));
                        for (t, (xp, dp)) in [(xa, da), (xb, db)].into_iter().enumerate() {
                            // conj(X) D
                            let pr = s.add(s.mul(xp.0, dp.0), s.mul(xp.1, dp.1));
                            let pi = s.sub(s.mul(xp.0, dp.1), s.mul(xp.1, dp.0));
                            b.dg[2 * t][f] = pr;
                            b.dg[2 * t + 1][f] = pi;
                        }
                    }
                    if want.dx {
                        // conj(G) D per channel.
                        let conj_mul = |gr: V, gi: V, (zr, zi): (V, V)| {
                            (s.add(s.mul(gr, zr), s.mul(gi, zi)), s.sub(s.mul(gr, zi), s.mul(gi, zr)))
                        };
                        let (ar, ai) = conj_mul(b.g[0][f], b.g[1][f], da);
                        let (br, bi) = conj_mul(b.g[2][f], b.g[3][f], db);
                        // Every point of the grid is `k` or `mk` of exactly one `(u, v)`.
                        let (cr, ci) = (&mut b.acc.0, &mut b.acc.1);
                        let mut put = |at: usize, (pr, pi): (V, V)| {
                            (cr[at], ci[at]) = match ph {
                                0 => (pr, pi),
                                _ => (s.add(cr[at], pr), s.add(ci[at], pi)),
                            };
                        };
                        put(k, (s.sub(ar, bi), s.add(ai, br)));
                        if mv != v {
                            put(mk, (s.add(ar, bi), s.sub(br, ai)));
                        }
                    }
                }
            }
        }
        if let Some(out) = out {
            let (cr, ci) = (&mut b.acc.0, &mut b.acc.1);
            for j in 0..wp {
                inverse_column(s, geo, (cr, ci), j, (&mut line_re[..], &mut line_im[..]), scratch);
            }
            // The rows that reach the input, then the padding's adjoint into the interior of
            // the phase grid's buffer.
            let (fr, fi) = (&mut b.d.0[..hw], &mut b.d.1[..hw]);
            fr.fill(V::default());
            fi.fill(V::default());
            for (i, r) in geo.rows.iter().enumerate() {
                let Some(r) = *r else { continue };
                let row = i * wp;
                geo.plan_w.forward(s, (&*ci, &*cr), (row, 1), (&mut line_im[..], &mut line_re[..]), scratch);
                for (j, c) in geo.cols.iter().enumerate() {
                    if let Some(c) = *c {
                        fr[r * w + c] = s.add(fr[r * w + c], line_re[j]);
                        fi[r * w + c] = s.add(fi[r * w + c], line_im[j]);
                    }
                }
            }
            for i in 0..h {
                lanes_to_rows((&fr[i * w..][..w], &fi[i * w..][..w]), &mut out[i * w..], hw, count);
            }
        }
        let mut dg = vec![];
        if want.dg {
            // c_v / (hp wp): 1 in the columns that are their own mirror, else 2.
            let weight: Vec<f32> = (0..wq)
                .map(|v| if v == 0 || 2 * v == wp { 1.0 } else { 2.0 } / n as f32)
                .collect();
            dg = vec![0f32; count * phases * 2 * half];
            for (q, dq) in dg.chunks_mut(phases * 2 * half).enumerate() {
                let (l, part) = (q / 2, 2 * (q % 2));
                for ph in 0..phases {
                    let (gr, gi) = dq[ph * 2 * half..][..2 * half].split_at_mut(half);
                    for k in 0..half {
                        gr[k] = b.dg[part][ph * half + k].0[l] * weight[k % wq];
                        gi[k] = b.dg[part + 1][ph * half + k].0[l] * weight[k % wq];
                    }
                }
            }
        }
        let Bufs { grid, d, acc, g, dg: dgb, .. } = b;
        grid.give_back(pool());
        for v in [d.0, d.1, acc.0, acc.1].into_iter().chain(g).chain(dgb) {
            pool().give(v);
        }
        dg
    }
}

/// Channel `a`'s and channel `b`'s spectra at `k` from the packed spectrum at `k` and `-k`.
#[inline(always)]
fn split<S: Simd>(s: S, (zr, zi): (V, V), (mr, mi): (V, V)) -> ((V, V), (V, V)) {
    let a = (s.scale(s.add(zr, mr), 0.5), s.scale(s.sub(zi, mi), 0.5));
    let b = (s.scale(s.add(zi, mi), 0.5), s.scale(s.sub(mr, zr), 0.5));
    (a, b)
}

/// Loads `count` planes `(h, w)` into the grid and fills its padding.
fn load_padded(geo: &Geometry, (re, im): (&mut [V], &mut [V]), planes: &[f32], count: usize) {
    for i in 0..geo.h {
        load_row(geo, (&mut *re, &mut *im), planes, count, i);
    }
    fill_padding(geo, (re, im));
}

/// The forward 2-D transform of a grid in place: its rows (only the interior ones if
/// `interior_only`, the others being zero; else those with a padding source), then every column.
#[inline(always)]
fn transform<S: Simd>(
    s: S,
    geo: &Geometry,
    (re, im): (&mut [V], &mut [V]),
    line_re: &mut [V],
    line_im: &mut [V],
    scratch: &mut [V],
    interior_only: bool,
) {
    let wp = geo.wp;
    for (i, row) in geo.rows.iter().enumerate() {
        let inside = i >= geo.pad && i < geo.pad + geo.h;
        if (interior_only && !inside) || row.is_none() {
            continue;
        }
        geo.plan_w.forward(
            s,
            (&*re, &*im),
            (i * wp, 1),
            (&mut *line_re, &mut *line_im),
            scratch,
        );
        re[i * wp..][..wp].copy_from_slice(&line_re[..wp]);
        im[i * wp..][..wp].copy_from_slice(&line_im[..wp]);
    }
    for j in 0..wp {
        forward_column(
            s,
            geo,
            (&mut *re, &mut *im),
            j,
            (&mut *line_re, &mut *line_im),
            scratch,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::cpu::solve_grad;
    use crate::ops::transfer::{planar, Taps};
    use crate::ops::PaddingMode;
    use candle_core::{DType, Device, Tensor};

    fn values(t: &Tensor, dtype: DType) -> Vec<f64> {
        let t = t.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
        let v = t.to_vec1::<f64>().unwrap();
        match dtype {
            DType::F32 => v.iter().map(|x| *x as f32 as f64).collect(),
            _ => v,
        }
    }

    /// At scale 1, the training forward on lanes against the plane forward in f64, and the
    /// backward from the spectra it kept against the plane backward: every padding mode, a
    /// full and a partial group, one kernel set or one per image, on every instruction set;
    /// relative to each result's largest value.
    #[test]
    fn lane_forward_and_its_kept_spectra_match_the_plane_solve() {
        let dev = Device::Cpu;
        for (case, mode) in PaddingMode::ALL.into_iter().enumerate() {
            let (n, c, sets) = (2, if case % 2 == 0 { 18 } else { 16 }, 1 + case % 2);
            let (h, w, pad, k) = (6 + case % 3, 9 - case % 2, 1 + case % 2, 3);
            let geo = Geometry::new((h, w), pad, 1, mode);
            let kernel = Tensor::rand(-0.3f32, 0.3, (sets, c, k, k), &dev).unwrap();
            let lam = Tensor::rand(0.01f32, 0.2, (1, c, 1, 1), &dev).unwrap();
            let taps = Taps::new(&kernel, &lam).unwrap();
            let g = planar(&taps, (geo.hp, geo.wp), 1, DType::F32, &dev).unwrap();
            let x = Tensor::rand(-1f32, 1.0, (n, c, h, w), &dev).unwrap();
            let dy = Tensor::rand(-1f32, 1.0, (n, c, h, w), &dev).unwrap();
            let d = Dims { n, c, sets };
            let (x64, g64, dy64) = (
                values(&x, DType::F32),
                values(&g, DType::F32),
                values(&dy, DType::F32),
            );
            let f32s = |v: &[f64]| v.iter().map(|v| *v as f32).collect::<Vec<_>>();
            let (x32, g32, dy32) = (f32s(&x64), f32s(&g64), f32s(&dy64));
            let want_y = solve_grad::forward::<f64>(&x64, &g64, d, &geo).unwrap();
            let both = Wanted { dx: true, dg: true };
            let (wx, wg) = solve_grad::backward::<f64>(&x64, &g64, &dy64, d, &geo, both).unwrap();
            let close = |name: &str, got: &[f32], exp: &[f64], isa: Isa| {
                assert_eq!(got.len(), exp.len(), "{name}");
                let scale = exp.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
                let worst = got
                    .iter()
                    .zip(exp)
                    .map(|(a, b)| (*a as f64 - b).abs() / scale)
                    .fold(0.0, f64::max);
                assert!(
                    worst < 2e-5,
                    "{mode} c={c} sets={sets} {isa:?} {name}: {worst:e}"
                );
            };
            for isa in Isa::available() {
                let mut y = vec![0f32; n * c * h * w];
                let spectra = isa.run(|| forward(&x32, &g32, &mut y, d, &geo));
                close("y", &y, &want_y, isa);
                let (gx, gg) =
                    isa.run(|| backward(&x32, &g32, &dy32, d, &geo, both, Some(&spectra)));
                spectra.release();
                close("dx", &gx, &wx, isa);
                close("dg", &gg, &wg, isa);
            }
        }
    }

    /// The lane backward against the plane backward in f64 (on the f32-rounded data): input
    /// and filter gradients, at scales 1 to 3, in every padding mode, a full and a partial
    /// group, one kernel set or one per image, each gradient alone and both, on every
    /// instruction set; relative to each gradient's largest value.
    #[test]
    fn lane_backward_matches_the_plane_backward() {
        let dev = Device::Cpu;
        for (case, (s, mode)) in (1..=3)
            .flat_map(|s| PaddingMode::ALL.map(|m| (s, m)))
            .enumerate()
        {
            let (n, c, sets) = (2, if case % 2 == 0 { 18 } else { 16 }, 1 + case % 2);
            let (h, w, pad, k) = (6 + case % 3, 9 - case % 2, 1 + case % 2, 3);
            let geo = Geometry::new((h, w), pad, s, mode);
            let kernel = Tensor::rand(-0.3f32, 0.3, (sets, c, k, k), &dev).unwrap();
            let lam = Tensor::rand(0.01f32, 0.2, (1, c, 1, 1), &dev).unwrap();
            let taps = Taps::new(&kernel, &lam).unwrap();
            let g = planar(&taps, (geo.hp, geo.wp), s, DType::F32, &dev).unwrap();
            let x = Tensor::rand(-1f32, 1.0, (n, c, h, w), &dev).unwrap();
            let dy = Tensor::rand(-1f32, 1.0, (n, c, s * h, s * w), &dev).unwrap();
            let d = Dims { n, c, sets };
            let f32s = |t: &Tensor| {
                values(t, DType::F32)
                    .iter()
                    .map(|v| *v as f32)
                    .collect::<Vec<_>>()
            };
            let (x32, g32, dy32) = (f32s(&x), f32s(&g), f32s(&dy));
            let (x64, g64, dy64) = (
                values(&x, DType::F32),
                values(&g, DType::F32),
                values(&dy, DType::F32),
            );
            for want in [
                Wanted { dx: true, dg: true },
                Wanted {
                    dx: true,
                    dg: false,
                },
                Wanted {
                    dx: false,
                    dg: true,
                },
            ] {
                let (wx, wg) =
                    solve_grad::backward::<f64>(&x64, &g64, &dy64, d, &geo, want).unwrap();
                for isa in Isa::available() {
                    let (gx, gg) = isa.run(|| backward(&x32, &g32, &dy32, d, &geo, want, None));
                    for (name, got, exp) in [("dx", gx, &wx), ("dg", gg, &wg)] {
                        assert_eq!(got.len(), exp.len(), "{name}");
                        let scale = exp.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
                        let worst = got
                            .iter()
                            .zip(exp.iter())
                            .map(|(a, b)| (*a as f64 - b).abs() / scale)
                            .fold(0.0, f64::max);
                        assert!(
                            worst < 2e-5,
                            "s={s} {mode} c={c} sets={sets} {isa:?} {name}: {worst:e}"
                        );
                    }
                }
            }
        }
    }
}
