//! Converse-DnCNN, from "Reverse Convolution and Its Applications to Image Restoration"
//! (Huang et al., ICCV 2025); `ConverseDnCNN` in the official `models/converse_dncnn.py`.
//!
//! A 1x1 head, 20 `ConverseBlock`s and a 1x1 tail. It predicts the clean image directly (no
//! global residual). The released checkpoint is grayscale, sigma 25, kernel 7.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::{ModelInfo, Network, Task};
use crate::nn::{ConverseBlock, Pointwise};
use crate::ops::{Converse2d, Converse2dConfig, PaddingMode};

/// The released model.
const RELEASED: Config = Config::released();

/// Everything about Converse-DnCNN.
pub const INFO: ModelInfo = ModelInfo {
    id: "converse_dncnn",
    class: "ConverseDnCNN",
    name: "Converse-DnCNN",
    sha256: "3b86c7f6e41a014448f923bc331232e1f45e2eae350dd7f9e18440803d283e89",
    task: Task::Denoise,
    takes_kernel: false,
    channels: RELEASED.in_channels,
    scale: 1,
    blocks_per_forward: RELEASED.num_blocks,
    block_padding: RELEASED.padding,
    // Cutting a 480x480 image at 48 px from each side moves no output by half an 8-bit level
    // beyond 127 px.
    reach: 128,
    feature_bytes_per_px: 615,
    reference_bytes: (64 << 20, 14900),
    golden_prefix: "dncnn_",
    architecture: || format!("{RELEASED:?}"),
    build: |vb| Ok(Box::new(ConverseDnCNN::new(&RELEASED, vb)?)),
};

/// Hyperparameters of `ConverseDnCNN`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Image channels in and out (1: grayscale).
    pub in_channels: usize,
    /// Feature channels between head and tail.
    pub num_features: usize,
    /// Number of `ConverseBlock`s (`m_body.{0..}`).
    pub num_blocks: usize,
    /// Converse2D kernel size in the blocks.
    pub kernel_size: usize,
    /// Converse2D padding in the blocks.
    pub padding: usize,
    /// Converse2D padding mode in the blocks.
    pub padding_mode: PaddingMode,
    /// Converse2D eps in the blocks.
    pub eps: f64,
}

impl Config {
    /// The released `converse_dncnn.pth`: gray, 64 features, 20 blocks, kernel 7, padding 6,
    /// circular (the paper's table says kernel 5; the released file is 7).
    pub const fn released() -> Self {
        Self {
            in_channels: 1,
            num_features: 64,
            num_blocks: 20,
            kernel_size: 7,
            padding: 6,
            padding_mode: PaddingMode::Circular,
            eps: 1e-5,
        }
    }
}

/// Converse-DnCNN.
#[derive(Debug)]
pub struct ConverseDnCNN {
    head: Pointwise,
    body: Vec<ConverseBlock>,
    tail: Pointwise,
}

impl ConverseDnCNN {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let f = cfg.num_features;
        let converse = Converse2dConfig {
            kernel_size: cfg.kernel_size,
            scale: 1,
            padding: cfg.padding,
            padding_mode: cfg.padding_mode,
            eps: cfg.eps,
        };
        let body = (0..cfg.num_blocks)
            .map(|i| ConverseBlock::new(f, converse, false, vb.pp("m_body").pp(i)))
            .collect::<Result<_>>()?;
        Ok(Self {
            head: Pointwise::new(cfg.in_channels, f, true, vb.pp("m_head.0"))?,
            body,
            tail: Pointwise::new(f, cfg.in_channels, true, vb.pp("m_tail.0"))?,
        })
    }
}

impl Network for ConverseDnCNN {
    /// `x`: `(N, C, H, W)` noisy image in [0, 1]; returns the denoised image.
    fn run(&self, x: &Tensor, _: Option<&Tensor>, on_block: &dyn Fn()) -> Result<Tensor> {
        let mut h = self.head.forward(x)?;
        for block in &self.body {
            h = block.run(&h, on_block)?;
        }
        self.tail.forward(&h)
    }

    fn converse_layers(&self) -> Vec<&Converse2d> {
        self.body.iter().map(ConverseBlock::converse).collect()
    }
}
