//! Fine-tuning a released model on the user's clean images (`converse finetune`).
//!
//! Each step draws a batch of random square patches, each flipped or rotated (one of the eight
//! symmetries of the square), degrades them on the fly with exactly the degradations of
//! `converse eval` and `converse degrade` ([`Degradation::apply`]), runs the model, and takes an
//! L1 loss and an [`Adam`] step with a cosine learning-rate schedule.
//!
//! Everything a step draws comes from a generator seeded by `(seed, step)`, so a run is a pure
//! function of its [`Recipe`]: a [`Checkpoint`] holds the weights, Adam's moments and the step,
//! and a resumed run continues bit for bit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::eval::protocol::{read_u8, to_tensor, Degradation, ImageU8};
use crate::kernel::Kernel;
use crate::models::{Model, ModelKind};

/// The metadata key of a fine-tuned weights file or checkpoint holding its [`Recipe`] (JSON).
pub const META_RECIPE: &str = "converse_finetune";
/// The metadata key of a checkpoint holding the number of steps done.
pub const META_STEP: &str = "converse_finetune_step";
/// The prefix of Adam's first moments in a checkpoint (then the parameter's name).
const FIRST_MOMENT: &str = "adam_m/";
/// The prefix of Adam's second moments in a checkpoint.
const SECOND_MOMENT: &str = "adam_v/";

/// What a fine-tuning run is: the same recipe and the same data give the same weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// The model's id (`converse_dncnn`, ...).
    pub model: String,
    /// The degradations, by label ([`label`]); each patch takes one at random.
    pub degradations: Vec<String>,
    /// Side of the clean (target) patches, in pixels.
    pub patch: usize,
    /// Patches per step.
    pub batch: usize,
    /// Steps in all: the schedule decays over them.
    pub steps: usize,
    /// The learning rate at step 0; the cosine schedule ends at a hundredth of it.
    pub lr: f64,
    pub seed: u64,
}

/// A degradation's label in a [`Recipe`]: `sigma:25`, `jpeg:10`, `sr`, `blur:<kernel>:2.55`.
pub fn label(d: &Degradation, kernel_name: Option<&str>) -> String {
    match d {
        Degradation::Denoise { sigma } => format!("sigma:{sigma}"),
        Degradation::Jpeg { quality } => format!("jpeg:{quality}"),
        Degradation::Sr => "sr".into(),
        Degradation::Deblur { sigma, .. } => {
            format!("blur:{}:{sigma}", kernel_name.unwrap_or("kernel"))
        }
    }
}

impl Recipe {
    /// The recipe a weights file from `converse finetune` records, if it is one.
    pub fn of_file(path: &Path) -> anyhow::Result<Option<Self>> {
        let bytes = crate::files::read_regular(path, crate::models::MAX_SAFETENSORS_BYTES)
            .with_context(|| format!("cannot read '{}'", path.display()))?;
        let Ok((_, meta)) = safetensors::SafeTensors::read_metadata(&bytes) else {
            return Ok(None);
        };
        Ok(meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_RECIPE))
            .and_then(|r| serde_json::from_str(r).ok()))
    }

    /// The learning rate of step `step` (counted from 0): a cosine from `lr` down to `lr / 100`
    /// at the last step; `lr` while the number of steps is not fixed yet (0: `--minutes` is
    /// timing the first steps).
    pub fn lr_at(&self, step: usize) -> f64 {
        if self.steps == 0 {
            return self.lr;
        }
        let lo = self.lr / 100.0;
        let f = step as f64 / self.steps.saturating_sub(1).max(1) as f64;
        lo + 0.5 * (self.lr - lo) * (1.0 + (std::f64::consts::PI * f.min(1.0)).cos())
    }

    /// Names the fields in which `other` differs from `self`.
    pub fn differences(&self, other: &Recipe) -> Vec<String> {
        let mut out = vec![];
        let mut check = |name: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{name} {a} (now {b})"))
            }
        };
        check("model", self.model.clone(), other.model.clone());
        check(
            "degradations",
            self.degradations.join(","),
            other.degradations.join(","),
        );
        check("patch", self.patch.to_string(), other.patch.to_string());
        check("batch", self.batch.to_string(), other.batch.to_string());
        check("steps", self.steps.to_string(), other.steps.to_string());
        check("lr", self.lr.to_string(), other.lr.to_string());
        check("seed", self.seed.to_string(), other.seed.to_string());
        out
    }
}

/// SplitMix64: a small, fast generator whose whole state is one `u64`.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// The generator of step `step` of a run seeded with `seed`.
    pub fn for_step(seed: u64, step: usize) -> Self {
        let mut r = Self(seed ^ 0x9E37_79B9_7F4A_7C15);
        let mix = r.next_u64() ^ (step as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
        Self(mix)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 11) as u128 * n as u128) >> 53) as usize
    }
}

/// The clean images of a training or validation folder, read as the task reads them.
#[derive(Debug, Clone)]
pub struct Images {
    pub paths: Vec<PathBuf>,
    pub images: Vec<ImageU8>,
}

impl Images {
    /// Reads every image under `dir` with `channels` channels, leaving out (with a note) those
    /// that cannot be read or are smaller than `min_side`.
    pub fn read(
        dir: &Path,
        channels: usize,
        min_side: usize,
        notes: &mut Vec<String>,
    ) -> anyhow::Result<Self> {
        let list = crate::eval::protocol::list_images(dir)?;
        let (mut paths, mut images) = (vec![], vec![]);
        for path in list {
            match read_u8(&path, channels) {
                Ok(img) if img.height.min(img.width) >= min_side => {
                    paths.push(path);
                    images.push(img);
                }
                Ok(img) => notes.push(format!(
                    "'{}' is {}x{}, smaller than a {min_side}x{min_side} patch: left out",
                    path.display(),
                    img.width,
                    img.height
                )),
                Err(e) => notes.push(format!("'{}' left out: {e:#}", path.display())),
            }
        }
        if images.is_empty() {
            bail!(
                "no usable images in '{}' (each needs at least {min_side}x{min_side} pixels)",
                dir.display()
            )
        }
        Ok(Self { paths, images })
    }
}

/// One of the eight symmetries of the square (`t` in `0..8`: a rotation by `t % 4` quarter
/// turns, then a transpose when `t >= 4`) applied to a square patch.
pub fn dihedral(img: &ImageU8, t: usize) -> ImageU8 {
    let (n, c) = (img.height, img.channels);
    debug_assert_eq!(n, img.width);
    let mut data = vec![0u8; img.data.len()];
    for y in 0..n {
        for x in 0..n {
            let (mut sy, mut sx) = if t >= 4 { (x, y) } else { (y, x) };
            for _ in 0..t % 4 {
                (sy, sx) = (n - 1 - sx, sy);
            }
            let (d, s) = ((y * n + x) * c, (sy * n + sx) * c);
            data[d..d + c].copy_from_slice(&img.data[s..s + c]);
        }
    }
    ImageU8 { data, ..*img }
}

/// The `side x side` patch of `img` at `(y0, x0)`.
pub fn crop(img: &ImageU8, y0: usize, x0: usize, side: usize) -> ImageU8 {
    let c = img.channels;
    let mut data = Vec::with_capacity(side * side * c);
    for y in y0..y0 + side {
        let row = (y * img.width + x0) * c;
        data.extend_from_slice(&img.data[row..row + side * c]);
    }
    ImageU8 {
        height: side,
        width: side,
        channels: c,
        data,
    }
}

/// One degradation of a run, with the kernel the model is given, if it takes one.
#[derive(Debug, Clone)]
pub struct Degrader {
    pub degradation: Degradation,
    pub model_kernel: Option<Kernel>,
}

/// A batch: degraded inputs, clean targets, and the kernels for a model that takes them.
pub struct Batch {
    pub input: Tensor,
    pub target: Tensor,
    pub kernel: Option<Tensor>,
}

/// Draws the batch of step `step`: patches, symmetries and degradations from [`Rng::for_step`].
pub fn batch(
    recipe: &Recipe,
    degraders: &[Degrader],
    data: &Images,
    step: usize,
    dev: &Device,
) -> anyhow::Result<Batch> {
    let mut rng = Rng::for_step(recipe.seed, step);
    let (mut inputs, mut targets, mut kernels) = (vec![], vec![], vec![]);
    for _ in 0..recipe.batch {
        let i = rng.below(data.images.len());
        let img = &data.images[i];
        let p = recipe.patch;
        let (y0, x0) = (rng.below(img.height - p + 1), rng.below(img.width - p + 1));
        let patch = dihedral(&crop(img, y0, x0, p), rng.below(8));
        let d = &degraders[rng.below(degraders.len())];
        let noise_seed = rng.next_u64() as u32;
        let degraded = d
            .degradation
            .apply(&patch, noise_seed)
            .with_context(|| format!("cannot degrade a patch of '{}'", data.paths[i].display()))?;
        inputs.push(to_tensor(&degraded.input, dev)?);
        targets.push(to_tensor(
            &crate::eval::protocol::to_single(&degraded.clean),
            dev,
        )?);
        if let Some(k) = &d.model_kernel {
            kernels.push(k.to_tensor(dev)?);
        }
    }
    Ok(Batch {
        input: Tensor::cat(&inputs, 0)?,
        target: Tensor::cat(&targets, 0)?,
        kernel: (!kernels.is_empty())
            .then(|| Tensor::cat(&kernels, 0))
            .transpose()?,
    })
}

/// Adam (Kingma and Ba), as `torch.optim.Adam` computes it, with its state in the open so that
/// a [`Checkpoint`] can keep it: candle-nn's `AdamW` keeps its moments private.
#[derive(Debug)]
pub struct Adam {
    /// The parameters, by state-dict name, sorted.
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Steps taken.
    t: usize,
    lr: f64,
}

impl Adam {
    pub const BETA1: f64 = 0.9;
    pub const BETA2: f64 = 0.999;
    pub const EPS: f64 = 1e-8;

    /// Adam over every variable of `vars`, its moments zero.
    pub fn new(vars: &candle_nn::VarMap, lr: f64) -> candle_core::Result<Self> {
        let mut named: Vec<(String, Var)> = vars
            .data()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = |(_, v): &(String, Var)| v.zeros_like();
        Ok(Self {
            m: named
                .iter()
                .map(zeros)
                .collect::<candle_core::Result<_>>()?,
            v: named
                .iter()
                .map(zeros)
                .collect::<candle_core::Result<_>>()?,
            vars: named,
            t: 0,
            lr,
        })
    }

    /// Steps taken.
    pub fn steps(&self) -> usize {
        self.t
    }
}

impl candle_nn::Optimizer for Adam {
    type Config = f64;

    fn new(vars: Vec<Var>, lr: f64) -> candle_core::Result<Self> {
        let map = candle_nn::VarMap::new();
        {
            let mut data = map.data().lock().unwrap_or_else(|e| e.into_inner());
            for (i, v) in vars.into_iter().enumerate() {
                data.insert(format!("{i:08}"), v);
            }
        }
        Adam::new(&map, lr)
    }

    fn step(&mut self, grads: &candle_core::backprop::GradStore) -> candle_core::Result<()> {
        self.t += 1;
        let (b1, b2) = (Self::BETA1, Self::BETA2);
        let c1 = 1.0 - b1.powi(self.t as i32);
        let c2 = 1.0 - b2.powi(self.t as i32);
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var) else { continue };
            let m = ((&self.m[i] * b1)? + (g * (1.0 - b1))?)?;
            let v = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let denom = ((v.sqrt()? / c2.sqrt())? + Self::EPS)?;
            let update = ((&m / denom)? * (self.lr / c1))?;
            var.set(&(var.as_tensor() - update)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr
    }
}

/// A model being fine-tuned, its optimiser and its recipe.
pub struct Trainer {
    pub recipe: Recipe,
    pub kind: ModelKind,
    pub model: Model,
    pub adam: Adam,
    dev: Device,
}

/// What one step measured.
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    pub step: usize,
    pub loss: f32,
    pub lr: f64,
}

impl Trainer {
    /// Starts from `tensors` (a released model's state dict, or a fine-tuned one's).
    pub fn new(
        kind: ModelKind,
        recipe: Recipe,
        tensors: HashMap<String, Tensor>,
        dev: &Device,
    ) -> anyhow::Result<Self> {
        let (model, vars) = Model::trainable(kind, tensors, DType::F32, dev)?;
        let adam = Adam::new(&vars, recipe.lr)?;
        Ok(Self {
            recipe,
            kind,
            model,
            adam,
            dev: dev.clone(),
        })
    }

    /// Continues the run `ckpt` holds; `recipe` must be the one it was started with.
    pub fn resume(
        kind: ModelKind,
        recipe: Recipe,
        ckpt: Checkpoint,
        dev: &Device,
    ) -> anyhow::Result<Self> {
        let diff = ckpt.recipe.differences(&recipe);
        if !diff.is_empty() {
            bail!(
                "the checkpoint was made with another recipe: {}; give the same options to resume",
                diff.join(", ")
            )
        }
        if ckpt.recipe.model != kind.id() {
            bail!(
                "the checkpoint holds {} weights, not {kind}",
                ckpt.recipe.model
            )
        }
        let mut t = Self::new(kind, recipe, ckpt.weights, dev)?;
        for (i, (name, var)) in t.adam.vars.iter().enumerate() {
            let m = ckpt.first.get(name);
            let v = ckpt.second.get(name);
            let (Some(m), Some(v)) = (m, v) else {
                bail!("the checkpoint has no Adam state for `{name}`")
            };
            if m.dims() != var.dims() || v.dims() != var.dims() {
                bail!("the checkpoint's Adam state for `{name}` has the wrong shape")
            }
            t.adam.m[i] = m.to_device(dev)?;
            t.adam.v[i] = v.to_device(dev)?;
        }
        t.adam.t = ckpt.step;
        Ok(t)
    }

    /// Steps done.
    pub fn step(&self) -> usize {
        self.adam.t
    }

    /// Takes one step on `batch`.
    pub fn train_step(&mut self, batch: &Batch) -> anyhow::Result<StepReport> {
        use candle_nn::Optimizer;
        let step = self.adam.t;
        let lr = self.recipe.lr_at(step);
        self.adam.set_learning_rate(lr);
        let y = self.model.forward(&batch.input, batch.kernel.as_ref())?;
        let loss = (y - &batch.target)?.abs()?.mean_all()?;
        let grads = loss.backward()?;
        self.adam.step(&grads)?;
        let loss = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        if !loss.is_finite() {
            bail!("the loss is not finite at step {step}: lower --lr")
        }
        Ok(StepReport { step, loss, lr })
    }

    /// The current weights, detached, under their state-dict names.
    pub fn weights(&self) -> candle_core::Result<HashMap<String, Tensor>> {
        self.adam
            .vars
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().detach().to_dtype(DType::F32)?)))
            .collect()
    }

    /// A model with the current weights for inference (the fast path; no gradients).
    pub fn snapshot(&self) -> anyhow::Result<Model> {
        Model::from_tensors(self.kind, self.weights()?, DType::F32, &self.dev)
    }

    /// The fine-tuned weights as a safetensors file: the released names, the model's id and the
    /// recipe in its metadata ([`Model::load`] takes it).
    pub fn weights_bytes(&self) -> anyhow::Result<Vec<u8>> {
        let mut meta = self.metadata();
        meta.insert(META_STEP.into(), self.step().to_string());
        serialize(self.weights()?, meta)
    }

    /// The run so far, to resume: weights, Adam's moments, the step and the recipe.
    pub fn checkpoint_bytes(&self) -> anyhow::Result<Vec<u8>> {
        let mut tensors = self.weights()?;
        for (i, (name, _)) in self.adam.vars.iter().enumerate() {
            tensors.insert(format!("{FIRST_MOMENT}{name}"), self.adam.m[i].clone());
            tensors.insert(format!("{SECOND_MOMENT}{name}"), self.adam.v[i].clone());
        }
        let mut meta = self.metadata();
        meta.insert(META_STEP.into(), self.step().to_string());
        serialize(tensors, meta)
    }

    fn metadata(&self) -> HashMap<String, String> {
        HashMap::from([
            (
                converse_convert::META_MODEL.to_owned(),
                self.kind.id().to_owned(),
            ),
            (
                META_RECIPE.to_owned(),
                serde_json::to_string(&self.recipe).expect("a recipe serialises"),
            ),
        ])
    }
}

/// Safetensors bytes of `tensors` with `meta`, the same bytes for the same content: the
/// header's keys (the metadata's too) are sorted.
fn serialize(
    tensors: HashMap<String, Tensor>,
    meta: HashMap<String, String>,
) -> anyhow::Result<Vec<u8>> {
    let mut sorted: Vec<(String, Tensor)> = tensors.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let bytes = safetensors::serialize(sorted, Some(meta))?;
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    // serde_json's maps are ordered by key.
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n])?;
    let mut text = serde_json::to_vec(&header)?;
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + text.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    Ok(out)
}

/// A checkpoint read back.
pub struct Checkpoint {
    pub recipe: Recipe,
    pub step: usize,
    pub weights: HashMap<String, Tensor>,
    first: HashMap<String, Tensor>,
    second: HashMap<String, Tensor>,
}

impl Checkpoint {
    /// Reads the checkpoint `path` that [`Trainer::checkpoint_bytes`] wrote.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let what = || format!("cannot resume from '{}'", path.display());
        let bytes = crate::files::read_regular(path, crate::models::MAX_SAFETENSORS_BYTES)
            .with_context(what)?;
        Self::parse(&bytes).with_context(what)
    }

    fn parse(bytes: &[u8]) -> anyhow::Result<Self> {
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| anyhow::anyhow!("not a safetensors file: {e}"))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let (Some(recipe), Some(step)) = (meta.get(META_RECIPE), meta.get(META_STEP)) else {
            bail!("not a converse finetune checkpoint (no recipe or step in its metadata)")
        };
        let recipe: Recipe = serde_json::from_str(recipe).context("its recipe is not readable")?;
        let step: usize = step.parse().context("its step is not a number")?;
        let (mut weights, mut first, mut second) = (HashMap::new(), HashMap::new(), HashMap::new());
        for (name, t) in candle_core::safetensors::load_buffer(bytes, &Device::Cpu)? {
            if let Some(n) = name.strip_prefix(FIRST_MOMENT) {
                first.insert(n.to_owned(), t);
            } else if let Some(n) = name.strip_prefix(SECOND_MOMENT) {
                second.insert(n.to_owned(), t);
            } else {
                weights.insert(name, t);
            }
        }
        if first.is_empty() {
            bail!("it holds weights only (a finished run's output, not a checkpoint)")
        }
        Ok(Self {
            recipe,
            step,
            weights,
            first,
            second,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize, c: usize) -> ImageU8 {
        ImageU8 {
            height: n,
            width: n,
            channels: c,
            data: (0..n * n * c).map(|v| v as u8).collect(),
        }
    }

    #[test]
    fn files_are_the_same_bytes_for_the_same_content() {
        let t = |v: f32| Tensor::new(&[v, 2.0], &Device::Cpu).unwrap();
        let tensors = || HashMap::from([("b".to_owned(), t(1.0)), ("a".to_owned(), t(3.0))]);
        let meta = || {
            (0..8)
                .map(|i| (format!("key{i}"), i.to_string()))
                .collect::<HashMap<_, _>>()
        };
        let first = serialize(tensors(), meta()).unwrap();
        for _ in 0..4 {
            assert_eq!(serialize(tensors(), meta()).unwrap(), first);
        }
        let back = candle_core::safetensors::load_buffer(&first, &Device::Cpu).unwrap();
        assert_eq!(back["a"].to_vec1::<f32>().unwrap(), [3.0, 2.0]);
        let (_, m) = safetensors::SafeTensors::read_metadata(&first).unwrap();
        assert_eq!(m.metadata().as_ref().unwrap()["key7"], "7");
    }

    #[test]
    fn the_eight_symmetries_are_distinct_and_transforms_of_the_patch() {
        let img = ramp(4, 2);
        let all: Vec<ImageU8> = (0..8).map(|t| dihedral(&img, t)).collect();
        assert_eq!(all[0], img);
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
            let (mut x, mut y) = (a.data.clone(), img.data.clone());
            x.sort();
            y.sort();
            assert_eq!(x, y, "a symmetry only moves pixels");
        }
        // A quarter turn four times, and a transpose twice, give the patch back.
        let mut r = img.clone();
        for _ in 0..4 {
            r = dihedral(&r, 1);
        }
        assert_eq!(r, img);
        assert_eq!(dihedral(&dihedral(&img, 4), 4), img);
    }

    #[test]
    fn crops_take_the_rows_and_columns_asked_for() {
        let img = ImageU8 {
            height: 3,
            width: 4,
            channels: 1,
            data: (0..12).collect(),
        };
        assert_eq!(crop(&img, 1, 2, 2).data, vec![6, 7, 10, 11]);
    }

    #[test]
    fn the_schedule_falls_from_lr_to_a_hundredth() {
        let r = Recipe {
            model: "m".into(),
            degradations: vec![],
            patch: 8,
            batch: 1,
            steps: 101,
            lr: 1e-3,
            seed: 0,
        };
        assert_eq!(r.lr_at(0), 1e-3);
        assert!((r.lr_at(100) - 1e-5).abs() < 1e-15);
        assert!((r.lr_at(50) - 0.505e-3).abs() < 1e-12);
        assert!(r.lr_at(30) > r.lr_at(31));
        let unfixed = Recipe { steps: 0, ..r };
        assert_eq!(unfixed.lr_at(7), 1e-3);
    }

    #[test]
    fn steps_draw_reproducibly_and_differently() {
        let draw = |seed, step| {
            let mut r = Rng::for_step(seed, step);
            (0..4).map(|_| r.below(1000)).collect::<Vec<_>>()
        };
        assert_eq!(draw(1, 5), draw(1, 5));
        assert_ne!(draw(1, 5), draw(1, 6));
        assert_ne!(draw(1, 5), draw(2, 5));
        let mut r = Rng::for_step(0, 0);
        assert!((0..1000).all(|_| r.below(7) < 7));
    }

    #[test]
    fn adam_matches_its_formula_on_one_parameter() {
        use candle_nn::Optimizer;
        let x = Var::new(&[1.0f64, -2.0], &Device::Cpu).unwrap();
        let mut adam = <Adam as Optimizer>::new(vec![x.clone()], 0.1).unwrap();
        for _ in 0..2 {
            let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
            adam.backward_step(&loss).unwrap();
        }
        // The step of bias-corrected Adam on a gradient of constant sign is about lr: by hand,
        // step 1 moves each value by exactly 0.1; step 2 by 0.1 * mhat / sqrt(vhat).
        let v = x.as_tensor().to_vec1::<f64>().unwrap();
        for (i, start) in [1.0f64, -2.0].into_iter().enumerate() {
            let g1 = 2.0 * start;
            let after1 = start - 0.1 * g1 / (g1.abs() + 1e-8);
            let g2 = 2.0 * after1;
            let m = (0.9 * 0.1 * g1 + 0.1 * g2) / (1.0 - 0.9f64.powi(2));
            let vv = (0.999 * 0.001 * g1 * g1 + 0.001 * g2 * g2) / (1.0 - 0.999f64.powi(2));
            let after2 = after1 - 0.1 * m / (vv.sqrt() + 1e-8);
            assert!((v[i] - after2).abs() < 1e-12, "{i}: {} vs {after2}", v[i]);
        }
    }
}
