//! Times our training steps on the CPU, for `benches/train_vs_official.py` to set beside the
//! official code's (`benches/official_train_bench.py`):
//!
//! - `op1`, `op2`: Converse2D alone at scale 1 and 2 (64 channels, 128x128, batch 4, kernel 3,
//!   padding 2, circular), forward and backward of `sum(y * g)` to the input, the kernels and
//!   the bias;
//! - `dncnn`: one training step of the released Converse-DnCNN (forward, L1 loss, backward,
//!   Adam), a batch of 8 gray 64x64 patches.
//!
//! ```text
//! cargo run --release --example train_bench -- CASE [REPS]
//! ```
//!
//! Prints one JSON line: `{"case", "ms_per_step", "times_ms"}` (the median of `REPS` steps,
//! default 5, after a warm-up of up to 10 steps or 3 s, as the official bench). Weights: `CONVERSE_WEIGHTS` (default `../shared/weights`).

use std::time::Instant;

use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use converse::ops::{Converse2d, Converse2dConfig};
use converse::weights::WeightsLocator;
use converse::ModelKind;

/// The warm-up before timing: at most this many steps, ending once this many seconds passed.
const WARM_UP_STEPS: usize = 10;
const WARM_UP_SECONDS: f64 = 3.0;

/// The binary's allocator, as `converse` runs with.
#[global_allocator]
static ALLOC: converse::alloc::Allocator = converse::alloc::Allocator;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let case = args.first().map(String::as_str).unwrap_or("op1");
    let reps: usize = args.get(1).map_or(Ok(5), |r| r.parse())?;
    let dev = Device::Cpu;
    // As `converse finetune` runs.
    converse::alloc::keep_freed_blocks();
    let mut step: Box<dyn FnMut() -> Result<()>> = match case {
        "op1" | "op2" => op_step(if case == "op1" { 1 } else { 2 }, &dev)?,
        "dncnn" => dncnn_step(&dev)?,
        _ => anyhow::bail!("unknown case '{case}' (op1, op2 or dncnn)"),
    };
    // Warm-up, as the official bench: steps until 10 are done or 3 s have passed (at least
    // one), so that the allocator's and the buffer pool's blocks are in place.
    let warm = Instant::now();
    for _ in 0..WARM_UP_STEPS {
        step()?;
        if warm.elapsed().as_secs_f64() >= WARM_UP_SECONDS {
            break;
        }
    }
    let mut times = vec![];
    for _ in 0..reps {
        let t = Instant::now();
        step()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!("{{\"case\": \"{case}\", \"ms_per_step\": {median:.3}, \"times_ms\": {times:?}}}");
    Ok(())
}

/// Converse2D alone at scale `s`: forward and backward to the input and both parameters.
fn op_step(s: usize, dev: &Device) -> Result<Box<dyn FnMut() -> Result<()>>> {
    let (n, c, side, k) = (4, 64, 128, 3);
    let cfg = Converse2dConfig {
        scale: s,
        ..Converse2dConfig::new(k)
    };
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, c, side, side), dev)?)?;
    let w = Tensor::rand(0f32, 1.0, (1, c, k * k), dev)?;
    let w = candle_nn::ops::softmax_last_dim(&w)?.reshape((1, c, k, k))?;
    let weight = Var::from_tensor(&w)?;
    let bias = Var::from_tensor(&Tensor::zeros((1, c, 1, 1), DType::F32, dev)?)?;
    let g = Tensor::randn(0f32, 1.0, (n, c, side * s, side * s), dev)?;
    let layer =
        Converse2d::from_tensors(weight.as_tensor().clone(), bias.as_tensor().clone(), cfg)?;
    Ok(Box::new(move || {
        let y = layer.forward(x.as_tensor())?;
        let grads = (y * &g)?.sum_all()?.backward()?;
        for v in [&x, &weight, &bias] {
            grads.get(v).expect("a gradient for every input");
        }
        Ok(())
    }))
}

/// One Adam step of the released Converse-DnCNN on 8 noisy 64x64 patches.
fn dncnn_step(dev: &Device) -> anyhow::Result<Box<dyn FnMut() -> Result<()>>> {
    let dir = std::env::var("CONVERSE_WEIGHTS").unwrap_or_else(|_| "../shared/weights".into());
    let locator = WeightsLocator::new(Some(std::path::Path::new(&dir)));
    let (model, vars) = locator.load_trainable(ModelKind::DnCNN, DType::F32, dev)?;
    let params = ParamsAdamW {
        lr: 1e-4,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut opt = AdamW::new(vars.all_vars(), params)?;
    let clean = Tensor::rand(0f32, 1.0, (8, 1, 64, 64), dev)?;
    let noisy = (&clean + (Tensor::randn(0f32, 25.0 / 255.0, clean.shape(), dev)?))?;
    Ok(Box::new(move || {
        let y = model
            .forward(&noisy, None)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let loss = (y - &clean)?.abs()?.mean_all()?;
        opt.backward_step(&loss)
    }))
}
