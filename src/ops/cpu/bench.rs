//! Single units of the fused kernels' work, for `benches/ops.rs` to time: a lane FFT, one
//! group's solve, one group's transfer functions. Not a stable API.

use candle_core::{Device, Result, Tensor};

use super::lanes::{self, Plan};
use super::simd::{simd_fn, V, V2};
use super::solve::{Filters, Geometry, Grid, Pool, GROUP};
use crate::ops::pad::PaddingMode;
use crate::ops::transfer::{Columns, Taps};

/// The kernels of one group: random `k x k` taps, `λ = 0.01`.
fn taps(k: usize) -> Result<Taps> {
    let dev = Device::Cpu;
    let kernel = Tensor::rand(0f32, 1.0, (1, GROUP, k, k), &dev)?;
    let lam = Tensor::full(0.01f32, (1, GROUP, 1, 1), &dev)?;
    Taps::new(&kernel, &lam)
}

/// The factors of `n` in the order the lane FFT takes them.
pub fn factors(n: usize) -> Vec<usize> {
    super::lanes::factors(n)
}

/// Lane FFTs of one length on fixed input.
pub struct LaneFft {
    plan: Plan,
    x: (Vec<V>, Vec<V>),
    out: (Vec<V>, Vec<V>),
    scratch: Vec<V>,
}

impl LaneFft {
    /// The plan the solve uses for length `n`.
    pub fn new(n: usize) -> Self {
        Self::from_plan(Plan::new(n))
    }

    /// A plan of length `n` whose primes above `rader` take Rader's algorithm where `p - 1`
    /// has no prime factor above `rader`, and the other primes above `bluestein` Bluestein's
    /// (`usize::MAX`: none does).
    pub fn with_thresholds(n: usize, rader: usize, bluestein: usize) -> Self {
        Self::from_plan(Plan::build(n, rader, bluestein))
    }

    fn from_plan(plan: Plan) -> Self {
        let n = plan.len();
        Self {
            scratch: vec![V::default(); plan.scratch_len()],
            x: lanes::signal(n),
            out: (vec![V::default(); n], vec![V::default(); n]),
            plan,
        }
    }

    /// The primes that take Rader's algorithm.
    pub fn rader_primes(&self) -> Vec<usize> {
        self.plan.rader_primes()
    }

    /// The primes that take Bluestein's algorithm.
    pub fn bluestein_primes(&self) -> Vec<usize> {
        self.plan.bluestein_primes()
    }

    /// Runs `reps` forward transforms.
    pub fn run(&mut self, reps: usize) {
        let (re, im) = &mut self.out;
        transforms(&self.plan, &self.x, (re, im), &mut self.scratch, reps);
        std::hint::black_box(&self.out);
    }

    /// Runs `reps` forward transforms as `reps / 2` of two lines at once (as the solve's
    /// column pass runs adjacent columns).
    pub fn run_pairs(&mut self, reps: usize) {
        let n = self.plan.len();
        let (x_re, x_im) = lanes::signal(2 * n);
        let pack = |v: Vec<V>| -> Vec<V2> { v.chunks(2).map(|c| V2([c[0], c[1]])).collect() };
        let x = (pack(x_re), pack(x_im));
        let mut out = (vec![V2::default(); n], vec![V2::default(); n]);
        let mut scratch = vec![V2::default(); self.plan.scratch_len()];
        let out_pairs = (&mut out.0[..], &mut out.1[..]);
        pair_transforms(
            &self.plan,
            (&x.0, &x.1),
            out_pairs,
            &mut scratch,
            reps.div_ceil(2),
        );
        std::hint::black_box(&out);
    }
}

simd_fn! {
    fn pair_transforms(
        s,
        plan: &Plan,
        x: (&[V2], &[V2]),
        out: (&mut [V2], &mut [V2]),
        scratch: &mut [V2],
        reps: usize,
    ) {
        let (re, im) = out;
        for _ in 0..reps {
            plan.forward(s, x, (0, 1), (&mut *re, &mut *im), scratch);
        }
    }
}

simd_fn! {
    fn transforms(
        s,
        plan: &Plan,
        x: &(Vec<V>, Vec<V>),
        out: (&mut [V], &mut [V]),
        scratch: &mut [V],
        reps: usize,
    ) {
        let (re, im) = out;
        for _ in 0..reps {
            plan.forward(s, (&x.0, &x.1), (0, 1), (&mut *re, &mut *im), scratch);
        }
    }
}

/// One group's solve at scale 1 on `h x w` planes padded by `pad`: the load with its row
/// transforms, the solve with its transfer functions made while solving, the inverse row
/// transforms into the output planes through GELU.
pub struct GroupSolve {
    geo: Geometry,
    taps: Taps,
    pool: Pool,
    grid: Grid,
    planes: Vec<f32>,
    out: Vec<f32>,
}

impl GroupSolve {
    /// One group of `h x w` planes padded by `pad`, kernels `k x k`.
    pub fn new((h, w): (usize, usize), pad: usize, k: usize) -> Result<Self> {
        let geo = Geometry::new((h, w), pad, 1, PaddingMode::Circular);
        let pool = Pool::default();
        Ok(Self {
            grid: Grid::new(&geo, &pool),
            taps: taps(k)?,
            planes: vec![0.5; GROUP * h * w],
            out: vec![0.0; GROUP * h * w],
            geo,
            pool,
        })
    }

    /// The same, its columns transformed two at a time or one at a time (`pairs`), whatever
    /// the solve would choose for the size.
    pub fn with_column_pairs(mut self, pairs: bool) -> Self {
        self.geo.column_pairs = pairs;
        self.grid = Grid::new(&self.geo, &self.pool);
        self
    }

    /// Whether the solve transforms this size's columns two at a time.
    pub fn column_pairs(&self) -> bool {
        self.geo.column_pairs
    }

    pub fn run(&mut self) {
        let (geo, grid) = (&self.geo, &mut self.grid);
        grid.load(geo, &self.planes, GROUP);
        let mut f = Filters(&self.taps).group(geo, 0, 0, &self.pool);
        grid.solve_into(geo, &mut f, true, &mut self.out, GROUP);
        f.release(&self.pool);
    }
}

/// One group's transfer functions at scale `s > 1` (every phase) on `side x side` planes
/// padded by `pad`.
pub struct ScaledBuild {
    geo: Geometry,
    taps: Taps,
    pool: Pool,
}

impl ScaledBuild {
    pub fn new(side: usize, pad: usize, k: usize, s: usize) -> Result<Self> {
        Ok(Self {
            geo: Geometry::new((side, side), pad, s, PaddingMode::Replicate),
            taps: taps(k)?,
            pool: Pool::default(),
        })
    }

    pub fn run(&mut self) {
        Filters(&self.taps)
            .group(&self.geo, 0, 0, &self.pool)
            .release(&self.pool);
    }
}

/// One group's transfer functions at scale 1 on a `side x side` grid, every frequency column,
/// in f64 (before the solve puts them in the lane layout).
pub struct TransferColumns {
    taps: Taps,
    side: usize,
}

impl TransferColumns {
    pub fn new(side: usize, k: usize) -> Result<Self> {
        Ok(Self {
            taps: taps(k)?,
            side,
        })
    }

    pub fn run(&mut self) {
        let chans: Vec<usize> = (0..GROUP).collect();
        let mut cols = Columns::new(&self.taps, 0, &chans, (self.side, self.side));
        for v in 0..self.side / 2 + 1 {
            std::hint::black_box(cols.column(v));
        }
    }
}
