//! converse: the released ConverseNet models ("Reverse Convolution and Its Applications to Image
//! Restoration", Huang et al., ICCV 2025) in candle, with the Converse2D operator for your own
//! models.
//!
//! ```no_run
//! use candle_core::{Device, Module, Tensor};
//! use converse::ops::{Converse2d, Converse2dConfig, PaddingMode};
//!
//! let dev = Device::Cpu;
//! let cfg = Converse2dConfig { kernel_size: 5, scale: 2, padding: 4,
//!                              padding_mode: PaddingMode::Replicate, eps: 1e-5 };
//! let layer = Converse2d::from_tensors(
//!     Tensor::full(1f32 / 25.0, (1, 8, 5, 5), &dev)?,
//!     Tensor::zeros((1, 8, 1, 1), candle_core::DType::F32, &dev)?,
//!     cfg,
//! )?;
//! let y = layer.forward(&Tensor::rand(0f32, 1.0, (1, 8, 32, 32), &dev)?)?;
//! assert_eq!(y.dims(), &[1, 8, 64, 64]);
//! # Ok::<(), candle_core::Error>(())
//! ```

pub mod alloc;
pub mod demo;
pub mod device;
pub mod download;
pub mod eval;
pub mod files;
pub mod image_io;
pub mod kernel;
pub mod memory;
pub mod models;
pub mod nn;
pub mod noise;
pub mod ops;
pub mod plan;
pub mod report;
pub mod resources;
pub mod restore;
pub mod shard;
pub mod tiling;
pub mod train;
pub mod verify;
pub mod weights;

pub use models::{Model, ModelKind, Task};
