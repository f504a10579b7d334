//! `converse verify`: runs golden cases made with the official code and compares against their
//! float64 answer `y64`.
//!
//! A case is a safetensors file holding `x`, `y64` and metadata `official_f32_max_abs_err_vs_f64`.
//! Operator cases also hold `weight` and `bias` and describe the layer in their metadata
//! (`kernel_size`, `scale`, `padding`, `padding_mode`, `eps`); model cases are named by prefix
//! (`dncnn_`, `srresnet_`, `conversenet_`, `usrnet_`; the last also hold `kernel`).
//!
//! Gradient cases (`grad_*`, [`grad`]) check the backward pass the same way, tensor by tensor.

mod grad;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use candle_core::{DType, Device, Module, Tensor};

use crate::models::{Model, ModelKind};
use crate::ops::{Converse2d, Converse2dConfig};
use crate::weights::WeightsLocator;

/// The result of one golden case.
#[derive(Debug, Clone)]
pub struct CaseReport {
    /// File name.
    pub name: String,
    /// `converse2d` or the model id.
    pub what: String,
    /// Max abs error of our output against `y64` (infinite if any value is not finite).
    pub max_abs_err: f64,
    /// How far the official float32 output is from `y64`.
    pub official: f64,
    /// The bound, where it is not `max(2 x official, 1e-5)`: a float64 gradient case's
    /// `1e-8 x max(1, max |tensor|)`.
    pub limit: Option<f64>,
    /// The output compared against `y64` (operator and model cases; `None` for gradient cases),
    /// for comparing two devices or paths (`verify --against-cpu`).
    pub output: Option<Tensor>,
}

impl CaseReport {
    /// The bar: `max(2 x official, 1e-5)`, or the case's own [`limit`](Self::limit).
    pub fn bound(&self) -> f64 {
        self.limit.unwrap_or((2.0 * self.official).max(1e-5))
    }

    pub fn passed(&self) -> bool {
        self.max_abs_err <= self.bound()
    }
}

/// The golden files under `paths`: files as given, folders' `*.safetensors` sorted.
pub fn golden_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = vec![];
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot list '{}'", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|e| e == "safetensors") && f.is_file())
                .collect();
            found.sort();
            if found.is_empty() {
                bail!("no .safetensors files in '{}'", p.display())
            }
            files.extend(found);
        } else if p.exists() {
            files.push(p.clone());
        } else {
            bail!("'{}' does not exist", p.display())
        }
    }
    Ok(files)
}

/// Runs golden cases, loading each model once.
pub struct Verifier {
    locator: WeightsLocator,
    device: Device,
    dtype: DType,
    models: HashMap<ModelKind, Model>,
    /// Models whose parameters are `Var`s, for the gradient cases.
    trainable: HashMap<ModelKind, (Model, candle_nn::VarMap)>,
}

impl Verifier {
    pub fn new(locator: WeightsLocator, device: Device, dtype: DType) -> Self {
        Self {
            locator,
            device,
            dtype,
            models: HashMap::new(),
            trainable: HashMap::new(),
        }
    }

    /// Runs one case.
    pub fn run(&mut self, path: &Path) -> anyhow::Result<CaseReport> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bytes = crate::files::read_regular(path, crate::models::MAX_SAFETENSORS_BYTES)
            .with_context(|| format!("cannot read '{}'", path.display()))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| anyhow!("'{}' is not a safetensors file: {e}", path.display()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let tensors = candle_core::safetensors::load_buffer(&bytes, &self.device)?;
        if let Some(name) = name.strip_prefix(grad::PREFIX) {
            return self.run_grad(name, path, &tensors, &meta);
        }
        let get = |k: &str| tensor(path, &tensors, k);
        let official = number(path, &meta, "official_f32_max_abs_err_vs_f64")?;
        let x = get("x")?.to_dtype(self.dtype)?;
        let (what, y) = if let Some(cfg) = layer_config(path, &meta)? {
            let layer = Converse2d::from_tensors(
                get("weight")?.to_dtype(self.dtype)?,
                get("bias")?.to_dtype(self.dtype)?,
                cfg,
            )?;
            ("converse2d".to_owned(), layer.forward(&x)?)
        } else {
            let kind = model_of(path, &name)?;
            if !self.models.contains_key(&kind) {
                let m = self.locator.load(kind, self.dtype, &self.device)?;
                self.models.insert(kind, m);
            }
            let kernel = match kind.info().takes_kernel {
                true => Some(get("kernel")?),
                false => None,
            };
            (
                kind.id().to_owned(),
                self.models[&kind].forward(&x, kernel)?,
            )
        };
        let y64 = get("y64")?;
        Ok(CaseReport {
            name,
            what,
            max_abs_err: max_abs_diff(&y, y64)?,
            official,
            limit: None,
            output: Some(y),
        })
    }
}

/// A tensor of a case.
fn tensor<'a>(
    path: &Path,
    tensors: &'a HashMap<String, Tensor>,
    k: &str,
) -> anyhow::Result<&'a Tensor> {
    tensors
        .get(k)
        .ok_or_else(|| anyhow!("'{}' has no tensor `{k}`", path.display()))
}

/// A number from a case's metadata.
fn number(path: &Path, meta: &HashMap<String, String>, k: &str) -> anyhow::Result<f64> {
    let v = meta
        .get(k)
        .ok_or_else(|| anyhow!("'{}' has no metadata `{k}`", path.display()))?;
    v.parse().map_err(|_| {
        anyhow!(
            "'{}': metadata `{k}` = {v:?} is not a number",
            path.display()
        )
    })
}

/// The Converse2D layer an operator case describes, or `None` for a model case.
fn layer_config(
    path: &Path,
    meta: &HashMap<String, String>,
) -> anyhow::Result<Option<Converse2dConfig>> {
    if !(meta.contains_key("kernel_size") && meta.contains_key("padding_mode")) {
        return Ok(None);
    }
    let num = |k: &str| number(path, meta, k);
    Ok(Some(Converse2dConfig {
        kernel_size: num("kernel_size")? as usize,
        scale: num("scale")? as usize,
        padding: num("padding")? as usize,
        padding_mode: meta["padding_mode"]
            .parse()
            .map_err(|e: String| anyhow!(e))?,
        eps: num("eps")?,
    }))
}

/// The model a model case named `name` (without its `grad_` prefix) runs.
fn model_of(path: &Path, name: &str) -> anyhow::Result<ModelKind> {
    ModelKind::ALL
        .into_iter()
        .find(|k| name.starts_with(k.info().golden_prefix))
        .ok_or_else(|| {
            let prefixes: Vec<_> = ModelKind::ALL.map(|k| k.info().golden_prefix).into();
            anyhow!(
                "'{}' is neither an operator case (no layer metadata) nor named after a model \
                 ({})",
                path.display(),
                prefixes.join(", ")
            )
        })
}

/// Max abs difference, computed in f64; infinite if a value is not finite.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> anyhow::Result<f64> {
    if a.dims() != b.dims() {
        bail!(
            "output shape {:?} differs from the expected {:?}",
            a.dims(),
            b.dims()
        )
    }
    let a = a.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(a.iter().zip(&b).fold(0.0, |m, (x, y)| {
        let d = (x - y).abs();
        if d.is_finite() {
            m.max(d)
        } else {
            f64::INFINITY
        }
    }))
}
