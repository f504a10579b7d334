//! The operators candle lacks: the Converse2D solve, a 2-D real FFT, padding modes and bilinear
//! upsampling.

pub mod converse2d;
pub(crate) mod cpu;
pub mod fft;
pub mod pad;
pub mod profile;
pub mod resize;
pub(crate) mod vfft;

pub use converse2d::{solve as converse2d_solve, Converse2d, Converse2dConfig};
pub use fft::{irfft2, rfft2, Spectrum};
pub use pad::{pad2d, PaddingMode};
pub use resize::upsample_bilinear2d;
