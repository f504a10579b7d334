//! The four released ConverseNet models, one file each, and strict loading of their weights.

pub mod conversenet;
pub mod dncnn;
pub mod srresnet;
pub mod usrnet;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use candle_core::{DType, Device, Module, Shape, Tensor, Var};

use crate::ops::Converse2d;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};
use converse_convert::{ModelSpec, ParamSpec};

pub use conversenet::ConverseNet;
pub use dncnn::ConverseDnCNN;
pub use srresnet::ConverseMSRResNet;
pub use usrnet::ConverseUSRNet;

/// One of the four released models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelKind {
    /// Converse-DnCNN, grayscale denoising at sigma 25.
    DnCNN,
    /// Converse-SRResNet, x4 super-resolution.
    SRResNet,
    /// ConverseNet, blind deblurring.
    ConverseNet,
    /// Converse-USRNet, deblurring with a known 7x7 kernel.
    USRNet,
}

impl ModelKind {
    pub const ALL: [ModelKind; 4] = [Self::DnCNN, Self::SRResNet, Self::ConverseNet, Self::USRNet];

    /// The id, also the released file's stem.
    pub fn id(self) -> &'static str {
        match self {
            Self::DnCNN => "converse_dncnn",
            Self::SRResNet => "converse_srresnet",
            Self::ConverseNet => "conversenet",
            Self::USRNet => "converse_usrnet",
        }
    }

    /// Output side over input side.
    pub fn scale(self) -> usize {
        match self {
            Self::SRResNet => 4,
            _ => 1,
        }
    }

    /// `ConverseBlock`s one forward pass of the released model runs (the steps of a progress
    /// bar).
    pub fn blocks_per_forward(self) -> u64 {
        let stack = |c: conversenet::Config| c.num_iterations * c.num_blocks;
        (match self {
            Self::DnCNN => dncnn::Config::released().num_blocks,
            // conv_body, then upconv1, upconv2 and conv_hres.
            Self::SRResNet => srresnet::Config::released().num_blocks + 3,
            Self::ConverseNet => stack(conversenet::Config::released()),
            Self::USRNet => stack(usrnet::Config::released().prior),
        }) as u64
    }

    /// The official PyTorch class.
    pub fn class(self) -> &'static str {
        match self {
            Self::DnCNN => "ConverseDnCNN",
            Self::SRResNet => "ConverseMSRResNet",
            Self::ConverseNet => "ConverseNet",
            Self::USRNet => "ConverseUSRNet",
        }
    }

    /// sha256 of the released `.pth` in the official `model_zoo/`.
    pub fn sha256(self) -> &'static str {
        match self {
            Self::DnCNN => "3b86c7f6e41a014448f923bc331232e1f45e2eae350dd7f9e18440803d283e89",
            Self::SRResNet => "ed75a697f1ebb9f9ad6a53b7875bb76098f23b48d87bf6f0b0dd8cde6df81d2f",
            Self::ConverseNet => "603cbb29075178410db9ab6166b247d2ddff32f349c59a7e1763c46feca270bd",
            Self::USRNet => "729529b8bc8cbda152d6b60734b01032b49c20fcb8b6da2fb33141d9c3378d82",
        }
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

    /// The architecture, as written into converted files' metadata.
    fn architecture(self) -> String {
        match self {
            Self::DnCNN => format!("{:?}", dncnn::Config::released()),
            Self::SRResNet => format!("{:?}", srresnet::Config::released()),
            Self::ConverseNet => format!("{:?}", conversenet::Config::released()),
            Self::USRNet => format!("{:?}", usrnet::Config::released()),
        }
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
                ("architecture".into(), self.architecture()),
            ],
            params,
        })
    }

    /// Specs of all four released models.
    pub fn specs() -> candle_core::Result<Vec<ModelSpec>> {
        Self::ALL.iter().map(|k| k.spec()).collect()
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// Serves tensors to a `VarBuilder`, checking shapes and remembering what was asked for; with no
/// tensors it records the requests and hands out zeros.
#[derive(Debug)]
struct ParamStore {
    tensors: Option<HashMap<String, Tensor>>,
    seen: Mutex<Vec<(String, Shape)>>,
}

impl ParamStore {
    fn recording() -> Self {
        Self {
            tensors: None,
            seen: Mutex::default(),
        }
    }

    fn unused(&self) -> Vec<String> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut unused: Vec<String> = self
            .tensors
            .iter()
            .flat_map(|t| t.keys())
            .filter(|k| !seen.iter().any(|(n, _)| n == *k))
            .cloned()
            .collect();
        unused.sort();
        unused
    }
}

struct Shared(Arc<ParamStore>);

impl SimpleBackend for Shared {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let store = &self.0;
        store
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.to_owned(), s.clone()));
        let Some(tensors) = &store.tensors else {
            return Tensor::zeros(s, dtype, dev);
        };
        let t = tensors.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "missing tensor `{name}` (expected shape {:?})",
                s.dims()
            ))
        })?;
        if t.shape() != &s {
            candle_core::bail!(
                "tensor `{name}` has shape {:?}, the model expects {:?}",
                t.dims(),
                s.dims()
            )
        }
        t.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("tensor `{name}` requested without a shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0
            .tensors
            .as_ref()
            .is_some_and(|t| t.contains_key(name))
    }
}

/// A loaded model, ready to run.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per process: size does not matter
pub enum Model {
    DnCNN(ConverseDnCNN),
    SRResNet(ConverseMSRResNet),
    ConverseNet(ConverseNet),
    USRNet(ConverseUSRNet),
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
        let vb = VarBuilder::from_backend(Box::new(Shared(store.clone())), dtype, dev.clone());
        Ok(match kind {
            ModelKind::DnCNN => Self::DnCNN(ConverseDnCNN::new(&dncnn::Config::released(), vb)?),
            ModelKind::SRResNet => {
                Self::SRResNet(ConverseMSRResNet::new(&srresnet::Config::released(), vb)?)
            }
            ModelKind::ConverseNet => {
                Self::ConverseNet(ConverseNet::new(&conversenet::Config::released(), vb)?)
            }
            ModelKind::USRNet => {
                Self::USRNet(ConverseUSRNet::new(&usrnet::Config::released(), vb)?)
            }
        })
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
    fn state_dict(kind: ModelKind, bytes: &[u8]) -> anyhow::Result<HashMap<String, Tensor>> {
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
        match self {
            Self::DnCNN(m) => m.converse_layers(),
            Self::SRResNet(m) => m.converse_layers(),
            Self::ConverseNet(m) => m.converse_layers(),
            Self::USRNet(m) => m.converse_layers(),
        }
    }

    /// Drops the transfer functions the model's Converse2D layers keep and stops keeping new
    /// ones until the next call; they also go when the model is dropped.
    pub fn clear_caches(&self) {
        for layer in self.converse_layers() {
            layer.keep_transfer_functions(false);
            layer.clear_cache();
        }
    }

    pub fn kind(&self) -> ModelKind {
        match self {
            Self::DnCNN(_) => ModelKind::DnCNN,
            Self::SRResNet(_) => ModelKind::SRResNet,
            Self::ConverseNet(_) => ModelKind::ConverseNet,
            Self::USRNet(_) => ModelKind::USRNet,
        }
    }

    /// Runs the model on `x` `(N, C, H, W)`; `kernel` `(N|1, 1, 7, 7)` is required by
    /// Converse-USRNet and refused by the others. An output that is not finite everywhere is
    /// an error ([`check_finite`]): every command's model runs pass here.
    pub fn forward(&self, x: &Tensor, kernel: Option<&Tensor>) -> anyhow::Result<Tensor> {
        let y = match (self, kernel) {
            (Self::USRNet(m), Some(k)) => m.forward(x, k)?,
            (Self::USRNet(_), None) => bail!("Converse-USRNet needs a blur kernel"),
            (_, Some(_)) => bail!("{} takes no kernel", self.kind()),
            (Self::DnCNN(m), None) => m.forward(x)?,
            (Self::SRResNet(m), None) => m.forward(x)?,
            (Self::ConverseNet(m), None) => m.forward(x)?,
        };
        // From the second call on, inputs of a size seen before reuse the transfer functions.
        for layer in self.converse_layers() {
            layer.keep_transfer_functions(true);
        }
        check_finite(&y)?;
        Ok(y)
    }
}

/// Reads the safetensors file `path` and builds `kind` from its bytes with `build` (a model to
/// run, or one to train), the errors naming the file.
pub(crate) fn read_file<T>(
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
