//! How far each model's output depends on its input: the overlap tiles need.
//!
//! Runs each model on a 480x480 crop of a Set14 image, then on its centre with `m` pixels cut
//! from every side, and reports, by distance from the cut, the largest change of the output.
//! The reach is the distance beyond which no output moves by half an 8-bit level.
//!
//! `cargo run --release --example dependence` (needs `$CONVERSE_SHARED`, default `../shared`).

use candle_core::{DType, Device, Tensor};
use converse::kernel;
use converse::weights::WeightsLocator;
use converse::ModelKind;

fn main() -> anyhow::Result<()> {
    let shared = std::path::PathBuf::from(
        std::env::var("CONVERSE_SHARED").unwrap_or_else(|_| "../shared".into()),
    );
    let pic = converse::image_io::read(&shared.join("testsets/set14/img_001.png"), 1 << 30)?;
    let (side, margin) = (480, 48);
    let dev = Device::Cpu;
    let crop = |c: usize| -> Vec<f32> {
        (0..c)
            .flat_map(|ch| {
                let plane = pic.plane(ch.min(pic.channels - 1));
                (0..side).flat_map(move |i| (0..side).map(move |j| plane[i * pic.width + j]))
            })
            .collect()
    };
    let blur = kernel::load("gaussian:1.6")?.for_model()?;
    let k = Tensor::from_vec(
        blur.data.iter().map(|v| *v as f32).collect::<Vec<_>>(),
        (1, 1, blur.height, blur.width),
        &dev,
    )?;
    let locator = WeightsLocator::new(Some(&shared.join("weights")));
    for kind in ModelKind::ALL {
        let model = locator.load(kind, DType::F32, &dev)?;
        let c = kind.info().channels;
        let kernel = kind.info().takes_kernel.then_some(&k);
        let x = Tensor::from_vec(crop(c), (1, c, side, side), &dev)?;
        let inner = side - 2 * margin;
        let whole = model.forward(&x, kernel)?;
        let part = model.forward(
            &x.narrow(2, margin, inner)?.narrow(3, margin, inner)?,
            kernel,
        )?;
        let s = kind.scale();
        let whole = whole
            .narrow(2, margin * s, inner * s)?
            .narrow(3, margin * s, inner * s)?;
        let diff = (whole - part)?
            .abs()?
            .max(1)?
            .squeeze(0)?
            .to_vec2::<f32>()?;
        // Largest change at each distance (input pixels) from the nearest cut edge.
        let mut by_dist = vec![0f32; inner / 2 + 1];
        for (i, row) in diff.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                let d = (i.min(inner * s - 1 - i).min(j).min(inner * s - 1 - j)) / s;
                by_dist[d] = by_dist[d].max(*v);
            }
        }
        let tail_max: Vec<f32> = (0..by_dist.len())
            .map(|d| by_dist[d..].iter().cloned().fold(0.0, f32::max))
            .collect();
        let reach = tail_max.iter().position(|v| *v < 0.5 / 255.0);
        let at = |d: usize| tail_max.get(d).map_or(0.0, |v| v * 255.0);
        println!(
            "{kind}: reach {} px; largest change at >= 0/16/32/64/128 px: {:.2} {:.3} {:.3} {:.4} {:.5} levels",
            reach.map_or(format!("> {}", inner / 2), |r| r.to_string()),
            at(0),
            at(16),
            at(32),
            at(64),
            at(128)
        );
    }
    Ok(())
}
