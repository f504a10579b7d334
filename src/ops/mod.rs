//! The operators candle lacks (the Converse2D solve, a 2-D real FFT, padding modes, bilinear
//! upsampling), and the choice of backend every layer makes.
//!
//! Each layer with a fused kernel (`Converse2d`, the `ConverseBlock`, GELU, Converse-USRNet's
//! data step) asks [`Backend::of`] once per call: f32 on the CPU takes the fused kernels of
//! [`cpu`]; everything else (other devices, f64) takes the same maths composed of candle ops,
//! which is also the reference the fused kernels are tested against.

pub mod converse2d;
pub(crate) mod cpu;
pub mod fft;
pub mod pad;
pub mod planar_cache;
pub mod profile;
pub mod resize;
pub(crate) mod transfer;

use std::cell::Cell;

use candle_core::{DType, Tensor};

pub use converse2d::{solve as converse2d_solve, Converse2d, Converse2dConfig};
pub use cpu::simd::level as simd_level;
pub use cpu::solve::FILTER_CACHE_ENV;
pub use fft::{irfft2, rfft2};
pub use pad::{pad2d, PaddingMode};
pub use resize::upsample_bilinear2d;

/// How a layer computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The fused f32 CPU kernels.
    Fused,
    /// Composed candle ops: any device, any float type.
    Reference,
}

thread_local! {
    static FORCE_REFERENCE: Cell<bool> = const { Cell::new(false) };
}

impl Backend {
    /// The backend for input `x`: [`Backend::Fused`] for f32 on the CPU, else
    /// [`Backend::Reference`] (and always the reference inside [`with_reference`]).
    pub fn of(x: &Tensor) -> Self {
        let fused = x.device().is_cpu() && x.dtype() == DType::F32;
        if fused && !FORCE_REFERENCE.with(Cell::get) {
            Self::Fused
        } else {
            Self::Reference
        }
    }
}

/// Runs `f` with every layer called on this thread taking [`Backend::Reference`]: the composed
/// candle ops a GPU runs, here on the CPU (for tests and comparisons).
pub fn with_reference<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            FORCE_REFERENCE.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(FORCE_REFERENCE.with(|c| c.replace(true)));
    f()
}

/// Frees what the operators keep between calls for the whole process: the fused solve's reusable
/// buffers (as large as the widest solve so far) and the FFT plans (a few KB per size). A
/// layer's own transfer functions go with the layer ([`Converse2d::clear_cache`]).
pub fn clear_caches() {
    cpu::solve::pool().clear();
    fft::clear_plans();
}

/// Bytes held by the fused solve's reusable buffers.
pub fn cached_buffer_bytes() -> usize {
    cpu::solve::pool().bytes()
}
