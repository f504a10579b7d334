//! ConverseNet for blind deblurring, from "Reverse Convolution and Its Applications to Image
//! Restoration" (Huang et al., ICCV 2025); `ConverseNet` in the official
//! `models/converse_usrnet.py`.
//!
//! A 1x1 head, one stack of `ConverseBlock`s applied several times with shared weights, and a
//! 1x1 tail.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::{ModelInfo, Network, Task};
use crate::nn::{ConverseBlock, Pointwise};
use crate::ops::{Converse2d, Converse2dConfig, PaddingMode};

/// The released model.
const RELEASED: Config = Config::released();

/// Everything about ConverseNet.
pub const INFO: ModelInfo = ModelInfo {
    id: "conversenet",
    class: "ConverseNet",
    name: "ConverseNet",
    sha256: "603cbb29075178410db9ab6166b247d2ddff32f349c59a7e1763c46feca270bd",
    task: Task::Deblur,
    takes_kernel: false,
    channels: 3,
    scale: 1,
    blocks_per_forward: RELEASED.num_iterations * RELEASED.num_blocks,
    block_padding: RELEASED.block.padding,
    // Cutting a 480x480 image at 48 px from each side moves no output by half an 8-bit level
    // beyond 104 px.
    reach: 112,
    feature_bytes_per_px: 575,
    reference_bytes: (8 << 20, 9400),
    golden_prefix: "conversenet_",
    architecture: || format!("{RELEASED:?}"),
    build: |vb| Ok(Box::new(ConverseNet::new(&RELEASED, vb)?)),
};

/// Hyperparameters of `ConverseNet` (and of the prior of `ConverseUSRNet`).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Times the shared block stack is applied.
    pub num_iterations: usize,
    /// Feature channels.
    pub num_features: usize,
    /// `ConverseBlock`s in the stack (`p.m_body.{0..}`).
    pub num_blocks: usize,
    /// Converse2D in the blocks (kernel 3, padding 2, circular).
    pub block: Converse2dConfig,
}

impl Config {
    /// The released `conversenet.pth`: 7 blocks applied 5 times, 64 features.
    pub const fn released() -> Self {
        Self {
            num_iterations: 5,
            num_features: 64,
            num_blocks: 7,
            block: Converse2dConfig {
                kernel_size: 3,
                scale: 1,
                padding: 2,
                padding_mode: PaddingMode::Circular,
                eps: 1e-5,
            },
        }
    }
}

/// The shared block stack `p.m_body` (`MultiConverseBlock`, or with alphas
/// `MultiConverseBlockAlphaVariant`).
#[derive(Debug)]
pub(crate) struct BlockStack(Vec<ConverseBlock>);

impl BlockStack {
    pub(crate) fn new(cfg: &Config, alpha: bool, vb: VarBuilder) -> Result<Self> {
        (0..cfg.num_blocks)
            .map(|i| ConverseBlock::new(cfg.num_features, cfg.block, alpha, vb.pp(i)))
            .collect::<Result<_>>()
            .map(Self)
    }
}

impl BlockStack {
    pub(crate) fn converse_layers(&self) -> impl Iterator<Item = &Converse2d> {
        self.0.iter().map(ConverseBlock::converse)
    }
}

impl BlockStack {
    /// Takes `h` by value, so that each block's input is freed as soon as the block is done.
    pub(crate) fn run(&self, mut h: Tensor, on_block: &dyn Fn()) -> Result<Tensor> {
        for block in &self.0 {
            h = block.run(&h, on_block)?;
        }
        Ok(h)
    }
}

/// ConverseNet.
#[derive(Debug)]
pub struct ConverseNet {
    conv1: Pointwise,
    p: BlockStack,
    conv2: Pointwise,
    num_iterations: usize,
}

impl ConverseNet {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv1: Pointwise::new(3, cfg.num_features, true, vb.pp("conv1"))?,
            p: BlockStack::new(cfg, false, vb.pp("p.m_body"))?,
            conv2: Pointwise::new(cfg.num_features, 3, true, vb.pp("conv2"))?,
            num_iterations: cfg.num_iterations,
        })
    }
}

impl Network for ConverseNet {
    /// `x`: `(N, 3, H, W)` blurred image in [0, 1]; returns the deblurred image.
    fn run(&self, x: &Tensor, _: Option<&Tensor>, on_block: &dyn Fn()) -> Result<Tensor> {
        let mut h = self.conv1.forward(x)?;
        for _ in 0..self.num_iterations {
            h = self.p.run(h, on_block)?;
        }
        self.conv2.forward(&h)
    }

    fn converse_layers(&self) -> Vec<&Converse2d> {
        self.p.converse_layers().collect()
    }
}
