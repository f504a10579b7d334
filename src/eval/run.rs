//! `converse eval`: degrade a dataset as the official scripts do, restore it, and score it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Tensor};
use serde::Serialize;

use super::metrics::{psnr, rgb_to_y, ssim};
use super::protocol::{from_tensor, read_u8, to_tensor, Degradation, ImageU8};
use crate::files::Existing;
use crate::image_io::{self, BitDepth, Format, Picture};
use crate::models::Model;
use crate::noise::Rescale;

/// Scores of one image.
#[derive(Debug, Clone, Serialize)]
pub struct ImageScore {
    pub name: String,
    pub psnr: f64,
    pub ssim: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psnr_y: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssim_y: Option<f64>,
    pub seconds: f64,
}

/// One evaluation: a task on a dataset (with one kernel for deblurring).
#[derive(Debug, Clone, Serialize)]
pub struct EvalRun {
    pub task: String,
    pub dataset: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub with_kernel: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sigma: Option<f64>,
    /// Denoising: whether the input was rescaled to the model's noise level.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rescaled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jpeg: Option<u8>,
    pub mean_psnr: f64,
    pub mean_ssim: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_psnr_y: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_ssim_y: Option<f64>,
    pub images: Vec<ImageScore>,
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    s / n as f64
}

/// What to evaluate.
pub struct EvalSpec<'a> {
    pub task: &'a str,
    pub dataset: &'a Path,
    /// Its images, in order ([`super::protocol::list_images`]).
    pub images: &'a [PathBuf],
    pub degradation: Degradation,
    /// Name of the kernel file, for the report.
    pub kernel_name: Option<String>,
    /// Pass the kernel to the model (Converse-USRNet).
    pub model_kernel: Option<candle_core::Tensor>,
    /// Denoising away from sigma 25: the rescaling around the model.
    pub rescale: Option<Rescale>,
    pub seed: u32,
    /// Where the model runs.
    pub device: candle_core::Device,
    /// Keep restored images here.
    pub save: Option<&'a Path>,
    /// Whether a saved image may replace a file (`--overwrite`).
    pub existing: Existing,
}

/// Where `--save DIR` keeps the restored `image` of `dataset`: its path inside the dataset,
/// under `dir`.
pub fn saved_as(dir: &Path, dataset: &Path, image: &Path) -> PathBuf {
    dir.join(image.strip_prefix(dataset).unwrap_or(image))
}

/// Evaluates `model` on `spec.images`; `progress` is told each image's name before it runs.
pub fn evaluate(
    model: &Model,
    spec: &EvalSpec,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<EvalRun> {
    let deg = &spec.degradation;
    let mut images = vec![];
    for path in spec.images {
        let name = path
            .strip_prefix(spec.dataset)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned();
        progress(&name);
        let img = read_u8(path, deg.channels())?;
        let d = deg
            .apply(&img, spec.seed)
            .with_context(|| format!("cannot degrade '{}'", path.display()))?;
        let start = Instant::now();
        let mut input = d.input;
        if let Some(r) = &spec.rescale {
            r.to_model(&mut input.data);
        }
        let x = to_tensor(&input, &spec.device)?;
        let y = model
            .forward(&x, spec.model_kernel.as_ref())
            .with_context(|| format!("cannot restore '{}'", path.display()))?;
        let y = match &spec.rescale {
            Some(r) => {
                let mut v = y.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                r.from_model(&mut v);
                Tensor::from_vec(v, y.dims(), y.device())?
            }
            None => y,
        };
        let out = from_tensor(&y)?;
        let seconds = start.elapsed().as_secs_f64();
        images.push(score(&name, &out, &d.clean, deg.border(), seconds));
        if let Some(dir) = spec.save {
            save_u8(&out, &saved_as(dir, spec.dataset, path), spec.existing)?;
        }
    }
    let y_scores = images[0].psnr_y.is_some();
    let (sigma, rescaled, jpeg) = match deg {
        Degradation::Denoise { sigma } => (Some(*sigma), Some(spec.rescale.is_some()), None),
        Degradation::Jpeg { quality } => (None, None, Some(*quality)),
        _ => (None, None, None),
    };
    Ok(EvalRun {
        task: spec.task.to_owned(),
        dataset: spec
            .dataset
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        kernel: spec.kernel_name.clone(),
        with_kernel: match deg {
            Degradation::Deblur { .. } => Some(spec.model_kernel.is_some()),
            _ => None,
        },
        sigma,
        rescaled,
        jpeg,
        mean_psnr: mean(images.iter().map(|i| i.psnr)),
        mean_ssim: mean(images.iter().map(|i| i.ssim)),
        mean_psnr_y: y_scores.then(|| mean(images.iter().filter_map(|i| i.psnr_y))),
        mean_ssim_y: y_scores.then(|| mean(images.iter().filter_map(|i| i.ssim_y))),
        images,
    })
}

/// PSNR and SSIM as the official scripts compute them (plus Y-channel scores for colour).
fn score(name: &str, out: &ImageU8, clean: &ImageU8, border: usize, seconds: f64) -> ImageScore {
    let (h, w, c) = (clean.height, clean.width, clean.channels);
    let (py, sy) = if c == 3 {
        let (a, b) = (rgb_to_y(&out.data), rgb_to_y(&clean.data));
        (
            Some(psnr(&a, &b, h, w, 1, border)),
            Some(ssim(&a, &b, h, w, 1, border)),
        )
    } else {
        (None, None)
    };
    ImageScore {
        name: name.to_owned(),
        psnr: psnr(&out.data, &clean.data, h, w, c, border),
        ssim: ssim(&out.data, &clean.data, h, w, c, border),
        psnr_y: py,
        ssim_y: sy,
        seconds,
    }
}

/// Writes an 8-bit HWC image through [`image_io::write`]; the format follows the extension.
pub fn save_u8(img: &ImageU8, path: &Path, existing: Existing) -> anyhow::Result<()> {
    let format = Format::from_path(path)
        .with_context(|| format!("cannot tell the output format of '{}'", path.display()))?;
    let n = img.height * img.width;
    let mut color = vec![0f32; img.channels * n];
    for (i, px) in img.data.chunks_exact(img.channels).enumerate() {
        for (c, v) in px.iter().enumerate() {
            color[c * n + i] = *v as f32 / 255.0;
        }
    }
    let pic = Picture {
        width: img.width,
        height: img.height,
        channels: img.channels,
        color,
        alpha: None,
        depth: BitDepth::Eight,
    };
    image_io::write(&pic, path, format, 95, existing)
}

/// The report table, as the paper reports it.
pub fn table(run: &EvalRun) -> String {
    let mut s = String::new();
    let title = match (&run.kernel, run.with_kernel) {
        (Some(k), Some(true)) => format!(
            "{} on {}, kernel {k}, Converse-USRNet",
            run.task, run.dataset
        ),
        (Some(k), _) => format!(
            "{} on {}, kernel {k}, ConverseNet (blind)",
            run.task, run.dataset
        ),
        _ => match (run.sigma, run.rescaled, run.jpeg) {
            (Some(sg), Some(true), _) => format!(
                "{} on {}, sigma {sg}, rescaled to sigma {}",
                run.task,
                run.dataset,
                crate::noise::MODEL_SIGMA
            ),
            (Some(sg), _, _) => format!("{} on {}, sigma {sg}", run.task, run.dataset),
            (_, _, Some(q)) => format!("{} on {}, JPEG quality {q}", run.task, run.dataset),
            _ => format!("{} on {}", run.task, run.dataset),
        },
    };
    s.push_str(&title);
    s.push('\n');
    let y = run.mean_psnr_y.is_some();
    s.push_str(&format!(
        "{:<24} {:>8} {:>7}{} {:>8}\n",
        "image",
        "PSNR",
        "SSIM",
        if y { "   PSNR-Y  SSIM-Y" } else { "" },
        "seconds"
    ));
    for i in &run.images {
        s.push_str(&format!(
            "{:<24} {:>8.2} {:>7.4}{} {:>8.2}\n",
            i.name,
            i.psnr,
            i.ssim,
            match (i.psnr_y, i.ssim_y) {
                (Some(p), Some(q)) => format!(" {p:>8.2} {q:>7.4}"),
                _ => String::new(),
            },
            i.seconds
        ));
    }
    s.push_str(&format!(
        "{:<24} {:>8.2} {:>7.4}{}\n",
        "mean",
        run.mean_psnr,
        run.mean_ssim,
        match (run.mean_psnr_y, run.mean_ssim_y) {
            (Some(p), Some(q)) => format!(" {p:>8.2} {q:>7.4}"),
            _ => String::new(),
        }
    ));
    s
}
