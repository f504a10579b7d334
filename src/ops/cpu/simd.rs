//! Vectors of [`LANES`] f32 and the one way the fused kernels pick their instruction set.
//!
//! Every kernel entry point is declared with [`simd_fn!`]: its body is generic over a [`Simd`]
//! token and is compiled three times, for AVX-512 and for AVX2 + FMA (x86-64 only) and portable,
//! and each call runs the one [`Isa::current`] names: what the CPU has (checked once per
//! process), or less on a thread inside [`Isa::run`] (how the tests cover every path). Plain
//! element loops in the body vectorise on their own (16 f32 wide with AVX-512); the lane FFT uses the token's explicit
//! arithmetic on 8-lane vectors, which AVX-512 runs with twice the registers.

/// f32 lanes per vector.
pub(crate) const LANES: usize = 8;

/// One value of each of [`LANES`] independent computations.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C, align(32))]
pub(crate) struct V(pub(crate) [f32; LANES]);

/// Two vectors side by side: one AVX-512 register, or two of the others. The lane FFT runs on
/// it where it has two lines of transforms to do at once (two adjacent columns of a grid).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C, align(64))]
pub(crate) struct V2(pub(crate) [V; 2]);

/// The vectors of `v`, in order.
pub(crate) fn halves_mut(v: &mut [V2]) -> &mut [V] {
    // SAFETY: a `V2` is two `V` in a row (`repr(C)`), at an alignment that suits `V`; the
    // mutable borrow carries over.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), 2 * v.len()) }
}

/// `v` as pairs of vectors (`v.len()` even, `v` at a pair's alignment: a part of [`halves_mut`]
/// that starts at an even index).
pub(crate) fn pairs(v: &[V]) -> &[V2] {
    assert!(v.len().is_multiple_of(2), "pairs of {} vectors", v.len());
    assert!(
        v.as_ptr().cast::<V2>().is_aligned(),
        "pairs of vectors at an odd address"
    );
    // SAFETY: `V2` is two `V` in a row (`repr(C)`) and `v` starts at its alignment (asserted),
    // so `v`'s memory holds `v.len() / 2` of them; the borrow carries over.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), v.len() / 2) }
}

/// [`pairs`], mutable.
pub(crate) fn pairs_mut(v: &mut [V]) -> &mut [V2] {
    assert!(v.len().is_multiple_of(2), "pairs of {} vectors", v.len());
    assert!(
        v.as_ptr().cast::<V2>().is_aligned(),
        "pairs of vectors at an odd address"
    );
    // SAFETY: as in `pairs`; the mutable borrow carries over.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), v.len() / 2) }
}

/// Arithmetic on [`V`] and [`V2`]: AVX2 + FMA where the CPU has them ([`Avx2`]), with AVX-512
/// registers for [`V2`] where it has those too ([`Avx512`]), plain loops elsewhere
/// ([`Plain`]). Each lane of a [`V2`] goes through the same operations as a lane of a [`V`]
/// (so the same bits). The generic code calls it through a value, so the fast ones can only be
/// used after the CPU check that creates them.
pub(crate) trait Simd: Copy {
    fn add(self, a: V, b: V) -> V;
    fn sub(self, a: V, b: V) -> V;
    fn mul(self, a: V, b: V) -> V;
    /// `a * s`.
    fn scale(self, a: V, s: f32) -> V;
    /// `acc + a * s`.
    fn madd(self, acc: V, a: V, s: f32) -> V;
    /// The `LANES x LANES` transpose: lane `i` of output `l` is lane `l` of input `i`.
    #[inline(always)]
    fn transpose(self, rows: [V; LANES]) -> [V; LANES] {
        std::array::from_fn(|l| V(std::array::from_fn(|i| rows[i].0[l])))
    }
    /// `(a + ib)(c + id)`.
    #[inline(always)]
    fn cmul(self, a: V, b: V, c: V, d: V) -> (V, V) {
        (
            self.sub(self.mul(a, c), self.mul(b, d)),
            self.add(self.mul(a, d), self.mul(b, c)),
        )
    }
    /// [`Simd::add`] on both halves.
    #[inline(always)]
    fn add2(self, a: V2, b: V2) -> V2 {
        V2([self.add(a.0[0], b.0[0]), self.add(a.0[1], b.0[1])])
    }
    /// [`Simd::sub`] on both halves.
    #[inline(always)]
    fn sub2(self, a: V2, b: V2) -> V2 {
        V2([self.sub(a.0[0], b.0[0]), self.sub(a.0[1], b.0[1])])
    }
    /// [`Simd::scale`] on both halves.
    #[inline(always)]
    fn scale2(self, a: V2, s: f32) -> V2 {
        V2([self.scale(a.0[0], s), self.scale(a.0[1], s)])
    }
    /// [`Simd::madd`] on both halves.
    #[inline(always)]
    fn madd2(self, acc: V2, a: V2, s: f32) -> V2 {
        V2([
            self.madd(acc.0[0], a.0[0], s),
            self.madd(acc.0[1], a.0[1], s),
        ])
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

/// The instruction sets the kernels are compiled for, in order: each one's CPU has the ones
/// before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Isa {
    Portable,
    /// AVX2 and FMA.
    Avx2,
    /// AVX2 and FMA with the AVX-512 subsets F, VL, DQ and BW.
    Avx512,
}

thread_local! {
    /// The most the kernels called on this thread may use ([`Isa::run`]).
    static CAP: std::cell::Cell<Isa> = const { std::cell::Cell::new(Isa::Avx512) };
}

impl Isa {
    /// What this CPU has (checked once per process).
    fn detected() -> Self {
        static HAS: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                let avx512 = is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512dq")
                    && is_x86_feature_detected!("avx512bw");
                return if avx512 { Isa::Avx512 } else { Isa::Avx2 };
            }
            Isa::Portable
        })
    }

    /// The instruction set the kernels called on this thread run with: what the CPU has, at
    /// most the cap of the enclosing [`Isa::run`]. Parallel code reads it before spawning and
    /// runs each piece of work under it, since a thread's cap does not reach the pool's
    /// workers.
    pub(crate) fn current() -> Self {
        Self::detected().min(CAP.with(std::cell::Cell::get))
    }

    /// Runs `f` with the kernels called on this thread using at most `self` (the cap before
    /// is restored after, also on a panic).
    pub(crate) fn run<R>(self, f: impl FnOnce() -> R) -> R {
        crate::ops::with_thread_setting(&CAP, self, f)
    }

    /// Each instruction set this CPU has, the portable one first.
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Self> {
        [Self::Portable, Self::Avx2, Self::Avx512]
            .into_iter()
            .filter(|&i| i <= Self::detected())
            .collect()
    }

    /// `avx512`, `avx2` or `portable`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
        }
    }
}

/// AVX2 and FMA; a value exists only where [`Isa::current`] allows them.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2(());

/// [`Avx2`], with [`V2`] in AVX-512 registers; a value exists only where [`Isa::current`]
/// allows AVX-512.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512(Avx2);

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Avx2, Avx512, Isa, Simd, V, V2};
    use std::arch::x86_64::*;

    impl Avx2 {
        /// `Some` if the kernels called on this thread may use AVX2 and FMA.
        pub(crate) fn get() -> Option<Self> {
            (Isa::current() >= Isa::Avx2).then_some(Avx2(()))
        }
    }

    impl Avx512 {
        /// `Some` if the kernels called on this thread may use AVX-512.
        pub(crate) fn get() -> Option<Self> {
            (Isa::current() >= Isa::Avx512).then_some(Avx512(Avx2(())))
        }
    }

    #[inline(always)]
    fn m2(v: V2) -> __m512 {
        // SAFETY: `V2` is 16 f32, the size of `__m512` (its alignment only matters in memory).
        unsafe { std::mem::transmute::<V2, __m512>(v) }
    }

    #[inline(always)]
    fn v2(m: __m512) -> V2 {
        // SAFETY: as in `m2`.
        unsafe { std::mem::transmute::<__m512, V2>(m) }
    }

    // SAFETY (each block below): an `Avx512` value exists only if `get` found AVX-512 (and so
    // AVX2 and FMA). [`V`]'s arithmetic is `Avx2`'s; a lane of [`V2`] takes the same operation.
    impl Simd for Avx512 {
        #[inline(always)]
        fn add(self, a: V, b: V) -> V {
            self.0.add(a, b)
        }
        #[inline(always)]
        fn sub(self, a: V, b: V) -> V {
            self.0.sub(a, b)
        }
        #[inline(always)]
        fn mul(self, a: V, b: V) -> V {
            self.0.mul(a, b)
        }
        #[inline(always)]
        fn scale(self, a: V, s: f32) -> V {
            self.0.scale(a, s)
        }
        #[inline(always)]
        fn madd(self, acc: V, a: V, s: f32) -> V {
            self.0.madd(acc, a, s)
        }
        #[inline(always)]
        fn transpose(self, rows: [V; 8]) -> [V; 8] {
            self.0.transpose(rows)
        }
        #[inline(always)]
        fn add2(self, a: V2, b: V2) -> V2 {
            v2(unsafe { _mm512_add_ps(m2(a), m2(b)) })
        }
        #[inline(always)]
        fn sub2(self, a: V2, b: V2) -> V2 {
            v2(unsafe { _mm512_sub_ps(m2(a), m2(b)) })
        }
        #[inline(always)]
        fn scale2(self, a: V2, s: f32) -> V2 {
            v2(unsafe { _mm512_mul_ps(m2(a), _mm512_set1_ps(s)) })
        }
        #[inline(always)]
        fn madd2(self, acc: V2, a: V2, s: f32) -> V2 {
            v2(unsafe { _mm512_fmadd_ps(m2(a), _mm512_set1_ps(s), m2(acc)) })
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
        #[inline(always)]
        fn transpose(self, rows: [V; 8]) -> [V; 8] {
            let [r0, r1, r2, r3, r4, r5, r6, r7] = rows.map(m);
            unsafe {
                // Pairs, then quads within each 128-bit half, then the halves.
                let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
                let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
                let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
                let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
                let q0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let q1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let q2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let q3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let q4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let q5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let q6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let q7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                [
                    _mm256_permute2f128_ps::<0x20>(q0, q4),
                    _mm256_permute2f128_ps::<0x20>(q1, q5),
                    _mm256_permute2f128_ps::<0x20>(q2, q6),
                    _mm256_permute2f128_ps::<0x20>(q3, q7),
                    _mm256_permute2f128_ps::<0x31>(q0, q4),
                    _mm256_permute2f128_ps::<0x31>(q1, q5),
                    _mm256_permute2f128_ps::<0x31>(q2, q6),
                    _mm256_permute2f128_ps::<0x31>(q3, q7),
                ]
                .map(v)
            }
        }
    }
}

/// Asks for the cache line holding `x` to be brought into the caches (a hint; nothing where
/// the architecture has no such instruction).
#[inline(always)]
pub(crate) fn prefetch<T>(x: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and changes no memory.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (x as *const T).cast(),
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// The instruction set the fused kernels run with on this CPU: `avx512`, `avx2` (with FMA) or
/// `portable` (what [`simd_fn!`] picks).
pub fn level() -> &'static str {
    Isa::current().name()
}

/// Declares a kernel whose body (a block generic over the token `$s: impl Simd`) is compiled
/// for AVX-512, for AVX2 + FMA and portable, and runs the one [`Isa::current`] names. The body
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
            fn avx512(s: $crate::ops::cpu::simd::Avx512, $($arg: $ty),*) $(-> $ret)? {
                body(s, $($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if let Some(s) = $crate::ops::cpu::simd::Avx512::get() {
                // SAFETY: `s` exists, so this CPU has AVX-512, AVX2 and FMA.
                return unsafe { avx512(s, $($arg),*) };
            }
            #[cfg(target_arch = "x86_64")]
            if let Some(s) = $crate::ops::cpu::simd::Avx2::get() {
                // SAFETY: `s` exists, so this CPU has AVX2 and FMA.
                return unsafe { avx2(s, $($arg),*) };
            }
            body($crate::ops::cpu::simd::Plain, $($arg),*)
        }
    };
}
pub(crate) use simd_fn;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_matches_the_plain_one() {
        let rows: [V; LANES] =
            std::array::from_fn(|i| V(std::array::from_fn(|l| (i * 10 + l) as f32)));
        let t = Plain.transpose(rows);
        for (l, col) in t.iter().enumerate() {
            for (i, x) in col.0.iter().enumerate() {
                assert_eq!(*x, (i * 10 + l) as f32);
            }
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(s) = Avx2::get() {
            assert_eq!(s.transpose(rows), t);
        }
    }

    /// A cap holds on its own thread only, for the call it wraps, and never raises the
    /// instruction set above what the CPU has.
    #[test]
    fn a_cap_holds_on_its_thread_for_its_call() {
        let full = Isa::current();
        assert_eq!(full, Isa::detected());
        assert_eq!(Isa::available().last(), Some(&full));
        Isa::Portable.run(|| {
            assert_eq!((Isa::current(), level()), (Isa::Portable, "portable"));
            #[cfg(target_arch = "x86_64")]
            assert!(Avx2::get().is_none());
            let other = std::thread::spawn(Isa::current).join().unwrap();
            assert_eq!(other, full);
            Isa::Avx512.run(|| assert_eq!(Isa::current(), full));
            assert_eq!(Isa::current(), Isa::Portable);
        });
        assert_eq!(Isa::current(), full);
    }
}
