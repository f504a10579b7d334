//! Layers shared by the ConverseNet models (`LayerNorm`, 1x1 convolutions, GELU and
//! `ConverseBlock` of the official `models/util_converse.py`).
//!
//! The layers with a fused kernel (GELU and `ConverseBlock`) pick their backend once per call
//! with [`Backend::of`]; the composed candle ops are the reference.

use std::sync::OnceLock;

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Module, Result, Shape, Tensor,
};
use candle_nn::VarBuilder;

use rayon::prelude::*;

use crate::ops::cpu::branch::{converse_block, grid_budget, BlockWeights, BranchWeights};
use crate::ops::cpu::gemm::{gemm_strided, Strided};
use crate::ops::cpu::{act, norm};
use crate::ops::{Backend, Converse2d, Converse2dConfig};

fn values(t: &Tensor) -> Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

/// The contiguous f32 data of a CPU storage.
fn f32_data<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(d), Some((a, b))) => Ok(&d[a..b]),
        _ => candle_core::bail!("{op}: needs contiguous f32"),
    }
}

/// The contiguous f32 data of three CPU storages.
fn f32_data3<'a>(
    (s1, l1): (&'a CpuStorage, &Layout),
    (s2, l2): (&'a CpuStorage, &Layout),
    (s3, l3): (&'a CpuStorage, &Layout),
    op: &str,
) -> Result<(&'a [f32], &'a [f32], &'a [f32])> {
    Ok((
        f32_data(s1, l1, op)?,
        f32_data(s2, l2, op)?,
        f32_data(s3, l3, op)?,
    ))
}

/// The gradients of a custom op's three arguments.
type Grads3 = (Option<Tensor>, Option<Tensor>, Option<Tensor>);

/// The gradients of `args` from one flat tensor holding them one after the other, each shaped
/// as its argument.
fn split_flat(flat: &Tensor, args: [&Tensor; 3]) -> Result<Grads3> {
    let mut at = 0;
    let mut next = |t: &Tensor| {
        let piece = flat.narrow(0, at, t.elem_count())?.reshape(t.shape());
        at += t.elem_count();
        piece.map(Some)
    };
    Ok((next(args[0])?, next(args[1])?, next(args[2])?))
}

/// Channels-first LayerNorm over dim 1 of `(N, C, H, W)` (`LayerNorm(data_format="channels_first")`).
#[derive(Debug, Clone)]
pub struct LayerNorm2d {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm2d {
    pub fn new(channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get(channels, "weight")?.reshape((1, channels, 1, 1))?;
        let bias = vb.get(channels, "bias")?.reshape((1, channels, 1, 1))?;
        Ok(Self { weight, bias, eps })
    }
}

impl Module for LayerNorm2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if Backend::for_training(x, &[&self.weight, &self.bias]) == Backend::Fused {
            let op = LayerNormOp { eps: self.eps };
            return x.contiguous()?.apply_op3(&self.weight, &self.bias, op);
        }
        let d = x.broadcast_sub(&x.mean_keepdim(1)?)?;
        let var = d.sqr()?.mean_keepdim(1)?;
        d.broadcast_div(&(var + self.eps)?.sqrt()?)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// `(N, C, H * W)` of a contiguous `(N, C, H, W)` layout.
fn planes(l: &Layout) -> Result<norm::Dims> {
    let (n, c, h, w) = l.shape().dims4()?;
    Ok((n, c, h * w))
}

/// [`LayerNorm2d`] through which a gradient flows, on the CPU in f32: the fused kernels of
/// [`norm`] forward and backward, over `(x, weight, bias)`.
struct LayerNormOp {
    eps: f64,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm-train"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = f32_data3((xs, xl), (ws, wl), (bs, bl), self.name())?;
        let mut y = vec![0f32; x.len()];
        norm::layer_norm(x, &mut y, planes(xl)?, (w, b), self.eps as f32);
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, b: &Tensor, _: &Tensor, dy: &Tensor) -> Result<Grads3> {
        let op = LayerNormGrad { eps: self.eps };
        split_flat(&x.apply_op3_no_bwd(w, &dy.contiguous()?, &op)?, [x, w, b])
    }
}

/// [`LayerNormOp`]'s backward over `(x, weight, dy)`: `dx`, `dweight` and `dbias` in one flat
/// tensor.
struct LayerNormGrad {
    eps: f64,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "layer-norm-train-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, dy) = f32_data3((xs, xl), (ws, wl), (ds, dl), self.name())?;
        let mut out = vec![0f32; x.len() + 2 * w.len()];
        let (dw, db) =
            norm::layer_norm_grad(x, dy, &mut out[..x.len()], planes(xl)?, w, self.eps as f32);
        for (o, v) in out[x.len()..].iter_mut().zip(dw.iter().chain(&db)) {
            *o = *v as f32;
        }
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
}

/// [`Pointwise`] with a bias, through which a gradient flows, on the CPU in f32: over
/// `(x (N, Cin, H, W), weight (Cout, Cin), bias (Cout, 1))`, the products of [`gemm_strided`] (the
/// transposes of the backward read in place), the bias's gradient summed in f64.
struct PointwiseOp;

impl CustomOp3 for PointwiseOp {
    fn name(&self) -> &'static str {
        "pointwise-train"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = f32_data3((xs, xl), (ws, wl), (bs, bl), self.name())?;
        let (n, cin, p) = planes(xl)?;
        let cout = wl.shape().dims2()?.0;
        let mut y = vec![0f32; n * cout * p];
        // Images in parallel, each product on one thread; one image: the product's threads.
        let one = n == 1;
        y.par_chunks_mut(cout * p).enumerate().for_each(|(i, y)| {
            for (plane, b) in y.chunks_mut(p).zip(b) {
                plane.fill(*b);
            }
            let x = Strided::rows(&x[i * cin * p..][..cin * p], p);
            gemm_strided(y, Strided::rows(w, cin), x, (cout, cin, p), true, one);
        });
        let (h, w) = (xl.dims()[2], xl.dims()[3]);
        Ok((CpuStorage::F32(y), Shape::from((n, cout, h, w))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, b: &Tensor, _: &Tensor, dy: &Tensor) -> Result<Grads3> {
        let flat = x.apply_op3_no_bwd(w, &dy.contiguous()?, &PointwiseGrad)?;
        split_flat(&flat, [x, w, b])
    }
}

/// [`PointwiseOp`]'s backward over `(x, weight, dy)`: `dx = wᵀ dy` per image, `dweight = Σ dy xᵀ`
/// over the images, and `dbias`, in one flat tensor.
struct PointwiseGrad;

impl CustomOp3 for PointwiseGrad {
    fn name(&self) -> &'static str {
        "pointwise-train-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, dy) = f32_data3((xs, xl), (ws, wl), (ds, dl), self.name())?;
        let (n, cin, p) = planes(xl)?;
        let cout = wl.shape().dims2()?.0;
        let mut out = vec![0f32; x.len() + w.len() + cout];
        let (dx, rest) = out.split_at_mut(x.len());
        let (dw, db) = rest.split_at_mut(w.len());
        // Images in parallel, each with its own `dweight` to sum; one image: the products'
        // threads.
        let one = n == 1;
        let parts: Vec<Vec<f32>> = dx
            .par_chunks_mut(cin * p)
            .enumerate()
            .map(|(i, dx)| {
                let (x, dy) = (
                    &x[i * cin * p..][..cin * p],
                    &dy[i * cout * p..][..cout * p],
                );
                let (wt, d) = (Strided::transposed(w, cin), Strided::rows(dy, p));
                gemm_strided(dx, wt, d, (cin, cout, p), false, one);
                let mut dw = vec![0f32; cout * cin];
                gemm_strided(
                    &mut dw,
                    d,
                    Strided::transposed(x, p),
                    (cout, p, cin),
                    false,
                    one,
                );
                dw
            })
            .collect();
        for (k, o) in dw.iter_mut().enumerate() {
            *o = parts.iter().map(|d| d[k] as f64).sum::<f64>() as f32;
        }
        for (o, v) in db.iter_mut().zip(norm::channel_sums(dy, (n, cout, p))) {
            *o = v as f32;
        }
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// A 1x1 `nn.Conv2d`, run as a matrix product.
#[derive(Debug, Clone)]
pub struct Pointwise {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Pointwise {
    /// Loads `weight` `(out, in, 1, 1)` and, if `bias`, `bias` `(out)`.
    pub fn new(cin: usize, cout: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((cout, cin, 1, 1), "weight")?.reshape((cout, cin))?;
        let bias = if bias {
            Some(vb.get(cout, "bias")?.reshape((cout, 1))?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }
}

impl Module for Pointwise {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        if let Some(b) = &self.bias {
            if Backend::for_training(x, &[&self.weight, b]) == Backend::Fused {
                return x.contiguous()?.apply_op3(&self.weight, b, PointwiseOp);
            }
        }
        let y = self.weight.broadcast_matmul(&x.reshape((n, c, h * w))?)?;
        let y = match &self.bias {
            // A trainable bias's gradient sums the output gradient over every pixel: in f64,
            // so that f32 keeps it as accurate as PyTorch's pairwise sums (the sum itself, in
            // f64 then rounded once, is the f32 sum).
            Some(b) if b.track_op() && y.dtype() == DType::F32 => y
                .to_dtype(DType::F64)?
                .broadcast_add(&b.to_dtype(DType::F64)?)?
                .to_dtype(DType::F32)?,
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        y.reshape((n, (), h, w))
    }
}

/// The exact (erf) GELU on the candle-ops path. When a gradient is to flow it is composed from
/// `erf`, whose backward is exact, instead of candle's `gelu_erf`, whose backward rounds
/// `1/sqrt(2 pi)` to six digits (an error of about 7e-7, above the float64 gradient bound).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if Backend::for_training(x, &[]) == Backend::Fused {
        x.contiguous()?.apply_op1(Gelu)
    } else if x.track_op() {
        (x * 0.5)? * ((x / std::f64::consts::SQRT_2)?.erf()? + 1.0)?
    } else {
        x.gelu_erf()
    }
}

/// The exact (erf) GELU, `nn.GELU()`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gelu;

impl Module for Gelu {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match Backend::of(x) {
            Backend::Fused => x.contiguous()?.apply_op1_no_bwd(self),
            Backend::Reference => gelu_erf(x),
        }
    }
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-fused"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, self.name())?;
        let mut out = vec![0f32; x.len()];
        act::gelu_slice(x, &mut out);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &GeluGrad)?))
    }
}

/// [`Gelu`]'s backward over `(x, dy)`: `dy * gelu'(x)`.
struct GeluGrad;

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "gelu-fused-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, dy) = (
            f32_data(xs, xl, self.name())?,
            f32_data(ds, dl, self.name())?,
        );
        let mut dx = vec![0f32; x.len()];
        act::gelu_grad_slice(x, dy, &mut dx);
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}

/// `ConverseBlock` (and, with `alphas`, `ConverseBlockAlphaVariant`): two residual branches,
/// `LN → 1x1 → GELU → Converse2D → GELU → 1x1` and `LN → 1x1 → GELU → 1x1`.
#[derive(Debug)]
pub struct ConverseBlock {
    ln1: LayerNorm2d,
    expand1: Pointwise,
    converse: Converse2d,
    reduce1: Pointwise,
    ln2: LayerNorm2d,
    expand2: Pointwise,
    reduce2: Pointwise,
    alphas: Option<(Tensor, Tensor)>,
    /// The 1x1 weights with LayerNorm and `alpha` folded in, for the fused kernel; made on its
    /// first use.
    folded: OnceLock<BlockWeights>,
}

impl ConverseBlock {
    /// `channels` in and out; the Converse2D (scale 1) runs on `2 * channels`. With `alpha`,
    /// loads the per-channel branch scales `alpha1` and `alpha2` `(1, C, 1, 1)`.
    pub fn new(
        channels: usize,
        converse: Converse2dConfig,
        alpha: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        if converse.scale != 1 {
            candle_core::bail!("ConverseBlock: the Converse2D of a block has scale 1")
        }
        let c2 = 2 * channels;
        let (b1, b2) = (vb.pp("conv1"), vb.pp("conv2"));
        let alphas = if alpha {
            Some((
                vb.get((1, channels, 1, 1), "alpha1")?,
                vb.get((1, channels, 1, 1), "alpha2")?,
            ))
        } else {
            None
        };
        Ok(Self {
            ln1: LayerNorm2d::new(channels, 1e-5, b1.pp(0))?,
            expand1: Pointwise::new(channels, c2, true, b1.pp(1))?,
            converse: Converse2d::new(c2, converse, b1.pp(3))?,
            reduce1: Pointwise::new(c2, channels, true, b1.pp(5))?,
            ln2: LayerNorm2d::new(channels, 1e-5, b2.pp(0))?,
            expand2: Pointwise::new(channels, c2, true, b2.pp(1))?,
            reduce2: Pointwise::new(c2, channels, true, b2.pp(3))?,
            alphas,
            folded: OnceLock::new(),
        })
    }

    /// The block's Converse2D layer.
    pub fn converse(&self) -> &Converse2d {
        &self.converse
    }

    fn folded(&self) -> Result<&BlockWeights> {
        if let Some(w) = self.folded.get() {
            return Ok(w);
        }
        let branch = |ln: &LayerNorm2d, e: &Pointwise, r: &Pointwise, a: Option<&Tensor>| {
            let (c2, c) = e.weight.dims2()?;
            let bias = |b: &Option<Tensor>, n: usize| match b {
                Some(b) => values(b),
                None => Ok(vec![0.0; n]),
            };
            let alpha = match a {
                Some(a) => values(a)?,
                None => vec![1.0; c],
            };
            Ok::<_, candle_core::Error>(BranchWeights::fold(
                (&values(&ln.weight)?, &values(&ln.bias)?),
                (&values(&e.weight)?, &bias(&e.bias, c2)?),
                (&values(&r.weight)?, &bias(&r.bias, c)?),
                &alpha,
            ))
        };
        let (a1, a2) = match &self.alphas {
            Some((a1, a2)) => (Some(a1), Some(a2)),
            None => (None, None),
        };
        let w = BlockWeights {
            converse: branch(&self.ln1, &self.expand1, &self.reduce1, a1)?,
            plain: branch(&self.ln2, &self.expand2, &self.reduce2, a2)?,
        };
        Ok(self.folded.get_or_init(|| w))
    }

    /// Every tensor the block computes with (gradients to any of them need the reference).
    fn params(&self) -> Vec<&Tensor> {
        let mut p = vec![];
        for (ln, e, r) in [
            (&self.ln1, &self.expand1, &self.reduce1),
            (&self.ln2, &self.expand2, &self.reduce2),
        ] {
            p.extend([&ln.weight, &ln.bias, &e.weight, &r.weight]);
            p.extend(e.bias.iter().chain(&r.bias));
        }
        p.extend(self.alphas.iter().flat_map(|(a, b)| [a, b]));
        p.extend([self.converse.weight(), self.converse.bias()]);
        p
    }

    /// The composed candle ops.
    fn forward_reference(&self, x: &Tensor) -> Result<Tensor> {
        let h = gelu_erf(&self.expand1.forward(&self.ln1.forward(x)?)?)?;
        let h = gelu_erf(&self.converse.forward(&h)?)?;
        let h = self.reduce1.forward(&h)?;
        let x = match &self.alphas {
            Some((a1, _)) => (h.broadcast_mul(a1)? + x)?,
            None => (h + x)?,
        };
        let h = gelu_erf(&self.expand2.forward(&self.ln2.forward(&x)?)?)?;
        let h = self.reduce2.forward(&h)?;
        match &self.alphas {
            Some((_, a2)) => h.broadcast_mul(a2)? + x,
            None => h + x,
        }
    }
}

impl ConverseBlock {
    /// [`Module::forward`], then `on_block`: how a caller follows a model run block by block.
    pub fn run(&self, x: &Tensor, on_block: &dyn Fn()) -> Result<Tensor> {
        let y = self.forward(x)?;
        on_block();
        Ok(y)
    }
}

impl Module for ConverseBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match Backend::for_layer(x, &self.params()) {
            Backend::Fused => x.contiguous()?.apply_op1_no_bwd(&FusedBlock(self)),
            Backend::Reference => self.forward_reference(x),
        }
    }
}

/// The fused kernel of a [`ConverseBlock`] ([`converse_block`]).
struct FusedBlock<'a>(&'a ConverseBlock);

impl CustomOp1 for FusedBlock<'_> {
    fn name(&self) -> &'static str {
        "converse-block-fused"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, self.name())?;
        let (_, c, h, w) = l.shape().dims4()?;
        let block = self.0;
        let (cw, cin) = block.expand1.weight.dims2()?;
        if cin != c || cw != 2 * c {
            candle_core::bail!("ConverseBlock: {c} channels in, the block takes {cin}")
        }
        let (geo, filters) = block.converse.fused((h, w))?;
        let mut out = crate::alloc::zeros_to_overwrite(x.len());
        let weights = block.folded()?;
        converse_block(
            x,
            &mut out,
            (c, h, w),
            weights,
            (&geo, filters),
            grid_budget(),
        )?;
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::with_reference;
    use candle_core::Device;
    use candle_nn::VarBuilder;
    use std::collections::HashMap;

    fn block(c: usize, alpha: bool) -> ConverseBlock {
        block_with(&random_params(c, alpha), alpha)
    }

    /// A block on `params` (tensors or the tensors of `Var`s).
    fn block_with(params: &HashMap<String, Tensor>, alpha: bool) -> ConverseBlock {
        let c = params["conv1.0.weight"].dim(0).unwrap();
        let vb = VarBuilder::from_tensors(params.clone(), DType::F32, &Device::Cpu);
        let cfg = Converse2dConfig {
            kernel_size: 5,
            scale: 1,
            padding: 3,
            padding_mode: crate::ops::PaddingMode::Reflect,
            eps: 1e-5,
        };
        ConverseBlock::new(c, cfg, alpha, vb).unwrap()
    }

    /// Random parameters of a block on `c` channels, by state-dict name.
    fn random_params(c: usize, alpha: bool) -> HashMap<String, Tensor> {
        let dev = Device::Cpu;
        let mut t = HashMap::new();
        let mut put = |name: &str, shape: &[usize], lo: f32, hi: f32| {
            let v = Tensor::rand(lo, hi, shape, &dev).unwrap();
            t.insert(name.to_owned(), v);
        };
        for (b, e, r) in [
            ("conv1", "conv1.1", "conv1.5"),
            ("conv2", "conv2.1", "conv2.3"),
        ] {
            put(&format!("{b}.0.weight"), &[c], 0.5, 1.5);
            put(&format!("{b}.0.bias"), &[c], -0.2, 0.2);
            put(&format!("{e}.weight"), &[2 * c, c, 1, 1], -0.3, 0.3);
            put(&format!("{e}.bias"), &[2 * c], -0.1, 0.1);
            put(&format!("{r}.weight"), &[c, 2 * c, 1, 1], -0.3, 0.3);
            put(&format!("{r}.bias"), &[c], -0.1, 0.1);
        }
        put("conv1.3.weight", &[1, 2 * c, 5, 5], 0.0, 0.08);
        put("conv1.3.bias", &[1, 2 * c, 1, 1], 3.0, 6.0);
        if alpha {
            put("alpha1", &[1, c, 1, 1], 0.2, 1.0);
            put("alpha2", &[1, c, 1, 1], 0.2, 1.0);
        }
        t
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap();
        d.max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    /// The fused block against the reference: whole channel groups and a partial one, one pass
    /// over the groups and one group at a time, two images, tiles of whole rows and of pieces,
    /// one band of rows and several (the last one short).
    #[test]
    fn fused_block_matches_the_reference() {
        let sizes = [
            (24, false, (9, 300)),
            (5, true, (13, 11)),
            (5, true, (30, 40)),
        ];
        for (c, alpha, (h, w)) in sizes {
            let block = block(c, alpha);
            let x = Tensor::rand(-1f32, 1.0, (2, c, h, w), &Device::Cpu).unwrap();
            let want = with_reference(|| block.forward(&x).unwrap());
            let got = block.forward(&x).unwrap();
            assert!(max_diff(&got, &want) < 2e-5, "c={c} one pass");
            let data = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut out = vec![0f32; data.len()];
            let (geo, filters) = block.converse.fused((h, w)).unwrap();
            let weights = block.folded().unwrap();
            converse_block(&data, &mut out, (c, h, w), weights, (&geo, filters), 0).unwrap();
            let got = Tensor::from_vec(out, (2, c, h, w), &Device::Cpu).unwrap();
            assert!(max_diff(&got, &want) < 2e-5, "c={c} a group at a time");
        }
    }

    /// A block through which gradients flow, on the fused training layers (LayerNorm, the 1x1s,
    /// GELU, the Converse2D solve) against candle's autograd of the reference: the gradients of
    /// `sum(y * g)` to the input and to every parameter, on every instruction set, relative to
    /// each tensor's largest value.
    #[test]
    fn fused_training_layers_match_the_reference_gradients() {
        use crate::ops::cpu::simd::Isa;
        for (c, alpha, (n, h, w)) in [(24, false, (2, 9, 30)), (5, true, (3, 13, 11))] {
            let params = random_params(c, alpha);
            let vars: HashMap<String, candle_core::Var> = params
                .iter()
                .map(|(k, t)| (k.clone(), candle_core::Var::from_tensor(t).unwrap()))
                .collect();
            let tensors = vars
                .iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
                .collect();
            let block = block_with(&tensors, alpha);
            let x = Tensor::rand(-1f32, 1.0, (n, c, h, w), &Device::Cpu).unwrap();
            let x = candle_core::Var::from_tensor(&x).unwrap();
            assert_eq!(Backend::for_training(&x, &[]), Backend::Fused);
            let g = Tensor::rand(-1f32, 1.0, (n, c, h, w), &Device::Cpu).unwrap();
            let grads = || {
                let y = block.forward(x.as_tensor()).unwrap();
                let gr = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
                let mut out = vec![("x".to_owned(), gr.get(&x).unwrap().clone())];
                for (k, v) in &vars {
                    out.push((k.clone(), gr.get(v).expect(k).clone()));
                }
                out
            };
            let want = with_reference(grads);
            for isa in Isa::available() {
                for ((name, a), (_, b)) in isa.run(grads).iter().zip(&want) {
                    let scale = b
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap();
                    let d = max_diff(a, b) / scale.max(1e-3);
                    assert!(d < 2e-5, "c={c} {isa:?} d{name}: {d:e}");
                }
            }
        }
    }

    #[test]
    fn gelu_layer_matches_the_reference() {
        let x = Tensor::rand(-6f32, 6.0, (3, 1000), &Device::Cpu).unwrap();
        let want = with_reference(|| Gelu.forward(&x).unwrap());
        assert!(max_diff(&Gelu.forward(&x).unwrap(), &want) < 2e-6);
    }
}
