//! Bit-exact reproduction of numpy's legacy global random generator
//! (`numpy.random.seed` / `numpy.random.normal`, i.e. `RandomState`).
//!
//! `RandomState` is an MT19937 generator. An integer seed goes through the
//! reference `init_genrand` (not `init_by_array`; checked against
//! `np.random.get_state()` for several seeds). Doubles use the 53-bit
//! `genrand_res53` construction and Gaussians use the polar Box–Muller
//! method, which yields values in pairs and caches the second one across
//! calls.

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// numpy's legacy `RandomState`: MT19937 plus the cached Gaussian.
#[derive(Clone, Debug)]
pub struct LegacyRng {
    mt: [u32; N],
    pos: usize,
    cached_gauss: Option<f64>,
}

impl LegacyRng {
    /// Same state as `np.random.seed(seed)`.
    pub fn new(seed: u32) -> Self {
        let mut mt = [0u32; N];
        mt[0] = seed;
        for i in 1..N {
            let prev = mt[i - 1];
            // `i < 624`, so the cast is lossless.
            mt[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Self {
            mt,
            pos: N,
            cached_gauss: None,
        }
    }

    fn refill(&mut self) {
        for i in 0..N {
            let y = (self.mt[i] & UPPER_MASK) | (self.mt[(i + 1) % N] & LOWER_MASK);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            self.mt[i] = self.mt[(i + M) % N] ^ (y >> 1) ^ mag;
        }
        self.pos = 0;
    }

    /// Next raw tempered 32-bit output (what
    /// `np.random.randint(0, 2**32, dtype=np.uint32)` returns).
    pub fn next_u32(&mut self) -> u32 {
        if self.pos >= N {
            self.refill();
        }
        let mut y = self.mt[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// Uniform double in `[0, 1)` from two draws (`np.random.random_sample`).
    pub fn random_sample(&mut self) -> f64 {
        let a = f64::from(self.next_u32() >> 5);
        let b = f64::from(self.next_u32() >> 6);
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    /// Standard normal (`np.random.standard_normal`), legacy polar method.
    pub fn standard_normal(&mut self) -> f64 {
        if let Some(g) = self.cached_gauss.take() {
            return g;
        }
        let (x1, x2, r2) = loop {
            let x1 = 2.0 * self.random_sample() - 1.0;
            let x2 = 2.0 * self.random_sample() - 1.0;
            let r2 = x1 * x1 + x2 * x2;
            if r2 < 1.0 && r2 != 0.0 {
                break (x1, x2, r2);
            }
        };
        let f = (-2.0 * r2.ln() / r2).sqrt();
        self.cached_gauss = Some(f * x1);
        f * x2
    }

    /// One `np.random.normal(loc, scale)` draw: `loc + scale * z`.
    pub fn normal(&mut self, loc: f64, scale: f64) -> f64 {
        loc + scale * self.standard_normal()
    }

    /// Fill `out` like `np.random.normal(loc, scale, out.len())`
    /// (values in generation order, i.e. C order for an n-d `size`).
    pub fn fill_normal(&mut self, out: &mut [f64], loc: f64, scale: f64) {
        for v in out {
            *v = self.normal(loc, scale);
        }
    }
}

/// Reproduce the official degradation
/// `np.random.seed(seed); img += np.random.normal(0, sigma_over_255, img.shape)`
/// on a float32 image.
///
/// Pass `sigma_over_255` computed as Python does (`25.0 / 255.0`,
/// `2.55 / 255.0`, ...) so the float64 scale is identical.
/// `img` must be the numpy array's buffer in C order, i.e. `(H, W, C)`
/// interleaved for an HWC image: noise sample `k` goes to flat index `k`.
/// The noise is float64 and numpy's in-place `float32 += float64` computes
/// the sum in float64 and then rounds it to float32 (not
/// `x + (n as f32)`, which differs in about 12% of pixels).
pub fn add_gaussian_noise_f32(img: &mut [f32], sigma_over_255: f64, seed: u32) {
    let mut rng = LegacyRng::new(seed);
    for x in img {
        *x = (f64::from(*x) + rng.normal(0.0, sigma_over_255)) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Literals from numpy 2.4.6:
    // `np.random.seed(0); np.random.normal(0, 1, 10)` etc.
    const NORMAL_SEED0: [f64; 10] = [
        1.764052345967664,
        0.4001572083672233,
        0.9787379841057392,
        2.240893199201458,
        1.8675579901499675,
        -0.977277879876411,
        0.9500884175255894,
        -0.1513572082976979,
        -0.10321885179355784,
        0.41059850193837233,
    ];

    #[test]
    fn raw_and_uniform_match_numpy() {
        // np.random.seed(0); np.random.randint(0, 2**32, size=6, dtype=np.uint32)
        let mut rng = LegacyRng::new(0);
        let raw: Vec<u32> = (0..6).map(|_| rng.next_u32()).collect();
        assert_eq!(
            raw,
            [2357136044, 2546248239, 3071714933, 3626093760, 2588848963, 3684848379]
        );
        // np.random.seed(0); np.random.random_sample(4)
        let mut rng = LegacyRng::new(0);
        let u: Vec<f64> = (0..4).map(|_| rng.random_sample()).collect();
        assert_eq!(
            u,
            [
                0.5488135039273248,
                0.7151893663724195,
                0.6027633760716439,
                0.5448831829968969
            ]
        );
    }

    #[test]
    fn normal_matches_numpy_seed0() {
        let mut rng = LegacyRng::new(0);
        let mut v = [0.0; 10];
        rng.fill_normal(&mut v, 0.0, 1.0);
        assert_eq!(v, NORMAL_SEED0);
    }

    #[test]
    fn cached_gaussian_survives_odd_length_calls() {
        // normal(0,1,3) then normal(0,1,4) continues the same stream.
        let mut rng = LegacyRng::new(0);
        let mut a = [0.0; 3];
        let mut b = [0.0; 4];
        rng.fill_normal(&mut a, 0.0, 1.0);
        rng.fill_normal(&mut b, 0.0, 1.0);
        assert_eq!(a, NORMAL_SEED0[..3]);
        assert_eq!(b, NORMAL_SEED0[3..7]);
    }

    #[test]
    fn other_seeds_and_loc_scale_match_numpy() {
        // np.random.seed(12345); np.random.normal(0.5, 2.5, 5)
        let mut rng = LegacyRng::new(12345);
        let mut v = [0.0; 5];
        rng.fill_normal(&mut v, 0.5, 2.5);
        assert_eq!(
            v,
            [
                -0.011769148711782362,
                1.6973583451438705,
                -0.7985967876418454,
                -0.8893257608687251,
                5.4144514312567855
            ]
        );
        // np.random.seed(4294967295); np.random.normal(0, 1, 3)
        let mut rng = LegacyRng::new(u32::MAX);
        let v: Vec<f64> = (0..3).map(|_| rng.standard_normal()).collect();
        assert_eq!(
            v,
            [0.6484086742306527, 0.6693235306338161, -1.0805437227474493]
        );
    }

    #[test]
    fn long_stream_crosses_refill() {
        // 700 raw draws cross the 624-word refill boundary.
        // np.random.seed(0); np.random.randint(0, 2**32, size=700, dtype=np.uint32)[-1]
        let mut rng = LegacyRng::new(0);
        let last = (0..700).map(|_| rng.next_u32()).last();
        assert_eq!(last, Some(747805126));
    }

    #[test]
    fn noise_is_added_in_f64_then_rounded() {
        // img = (np.arange(12, dtype=np.float32).reshape(2,2,3) / np.float32(11)).astype(np.float32)
        // np.random.seed(0); img += np.random.normal(0, 25/255., img.shape)
        // img.view(np.uint32)
        let mut img: Vec<f32> = (0..12u8).map(|i| f32::from(i) / 11.0).collect();
        add_gaussian_noise_f32(&mut img, 25.0 / 255.0, 0);
        let bits: Vec<u32> = img.iter().map(|v| v.to_bits()).collect();
        assert_eq!(
            bits,
            [
                0x3e3118d6, 0x3e054378, 0x3e8e3840, 0x3efc1ed4, 0x3f0bf684, 0x3eb7abf9, 0x3f237b52,
                0x3f1f1c3e, 0x3f37975b, 0x3f5bc280, 0x3f6c57ad, 0x3f923fed
            ]
        );
    }
}
