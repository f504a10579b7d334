//! Converse2D's transfer functions as candle ops of the kernel and `λ` tensors, so that
//! autograd carries gradients to them: the reference solve takes these when the kernels or `λ`
//! need gradients (a learned layer's `weight` and `bias`, Converse-USRNet's kernel embedding and
//! `alpha`), and the filters built on the host ([`super::transfer`]) otherwise. The fused CPU
//! training path takes [`planar_host`] instead: the same tensor built on the host, with its
//! backward there too ([`super::transfer::vjp`], tested here against autograd through
//! [`planar`]).
//!
//! The maths is the official eq. (6) on the `s`-fold grid `(hs, ws) = (s*hp, s*wp)`, in the
//! closed form of [`super::transfer`]: `G = B + conj(FK) · tile((1 - mean(FK·B)) /
//! (mean(|FK|²) + λ))`, the means over the `s x s` frequency blocks, `B` the box response of
//! the nearest upsampling. `FK` is a separable DFT of the taps (two matrix products, constant
//! cosine and sine tables). Each output phase `(a, b)` (pixels `(s*i + a, s*j + b)`) then has the
//! filter `H_ab[u, v] = sum_{p, q} G[u + hp p, v + wp q] e^{2 pi i ((u + hp p) a / hs +
//! (v + wp q) b / ws)}` on the input grid, which is what the reference solve multiplies by.

use candle_core::{Device, Result, Tensor};

use super::transfer::{unit, Taps};

/// `(cos, sin)` tables `(n_out, k)` of `2 pi t (a - k/2) / n` for `t < n_out`, tap `a < k`.
fn tap_tables(n: usize, n_out: usize, k: usize, like: &Tensor) -> Result<(Tensor, Tensor)> {
    let c = (k / 2) as isize;
    let (cos, sin): (Vec<f64>, Vec<f64>) = (0..n_out * k)
        .map(|i| unit((i / k) as isize * ((i % k) as isize - c), n))
        .unzip();
    Ok((host(cos, (n_out, k), like)?, host(sin, (n_out, k), like)?))
}

/// A host table as a tensor in `like`'s dtype on its device.
fn host<S: Into<candle_core::Shape>>(v: Vec<f64>, shape: S, like: &Tensor) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &Device::Cpu)?
        .to_dtype(like.dtype())?
        .to_device(like.device())
}

/// `FK`, the spectrum of each kernel zero-padded to `(hs, ws)` and rolled by `-floor(k/2)`, at
/// the columns `V < cols`: `(re, im)`, each `(sets, C, hs, cols)`.
fn kernel_spectrum(k: &Tensor, (hs, ws): (usize, usize), cols: usize) -> Result<(Tensor, Tensor)> {
    let (_, _, kh, kw) = k.dims4()?;
    let (ch, sh) = tap_tables(hs, hs, kh, k)?;
    let (cw, sw) = tap_tables(ws, cols, kw, k)?;
    // Along the rows of the taps: T = K (cw - i sw)^T.
    let tr = k.broadcast_matmul(&cw.t()?)?;
    let ti = k.broadcast_matmul(&sw.t()?)?.neg()?;
    // Then along the columns: FK = (ch - i sh) T.
    let re = (ch.broadcast_matmul(&tr)? + sh.broadcast_matmul(&ti)?)?;
    let im = (ch.broadcast_matmul(&ti)? - sh.broadcast_matmul(&tr)?)?;
    Ok((re, im))
}

/// `e^{sign 2 pi i t r / n}` for `t < n` and `r < s`: `(re, im)`, each `(s, n)`.
fn phase_tables(n: usize, s: usize, sign: f64, like: &Tensor) -> Result<(Tensor, Tensor)> {
    let (re, im): (Vec<f64>, Vec<f64>) = (0..s * n)
        .map(|i| {
            let (c, si) = unit(((i / n) * (i % n)) as isize, n);
            (c, sign * si)
        })
        .unzip();
    Ok((host(re, (s, n), like)?, host(im, (s, n), like)?))
}

/// The planar transfer functions `(sets, C, s², 2, hp, wp/2+1)` of kernels `k`
/// `(sets, C, kh, kw)` and `λ` `(1, C, 1, 1)` over the padded grid `(hp, wp)` at scale `s`,
/// scaled by `1/s²`: the same tensor as [`super::transfer::planar`], made of candle ops.
pub(crate) fn planar(
    k: &Tensor,
    lam: &Tensor,
    (hp, wp): (usize, usize),
    s: usize,
) -> Result<Tensor> {
    let (sets, c, _, _) = k.dims4()?;
    let wq = wp / 2 + 1;
    if s == 1 {
        // G = (conj(FK) + λ) / (|FK|² + λ).
        let (fr, fi) = kernel_spectrum(k, (hp, wp), wq)?;
        let d = (fr.sqr()? + fi.sqr()?)?.broadcast_add(lam)?;
        let gr = fr.broadcast_add(lam)?.div(&d)?;
        let gi = fi.neg()?.div(&d)?;
        return Tensor::stack(&[gr, gi], 2)?.reshape((sets, c, 1, 2, hp, wq));
    }
    let (hs, ws) = (s * hp, s * wp);
    let (fr, fi) = kernel_spectrum(k, (hs, ws), ws)?;
    // The box response B[U, V] = bh[U] bw[V], bh[U] = sum_{a < s} e^{-2 pi i U a / hs}.
    let box_of = |n: usize| -> Result<(Tensor, Tensor)> {
        let (re, im) = phase_tables(n, s, -1.0, k)?;
        Ok((re.sum(0)?, im.sum(0)?))
    };
    let ((bhr, bhi), (bwr, bwi)) = (box_of(hs)?, box_of(ws)?);
    let col = |t: &Tensor| t.reshape((hs, 1));
    let br = (col(&bhr)?.broadcast_mul(&bwr)? - col(&bhi)?.broadcast_mul(&bwi)?)?;
    let bi = (col(&bhr)?.broadcast_mul(&bwi)? + col(&bhi)?.broadcast_mul(&bwr)?)?;
    // Means over the s x s blocks (U = p hp + u, V = q wp + v), as (sets, C, hp, wp).
    let mean = |t: &Tensor| t.reshape((sets, c, s, hp, s, wp))?.mean(4)?.mean(2);
    let mr = mean(&(fr.broadcast_mul(&br)? - fi.broadcast_mul(&bi)?)?)?;
    let mi = mean(&(fr.broadcast_mul(&bi)? + fi.broadcast_mul(&br)?)?)?;
    let p = mean(&(fr.sqr()? + fi.sqr()?)?)?.broadcast_add(lam)?;
    let (qr, qi) = (mr.affine(-1.0, 1.0)?.div(&p)?, mi.neg()?.div(&p)?);
    // G = B + conj(FK) tile(q), on the blocks: (sets, C, s, hp, s, wp).
    let blocks = |t: &Tensor| t.reshape((sets, c, s, hp, s, wp));
    let tile = |t: &Tensor| t.reshape((sets, c, 1, hp, 1, wp));
    let (fr, fi) = (blocks(&fr)?, blocks(&fi)?);
    let (qr, qi) = (tile(&qr)?, tile(&qi)?);
    let bshape = |t: &Tensor| t.reshape((s, hp, s, wp));
    let gr = (fr.broadcast_mul(&qr)? + fi.broadcast_mul(&qi)?)?.broadcast_add(&bshape(&br)?)?;
    let gi = (fr.broadcast_mul(&qi)? - fi.broadcast_mul(&qr)?)?.broadcast_add(&bshape(&bi)?)?;
    // Phase b along the columns: sum_q G[.., q, v] e^{2 pi i (v + wp q) b / ws}, keeping v < wq.
    let (er, ei) = phase_tables(ws, s, 1.0, k)?;
    let eb = |t: &Tensor| t.reshape((s, 1, 1, s, wp))?.narrow(4, 0, wq);
    let (er, ei) = (eb(&er)?, eb(&ei)?);
    // (sets, C, 1, s_p, hp, s_q, wq) against (s_b, 1, 1, s_q, wq).
    let cols = |t: &Tensor| t.narrow(5, 0, wq)?.unsqueeze(2);
    let (gr, gi) = (cols(&gr)?, cols(&gi)?);
    let sum_q = |t: Tensor| t.sum(5);
    let tr = sum_q((gr.broadcast_mul(&er)? - gi.broadcast_mul(&ei)?)?)?;
    let ti = sum_q((gr.broadcast_mul(&ei)? + gi.broadcast_mul(&er)?)?)?;
    // Phase a along the rows: (sets, C, 1, s_b, s_p, hp, wq) against (s_a, 1, s_p, hp, 1).
    let (er, ei) = phase_tables(hs, s, 1.0, k)?;
    let ea = |t: &Tensor| t.reshape((s, 1, s, hp, 1));
    let (er, ei) = (ea(&er)?, ea(&ei)?);
    let (tr, ti) = (tr.unsqueeze(2)?, ti.unsqueeze(2)?);
    let hr = (tr.broadcast_mul(&er)? - ti.broadcast_mul(&ei)?)?.sum(4)?;
    let hi = (tr.broadcast_mul(&ei)? + ti.broadcast_mul(&er)?)?.sum(4)?;
    // (sets, C, s_a, s_b, hp, wq) each, to (sets, C, s², 2, hp, wq), scaled by 1/s².
    let h = Tensor::stack(&[hr, hi], 4)?.reshape((sets, c, s * s, 2, hp, wq))?;
    h / (s * s) as f64
}

/// [`planar`] with kernels and `λ` on the CPU, as one op: the values built on the host
/// ([`super::transfer::planar`]) and the gradient to the kernels and `λ` computed there too
/// ([`PlanarOp`], [`super::transfer::vjp`]), in f64, eight channels per vector, rather than
/// through the composed ops (on the `s`-fold grid at `s > 1`). Returns the tensor and the taps
/// it was made from (the kernels and `λ` as they are now), which its backward reads too.
pub(crate) fn planar_host(
    k: &Tensor,
    lam: &Tensor,
    (hp, wp): (usize, usize),
    s: usize,
) -> Result<(Tensor, Taps)> {
    let taps = Taps::new(k, lam)?;
    let g = super::transfer::planar(&taps, (hp, wp), s, k.dtype(), k.device())?;
    let op = PlanarOp {
        g,
        taps: taps.clone(),
        hp,
        wp,
        s,
    };
    Ok((k.contiguous()?.apply_op2(&lam.contiguous()?, op)?, taps))
}

/// The transfer functions `g` of [`planar_host`], the taps they were made from, and their
/// backward.
struct PlanarOp {
    g: Tensor,
    taps: Taps,
    hp: usize,
    wp: usize,
    s: usize,
}

impl candle_core::CustomOp2 for PlanarOp {
    fn name(&self) -> &'static str {
        "converse2d-planar"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (st, l) = self.g.storage_and_layout();
        let candle_core::Storage::Cpu(st) = &*st else {
            candle_core::bail!("converse2d-planar: the transfer functions are not on the CPU")
        };
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("converse2d-planar: the transfer functions are not contiguous")
        };
        let out = match st {
            candle_core::CpuStorage::F32(v) => candle_core::CpuStorage::F32(v[a..b].to_vec()),
            candle_core::CpuStorage::F64(v) => candle_core::CpuStorage::F64(v[a..b].to_vec()),
            _ => candle_core::bail!("converse2d-planar: f32 or f64 only"),
        };
        Ok((out, self.g.shape().clone()))
    }

    fn bwd(
        &self,
        k: &Tensor,
        lam: &Tensor,
        _res: &Tensor,
        dg: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (sets, c, kh, kw) = k.dims4()?;
        let taps = &self.taps;
        let dg = dg.contiguous()?;
        let (st, l) = dg.storage_and_layout();
        let (candle_core::Storage::Cpu(st), Some((a, b))) = (&*st, l.contiguous_offsets()) else {
            candle_core::bail!("converse2d-planar: the gradient is not on the CPU")
        };
        let per = match st {
            candle_core::CpuStorage::F32(v) => self.vjp(taps, &v[a..b])?,
            candle_core::CpuStorage::F64(v) => self.vjp(taps, &v[a..b])?,
            _ => candle_core::bail!("converse2d-planar: f32 or f64 only"),
        };
        let mut dk = Vec::with_capacity(sets * c * kh * kw);
        let mut dl = vec![0f64; c];
        for (first, (d, l)) in per {
            dk.extend(d);
            for (q, l) in l.into_iter().enumerate() {
                dl[(first + q) % c] += l;
            }
        }
        let to = |v: Vec<f64>, shape: &candle_core::Shape| {
            Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(k.dtype())
        };
        Ok((Some(to(dk, k.shape())?), Some(to(dl, lam.shape())?)))
    }
}

/// A group of channels' first filter, and the gradients to its taps and `λ`.
type GroupGrads = (usize, (Vec<f64>, Vec<f64>));

impl PlanarOp {
    /// [`super::transfer::vjp`] of every group of channels, in parallel, from the gradient
    /// `dg` `(sets, C, s², 2, hp, wq)`: per group, its first filter (`set * C + channel`), and
    /// the gradients to its taps and `λ`.
    fn vjp<T: candle_core::WithDType>(&self, taps: &Taps, dg: &[T]) -> Result<Vec<GroupGrads>> {
        use super::transfer::STEP;
        use rayon::prelude::*;
        let (hp, wp, s) = (self.hp, self.wp, self.s);
        let (c, wq) = (taps.channels(), wp / 2 + 1);
        let (plane, phases) = (hp * wq, s * s);
        if dg.len() != taps.sets() * c * phases * 2 * plane {
            candle_core::bail!("converse2d-planar: the gradient does not fit the filters")
        }
        // The planar values are H / s².
        let norm = 1.0 / phases as f64;
        let groups: Vec<(usize, usize)> = (0..taps.sets())
            .flat_map(|set| (0..c).step_by(STEP).map(move |ch| (set, ch)))
            .collect();
        let isa = super::cpu::simd::Isa::current();
        Ok(groups
            .into_par_iter()
            .map(|(set, first)| {
                let chans: Vec<usize> = (first..c.min(first + STEP)).collect();
                let fp = STEP;
                let grad = |ph: usize, u: usize, re: &mut [f64], im: &mut [f64]| {
                    re.fill(0.0);
                    im.fill(0.0);
                    for (q, &ch) in chans.iter().enumerate() {
                        let at = ((set * c + ch) * phases + ph) * 2 * plane + u * wq;
                        for v in 0..wq {
                            re[v * fp + q] = dg[at + v].to_f64() * norm;
                            im[v * fp + q] = dg[at + plane + v].to_f64() * norm;
                        }
                    }
                };
                let out = isa.run(|| super::transfer::vjp(taps, set, &chans, (hp, wp), s, grad));
                (set * c + first, out)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::converse2d::{lambda, solve};
    use crate::ops::transfer::{self, Taps};
    use crate::ops::{Converse2d, Converse2dConfig, PaddingMode};
    use candle_core::{DType, Module, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        let d = (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap();
        d.abs().unwrap().max_all().unwrap().to_scalar().unwrap()
    }

    fn values(t: &Tensor) -> Vec<f64> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// The transfer functions made of candle ops equal the host-built ones, at every scale, for
    /// odd and even kernels and grids, one kernel set or one per image.
    #[test]
    fn planar_equals_the_host_transfer_functions() {
        let dev = Device::Cpu;
        for (s, ks, (hp, wp), sets) in [
            (1, 3, (7, 8), 1),
            (1, 4, (6, 9), 2),
            (2, 2, (5, 6), 1),
            (2, 5, (8, 7), 2),
            (3, 3, (4, 5), 1),
            (4, 4, (5, 4), 1),
        ] {
            let c = 3;
            let k = Tensor::rand(-0.5f64, 1.0, (sets, c, ks, ks), &dev).unwrap();
            let lam = Tensor::rand(1e-3f64, 0.5, (1, c, 1, 1), &dev).unwrap();
            let want =
                transfer::planar(&Taps::new(&k, &lam).unwrap(), (hp, wp), s, DType::F64, &dev)
                    .unwrap();
            let got = planar(&k, &lam, (hp, wp), s).unwrap();
            assert_eq!(got.dims(), want.dims());
            assert!(max_diff(&got, &want) < 1e-11, "s={s} k={ks} {hp}x{wp}");
        }
    }

    /// `sum(y * g)` of a function of three tensors, by central differences at entries `at`.
    struct Fd<'a> {
        f: &'a dyn Fn(&[Tensor]) -> Tensor,
        inputs: Vec<Tensor>,
    }

    impl Fd<'_> {
        /// Autograd's gradient of every input against central differences, at up to 12
        /// entries spread over each.
        fn check(&self, what: &str) {
            let vars: Vec<Var> = self
                .inputs
                .iter()
                .map(|t| Var::from_tensor(t).unwrap())
                .collect();
            let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let grads = (self.f)(&ts).backward().unwrap();
            for (i, v) in vars.iter().enumerate() {
                let got = values(grads.get(v).expect("a gradient for every input"));
                let base = values(&self.inputs[i]);
                let step = (base.len() / 12).max(1);
                for e in (0..base.len()).step_by(step) {
                    let at = |d: f64| {
                        let mut p = base.clone();
                        p[e] += d;
                        let mut inputs = self.inputs.clone();
                        inputs[i] =
                            Tensor::from_vec(p, self.inputs[i].shape(), &Device::Cpu).unwrap();
                        (self.f)(&inputs).to_scalar::<f64>().unwrap()
                    };
                    let eps = 1e-5;
                    let fd = (at(eps) - at(-eps)) / (2.0 * eps);
                    assert!(
                        (got[e] - fd).abs() <= 1e-6 * fd.abs().max(1.0),
                        "{what}: input {i}[{e}]: autograd {} vs {fd}",
                        got[e]
                    );
                }
            }
        }
    }

    /// A Converse2D layer with trainable `weight` and `bias`, in all four padding modes and at
    /// scales 1 to 4: autograd's gradients to the input, the kernels and the bias against
    /// finite differences in f64.
    #[test]
    fn converse2d_layer_gradients_match_finite_differences() {
        let dev = Device::Cpu;
        let modes = PaddingMode::ALL;
        for (case, (s, mode)) in (1..=4).flat_map(|s| modes.map(|m| (s, m))).enumerate() {
            let (c, ks, p) = (2, 2 + case % 3, 1 + case % 2);
            let (h, w) = (4 + case % 3, 5 - case % 2);
            let cfg = Converse2dConfig {
                kernel_size: ks,
                scale: s,
                padding: p,
                padding_mode: mode,
                eps: 1e-3,
            };
            let g = Tensor::rand(-1f64, 1.0, (2, c, h * s, w * s), &dev).unwrap();
            let f = |t: &[Tensor]| {
                let layer = Converse2d::from_tensors(t[1].clone(), t[2].clone(), cfg).unwrap();
                let y = layer.forward(&t[0]).unwrap();
                (y * &g).unwrap().sum_all().unwrap()
            };
            Fd {
                f: &f,
                inputs: vec![
                    Tensor::rand(-1f64, 1.0, (2, c, h, w), &dev).unwrap(),
                    Tensor::rand(0f64, 0.5, (1, c, ks, ks), &dev).unwrap(),
                    Tensor::rand(4f64, 9.0, (1, c, 1, 1), &dev).unwrap(),
                ],
            }
            .check(&format!("s={s} {mode} k={ks} p={p}"));
        }
    }

    /// Converse-USRNet's data step: a solve with per-image kernels and `λ` from `alpha`, all
    /// three trainable.
    #[test]
    fn per_call_solve_gradients_match_finite_differences() {
        let dev = Device::Cpu;
        let g = Tensor::rand(-1f64, 1.0, (2, 3, 6, 7), &dev).unwrap();
        let f = |t: &[Tensor]| {
            let lam = lambda(&t[2], 1e-3).unwrap();
            let y = solve(&t[0], &t[1], &lam, 1, 0, PaddingMode::Circular).unwrap();
            (y * &g).unwrap().sum_all().unwrap()
        };
        Fd {
            f: &f,
            inputs: vec![
                Tensor::rand(-1f64, 1.0, (2, 3, 6, 7), &dev).unwrap(),
                Tensor::rand(-0.3f64, 0.3, (2, 3, 3, 3), &dev).unwrap(),
                Tensor::rand(3f64, 8.0, (1, 3, 1, 1), &dev).unwrap(),
            ],
        }
        .check("data step");
    }

    /// Bilinear x4 upsampling and the four padding modes pass gradients to their input.
    #[test]
    fn resize_and_padding_gradients_match_finite_differences() {
        let dev = Device::Cpu;
        let g = Tensor::rand(-1f64, 1.0, (1, 2, 20, 24), &dev).unwrap();
        let f = |t: &[Tensor]| {
            let y = crate::ops::upsample_bilinear2d(&t[0], 4).unwrap();
            (y * &g).unwrap().sum_all().unwrap()
        };
        let x = Tensor::rand(-1f64, 1.0, (1, 2, 5, 6), &dev).unwrap();
        Fd {
            f: &f,
            inputs: vec![x.clone()],
        }
        .check("bilinear x4");
        for mode in PaddingMode::ALL {
            let g = Tensor::rand(-1f64, 1.0, (1, 2, 9, 10), &dev).unwrap();
            let f = |t: &[Tensor]| {
                let y = crate::ops::pad2d(&t[0], 2, mode).unwrap();
                (y * &g).unwrap().sum_all().unwrap()
            };
            Fd {
                f: &f,
                inputs: vec![x.clone()],
            }
            .check(&format!("pad {mode}"));
        }
    }

    /// The host backward of the transfer functions ([`super::super::transfer::vjp`]) equals
    /// autograd through [`planar`], at scales 1 to 4, odd and even kernels and grids, one
    /// kernel set or two, one group of channels (partial) or two.
    #[test]
    fn planar_host_gradients_equal_autograd() {
        let dev = Device::Cpu;
        for (s, ks, (hp, wp), sets, c) in [
            (1, 3, (7, 8), 1, 3),
            (1, 4, (6, 9), 2, 11),
            (2, 3, (5, 6), 1, 3),
            (2, 4, (6, 7), 2, 11),
            (3, 2, (4, 5), 1, 3),
            (4, 5, (5, 4), 2, 3),
        ] {
            let k = Tensor::rand(-0.5f64, 1.0, (sets, c, ks, ks), &dev).unwrap();
            let lam = Tensor::rand(1e-3f64, 0.5, (1, c, 1, 1), &dev).unwrap();
            let wq = wp / 2 + 1;
            let dg = Tensor::rand(-1f64, 1.0, (sets, c, s * s, 2, hp, wq), &dev).unwrap();
            let grads = |f: &dyn Fn(&Tensor, &Tensor) -> Tensor| {
                let (kv, lv) = (
                    Var::from_tensor(&k).unwrap(),
                    Var::from_tensor(&lam).unwrap(),
                );
                let g = f(kv.as_tensor(), lv.as_tensor());
                let gr = (g * &dg).unwrap().sum_all().unwrap().backward().unwrap();
                [gr.get(&kv).unwrap().clone(), gr.get(&lv).unwrap().clone()]
            };
            let want = grads(&|k, l| planar(k, l, (hp, wp), s).unwrap());
            let got = grads(&|k, l| planar_host(k, l, (hp, wp), s).unwrap().0);
            for (a, b) in got.iter().zip(&want) {
                let m = values(b).iter().fold(1f64, |m, v| m.max(v.abs()));
                assert!(
                    max_diff(a, b) < 1e-11 * m,
                    "s={s} k={ks} c={c}: {}",
                    max_diff(a, b)
                );
            }
        }
    }
}
