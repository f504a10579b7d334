//! Converse-SRResNet (x4), from "Reverse Convolution and Its Applications to Image Restoration"
//! (Huang et al., ICCV 2025); `ConverseMSRResNet` in the official `models/converse_srresnet.py`.
//!
//! MSRResNet with every residual block replaced by a `ConverseBlock` and each pixel shuffle by a
//! Converse2D of scale 2, plus a bilinear x4 skip of the input.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::{ModelInfo, Network, Task};
use crate::nn::{ConverseBlock, Gelu, Pointwise};
use crate::ops::{upsample_bilinear2d, Converse2d, Converse2dConfig, PaddingMode};

/// The released model.
const RELEASED: Config = Config::released();

/// Everything about Converse-SRResNet.
pub const INFO: ModelInfo = ModelInfo {
    id: "converse_srresnet",
    class: "ConverseMSRResNet",
    name: "Converse-SRResNet",
    sha256: "ed75a697f1ebb9f9ad6a53b7875bb76098f23b48d87bf6f0b0dd8cde6df81d2f",
    task: Task::Sr,
    takes_kernel: false,
    channels: RELEASED.in_channels,
    scale: RELEASED.upscale(),
    // conv_body, then upconv1, upconv2 and conv_hres.
    blocks_per_forward: RELEASED.num_blocks + 3,
    block_padding: RELEASED.block.padding,
    // Cutting a 480x480 image at 48 px from each side still moved outputs by 2.9 levels at
    // 128 px, the farthest that crop could tell.
    reach: 192,
    feature_bytes_per_px: 615,
    reference_bytes: (33 << 20, 6100),
    golden_prefix: "srresnet_",
    architecture: || format!("{RELEASED:?}"),
    build: |vb| Ok(Box::new(ConverseMSRResNet::new(&RELEASED, vb)?)),
};

/// Hyperparameters of `ConverseMSRResNet`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Image channels in.
    pub in_channels: usize,
    /// Image channels out.
    pub out_channels: usize,
    /// Feature channels.
    pub num_features: usize,
    /// `ConverseBlock`s in `conv_body`.
    pub num_blocks: usize,
    /// Converse2D in the blocks (kernel 5, padding 4, replicate).
    pub block: Converse2dConfig,
    /// The two x2 Converse2D upsamplers `up1`, `up2` (kernel 2, scale 2, padding 2, eps 1e-3).
    pub up: Converse2dConfig,
}

impl Config {
    /// The released `converse_srresnet.pth`: RGB x4, 64 features, 16 blocks.
    pub const fn released() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            num_features: 64,
            num_blocks: 16,
            block: Converse2dConfig {
                kernel_size: 5,
                scale: 1,
                padding: 4,
                padding_mode: PaddingMode::Replicate,
                eps: 1e-5,
            },
            up: Converse2dConfig {
                kernel_size: 2,
                scale: 2,
                padding: 2,
                padding_mode: PaddingMode::Replicate,
                eps: 1e-3,
            },
        }
    }

    /// Total upscaling factor.
    pub const fn upscale(&self) -> usize {
        self.up.scale * self.up.scale
    }
}

/// Converse-SRResNet.
#[derive(Debug)]
pub struct ConverseMSRResNet {
    conv_first: Pointwise,
    conv_body: Vec<ConverseBlock>,
    upconv1: ConverseBlock,
    up1: Converse2d,
    upconv2: ConverseBlock,
    up2: Converse2d,
    conv_hres: ConverseBlock,
    conv_last: Pointwise,
    upscale: usize,
}

impl ConverseMSRResNet {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let f = cfg.num_features;
        let block = |vb: VarBuilder| ConverseBlock::new(f, cfg.block, false, vb);
        Ok(Self {
            conv_first: Pointwise::new(cfg.in_channels, f, true, vb.pp("conv_first"))?,
            conv_body: (0..cfg.num_blocks)
                .map(|i| block(vb.pp("conv_body").pp(i)))
                .collect::<Result<_>>()?,
            upconv1: block(vb.pp("upconv1"))?,
            up1: Converse2d::new(f, cfg.up, vb.pp("up1"))?,
            upconv2: block(vb.pp("upconv2"))?,
            up2: Converse2d::new(f, cfg.up, vb.pp("up2"))?,
            conv_hres: block(vb.pp("conv_hres"))?,
            conv_last: Pointwise::new(f, cfg.out_channels, false, vb.pp("conv_last"))?,
            upscale: cfg.upscale(),
        })
    }
}

impl Network for ConverseMSRResNet {
    fn converse_layers(&self) -> Vec<&Converse2d> {
        let blocks = [&self.upconv1, &self.upconv2, &self.conv_hres];
        let blocks = self.conv_body.iter().chain(blocks);
        let mut layers: Vec<&Converse2d> = blocks.map(ConverseBlock::converse).collect();
        layers.extend([&self.up1, &self.up2]);
        layers
    }

    /// `x`: `(N, 3, H, W)` in [0, 1]; returns `(N, 3, 4H, 4W)`.
    fn run(&self, x: &Tensor, _: Option<&Tensor>, on_block: &dyn Fn()) -> Result<Tensor> {
        // Each step replaces `h`, so that no more than a layer's input and output are alive.
        let mut h = Gelu.forward(&self.conv_first.forward(x)?)?;
        for block in &self.conv_body {
            h = block.run(&h, on_block)?;
        }
        for (block, up) in [(&self.upconv1, &self.up1), (&self.upconv2, &self.up2)] {
            h = block.run(&h, on_block)?;
            h = up.forward(&h)?;
            h = Gelu.forward(&h)?;
        }
        h = self.conv_hres.run(&h, on_block)?;
        h = Gelu.forward(&h)?;
        self.conv_last.forward(&h)? + upsample_bilinear2d(x, self.upscale)?
    }
}
