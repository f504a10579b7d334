//! `converse demo`: no input needed. Synthesises a test image, degrades it for each task with the
//! evaluation's own degradations, restores it, and writes before/after panels.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Device};

use crate::eval::metrics::psnr;
use crate::eval::protocol::{from_tensor, to_tensor, Degradation, ImageF32, ImageU8};
use crate::eval::run::save_u8;
use crate::files::Existing;
use crate::image_io::resize::imresize;
use crate::kernel;
use crate::models::Task;
use crate::weights::WeightsLocator;

/// Side of the synthetic image.
const SIDE: usize = 160;

/// A deterministic RGB test card: gradients, rings, stripes of rising frequency and sharp shapes.
pub fn test_card() -> ImageU8 {
    let n = SIDE as f64;
    let mut data = Vec::with_capacity(SIDE * SIDE * 3);
    for i in 0..SIDE {
        for j in 0..SIDE {
            let (y, x) = (i as f64 / n, j as f64 / n);
            let r2 = (x - 0.32).powi(2) + (y - 0.3).powi(2);
            let rings = 0.5 + 0.5 * (60.0 * r2.sqrt()).cos();
            let stripes = 0.5 + 0.5 * (std::f64::consts::PI * 2.0 * (3.0 + 10.0 * x) * x).sin();
            let in_square = (0.6..0.9).contains(&x) && (0.12..0.42).contains(&y);
            let in_disc = (x - 0.75).powi(2) + (y - 0.72).powi(2) < 0.03;
            let base = [0.2 + 0.6 * x, 0.3 + 0.5 * y, 0.8 - 0.5 * x * y];
            let px: [f64; 3] = if in_square {
                [0.95, 0.85, 0.1]
            } else if in_disc {
                [0.1, 0.2, 0.7]
            } else if y > 0.55 && x < 0.55 {
                [stripes * 0.9, stripes * 0.7 + 0.1, 0.3]
            } else if r2 < 0.06 {
                [rings, 0.4 * rings + 0.3, 0.9 - 0.6 * rings]
            } else {
                base
            };
            data.extend(px.iter().map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8));
        }
    }
    ImageU8 {
        height: SIDE,
        width: SIDE,
        channels: 3,
        data,
    }
}

fn gray(img: &ImageU8) -> ImageU8 {
    ImageU8 {
        channels: 1,
        data: img
            .data
            .chunks_exact(3)
            .map(|p| {
                (0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64).round() as u8
            })
            .collect(),
        ..img.clone()
    }
}

/// Upsamples an input to the clean image's size for display and scoring (bicubic for SR).
fn as_clean_size(input: &ImageF32, scale: usize) -> ImageU8 {
    let data = if scale == 1 {
        input.data.clone()
    } else {
        imresize(
            &input.data,
            input.height,
            input.width,
            input.channels,
            scale as f64,
        )
        .0
    };
    crate::eval::protocol::to_u8(&ImageF32 {
        height: input.height * scale,
        width: input.width * scale,
        channels: input.channels,
        data,
    })
}

/// `[degraded | restored | clean]` side by side, with 4 px white gutters.
fn panel(parts: &[&ImageU8]) -> ImageU8 {
    let (h, c) = (parts[0].height, parts[0].channels);
    let gap = 4;
    let w: usize = parts.iter().map(|p| p.width).sum::<usize>() + gap * (parts.len() - 1);
    let mut data = vec![255u8; h * w * c];
    let mut x0 = 0;
    for p in parts {
        for i in 0..h {
            let src = &p.data[i * p.width * c..(i + 1) * p.width * c];
            data[(i * w + x0) * c..(i * w + x0) * c + src.len()].copy_from_slice(src);
        }
        x0 += p.width + gap;
    }
    ImageU8 {
        height: h,
        width: w,
        channels: c,
        data,
    }
}

/// Panels one above the other, in colour, with 4 px white gutters.
fn stack(rows: &[ImageU8]) -> ImageU8 {
    let (w, gap) = (rows[0].width, 4);
    let mut data = vec![];
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            data.extend(std::iter::repeat_n(255u8, gap * w * 3));
        }
        if r.channels == 3 {
            data.extend(&r.data);
        } else {
            data.extend(r.data.iter().flat_map(|v| [*v; 3]));
        }
    }
    ImageU8 {
        height: data.len() / (w * 3),
        width: w,
        channels: 3,
        data,
    }
}

/// One demo result.
#[derive(Debug, Clone)]
pub struct DemoResult {
    pub name: String,
    pub psnr_before: f64,
    pub psnr_after: f64,
    pub file: PathBuf,
}

/// The files [`run`] writes in its folder.
pub const FILES: [&str; 6] = [
    "clean.png",
    "denoise.png",
    "sr.png",
    "deblur_blind.png",
    "deblur_kernel.png",
    "overview.png",
];

/// Runs the demo into `out_dir`, calling `report` after each task. Its panels replace files of
/// the same names only with [`Existing::Replace`]; otherwise a panel that exists must hold what
/// this run makes (an earlier demo's), or the run fails.
pub fn run(
    locator: &WeightsLocator,
    device: &Device,
    out_dir: &Path,
    existing: Existing,
    mut report: impl FnMut(&DemoResult),
) -> anyhow::Result<Vec<DemoResult>> {
    let save = |img: &ImageU8, path: &Path| match save_u8(img, path, existing) {
        Err(e) if crate::files::already_exists(&e) => {
            let dir = tempfile::tempdir()?;
            let fresh = dir.path().join("panel.png");
            save_u8(img, &fresh, Existing::Keep)?;
            let limit = 64 << 20;
            if crate::files::read_regular(&fresh, limit)?
                == crate::files::read_regular(path, limit)?
            {
                Ok(())
            } else {
                bail!(
                    "'{}' exists and is not this demo's panel (--overwrite replaces it, or -o \
                     names another folder)",
                    path.display()
                )
            }
        }
        r => r,
    };
    let card = test_card();
    save(&card, &out_dir.join("clean.png"))?;
    let gaussian = kernel::gaussian(1.6)?;
    let cases = [
        (
            "denoise",
            Task::Denoise,
            false,
            Degradation::Denoise { sigma: 25.0 },
        ),
        ("sr", Task::Sr, false, Degradation::Sr),
        (
            "deblur_blind",
            Task::Deblur,
            false,
            Degradation::Deblur {
                kernel: gaussian.clone(),
                sigma: 2.55,
            },
        ),
        (
            "deblur_kernel",
            Task::Deblur,
            true,
            Degradation::Deblur {
                kernel: gaussian.clone(),
                sigma: 2.55,
            },
        ),
    ];
    let mut results = vec![];
    let mut rows = vec![];
    for (name, task, with_kernel, deg) in cases {
        let img = if deg.channels() == 1 {
            gray(&card)
        } else {
            card.clone()
        };
        let d = deg.apply(&img, 0)?;
        let model = locator.load(task.model(with_kernel), DType::F32, device)?;
        let k = with_kernel
            .then(|| gaussian.to_tensor(device))
            .transpose()?;
        let y = model
            .forward(&to_tensor(&d.input, device)?, k.as_ref())
            .with_context(|| format!("cannot restore the {name} demo image"))?;
        let out = from_tensor(&y)?;
        let before = as_clean_size(&d.input, task.scale());
        let (h, w, c) = (d.clean.height, d.clean.width, d.clean.channels);
        let file = out_dir.join(format!("{name}.png"));
        let p = panel(&[&before, &out, &d.clean]);
        save(&p, &file)?;
        rows.push(p);
        let r = DemoResult {
            name: name.to_owned(),
            psnr_before: psnr(&before.data, &d.clean.data, h, w, c, deg.border()),
            psnr_after: psnr(&out.data, &d.clean.data, h, w, c, deg.border()),
            file,
        };
        report(&r);
        results.push(r);
    }
    save(&stack(&rows), &out_dir.join("overview.png"))?;
    Ok(results)
}
