//! Restoring one image: colour handling, alpha, the x8 self-ensemble and tiling.
//!
//! Converse2D layers act over the whole image, so the whole image is run at once when it fits
//! the memory budget; otherwise it is cut into overlapping tiles whose outputs are blended with
//! linear ramps across the overlaps. Only whole-image runs reproduce the official outputs
//! exactly.

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};

use crate::image_io::resize::imresize;
use crate::image_io::Picture;
use crate::kernel::Kernel;
use crate::memory::{self, Tiling};
use crate::models::{Model, ModelKind};

/// What to do to an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Task {
    /// Converse-DnCNN (trained on gray images at sigma 25).
    Denoise,
    /// Converse-SRResNet, x4.
    Sr,
    /// ConverseNet (blind) or, with a kernel, Converse-USRNet.
    Deblur,
}

impl Task {
    pub fn name(self) -> &'static str {
        match self {
            Self::Denoise => "denoise",
            Self::Sr => "sr",
            Self::Deblur => "deblur",
        }
    }

    /// The model for the task; `with_kernel` selects Converse-USRNet for deblurring.
    pub fn model(self, with_kernel: bool) -> ModelKind {
        match (self, with_kernel) {
            (Self::Denoise, _) => ModelKind::DnCNN,
            (Self::Sr, _) => ModelKind::SRResNet,
            (Self::Deblur, false) => ModelKind::ConverseNet,
            (Self::Deblur, true) => ModelKind::USRNet,
        }
    }

    /// Output size over input size.
    pub fn scale(self) -> usize {
        self.model(false).scale()
    }
}

/// How to run the model.
#[derive(Debug, Clone)]
pub struct Options {
    /// Denoise: write a grayscale result from a colour image.
    pub gray: bool,
    /// Average over the 8 flips and rotations.
    pub x8: bool,
    /// Tile side in input pixels: `None` when the memory budget says so, `Some(0)` never.
    pub tile: Option<usize>,
    /// Overlap between neighbouring tiles, in input pixels: `None` for the model's reach.
    pub tile_overlap: Option<usize>,
    /// Memory budget for one image, in bytes.
    pub max_memory: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            gray: false,
            x8: false,
            tile: None,
            tile_overlap: None,
            max_memory: default_max_memory(),
        }
    }
}

impl Options {
    /// How an `h x w` image with `channels` colour channels is run by `model`, and its
    /// estimated peak memory (no weights needed).
    pub fn plan(&self, model: ModelKind, (h, w, channels): (usize, usize, usize)) -> memory::Plan {
        let job = memory::Job {
            kind: model,
            height: h.max(MIN_SIDE),
            width: w.max(MIN_SIDE),
            channels: if self.gray { 1 } else { channels },
            scale: model.scale(),
            x8: self.x8,
        };
        let req = memory::TileRequest {
            tile: self.tile,
            overlap: self.tile_overlap,
            budget: self.max_memory,
        };
        memory::plan(&job, &req, rayon::current_num_threads())
    }

    /// Why a budget-chosen plan is over the budget, if it is: the smallest tiles the model's
    /// overlap allows do not fit (or the image is smaller than one of them).
    pub fn over_budget(&self, plan: &memory::Plan) -> Option<String> {
        if self.tile.is_some() || plan.peak <= self.max_memory {
            return None;
        }
        let why = match plan.tiling {
            memory::Tiling::Whole => {
                "the image is smaller than the smallest tile with the model's overlap"
            }
            memory::Tiling::Tiles { .. } => {
                "the smallest tiles with the model's overlap do not fit"
            }
        };
        Some(format!(
            "over the budget: {why} (raise --max-memory, or lower --tile-overlap)"
        ))
    }

    /// Model runs (blocks) an image takes: the steps of its progress bar.
    pub fn steps(&self, model: ModelKind, (h, w, channels): (usize, usize, usize)) -> u64 {
        let planes = if model == ModelKind::DnCNN && channels == 3 && !self.gray {
            3
        } else {
            1
        };
        let runs = planes * self.plan(model, (h, w, channels)).tiling.count() as u64;
        runs * if self.x8 { 8 } else { 1 } * model.blocks_per_forward()
    }
}

/// Smallest side the models run on; smaller images are padded (edge values) and cropped back.
const MIN_SIDE: usize = 16;

/// The default memory budget: from the job's cgroup limit, else half of the available memory
/// ([`crate::resources::memory_budget`], which also says where it came from).
pub fn default_max_memory() -> u64 {
    crate::resources::memory_budget().0
}

/// A model ready to restore images.
pub struct Restorer {
    model: Model,
    task: Task,
    kernel: Option<Tensor>,
    device: Device,
    options: Options,
}

impl Restorer {
    /// `kernel` (normalised 7x7) is given for Converse-USRNet only.
    pub fn new(
        model: Model,
        task: Task,
        kernel: Option<&Kernel>,
        device: Device,
        options: Options,
    ) -> anyhow::Result<Self> {
        if model.kind() != task.model(kernel.is_some()) {
            bail!("{} cannot run --task {}", model.kind(), task.name())
        }
        let kernel = kernel
            .map(|k| {
                let v: Vec<f32> = k.data.iter().map(|v| *v as f32).collect();
                Tensor::from_vec(v, (1, 1, k.height, k.width), &device)
            })
            .transpose()?;
        Ok(Self {
            model,
            task,
            kernel,
            device,
            options,
        })
    }

    /// [`Options::over_budget`] for `pic`, with the estimate and the budget.
    pub fn over_budget(&self, pic: &Picture) -> Option<String> {
        let dims = (pic.height, pic.width, pic.channels.min(3));
        let plan = self.options.plan(self.model.kind(), dims);
        let why = self.options.over_budget(&plan)?;
        let (peak, budget) = (plan.peak, self.options.max_memory);
        Some(format!(
            "estimated peak {} of {}, {why}",
            memory::human(peak),
            memory::human(budget)
        ))
    }

    /// Steps of [`crate::progress::step`] that restoring `pic` makes.
    pub fn steps(&self, pic: &Picture) -> u64 {
        let (h, w) = (pic.height, pic.width);
        self.options
            .steps(self.model.kind(), (h, w, pic.channels.min(3)))
    }

    /// Restores a picture. Colour and depth follow the input (gray stays gray); alpha is passed
    /// through, or resized x4 (bicubic) for SR.
    pub fn restore(&self, pic: &Picture) -> anyhow::Result<Picture> {
        if let Some(v) = pic.color.iter().find(|v| !v.is_finite()) {
            bail!("the image holds a non-finite value ({v})")
        }
        let (h, w) = (pic.height, pic.width);
        let n = h * w;
        let s = self.task.scale();
        let (planes, out_channels): (Vec<Vec<f32>>, usize) = match (self.task, pic.channels) {
            // The denoiser is gray: colour runs channel by channel, or as luma with --gray.
            (Task::Denoise, 1) => (vec![self.run(pic.color.clone(), 1, h, w)?], 1),
            (Task::Denoise, _) if self.options.gray => {
                (vec![self.run(luma(&pic.color, n), 1, h, w)?], 1)
            }
            (Task::Denoise, _) => (
                (0..3)
                    .map(|c| self.run(pic.plane(c).to_vec(), 1, h, w))
                    .collect::<anyhow::Result<_>>()?,
                3,
            ),
            // The other models are RGB: gray runs as RGB and is written gray.
            (_, 1) => {
                let rgb = pic.color.repeat(3);
                (vec![luma(&self.run(rgb, 3, h, w)?, n * s * s)], 1)
            }
            (_, _) => (vec![self.run(pic.color.clone(), 3, h, w)?], 3),
        };
        let alpha = pic.alpha.as_ref().map(|a| {
            if s == 1 {
                a.clone()
            } else {
                let (up, _, _) = imresize(a, h, w, 1, s as f64);
                up.into_iter().map(|v| v.clamp(0.0, 1.0)).collect()
            }
        });
        Ok(Picture {
            width: w * s,
            height: h * s,
            channels: out_channels,
            color: planes.concat(),
            alpha,
            depth: pic.depth,
        })
    }

    /// Runs the model on `c` planes of `h x w`; returns `c` planes of the output size.
    fn run(&self, planes: Vec<f32>, c: usize, h: usize, w: usize) -> anyhow::Result<Vec<f32>> {
        let x = Tensor::from_vec(planes, (1, c, h, w), &self.device)?;
        // Tiny images: pad with edge values so every layer's padding fits, crop afterwards.
        let (ph, pw) = (h.max(MIN_SIDE), w.max(MIN_SIDE));
        let x = if (ph, pw) != (h, w) {
            x.pad_with_same(2, 0, ph - h)?.pad_with_same(3, 0, pw - w)?
        } else {
            x
        };
        let s = self.task.scale();
        let y = self.tiled(&x)?;
        let y = y.narrow(2, 0, h * s)?.narrow(3, 0, w * s)?;
        Ok(y.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// The model (with the x8 ensemble when asked) on `x`.
    fn forward(&self, x: &Tensor) -> anyhow::Result<Tensor> {
        if !self.options.x8 {
            return self.model.forward(x, self.kernel.as_ref());
        }
        let mut acc: Option<Tensor> = None;
        for t in 0..8 {
            let y = self.model.forward(&dihedral(x, t)?, self.kernel.as_ref())?;
            let y = dihedral_inverse(&y, t)?;
            acc = Some(match acc {
                Some(a) => (a + y)?,
                None => y,
            });
        }
        Ok((acc.expect("8 runs") / 8.0)?)
    }

    fn tiled(&self, x: &Tensor) -> anyhow::Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        let plan = self.options.plan(self.model.kind(), (h, w, c));
        let Tiling::Tiles {
            tile: (tile_h, tile_w),
            overlap,
            ..
        } = plan.tiling
        else {
            return self.forward(x);
        };
        let s = self.task.scale();
        let overlap = overlap.min(tile_h.min(tile_w) / 2);
        let rows = tile_starts(h, tile_h, overlap);
        let cols = tile_starts(w, tile_w, overlap);
        let mut out = vec![0f32; c * h * s * w * s];
        let mut weight = vec![0f32; h * s * w * s];
        for &r in &rows {
            for &q in &cols {
                let (th, tw) = (tile_h.min(h - r), tile_w.min(w - q));
                let y = self.forward(&x.narrow(2, r, th)?.narrow(3, q, tw)?.contiguous()?)?;
                let y = y.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                // Ramps only on sides that have a neighbour.
                let ramp_h = ramp(th * s, overlap * s, r > 0, r + th < h);
                let ramp_w = ramp(tw * s, overlap * s, q > 0, q + tw < w);
                let (oh, ow) = (th * s, tw * s);
                for i in 0..oh {
                    for j in 0..ow {
                        let wt = ramp_h[i] * ramp_w[j];
                        let dst = (r * s + i) * w * s + q * s + j;
                        weight[dst] += wt;
                        for ch in 0..c {
                            out[ch * h * s * w * s + dst] += wt * y[ch * oh * ow + i * ow + j];
                        }
                    }
                }
            }
        }
        let plane = h * s * w * s;
        for (i, v) in out.iter_mut().enumerate() {
            *v /= weight[i % plane];
        }
        Ok(Tensor::from_vec(out, (1, c, h * s, w * s), &self.device)?)
    }
}

/// Tile origins along a side of `n` pixels: tiles of `tile` overlapping by at least `overlap`,
/// the last one flush with the end.
fn tile_starts(n: usize, tile: usize, overlap: usize) -> Vec<usize> {
    if n <= tile {
        return vec![0];
    }
    let step = tile - overlap;
    let mut starts: Vec<usize> = (0..)
        .map(|i| i * step)
        .take_while(|s| s + tile < n)
        .collect();
    starts.push(n - tile);
    starts
}

/// Blending weights along a tile side of `n`: linear ramps over `overlap` at the sides that
/// border another tile, 1 elsewhere (never 0, so every pixel has weight).
fn ramp(n: usize, overlap: usize, before: bool, after: bool) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let mut w = 1.0f32;
            if before && i < overlap {
                w = w.min((i + 1) as f32 / (overlap + 1) as f32);
            }
            if after && n - i <= overlap {
                w = w.min((n - i) as f32 / (overlap + 1) as f32);
            }
            w
        })
        .collect()
}

/// ITU-R BT.601 luma of planar RGB with `n` pixels per plane.
fn luma(rgb: &[f32], n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| 0.299 * rgb[i] + 0.587 * rgb[n + i] + 0.114 * rgb[2 * n + i])
        .collect()
}

fn flip_w(t: &Tensor) -> candle_core::Result<Tensor> {
    let w = t.dim(3)?;
    let idx = Tensor::from_vec((0..w as u32).rev().collect::<Vec<_>>(), w, t.device())?;
    t.contiguous()?.index_select(&idx, 3)
}

/// One of the 8 symmetries of the square: `t % 4` quarter turns after `t / 4` flips.
fn dihedral(x: &Tensor, t: usize) -> candle_core::Result<Tensor> {
    let mut y = if t >= 4 { flip_w(x)? } else { x.clone() };
    for _ in 0..t % 4 {
        y = flip_w(&y.transpose(2, 3)?)?;
    }
    Ok(y)
}

fn dihedral_inverse(y: &Tensor, t: usize) -> candle_core::Result<Tensor> {
    let mut x = y.clone();
    for _ in 0..t % 4 {
        x = flip_w(&x)?.transpose(2, 3)?;
    }
    if t >= 4 {
        x = flip_w(&x)?;
    }
    x.contiguous()
}

/// Checks a kernel for the model and reports what happened to it.
pub fn model_kernel(k: &Kernel, flip: bool) -> anyhow::Result<Kernel> {
    let k = if flip { k.flipped() } else { k.clone() };
    k.for_model().context("invalid --kernel")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dihedral_round_trips() {
        let x = Tensor::arange(0f32, 12.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 3, 4))
            .unwrap();
        let mut seen = vec![];
        for t in 0..8 {
            let y = dihedral(&x, t).unwrap();
            let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(!seen.contains(&v), "transform {t} repeats another");
            seen.push(v);
            let back = dihedral_inverse(&y, t).unwrap();
            assert_eq!(
                back.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
    }

    #[test]
    fn tiles_cover_the_side_and_ramps_never_vanish() {
        assert_eq!(tile_starts(100, 100, 10), [0]);
        assert_eq!(tile_starts(250, 100, 20), [0, 80, 150]);
        for n in [101, 177, 1000] {
            let s = tile_starts(n, 64, 16);
            assert_eq!(*s.last().unwrap() + 64, n);
            assert!(s.windows(2).all(|p| p[1] > p[0] && p[1] - p[0] <= 48));
        }
        let r = ramp(10, 3, true, true);
        assert_eq!(r, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25]);
        assert!(ramp(10, 3, false, false).iter().all(|v| *v == 1.0));
    }
}
