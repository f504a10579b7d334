//! Converse-USRNet for non-blind deblurring, from "Reverse Convolution and Its Applications to
//! Image Restoration" (Huang et al., ICCV 2025); `ConverseUSRNet` in the official
//! `models/converse_usrnet.py`.
//!
//! Unfolds a data step and a prior step. `KernelNet` embeds the blur kernel into 16 maps, a 1x1
//! convolution per iteration lifts them to one kernel per feature channel, and the data module
//! `d` solves Converse2D with those kernels (the same solver as the learned layers). The prior is
//! ConverseNet's block stack with per-branch `alpha1`/`alpha2` scales.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::conversenet::{self, BlockStack};
use super::{ModelInfo, Network, Task};
use crate::nn::{gelu_erf, Pointwise};
use crate::ops::converse2d::{lambda, solve};
use crate::ops::{Converse2d, PaddingMode};

/// The released model.
const RELEASED: Config = Config::released();

/// Everything about Converse-USRNet.
pub const INFO: ModelInfo = ModelInfo {
    id: "converse_usrnet",
    class: "ConverseUSRNet",
    name: "Converse-USRNet",
    sha256: "729529b8bc8cbda152d6b60734b01032b49c20fcb8b6da2fb33141d9c3378d82",
    task: Task::Deblur,
    takes_kernel: true,
    channels: 3,
    scale: 1,
    blocks_per_forward: RELEASED.prior.num_iterations * RELEASED.prior.num_blocks,
    block_padding: RELEASED.prior.block.padding,
    // The data step is circular over the whole image: cutting a 480x480 image at 48 px from
    // each side still moved outputs by 9.7 levels at 128 px, the farthest that crop could tell.
    reach: 192,
    feature_bytes_per_px: 575,
    reference_bytes: (12 << 20, 9300),
    golden_prefix: "usrnet_",
    architecture: || format!("{RELEASED:?}"),
    build: |vb| Ok(Box::new(ConverseUSRNet::new(&RELEASED, vb)?)),
};

/// Hyperparameters of `ConverseUSRNet`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The prior: block stack, iterations, features.
    pub prior: conversenet::Config,
    /// Side of the blur kernel (the released model: 7).
    pub kernel_size: usize,
    /// Maps `KernelNet` produces per kernel.
    pub kernel_maps: usize,
    /// Hidden width of `KernelNet`.
    pub kernel_hidden: usize,
    /// eps of the data module's `λ`.
    pub data_eps: f64,
}

impl Config {
    /// The released `converse_usrnet.pth`.
    pub const fn released() -> Self {
        Self {
            prior: conversenet::Config::released(),
            kernel_size: 7,
            kernel_maps: 16,
            kernel_hidden: 64,
            data_eps: 1e-3,
        }
    }
}

/// `KernelNet`: `k*k → 64 → 64 → 16*k*k`, GELU between.
#[derive(Debug)]
struct KernelNet {
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
    maps: usize,
    k: usize,
}

impl KernelNet {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (k2, hid) = (cfg.kernel_size * cfg.kernel_size, cfg.kernel_hidden);
        Ok(Self {
            fc1: candle_nn::linear(k2, hid, vb.pp("fc1"))?,
            fc2: candle_nn::linear(hid, hid, vb.pp("fc2"))?,
            fc3: candle_nn::linear(hid, cfg.kernel_maps * k2, vb.pp("fc3"))?,
            maps: cfg.kernel_maps,
            k: cfg.kernel_size,
        })
    }
}

impl Module for KernelNet {
    fn forward(&self, k: &Tensor) -> Result<Tensor> {
        let b = k.dim(0)?;
        let h = gelu_erf(&self.fc1.forward(&k.reshape((b, ()))?)?)?;
        let h = gelu_erf(&self.fc2.forward(&h)?)?;
        self.fc3
            .forward(&h)?
            .reshape((b, self.maps, self.k, self.k))
    }
}

/// The data module `d`: a Converse2D solve (scale 1, no padding, circular) with the kernels
/// made from the blur kernel's embedding and a learned `λ = sigmoid(alpha - 9) + eps`.
/// `λ` is made from `alpha` at every call, so that a trained `alpha` takes effect.
#[derive(Debug)]
struct DataModule {
    alpha: Tensor,
    eps: f64,
}

impl DataModule {
    fn new(channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let alpha = vb.get((1, channels, 1, 1), "alpha")?;
        Ok(Self { alpha, eps })
    }

    /// `x` `(N, C, H, W)` with per-channel kernels `(1|N, C, k, k)`.
    fn forward(&self, x: &Tensor, kernels: &Tensor) -> Result<Tensor> {
        let lam = lambda(&self.alpha, self.eps)?;
        solve(x, kernels, &lam, 1, 0, PaddingMode::Circular)
    }
}

/// Converse-USRNet.
#[derive(Debug)]
pub struct ConverseUSRNet {
    kernelnet: KernelNet,
    convs: Vec<Pointwise>,
    conv1: Pointwise,
    d: DataModule,
    p: BlockStack,
    conv2: Pointwise,
    kernel_size: usize,
}

impl ConverseUSRNet {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let f = cfg.prior.num_features;
        Ok(Self {
            kernelnet: KernelNet::new(cfg, vb.pp("kernelnet"))?,
            convs: (0..cfg.prior.num_iterations)
                .map(|i| Pointwise::new(cfg.kernel_maps, f, true, vb.pp("convs").pp(i)))
                .collect::<Result<_>>()?,
            conv1: Pointwise::new(3, f, true, vb.pp("conv1"))?,
            d: DataModule::new(f, cfg.data_eps, vb.pp("d"))?,
            p: BlockStack::new(&cfg.prior, true, vb.pp("p.m_body"))?,
            conv2: Pointwise::new(f, 3, true, vb.pp("conv2"))?,
            kernel_size: cfg.kernel_size,
        })
    }

}

impl Network for ConverseUSRNet {
    /// `x`: `(N, 3, H, W)` blurred image in [0, 1]; `kernel`: `(N|1, 1, k, k)` the blur kernel
    /// (normalised, in `scipy.ndimage.convolve` orientation). Returns the deblurred image.
    fn run(&self, x: &Tensor, kernel: Option<&Tensor>, on_block: &dyn Fn()) -> Result<Tensor> {
        let Some(kernel) = kernel else {
            candle_core::bail!("Converse-USRNet needs a blur kernel")
        };
        let (_, one, kh, kw) = kernel.dims4()?;
        if one != 1 || kh != self.kernel_size || kw != self.kernel_size {
            candle_core::bail!(
                "Converse-USRNet takes a (N, 1, {k}, {k}) kernel, got {:?}",
                kernel.shape(),
                k = self.kernel_size
            )
        }
        let kernel = kernel.to_dtype(x.dtype())?.to_device(x.device())?;
        let maps = self.kernelnet.forward(&kernel)?;
        let mut h = self.conv1.forward(x)?;
        for conv in &self.convs {
            h = self.d.forward(&h, &conv.forward(&maps)?)?;
            h = self.p.run(h, on_block)?;
        }
        self.conv2.forward(&h)
    }

    /// The Converse2D layers with learned kernels (the prior's).
    fn converse_layers(&self) -> Vec<&Converse2d> {
        self.p.converse_layers().collect()
    }
}
