//! Vectors of [`LANES`] f32 and the one way the fused kernels pick their instruction set.
//!
//! Every kernel entry point is declared with [`simd_fn!`]: its body is generic over a [`Simd`]
//! token and is compiled three times, for AVX-512 and for AVX2 + FMA (x86-64 only, chosen at
//! run time by what the CPU has, checked once) and portable. Plain element loops in the body
//! vectorise on their own (16 f32 wide with AVX-512); the lane FFT uses the token's explicit
//! arithmetic on 8-lane vectors, which AVX-512 runs with twice the registers.

/// f32 lanes per vector.
pub(crate) const LANES: usize = 8;

/// One value of each of [`LANES`] independent computations.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C, align(32))]
pub(crate) struct V(pub(crate) [f32; LANES]);

/// Arithmetic on [`V`]: AVX2 + FMA where the CPU has them ([`Avx2`]), plain loops elsewhere
/// ([`Plain`]). The generic code calls it through a value, so the fast one can only be used
/// after the CPU check that creates it.
pub(crate) trait Simd: Copy {
    fn add(self, a: V, b: V) -> V;
    fn sub(self, a: V, b: V) -> V;
    fn mul(self, a: V, b: V) -> V;
    /// `a * s`.
    fn scale(self, a: V, s: f32) -> V;
    /// `acc + a * s`.
    fn madd(self, acc: V, a: V, s: f32) -> V;
    /// `(a + ib)(c + id)`.
    #[inline(always)]
    fn cmul(self, a: V, b: V, c: V, d: V) -> (V, V) {
        (
            self.sub(self.mul(a, c), self.mul(b, d)),
            self.add(self.mul(a, d), self.mul(b, c)),
        )
    }
}

/// Portable arithmetic.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plain;

impl Plain {
    #[inline(always)]
    fn zip(a: V, b: V, f: impl Fn(f32, f32) -> f32) -> V {
        V(std::array::from_fn(|i| f(a.0[i], b.0[i])))
    }
}

impl Simd for Plain {
    #[inline(always)]
    fn add(self, a: V, b: V) -> V {
        Self::zip(a, b, |a, b| a + b)
    }
    #[inline(always)]
    fn sub(self, a: V, b: V) -> V {
        Self::zip(a, b, |a, b| a - b)
    }
    #[inline(always)]
    fn mul(self, a: V, b: V) -> V {
        Self::zip(a, b, |a, b| a * b)
    }
    #[inline(always)]
    fn scale(self, a: V, s: f32) -> V {
        V(a.0.map(|a| a * s))
    }
    #[inline(always)]
    fn madd(self, acc: V, a: V, s: f32) -> V {
        Self::zip(acc, a, |c, a| c + a * s)
    }
}

/// Tests: run every kernel on the portable path (process-wide, so it only widens coverage).
#[cfg(test)]
pub(crate) static FORCE_PLAIN: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Tests: run the AVX2 path where the CPU has AVX-512.
#[cfg(test)]
pub(crate) static FORCE_AVX2: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// AVX2 and FMA; a value exists only on CPUs that have them.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2(());

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Avx2, Simd, V};
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    impl Avx2 {
        /// `Some` if this CPU has AVX2 and FMA (checked once per process).
        pub(crate) fn get() -> Option<Self> {
            static HAS: OnceLock<bool> = OnceLock::new();
            #[cfg(test)]
            if super::FORCE_PLAIN.load(std::sync::atomic::Ordering::Relaxed) {
                return None;
            }
            let has = *HAS.get_or_init(|| {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
            });
            has.then_some(Avx2(()))
        }

        /// Whether this CPU also has the AVX-512 subsets the kernels are compiled for (F, VL,
        /// DQ, BW; checked once per process).
        pub(crate) fn avx512(self) -> bool {
            static HAS: OnceLock<bool> = OnceLock::new();
            #[cfg(test)]
            if super::FORCE_AVX2.load(std::sync::atomic::Ordering::Relaxed) {
                return false;
            }
            *HAS.get_or_init(|| {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512dq")
                    && is_x86_feature_detected!("avx512bw")
            })
        }
    }

    #[inline(always)]
    fn m(v: V) -> __m256 {
        // SAFETY: `V` is 8 f32 with 32-byte alignment, the layout of `__m256`.
        unsafe { std::mem::transmute::<V, __m256>(v) }
    }

    #[inline(always)]
    fn v(m: __m256) -> V {
        // SAFETY: as in `m`.
        unsafe { std::mem::transmute::<__m256, V>(m) }
    }

    // SAFETY (each block below): an `Avx2` value exists only if `get` found AVX2 and FMA.
    impl Simd for Avx2 {
        #[inline(always)]
        fn add(self, a: V, b: V) -> V {
            v(unsafe { _mm256_add_ps(m(a), m(b)) })
        }
        #[inline(always)]
        fn sub(self, a: V, b: V) -> V {
            v(unsafe { _mm256_sub_ps(m(a), m(b)) })
        }
        #[inline(always)]
        fn mul(self, a: V, b: V) -> V {
            v(unsafe { _mm256_mul_ps(m(a), m(b)) })
        }
        #[inline(always)]
        fn scale(self, a: V, s: f32) -> V {
            v(unsafe { _mm256_mul_ps(m(a), _mm256_set1_ps(s)) })
        }
        #[inline(always)]
        fn madd(self, acc: V, a: V, s: f32) -> V {
            v(unsafe { _mm256_fmadd_ps(m(a), _mm256_set1_ps(s), m(acc)) })
        }
    }
}

/// Declares a kernel whose body (a block generic over the token `$s: impl Simd`) is compiled
/// for AVX2 + FMA and chosen when the CPU has them, and compiled portable otherwise. The body
/// must inline whole (loops and `#[inline(always)]` calls, no closures it relies on to
/// vectorise: closures do not inherit the caller's target features).
macro_rules! simd_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($s:ident $(, $arg:ident: $ty:ty)* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body<S: $crate::ops::cpu::simd::Simd>($s: S, $($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            fn avx2(s: $crate::ops::cpu::simd::Avx2, $($arg: $ty),*) $(-> $ret)? {
                body(s, $($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512dq,avx512bw")]
            #[allow(clippy::too_many_arguments)]
            fn avx512(s: $crate::ops::cpu::simd::Avx2, $($arg: $ty),*) $(-> $ret)? {
                body(s, $($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if let Some(s) = $crate::ops::cpu::simd::Avx2::get() {
                // SAFETY: `s` exists, so this CPU has AVX2 and FMA, and `avx512` checked the
                // rest.
                return unsafe {
                    if s.avx512() {
                        avx512(s, $($arg),*)
                    } else {
                        avx2(s, $($arg),*)
                    }
                };
            }
            body($crate::ops::cpu::simd::Plain, $($arg),*)
        }
    };
}
pub(crate) use simd_fn;
