//! The operators candle lacks (the Converse2D solve, a 2-D real FFT, padding modes, bilinear
//! upsampling), and the choice of backend every layer makes.
//!
//! Each layer with a fused kernel (`Converse2d`, the `ConverseBlock`, GELU, Converse-USRNet's
//! data step) asks [`Backend::of`] once per call: f32 on the CPU takes the fused kernels of
//! [`cpu`]; everything else (other devices, f64) takes the same maths composed of candle ops,
//! which is also the reference the fused kernels are tested against.
//!
//! When a gradient is to flow through a layer, to its input or to its parameters (candle
//! `Var`s, or tensors made from them), the fused inference kernels step aside
//! ([`Backend::for_layer`]) and each layer runs its training kernels where it has them: on the
//! CPU in f32, LayerNorm, the 1x1 convolutions and GELU ([`Backend::for_training`], forward and
//! backward in [`cpu`]), and the Converse2D solve in f32 and f64 ([`Backend::trains_fused`]:
//! the fused forward, the adjoint solve and the filters' gradient, passed on to the kernels and
//! `λ` through the ops that built the filters). Elsewhere candle's autograd differentiates the
//! composed ops, which are also the reference the training kernels are tested against.

pub mod converse2d;
pub(crate) mod cpu;
pub mod fft;
pub(crate) mod grad;
pub mod pad;
pub mod planar_cache;
pub mod profile;
pub mod resize;
pub(crate) mod transfer;

use std::cell::Cell;

use candle_core::{DType, Tensor};

pub use converse2d::{solve as converse2d_solve, Converse2d, Converse2dConfig};
#[doc(hidden)]
pub use cpu::bench;
pub use cpu::simd::level as simd_level;
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
    /// [`Backend::Reference`] (and always the reference inside [`with_reference`], or when `x`
    /// carries gradients).
    pub fn of(x: &Tensor) -> Self {
        let fused = x.device().is_cpu() && x.dtype() == DType::F32 && !x.track_op();
        if fused && !FORCE_REFERENCE.with(Cell::get) {
            Self::Fused
        } else {
            Self::Reference
        }
    }
}

impl Backend {
    /// The backend for input `x` to a layer with parameters `params`: [`Backend::of`], or the
    /// reference when a gradient is to flow to any of the parameters.
    pub fn for_layer(x: &Tensor, params: &[&Tensor]) -> Self {
        if params.iter().any(|p| p.track_op()) {
            Self::Reference
        } else {
            Self::of(x)
        }
    }
}

impl Backend {
    /// The backend of a layer with a fused backward (LayerNorm, GELU, a 1x1's bias) for input
    /// `x` and parameters `params`: [`Backend::Fused`] when a gradient is to flow through it
    /// (to `x` or to a parameter) and `x` is f32 on the CPU, outside [`with_reference`]; else
    /// [`Backend::Reference`] (also when no gradient flows: the inference kernels are
    /// [`Backend::of`]'s).
    pub fn for_training(x: &Tensor, params: &[&Tensor]) -> Self {
        let tracked = x.track_op() || params.iter().any(|p| p.track_op());
        let cpu_f32 = x.device().is_cpu() && x.dtype() == DType::F32;
        if tracked && cpu_f32 && !FORCE_REFERENCE.with(Cell::get) {
            Self::Fused
        } else {
            Self::Reference
        }
    }

    /// Whether a Converse2D solve through which gradients flow runs its fused CPU backward
    /// ([`cpu::solve_grad`], and on lanes at scale 1 in f32) for input `x`: f32 and f64 on the
    /// CPU, outside [`with_reference`]. The other layers ask [`Backend::for_training`].
    pub fn trains_fused(x: &Tensor) -> bool {
        x.device().is_cpu()
            && matches!(x.dtype(), DType::F32 | DType::F64)
            && !FORCE_REFERENCE.with(Cell::get)
    }
}

/// Runs `f` with every layer called on this thread taking [`Backend::Reference`]: the composed
/// candle ops a GPU runs, here on the CPU (for tests and comparisons).
pub fn with_reference<R>(f: impl FnOnce() -> R) -> R {
    with_thread_setting(&FORCE_REFERENCE, true, f)
}

/// Runs `f` with the thread-local `setting` of this thread set to `value`, and restores the
/// value before after, also on a panic.
pub(crate) fn with_thread_setting<T: Copy + 'static, R>(
    setting: &'static std::thread::LocalKey<Cell<T>>,
    value: T,
    f: impl FnOnce() -> R,
) -> R {
    struct Restore<T: Copy + 'static>(&'static std::thread::LocalKey<Cell<T>>, T);
    impl<T: Copy + 'static> Drop for Restore<T> {
        fn drop(&mut self) {
            self.0.with(|c| c.set(self.1));
        }
    }
    let _restore = Restore(setting, setting.with(|c| c.replace(value)));
    f()
}
