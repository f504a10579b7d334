//! The released ConverseNet models: one file each, declaring everything about its model in a
//! [`ModelInfo`], and one registry ([`registry!`] below) that lists them.
//!
//! A model file holds the network, its `Config`, and `pub const INFO: ModelInfo`. Adding a model
//! is that file plus one line in the registry.

mod load;

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use converse_convert::{ModelSpec, ParamSpec};

use crate::ops::Converse2d;
use load::ParamStore;

pub use conversenet::ConverseNet;
pub use dncnn::ConverseDnCNN;
pub use srresnet::ConverseMSRResNet;
pub use usrnet::ConverseUSRNet;

/// Lists the models: each line is a [`ModelKind`] constant and the model's file.
macro_rules! registry {
    ($($(#[$doc:meta])* $name:ident => $module:ident,)*) => {
        $(pub mod $module;)*

        #[allow(non_upper_case_globals)]
        impl ModelKind {
            $($(#[$doc])* pub const $name: ModelKind = ModelKind(&$module::INFO);)*

            /// Every model, in registry order.
            pub const ALL: [ModelKind; [$(stringify!($name)),*].len()] = [$(Self::$name),*];
        }
    };
}

registry! {
    /// Converse-DnCNN, grayscale denoising at sigma 25.
    DnCNN => dncnn,
    /// Converse-SRResNet, x4 super-resolution.
    SRResNet => srresnet,
    /// ConverseNet, blind deblurring.
    ConverseNet => conversenet,
    /// Converse-USRNet, deblurring with a known 7x7 kernel.
    USRNet => usrnet,
}

/// What to do to an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Task {
    /// Converse-DnCNN (trained on gray images at sigma 25).
    Denoise,
    /// Converse-SRResNet, x4.
    Sr,
    /// ConverseNet (blind) or, with a kernel, Converse-USRNet.
    Deblur,
}

impl Task {
    pub const ALL: [Task; 3] = [Self::Denoise, Self::Sr, Self::Deblur];

    pub fn name(self) -> &'static str {
        match self {
            Self::Denoise => "denoise",
            Self::Sr => "sr",
            Self::Deblur => "deblur",
        }
    }

    /// The model for the task: the registered one whose [`ModelInfo::task`] it is, the one that
    /// takes a kernel exactly when `with_kernel` if there are two.
    pub fn model(self, with_kernel: bool) -> ModelKind {
        ModelKind::ALL
            .into_iter()
            .find(|k| k.0.task == self && k.0.takes_kernel == with_kernel)
            .or_else(|| ModelKind::ALL.into_iter().find(|k| k.0.task == self))
            .expect("every task has a model in the registry")
    }

    /// Output size over input size.
    pub fn scale(self) -> usize {
        self.model(false).scale()
    }
}

/// Everything about one model, declared by its file as `pub const INFO`.
pub struct ModelInfo {
    /// The id, also the released file's stem.
    pub id: &'static str,
    /// The official PyTorch class.
    pub class: &'static str,
    /// The name in messages and the paper.
    pub name: &'static str,
    /// sha256 of the released `.pth` in the official `model_zoo/`.
    pub sha256: &'static str,
    /// The task the model serves.
    pub task: Task,
    /// Whether the model takes a blur kernel with the image.
    pub takes_kernel: bool,
    /// Image channels the model takes (1: gray, 3: RGB).
    pub channels: usize,
    /// Output side over input side.
    pub scale: usize,
    /// `ConverseBlock`s one forward pass runs (the steps of a progress bar).
    pub blocks_per_forward: usize,
    /// Padding of the blocks' Converse2D layers, which the solve grids add around the image.
    pub block_padding: usize,
    /// How far, in input pixels, the output depends on the input: the tiles' overlap
    /// (measured with `cargo run --release --example dependence`).
    pub reach: usize,
    /// The memory model's feature-map bytes per pixel of the working resolution (the
    /// output's, for SR), fitted to measured peaks ([`crate::memory`]).
    pub feature_bytes_per_px: u64,
    /// The memory model of the reference path (candle ops: a GPU, or `restore --reference`):
    /// `(a, b)` for a peak of `a + b x pixels` of the working resolution in f32, fitted to
    /// measured peaks ([`crate::memory::reference_peak`], docs/performance.md).
    pub reference_bytes: (u64, u64),
    /// Prefix of the model's files in the golden folder (`converse verify`).
    pub golden_prefix: &'static str,
    /// The architecture, as written into converted files' metadata.
    pub architecture: fn() -> String,
    /// Builds the released architecture from `vb`.
    pub build: fn(VarBuilder) -> candle_core::Result<Box<dyn Network>>,
}

/// A model's network: run once per image (or tile), with a callback per `ConverseBlock`.
pub trait Network: fmt::Debug + Send + Sync {
    /// Runs on `x` `(N, C, H, W)`; `kernel` is given exactly when [`ModelInfo::takes_kernel`];
    /// `on_block` is called after each `ConverseBlock`.
    fn run(
        &self,
        x: &Tensor,
        kernel: Option<&Tensor>,
        on_block: &dyn Fn(),
    ) -> candle_core::Result<Tensor>;

    /// The Converse2D layers with learned kernels.
    fn converse_layers(&self) -> Vec<&Converse2d>;
}

/// One of the registered models.
#[derive(Clone, Copy)]
pub struct ModelKind(&'static ModelInfo);

impl ModelKind {
    /// Everything about the model.
    pub fn info(self) -> &'static ModelInfo {
        self.0
    }

    /// The id, also the released file's stem.
    pub fn id(self) -> &'static str {
        self.0.id
    }

    /// Output side over input side.
    pub fn scale(self) -> usize {
        self.0.scale
    }

    /// `ConverseBlock`s one forward pass runs (the steps of a progress bar).
    pub fn blocks_per_forward(self) -> u64 {
        self.0.blocks_per_forward as u64
    }

    /// The official PyTorch class.
    pub fn class(self) -> &'static str {
        self.0.class
    }

    /// sha256 of the released `.pth` in the official `model_zoo/`.
    pub fn sha256(self) -> &'static str {
        self.0.sha256
    }

    /// Where the official checkpoint can be downloaded.
    pub fn url(self) -> String {
        format!(
            "https://github.com/cszn/ConverseNet/raw/main/model_zoo/{}.pth",
            self.id()
        )
    }

    pub fn from_id(id: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.id() == id)
    }

    /// The parameter list, read off the model code itself (built on zeros).
    pub fn spec(self) -> candle_core::Result<ModelSpec> {
        let store = Arc::new(ParamStore::recording());
        Model::build(self, &store, DType::F32, &Device::Cpu)?;
        let params = store
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, shape)| ParamSpec {
                name: name.clone(),
                shape: shape.dims().to_vec(),
            })
            .collect();
        Ok(ModelSpec {
            id: self.id().to_owned(),
            hyperparameters: vec![
                ("class".into(), self.class().into()),
                ("architecture".into(), (self.0.architecture)()),
            ],
            params,
        })
    }

    /// Specs of all registered models.
    pub fn specs() -> candle_core::Result<Vec<ModelSpec>> {
        Self::ALL.iter().map(|k| k.spec()).collect()
    }
}

impl PartialEq for ModelKind {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
    }
}

impl Eq for ModelKind {}

impl Hash for ModelKind {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id().hash(state)
    }
}

impl fmt::Debug for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// A loaded model, ready to run.
#[derive(Debug)]
pub struct Model {
    kind: ModelKind,
    net: Box<dyn Network>,
}

/// The largest safetensors file a model is loaded from (the released models are a few MB).
pub const MAX_SAFETENSORS_BYTES: u64 = 1 << 30;

impl Model {
    fn build(
        kind: ModelKind,
        store: &Arc<ParamStore>,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Self> {
        let net = (kind.0.build)(load::var_builder(store, dtype, dev))?;
        Ok(Self { kind, net })
    }

    /// Builds `kind` from a state dict, strictly: every tensor must be used, with its exact
    /// shape, and be F32.
    pub fn from_tensors(
        kind: ModelKind,
        tensors: HashMap<String, Tensor>,
        dtype: DType,
        dev: &Device,
    ) -> anyhow::Result<Self> {
        if let Some((name, t)) = tensors.iter().find(|(_, t)| t.dtype() != DType::F32) {
            bail!("tensor `{name}` is {:?}, {kind} expects F32", t.dtype())
        }
        Self::strict(kind, tensors, dtype, dev)
    }

    /// Builds `kind` for training from a state dict, as strictly as [`Self::from_tensors`]:
    /// every tensor becomes a [`Var`] in `dtype` on `dev`, under its state-dict name in the
    /// returned [`VarMap`] (for an optimiser, for gradients by name, and for saving the result
    /// with the released names). Layers with trainable parameters compute on the reference
    /// backend, reading their parameters at every call.
    pub fn trainable(
        kind: ModelKind,
        tensors: HashMap<String, Tensor>,
        dtype: DType,
        dev: &Device,
    ) -> anyhow::Result<(Self, VarMap)> {
        if let Some((name, t)) = tensors.iter().find(|(_, t)| t.dtype() != DType::F32) {
            bail!("tensor `{name}` is {:?}, {kind} expects F32", t.dtype())
        }
        let vars = VarMap::new();
        let mut params = HashMap::new();
        {
            let mut data = vars.data().lock().unwrap_or_else(|e| e.into_inner());
            for (name, t) in tensors {
                let v = Var::from_tensor(&t.to_dtype(dtype)?.to_device(dev)?)?;
                params.insert(name.clone(), v.as_tensor().clone());
                data.insert(name, v);
            }
        }
        Ok((Self::strict(kind, params, dtype, dev)?, vars))
    }

    /// [`Self::trainable`] from safetensors bytes.
    pub fn trainable_bytes(
        kind: ModelKind,
        bytes: &[u8],
        dtype: DType,
        dev: &Device,
    ) -> anyhow::Result<(Self, VarMap)> {
        Self::trainable(kind, Self::state_dict(kind, bytes)?, dtype, dev)
    }

    /// Builds `kind` from `tensors`: each must be used, with its exact shape.
    fn strict(
        kind: ModelKind,
        tensors: HashMap<String, Tensor>,
        dtype: DType,
        dev: &Device,
    ) -> anyhow::Result<Self> {
        let store = Arc::new(ParamStore {
            tensors: Some(tensors),
            seen: Mutex::default(),
        });
        let model = Self::build(kind, &store, dtype, dev)?;
        let unused = store.unused();
        if !unused.is_empty() {
            bail!(
                "{} tensor(s) that {kind} never uses: {}",
                unused.len(),
                unused
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
        Ok(model)
    }

    /// Loads `kind` from a safetensors file (as written by `converse convert`).
    pub fn load(kind: ModelKind, path: &Path, dtype: DType, dev: &Device) -> anyhow::Result<Self> {
        read_file(kind, path, |b| Self::load_bytes(kind, b, dtype, dev))
    }

    /// Loads `kind` from safetensors bytes.
    pub fn load_bytes(
        kind: ModelKind,
        bytes: &[u8],
        dtype: DType,
        dev: &Device,
    ) -> anyhow::Result<Self> {
        Self::from_tensors(kind, Self::state_dict(kind, bytes)?, dtype, dev)
    }

    /// The tensors of safetensors bytes meant for `kind` (refused when their metadata names
    /// another model), on the CPU.
    pub fn state_dict(kind: ModelKind, bytes: &[u8]) -> anyhow::Result<HashMap<String, Tensor>> {
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| anyhow::anyhow!("not a safetensors file: {e}"))?;
        if let Some(model) = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(converse_convert::META_MODEL))
        {
            if model != kind.id() {
                bail!("the file holds {model} weights, not {kind}")
            }
        }
        Ok(candle_core::safetensors::load_buffer(bytes, &Device::Cpu)?)
    }

    /// The model's Converse2D layers with learned kernels.
    pub fn converse_layers(&self) -> Vec<&Converse2d> {
        self.net.converse_layers()
    }

    /// Drops the transfer functions the model's Converse2D layers keep (on the reference path);
    /// they also go when the model is dropped.
    pub fn clear_caches(&self) {
        for layer in self.converse_layers() {
            layer.clear_cache();
        }
    }

    pub fn kind(&self) -> ModelKind {
        self.kind
    }

    /// Runs the model on `x` `(N, C, H, W)`; `kernel` `(N|1, 1, 7, 7)` is required by the
    /// models that take one and refused by the others. An output that is not finite everywhere
    /// is an error ([`check_finite`]): every command's model runs pass here.
    pub fn forward(&self, x: &Tensor, kernel: Option<&Tensor>) -> anyhow::Result<Tensor> {
        self.run(x, kernel, &|| {})
    }

    /// [`Model::forward`], calling `on_block` after each `ConverseBlock`.
    pub fn run(
        &self,
        x: &Tensor,
        kernel: Option<&Tensor>,
        on_block: &dyn Fn(),
    ) -> anyhow::Result<Tensor> {
        let info = self.kind.0;
        match (info.takes_kernel, kernel) {
            (true, None) => bail!("{} needs a blur kernel", info.name),
            (false, Some(_)) => bail!("{} takes no kernel", self.kind),
            _ => {}
        }
        let y = self.net.run(x, kernel, on_block)?;
        check_finite(&y)?;
        Ok(y)
    }
}

/// Reads the safetensors file `path` and builds `kind` from its bytes with `build` (a model to
/// run, or one to train), the errors naming the file.
pub fn read_file<T>(
    kind: ModelKind,
    path: &Path,
    build: impl FnOnce(&[u8]) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let bytes = crate::files::read_regular(path, MAX_SAFETENSORS_BYTES)
        .with_context(|| format!("cannot read '{}'", path.display()))?;
    build(&bytes).with_context(|| format!("cannot load {kind} from '{}'", path.display()))
}

/// Refuses a model output holding NaN or infinity: written out, it would be an image of
/// clamped garbage (black where NaN). The values are counted on the host.
pub fn check_finite(y: &Tensor) -> anyhow::Result<()> {
    let v = y.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let bad = v.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        bail!(
            "the model's output is not finite ({bad} of {} values are NaN or infinite): the \
             weights may be corrupt",
            v.len()
        )
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every trainable parameter of every model is read by the forward pass as it is now: a
    /// change to any one `Var` (as an optimiser makes) changes the output. One parameter of
    /// each name up to block indices, on random weights.
    #[test]
    fn every_trainable_var_is_read_by_the_forward() {
        let dev = Device::Cpu;
        for kind in ModelKind::ALL {
            let spec = kind.spec().unwrap();
            let tensors: HashMap<String, Tensor> = spec
                .params
                .iter()
                .map(|p| {
                    let t = Tensor::rand(0.2f32, 0.6, p.shape.as_slice(), &dev).unwrap();
                    (p.name.clone(), t)
                })
                .collect();
            let (model, vars) = Model::trainable(kind, tensors, DType::F32, &dev).unwrap();
            let x = Tensor::rand(0f32, 1.0, (1, kind.info().channels, 12, 12), &dev).unwrap();
            let k = (kind.info().takes_kernel)
                .then(|| Tensor::full(1f32 / 49.0, (1, 1, 7, 7), &dev).unwrap());
            let run = || -> Vec<f32> {
                let y = model.forward(&x, k.as_ref()).unwrap();
                y.flatten_all().unwrap().to_vec1().unwrap()
            };
            let before = run();
            let all = vars.all_vars();
            assert_eq!(all.len(), spec.params.len(), "{kind}");
            // One parameter of each kind: repeated blocks run the same code as the first.
            let mut named: Vec<_> = vars.data().lock().unwrap().clone().into_iter().collect();
            named.sort_by(|a, b| a.0.cmp(&b.0));
            let mut kinds = std::collections::HashSet::new();
            let generic = |name: &str| {
                let parts = name.split('.');
                let parts = parts.map(|p| if p.parse::<usize>().is_ok() { "#" } else { p });
                parts.collect::<Vec<_>>().join(".")
            };
            named.retain(|(name, _)| kinds.insert(generic(name)));
            for (name, var) in named {
                let old = var.as_tensor().copy().unwrap();
                var.set(&(&old + 0.25).unwrap()).unwrap();
                let changed = run() != before;
                var.set(&old).unwrap();
                assert!(
                    changed,
                    "{kind}: changing `{name}` leaves the output as it was"
                );
            }
            assert_eq!(run(), before, "{kind}: restored");
        }
    }
}
