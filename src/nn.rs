//! Layers shared by the ConverseNet models (`LayerNorm`, 1x1 convolutions and `ConverseBlock` of
//! the official `models/util_converse.py`).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::ops::cpu;
use crate::ops::{Converse2d, Converse2dConfig};

/// Whether `x` runs on the f32 CPU fast path.
pub(crate) fn fast(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// One image's feature maps on the CPU fast path: `(c, h, w)` f32, contiguous.
#[derive(Debug)]
pub(crate) struct Planes {
    pub(crate) data: Vec<f32>,
    pub(crate) c: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
}

impl Planes {
    /// From a `(C, H, W)` f32 CPU tensor.
    pub(crate) fn from_tensor(x: &Tensor) -> Result<Self> {
        let (c, h, w) = x.dims3()?;
        let data = x.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self { data, c, h, w })
    }

    /// As a `(1, C, H, W)` tensor.
    pub(crate) fn into_tensor(self) -> Result<Tensor> {
        let dev = candle_core::Device::Cpu;
        Tensor::from_vec(self.data, (1, self.c, self.h, self.w), &dev)
    }

    pub(crate) fn pixels(&self) -> usize {
        self.h * self.w
    }
}

/// Runs `f(n, image)` on each image of `x` `(N, C, H, W)` on the fast path and stacks the
/// results.
pub(crate) fn per_image(
    x: &Tensor,
    mut f: impl FnMut(usize, Planes) -> Result<Planes>,
) -> Result<Tensor> {
    let outs = (0..x.dim(0)?)
        .map(|n| f(n, Planes::from_tensor(&x.get(n)?)?)?.into_tensor())
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&outs, 0)
}

/// The buffer the blocks of one forward pass share: the hidden maps `(2c + 1, n)`, whose last
/// row is ones (it carries the reducing 1x1's bias). Its memory is handed to the next forward
/// pass when dropped ([`SPARE`]): fresh allocations this large come from the kernel page by page
/// on every call, which costs more than the copy-free reuse.
#[derive(Debug)]
pub(crate) struct Workspace {
    hidden: Vec<f32>,
    shape: (usize, usize),
}

/// The memory of the last dropped [`Workspace`].
static SPARE: std::sync::Mutex<Vec<f32>> = std::sync::Mutex::new(Vec::new());

impl Default for Workspace {
    fn default() -> Self {
        let hidden = std::mem::take(&mut *SPARE.lock().unwrap_or_else(|e| e.into_inner()));
        Self {
            hidden,
            shape: (0, 0),
        }
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let mut spare = SPARE.lock().unwrap_or_else(|e| e.into_inner());
        if self.hidden.capacity() > spare.capacity() {
            *spare = std::mem::take(&mut self.hidden);
        }
    }
}

impl Workspace {
    fn get(&mut self, c: usize, n: usize) -> &mut [f32] {
        if self.shape != (c, n) {
            let len = (2 * c + 1) * n;
            if len > self.hidden.capacity() {
                // Free the old buffer before allocating the new one.
                self.hidden = Vec::new();
                self.hidden.reserve_exact(len);
            }
            self.hidden.clear();
            self.hidden.resize(len, 0.0);
            self.hidden[2 * c * n..].fill(1.0);
            self.shape = (c, n);
        }
        &mut self.hidden
    }
}

fn values(t: &Tensor) -> Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
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
        let d = x.broadcast_sub(&x.mean_keepdim(1)?)?;
        let var = d.sqr()?.mean_keepdim(1)?;
        d.broadcast_div(&(var + self.eps)?.sqrt()?)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
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

impl Pointwise {
    /// The fast path: `(cin, n)` planes to `(cout, n)`, then GELU if `act`.
    pub(crate) fn forward_planes(&self, x: &Planes, act: bool) -> Result<Planes> {
        let (cout, cin) = self.weight.dims2()?;
        let n = x.pixels();
        let mut data = vec![0.0; cout * n];
        let w = self.weight.flatten_all()?.to_vec1::<f32>()?;
        cpu::matmul(&mut data, &w, &x.data, (cout, cin, n));
        let b = match &self.bias {
            Some(b) => b.flatten_all()?.to_vec1::<f32>()?,
            None => vec![0.0; cout],
        };
        cpu::bias_act(&mut data, &b, n, act);
        Ok(Planes {
            data,
            c: cout,
            h: x.h,
            w: x.w,
        })
    }
}

impl Module for Pointwise {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let y = self.weight.broadcast_matmul(&x.reshape((n, c, h * w))?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        y.reshape((n, (), h, w))
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
    fast: Option<FastBlock>,
}

/// A `ConverseBlock`'s 1x1 weights for the f32 CPU path, folded in f64: each LayerNorm's affine
/// into the expanding 1x1 after it, each `alpha` into the reducing 1x1, whose bias becomes an
/// extra weight column (applied to the ones row of [`Workspace`]'s hidden maps).
#[derive(Debug)]
struct FastBlock {
    branches: [FastBranch; 2],
}

#[derive(Debug)]
struct FastBranch {
    /// `(2c, c)` and `(2c)`.
    expand: (Vec<f32>, Vec<f32>),
    /// `(c, 2c + 1)`.
    reduce: Vec<f32>,
}

impl FastBranch {
    fn new(ln: &LayerNorm2d, e: &Pointwise, r: &Pointwise, alpha: Option<&Tensor>) -> Result<Self> {
        let (c2, c) = e.weight.dims2()?;
        let (lw, lb) = (values(&ln.weight)?, values(&ln.bias)?);
        let (ew, rw) = (values(&e.weight)?, values(&r.weight)?);
        let eb = match &e.bias {
            Some(b) => values(b)?,
            None => vec![0.0; c2],
        };
        let rb = match &r.bias {
            Some(b) => values(b)?,
            None => vec![0.0; c],
        };
        let alpha = match alpha {
            Some(a) => values(a)?,
            None => vec![1.0; c],
        };
        let mut expand = (Vec::with_capacity(c2 * c), Vec::with_capacity(c2));
        for o in 0..c2 {
            let row = &ew[o * c..(o + 1) * c];
            expand
                .0
                .extend(row.iter().zip(&lw).map(|(w, s)| (w * s) as f32));
            let shift: f64 = row.iter().zip(&lb).map(|(w, b)| w * b).sum();
            expand.1.push((eb[o] + shift) as f32);
        }
        let mut reduce = Vec::with_capacity(c * (c2 + 1));
        for o in 0..c {
            let row = &rw[o * c2..(o + 1) * c2];
            reduce.extend(row.iter().map(|w| (w * alpha[o]) as f32));
            reduce.push((rb[o] * alpha[o]) as f32);
        }
        Ok(Self { expand, reduce })
    }

    /// `x += reduce(gelu(expand(norm(x))))`, with `mid` (the Converse2D and its GELU), if any,
    /// run on the hidden maps in between.
    fn forward(
        &self,
        x: &mut Planes,
        ws: &mut Workspace,
        mid: Option<impl FnOnce(&mut [f32]) -> Result<()>>,
    ) -> Result<()> {
        let (c, n) = (x.c, x.pixels());
        let w = cpu::BranchWeights {
            expand: &self.expand.0,
            bias: &self.expand.1,
            reduce: &self.reduce,
        };
        let Some(mid) = mid else {
            cpu::branch(&mut x.data, (c, n), &w);
            return Ok(());
        };
        let hidden = ws.get(c, n);
        cpu::branch_expand(&x.data, hidden, (c, n), &w);
        mid(&mut hidden[..2 * c * n])?;
        cpu::branch_reduce(&mut x.data, hidden, (c, n), &w);
        Ok(())
    }
}

impl ConverseBlock {
    /// `channels` in and out; the Converse2D runs on `2 * channels`. With `alpha`, loads the
    /// per-channel branch scales `alpha1` and `alpha2` `(1, C, 1, 1)`.
    pub fn new(
        channels: usize,
        converse: Converse2dConfig,
        alpha: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
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
        let mut block = Self {
            ln1: LayerNorm2d::new(channels, 1e-5, b1.pp(0))?,
            expand1: Pointwise::new(channels, c2, true, b1.pp(1))?,
            converse: Converse2d::new(c2, converse, b1.pp(3))?,
            reduce1: Pointwise::new(c2, channels, true, b1.pp(5))?,
            ln2: LayerNorm2d::new(channels, 1e-5, b2.pp(0))?,
            expand2: Pointwise::new(channels, c2, true, b2.pp(1))?,
            reduce2: Pointwise::new(c2, channels, true, b2.pp(3))?,
            alphas,
            fast: None,
        };
        if fast(&block.ln1.weight) && converse.scale == 1 {
            let (a1, a2) = match &block.alphas {
                Some((a1, a2)) => (Some(a1), Some(a2)),
                None => (None, None),
            };
            block.fast = Some(FastBlock {
                branches: [
                    FastBranch::new(&block.ln1, &block.expand1, &block.reduce1, a1)?,
                    FastBranch::new(&block.ln2, &block.expand2, &block.reduce2, a2)?,
                ],
            });
        }
        Ok(block)
    }

    /// Whether [`Self::forward_planes`] can run (the block was built in f32 on the CPU).
    pub(crate) fn is_fast(&self) -> bool {
        self.fast.is_some()
    }

    /// The fast path, in place on one image's planes.
    pub(crate) fn forward_planes(&self, x: &mut Planes, ws: &mut Workspace) -> Result<()> {
        let Some(fast) = &self.fast else {
            candle_core::bail!("ConverseBlock: no fast path (built in f64 or off the CPU)")
        };
        let hw = (x.h, x.w);
        let [b1, b2] = &fast.branches;
        b1.forward(
            x,
            ws,
            Some(|h: &mut [f32]| self.converse.solve_planes(h, hw, true)),
        )?;
        b2.forward(x, ws, None::<fn(&mut [f32]) -> Result<()>>)
    }
}

impl Module for ConverseBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.is_fast() && fast(x) {
            let mut ws = Workspace::default();
            return per_image(x, |_, mut p| {
                self.forward_planes(&mut p, &mut ws)?;
                Ok(p)
            });
        }
        let h = self.expand1.forward(&self.ln1.forward(x)?)?.gelu_erf()?;
        let h = self.converse.forward(&h)?.gelu_erf()?;
        let h = self.reduce1.forward(&h)?;
        let x = match &self.alphas {
            Some((a1, _)) => (h.broadcast_mul(a1)? + x)?,
            None => (h + x)?,
        };
        let h = self.expand2.forward(&self.ln2.forward(&x)?)?.gelu_erf()?;
        let h = self.reduce2.forward(&h)?;
        match &self.alphas {
            Some((_, a2)) => h.broadcast_mul(a2)? + x,
            None => h + x,
        }
    }
}
