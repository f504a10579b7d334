//! Trains a small network of Converse2D blocks from scratch: x2 super-resolution of synthetic
//! images, with candle-nn's AdamW, printing the loss as it falls.
//!
//! ```text
//! cargo run --release --example train_converse2d [STEPS]
//! ```
//!
//! The network upsamples with a learned Converse2D (scale 2) instead of a transposed
//! convolution, refines with a Converse2D block at scale 1, and adds a bilinear skip:
//! `y = tail(refine(up(head(x)))) + bilinear(x)`. Its parameters are candle `Var`s in a
//! `VarMap`; on the CPU the Converse2D layers run their fused forward and backward, elsewhere
//! the reference backend (candle ops) that candle's autograd differentiates; either way
//! `loss.backward()` reaches every kernel and `λ`.

use candle_core::{DType, Device, Module, Result, Shape, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use converse::nn::Pointwise;
use converse::ops::{upsample_bilinear2d, Converse2d, Converse2dConfig, PaddingMode};

/// Feature channels.
const FEATURES: usize = 8;

/// A small seeded generator (so that every run, and the test of this example, is the same).
struct Rng(u64);

impl Rng {
    /// Uniform in `[lo, hi)`.
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        lo + (hi - lo) * ((self.0 >> 40) as f32 / (1u64 << 24) as f32)
    }

    /// A tensor of uniform values.
    fn tensor<S: Into<Shape>>(
        &mut self,
        shape: S,
        lo: f32,
        hi: f32,
        dev: &Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let v = (0..shape.elem_count())
            .map(|_| self.uniform(lo, hi))
            .collect();
        Tensor::from_vec(v, shape, dev)
    }
}

/// Puts a trainable tensor into `vars` under `name`.
fn param(vars: &VarMap, name: &str, t: Tensor) -> Result<Tensor> {
    let v = Var::from_tensor(&t)?;
    let mut data = vars.data().lock().expect("the VarMap is not poisoned");
    data.insert(name.to_owned(), v.clone());
    Ok(v.as_tensor().clone())
}

/// A 1x1 convolution `cin -> cout` with uniform weights of scale `1/sqrt(cin)`, zero bias.
fn pointwise(
    vars: &VarMap,
    rng: &mut Rng,
    name: &str,
    cin: usize,
    cout: usize,
) -> Result<Pointwise> {
    let dev = Device::Cpu;
    let a = 1.0 / (cin as f32).sqrt();
    param(
        vars,
        &format!("{name}.weight"),
        rng.tensor((cout, cin, 1, 1), -a, a, &dev)?,
    )?;
    param(
        vars,
        &format!("{name}.bias"),
        Tensor::zeros(cout, DType::F32, &dev)?,
    )?;
    Pointwise::new(
        cin,
        cout,
        true,
        VarBuilder::from_varmap(vars, DType::F32, &dev).pp(name),
    )
}

/// A Converse2D layer on [`FEATURES`] channels: softmax-normalised random kernels and a zero
/// bias (`λ = sigmoid(-9) + eps`), both trainable.
fn converse(vars: &VarMap, rng: &mut Rng, name: &str, cfg: Converse2dConfig) -> Result<Converse2d> {
    let (dev, k) = (Device::Cpu, cfg.kernel_size);
    let w = rng.tensor((1, FEATURES, k * k), -1.0, 1.0, &dev)?;
    let w = candle_nn::ops::softmax(&w, D::Minus1)?.reshape((1, FEATURES, k, k))?;
    let w = param(vars, &format!("{name}.weight"), w)?;
    let b = param(
        vars,
        &format!("{name}.bias"),
        Tensor::zeros((1, FEATURES, 1, 1), DType::F32, &dev)?,
    )?;
    Converse2d::from_tensors(w, b, cfg)
}

/// The network.
struct Net {
    head: Pointwise,
    up: Converse2d,
    refine: Converse2d,
    mix: Pointwise,
    tail: Pointwise,
}

impl Net {
    fn new(vars: &VarMap, rng: &mut Rng) -> Result<Self> {
        let up = Converse2dConfig {
            kernel_size: 2,
            scale: 2,
            padding: 2,
            padding_mode: PaddingMode::Replicate,
            eps: 1e-3,
        };
        Ok(Self {
            head: pointwise(vars, rng, "head", 1, FEATURES)?,
            up: converse(vars, rng, "up", up)?,
            refine: converse(vars, rng, "refine", Converse2dConfig::new(3))?,
            mix: pointwise(vars, rng, "mix", FEATURES, FEATURES)?,
            tail: pointwise(vars, rng, "tail", FEATURES, 1)?,
        })
    }
}

impl Module for Net {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.up.forward(&self.head.forward(x)?)?;
        let r = self.mix.forward(&self.refine.forward(&h)?.gelu_erf()?)?;
        self.tail.forward(&(h + r)?)? + upsample_bilinear2d(x, 2)?
    }
}

/// A batch of synthetic `(n, 1, side, side)` images (random oriented stripes over a random
/// blob), with their 2x2 averages as the low-resolution inputs.
fn batch(rng: &mut Rng, n: usize, side: usize) -> Result<(Tensor, Tensor)> {
    let dev = Device::Cpu;
    let grid = (Tensor::arange(0f32, side as f32, &dev)? / side as f64)?;
    let (yy, xx) = (
        grid.reshape((1, 1, side, 1))?,
        grid.reshape((1, 1, 1, side))?,
    );
    let mut r = |lo, hi| rng.tensor((n, 1, 1, 1), lo, hi, &dev);
    let phase = xx
        .broadcast_mul(&r(-20.0, 20.0)?)?
        .broadcast_add(&yy.broadcast_mul(&r(-20.0, 20.0)?)?)?;
    let stripes = phase.broadcast_add(&r(0.0, 6.3)?)?.sin()?;
    let (cx, cy) = (r(0.2, 0.8)?, r(0.2, 0.8)?);
    let d2 = xx
        .broadcast_sub(&cx)?
        .sqr()?
        .broadcast_add(&yy.broadcast_sub(&cy)?.sqr()?)?;
    let hr = ((stripes * 0.25)? + (d2 * -30.0)?.exp()?)?.affine(0.8, 0.1)?;
    let lr = hr.avg_pool2d(2)?;
    Ok((lr, hr))
}

/// Trains for `steps` steps on fresh batches and returns the loss (mean squared error) of each.
pub fn train(steps: usize, log: bool) -> Result<Vec<f32>> {
    let (vars, mut rng) = (VarMap::new(), Rng(7));
    let net = Net::new(&vars, &mut rng)?;
    let params = ParamsAdamW {
        lr: 1e-2,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut opt = AdamW::new(vars.all_vars(), params)?;
    let mut losses = vec![];
    for step in 0..steps {
        let (lr, hr) = batch(&mut rng, 8, 32)?;
        let loss = (net.forward(&lr)? - hr)?.sqr()?.mean_all()?;
        opt.backward_step(&loss)?;
        let loss = loss.to_scalar::<f32>()?;
        if log && (step % 10 == 0 || step + 1 == steps) {
            println!("step {step:>4}  loss {loss:.6}");
        }
        losses.push(loss);
    }
    Ok(losses)
}

#[allow(dead_code)]
fn main() -> Result<()> {
    let steps = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("STEPS is a number"))
        .unwrap_or(300);
    let t = std::time::Instant::now();
    let losses = train(steps, true)?;
    let mean = |l: &[f32]| l.iter().sum::<f32>() / l.len() as f32;
    let k = (steps / 10).max(1);
    println!(
        "mean loss of the first {k} steps {:.6}, of the last {k} {:.6} ({:.1} s)",
        mean(&losses[..k]),
        mean(&losses[steps - k..]),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
