//! Restoring one image: [`colour`] handling (luma, per plane, alpha), the x8 [`ensemble`] and
//! tiling ([`crate::tiling`]), composed by [`Restorer`].
//!
//! Converse2D layers act over the whole image, so the whole image is run at once when it fits
//! the memory budget; otherwise it is cut into overlapping tiles whose outputs are blended with
//! linear ramps across the overlaps. Only whole-image runs reproduce the official outputs
//! exactly.

pub mod colour;
pub mod ensemble;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};

use crate::image_io::Picture;
use crate::kernel::Kernel;
use crate::memory;
use crate::models::{Model, ModelKind, Task};
use crate::ops::cpu::branch::with_grid_budget;
use crate::ops::{with_reference, Backend};
use crate::tiling::{run_tiled, Tiling};

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
    /// Memory budget for one image, in bytes: host memory for the CPU, device memory for a GPU.
    pub max_memory: u64,
    /// The path the model runs: the fused CPU kernels, or the reference path (candle ops) that a
    /// GPU runs, also on the CPU when asked (`restore --reference`). [`Restorer::new`] takes the
    /// reference for a device other than the CPU.
    pub backend: Backend,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            gray: false,
            x8: false,
            tile: None,
            tile_overlap: None,
            max_memory: default_max_memory(),
            backend: Backend::Fused,
        }
    }
}

impl Options {
    /// How an `h x w` image with `channels` colour channels is run by `model`, and its
    /// estimated peak memory (no weights needed).
    pub fn plan(
        &self,
        model: ModelKind,
        (h, w, channels): (usize, usize, usize),
    ) -> memory::TilePlan {
        let job = memory::Workload {
            kind: model,
            height: h.max(MIN_SIDE),
            width: w.max(MIN_SIDE),
            channels: if self.gray { 1 } else { channels },
            scale: model.scale(),
            x8: self.x8,
            backend: self.backend,
        };
        let req = memory::TileRequest {
            tile: self.tile,
            overlap: self.tile_overlap,
            budget: self.max_memory,
        };
        memory::plan_tiles(&job, &req, rayon::current_num_threads())
    }

    /// Why a budget-chosen plan is over the budget, if it is: the smallest tiles the model's
    /// overlap allows do not fit (or the image is smaller than one of them).
    pub fn over_budget(&self, plan: &memory::TilePlan) -> Option<String> {
        if self.tile.is_some() || plan.peak <= self.max_memory {
            return None;
        }
        let why = match plan.tiling {
            Tiling::Whole => "the image is smaller than the smallest tile with the model's overlap",
            Tiling::Tiles { .. } => "the smallest tiles with the model's overlap do not fit",
        };
        Some(format!(
            "over the budget: {why} (raise --max-memory, or lower --tile-overlap)"
        ))
    }

    /// Model runs (blocks) an image takes: the steps of its progress bar.
    pub fn steps(&self, model: ModelKind, (h, w, channels): (usize, usize, usize)) -> u64 {
        let runs = colour::runs(model, channels, self.gray)
            * self.plan(model, (h, w, channels)).tiling.count() as u64;
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
        mut options: Options,
    ) -> anyhow::Result<Self> {
        if !device.is_cpu() {
            options.backend = Backend::Reference;
        }
        if model.kind() != task.model(kernel.is_some()) {
            bail!("{} cannot run --task {}", model.kind(), task.name())
        }
        let kernel = kernel.map(|k| k.to_tensor(&device)).transpose()?;
        Ok(Self {
            model,
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

    /// Steps (calls of `on_block`) that [`Restorer::restore`] of `pic` makes.
    pub fn steps(&self, pic: &Picture) -> u64 {
        let (h, w) = (pic.height, pic.width);
        self.options
            .steps(self.model.kind(), (h, w, pic.channels.min(3)))
    }

    /// Restores a picture, calling `on_block` after each `ConverseBlock` run. Colour and depth
    /// follow the input (gray stays gray); alpha is passed through, or resized x4 (bicubic)
    /// for SR.
    pub fn restore(&self, pic: &Picture, on_block: &dyn Fn()) -> anyhow::Result<Picture> {
        if let Some(v) = pic.color.iter().find(|v| !v.is_finite()) {
            bail!("the image holds a non-finite value ({v})")
        }
        let (h, w) = (pic.height, pic.width);
        colour::restore(pic, self.model.kind(), self.options.gray, |planes, c| {
            self.run(planes, c, h, w, on_block)
        })
    }

    /// Runs the model on `c` planes of `h x w`, tiled as planned and with the x8 ensemble when
    /// asked; returns `c` planes of the output size.
    fn run(
        &self,
        planes: Vec<f32>,
        c: usize,
        h: usize,
        w: usize,
        on_block: &dyn Fn(),
    ) -> anyhow::Result<Vec<f32>> {
        let x = Tensor::from_vec(planes, (1, c, h, w), &self.device)?;
        // Tiny images: pad with edge values so every layer's padding fits, crop afterwards.
        let (ph, pw) = (h.max(MIN_SIDE), w.max(MIN_SIDE));
        let x = if (ph, pw) != (h, w) {
            x.pad_with_same(2, 0, ph - h)?.pad_with_same(3, 0, pw - w)?
        } else {
            x
        };
        let kind = self.model.kind();
        let s = kind.scale();
        let plan = self.options.plan(kind, (ph, pw, c));
        let model = |x: &Tensor| self.model.run(x, self.kernel.as_ref(), on_block);
        let run = || {
            run_tiled(&x, plan.tiling, s, |tile| match self.options.x8 {
                true => ensemble::x8(tile, model),
                false => model(tile),
            })
        };
        let y = match self.options.backend {
            Backend::Fused => with_grid_budget(plan.grid_budget, run),
            Backend::Reference => with_reference(run),
        }?;
        let y = y.narrow(2, 0, h * s)?.narrow(3, 0, w * s)?;
        Ok(y.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    }
}

/// Checks a kernel for the model and reports what happened to it.
pub fn model_kernel(k: &Kernel, flip: bool) -> anyhow::Result<Kernel> {
    let k = if flip { k.flipped() } else { k.clone() };
    k.for_model().context("invalid --kernel")
}
