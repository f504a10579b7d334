//! The fused kernels of the CPU backend: f32, on contiguous channels-first planes.
//!
//! They compute what the reference layers compute op by op with candle (and what every other
//! device and dtype runs), only with fewer passes over memory: LayerNorm's affine folds into the
//! next 1x1, bias and GELU run right after each matrix product on a tile still in cache, residual
//! adds accumulate inside the products, and the Converse2D solve (pad, FFT, filter, inverse FFT,
//! crop, GELU) runs 16 channels at a time over vectors. Each kernel has its test against plain
//! loops or the reference layer.
//!
//! | module | what |
//! | --- | --- |
//! | [`simd`] | 8-lane vectors, the instruction set per call (AVX-512, AVX2 + FMA, portable), [`simd::simd_fn!`] |
//! | [`act`] | GELU and its derivative |
//! | [`norm`] | channels-first LayerNorm and its backward, bias gradients (for training) |
//! | [`bench`] | units of work for `benches/ops.rs` to time |
//! | [`gemm`] | matrix products on the calling thread |
//! | [`branch`] | the fused `ConverseBlock` |
//! | [`lanes`] | complex 1-D FFTs over 8-lane vectors (mixed radix, Rader for large primes) |
//! | [`solve`] | the lane-batched Converse2D solve: its grid, kernel, transfer functions and buffer pool |
//! | [`solve_grad`] | the solve plane by plane with its backward (f32 and f64), for training; the lane backward's reference |

pub(crate) mod act;
pub mod bench;
pub(crate) mod branch;
pub(crate) mod gemm;
pub(crate) mod lanes;
pub(crate) mod norm;
pub(crate) mod simd;
pub(crate) mod solve;
pub(crate) mod solve_grad;
