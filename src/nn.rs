//! Layers shared by the ConverseNet models (`LayerNorm`, 1x1 convolutions and `ConverseBlock` of
//! the official `models/util_converse.py`).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::ops::{Converse2d, Converse2dConfig};

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
        Ok(Self {
            ln1: LayerNorm2d::new(channels, 1e-5, b1.pp(0))?,
            expand1: Pointwise::new(channels, c2, true, b1.pp(1))?,
            converse: Converse2d::new(c2, converse, b1.pp(3))?,
            reduce1: Pointwise::new(c2, channels, true, b1.pp(5))?,
            ln2: LayerNorm2d::new(channels, 1e-5, b2.pp(0))?,
            expand2: Pointwise::new(channels, c2, true, b2.pp(1))?,
            reduce2: Pointwise::new(c2, channels, true, b2.pp(3))?,
            alphas,
        })
    }
}

impl Module for ConverseBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
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
