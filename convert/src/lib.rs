//! Converts PyTorch checkpoints (`.pth`: a zip holding a pickled state dict) into safetensors, in
//! Rust, with no Python.
//!
//! The converter is strict: a checkpoint is matched against the parameter lists of the models it
//! knows ([`ModelSpec`], supplied by the caller; the `converse` crate derives them from its model
//! code) and every missing, unexpected or misshaped tensor is reported by name. The output is
//! written to a temporary file beside the destination and renamed, so a failed conversion never
//! leaves a partial file.

mod checks;
pub mod files;

use checks::check_zip;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use sha2::{Digest, Sha256};

/// Version of this converter, written into every output's metadata.
pub const CONVERTER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Metadata key: the model id (for example `converse_dncnn`).
pub const META_MODEL: &str = "model";
/// Metadata key: sha256 of the source `.pth` file.
pub const META_SOURCE_SHA256: &str = "source_sha256";
/// Metadata key: version of the converter that wrote the file.
pub const META_CONVERTER: &str = "converter_version";

/// One expected parameter: its state-dict name and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

/// What a model expects to find in its state dict.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// Stable model id, written to the metadata (`converse_dncnn`, ...).
    pub id: String,
    /// Architecture hyperparameters, written to the metadata as strings.
    pub hyperparameters: Vec<(String, String)>,
    /// Every parameter, in the order the model asks for them.
    pub params: Vec<ParamSpec>,
}

impl ModelSpec {
    /// Total number of scalar parameters.
    pub fn num_parameters(&self) -> usize {
        self.params
            .iter()
            .map(|p| p.shape.iter().product::<usize>())
            .sum()
    }
}

/// Caps applied while reading an untrusted checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most tensors a checkpoint may hold.
    pub max_tensors: usize,
    /// Most bytes all tensors together may take.
    pub max_total_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_tensors: 10_000,
            max_total_bytes: 2 << 30,
        }
    }
}

/// Environment variable raising [`Limits::max_tensors`] (see [`Limits::from_env`]).
pub const ENV_MAX_TENSORS: &str = "CONVERSE_MAX_CHECKPOINT_TENSORS";
/// Environment variable raising [`Limits::max_total_bytes`] (see [`Limits::from_env`]).
pub const ENV_MAX_BYTES: &str = "CONVERSE_MAX_CHECKPOINT_BYTES";

/// Bytes of pickle work allowed per tensor of [`Limits::max_tensors`], on top of
/// [`PICKLE_BUDGET_BASE`] (see [`Limits::pickle_budget`]). The released checkpoints take about
/// 8.8 KiB per tensor.
pub const PICKLE_BUDGET_PER_TENSOR: u64 = 32 << 10;
/// The fixed part of [`Limits::pickle_budget`].
pub const PICKLE_BUDGET_BASE: u64 = 1 << 20;

impl Limits {
    /// What reading the pickles may take, in bytes as the pre-check counts them (every byte
    /// read, object made and object copied): 1 MiB plus 32 KiB per tensor allowed (313 MiB by
    /// default).
    pub fn pickle_budget(&self) -> u64 {
        (self.max_tensors as u64)
            .saturating_mul(PICKLE_BUDGET_PER_TENSOR)
            .saturating_add(PICKLE_BUDGET_BASE)
    }

    /// The defaults, replaced by `$CONVERSE_MAX_CHECKPOINT_TENSORS` and
    /// `$CONVERSE_MAX_CHECKPOINT_BYTES` when those are set.
    pub fn from_env() -> Result<Self> {
        let var = |var: &str, default: u64| match std::env::var(var) {
            Err(_) => Ok(default),
            Ok(value) => value.trim().parse().map_err(|_| Error::BadLimit {
                var: var.to_owned(),
                value,
            }),
        };
        let d = Self::default();
        Ok(Self {
            max_tensors: var(ENV_MAX_TENSORS, d.max_tensors as u64)? as usize,
            max_total_bytes: var(ENV_MAX_BYTES, d.max_total_bytes)?,
        })
    }
}

/// A problem found when checking a state dict against a [`ModelSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    Missing {
        name: String,
        expected: Vec<usize>,
    },
    Unexpected {
        name: String,
        shape: Vec<usize>,
    },
    Shape {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    DType {
        name: String,
        found: DType,
    },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { name, expected } => {
                write!(f, "missing tensor `{name}` (expected shape {expected:?})")
            }
            Self::Unexpected { name, shape } => {
                write!(f, "unexpected tensor `{name}` (shape {shape:?})")
            }
            Self::Shape {
                name,
                found,
                expected,
            } => write!(
                f,
                "tensor `{name}` has shape {found:?}, the model expects {expected:?}"
            ),
            Self::DType { name, found } => {
                write!(f, "tensor `{name}` is {found:?}, the model expects F32")
            }
        }
    }
}

/// Everything that can go wrong while converting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read '{path}': {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write '{path}': {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("'{path}' is not a PyTorch checkpoint: {reason}")]
    NotACheckpoint { path: PathBuf, reason: String },
    #[error("'{path}' exceeds a limit: {reason}")]
    Limit { path: PathBuf, reason: String },
    #[error("${var} must be a whole number, got `{value}`")]
    BadLimit { var: String, value: String },
    #[error("'{path}' is not one of the known models ({known}); its first tensors are: {sample}")]
    Unrecognised {
        path: PathBuf,
        known: String,
        sample: String,
    },
    #[error("'{path}' does not match model {model}:\n  {}", .problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n  "))]
    Mismatch {
        path: PathBuf,
        model: String,
        problems: Vec<Mismatch>,
    },
    #[error("'{path}': {source}")]
    Tensor {
        path: PathBuf,
        source: candle_core::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// A state dict read from disk.
#[derive(Debug)]
pub struct StateDict {
    /// Tensors by name, sorted.
    pub tensors: BTreeMap<String, Tensor>,
    /// sha256 of the file, lowercase hex.
    pub sha256: String,
}

/// Lowercase hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = files::open_regular(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `f`, turning a panic inside a third-party reader into an error, without printing it.
fn no_panic<T>(f: impl FnOnce() -> candle_core::Result<T>) -> std::result::Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    match out {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("malformed pickle data".to_owned()),
    }
}

/// Reads a `.pth` state dict. Only plain tensors are taken: no pickled code is ever run (the
/// pickle is interpreted, never executed).
pub fn read_pth(path: &Path, limits: Limits) -> Result<StateDict> {
    let not_ckpt = |reason: String| Error::NotACheckpoint {
        path: path.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(Error::Io {
            path: path.to_owned(),
            source: files::open_regular(path)
                .err()
                .unwrap_or_else(|| std::io::Error::other("not a regular file")),
        });
    }
    let sha256 = sha256_file(path)?;
    let mut magic = [0u8; 4];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
    if n < 4 || &magic != b"PK\x03\x04" {
        return Err(not_ckpt(
            "not a zip archive (torch.save's format since PyTorch 1.6)".into(),
        ));
    }
    check_zip(path, limits.pickle_budget()).map_err(not_ckpt)?;
    let pth = no_panic(|| candle_core::pickle::PthTensors::new(path, None)).map_err(not_ckpt)?;
    let infos = pth.tensor_infos();
    if infos.is_empty() {
        return Err(not_ckpt("it holds no tensors".into()));
    }
    if infos.len() > limits.max_tensors {
        return Err(Error::Limit {
            path: path.to_owned(),
            reason: format!(
                "{} tensors, more than the limit of {} (raise it with ${ENV_MAX_TENSORS})",
                infos.len(),
                limits.max_tensors
            ),
        });
    }
    // Checked before reading any tensor: the reader allocates what the shape says.
    let mut total: u64 = 0;
    for (name, info) in infos {
        let dims = info.layout.dims();
        let size = info.dtype.size_in_bytes() as u64;
        let elems = dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .ok_or_else(|| not_ckpt(format!("tensor `{name}` has an impossible shape {dims:?}")))?;
        if elems == 0 {
            continue;
        }
        let needed = (info.layout.start_offset() as u64 / size).saturating_add(elems);
        if needed > info.storage_size as u64 {
            return Err(not_ckpt(format!(
                "tensor `{name}` needs {needed} elements but its storage holds {}",
                info.storage_size
            )));
        }
        if needed.saturating_mul(size) > meta.len() {
            return Err(not_ckpt(format!(
                "tensor `{name}` needs {} bytes, more than the whole file ({} bytes)",
                needed.saturating_mul(size),
                meta.len()
            )));
        }
        total = total.saturating_add(elems * size);
    }
    if total > limits.max_total_bytes {
        return Err(Error::Limit {
            path: path.to_owned(),
            reason: format!(
                "{total} bytes of tensors, more than the limit of {} bytes (raise it with \
                 ${ENV_MAX_BYTES})",
                limits.max_total_bytes
            ),
        });
    }
    let mut tensors = BTreeMap::new();
    for name in infos.keys() {
        let t = no_panic(|| pth.get(name))
            .map_err(|e| not_ckpt(format!("tensor `{name}`: {e}")))?
            .ok_or_else(|| not_ckpt(format!("tensor `{name}` vanished")))?;
        tensors.insert(name.clone(), t);
    }
    Ok(StateDict { tensors, sha256 })
}

/// Picks the spec whose parameter names best cover the state dict's.
pub fn identify<'a>(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    specs: &'a [ModelSpec],
) -> Result<&'a ModelSpec> {
    let score = |spec: &ModelSpec| {
        let names: HashSet<&str> = spec.params.iter().map(|p| p.name.as_str()).collect();
        let hits = tensors
            .keys()
            .filter(|k| names.contains(k.as_str()))
            .count();
        hits as f64 / tensors.len().max(spec.params.len()) as f64
    };
    specs
        .iter()
        .map(|s| (score(s), s))
        .filter(|(score, _)| *score >= 0.5)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, s)| s)
        .ok_or_else(|| Error::Unrecognised {
            path: path.to_owned(),
            known: specs
                .iter()
                .map(|s| s.id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            sample: tensors
                .keys()
                .take(4)
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Lists every difference between a state dict and a spec.
pub fn mismatches(tensors: &BTreeMap<String, Tensor>, spec: &ModelSpec) -> Vec<Mismatch> {
    let mut problems = vec![];
    let expected: HashMap<&str, &ParamSpec> =
        spec.params.iter().map(|p| (p.name.as_str(), p)).collect();
    for p in &spec.params {
        match tensors.get(&p.name) {
            None => problems.push(Mismatch::Missing {
                name: p.name.clone(),
                expected: p.shape.clone(),
            }),
            Some(t) if t.dims() != p.shape.as_slice() => problems.push(Mismatch::Shape {
                name: p.name.clone(),
                found: t.dims().to_vec(),
                expected: p.shape.clone(),
            }),
            Some(t) if t.dtype() != DType::F32 => problems.push(Mismatch::DType {
                name: p.name.clone(),
                found: t.dtype(),
            }),
            Some(_) => {}
        }
    }
    for (name, t) in tensors {
        if !expected.contains_key(name.as_str()) {
            problems.push(Mismatch::Unexpected {
                name: name.clone(),
                shape: t.dims().to_vec(),
            });
        }
    }
    problems
}

/// Writes `bytes` to `dest` through [`files::write_with`], replacing what is there or not.
pub fn write_atomic(dest: &Path, bytes: &[u8], existing: files::Existing) -> Result<()> {
    files::write_bytes(dest, existing, bytes).map_err(|source| Error::Write {
        path: dest.to_owned(),
        source,
    })
}

/// What a conversion produced.
#[derive(Debug, Clone)]
pub struct Converted {
    pub model: String,
    pub num_parameters: usize,
    pub source_sha256: String,
}

/// Reads `input`, identifies and checks it, and returns the safetensors bytes with metadata.
pub fn convert_to_bytes(
    input: &Path,
    specs: &[ModelSpec],
    limits: Limits,
) -> Result<(Converted, Vec<u8>)> {
    let sd = read_pth(input, limits)?;
    let spec = identify(input, &sd.tensors, specs)?;
    let problems = mismatches(&sd.tensors, spec);
    if !problems.is_empty() {
        return Err(Error::Mismatch {
            path: input.to_owned(),
            model: spec.id.clone(),
            problems,
        });
    }
    let mut metadata: HashMap<String, String> = spec.hyperparameters.iter().cloned().collect();
    metadata.insert(META_MODEL.into(), spec.id.clone());
    metadata.insert(META_SOURCE_SHA256.into(), sd.sha256.clone());
    metadata.insert(META_CONVERTER.into(), CONVERTER_VERSION.into());
    let tensors: Vec<(&str, Tensor)> = spec
        .params
        .iter()
        .map(|p| (p.name.as_str(), sd.tensors[&p.name].clone()))
        .collect();
    let bytes = safetensors::serialize(tensors, Some(metadata)).map_err(|e| Error::Tensor {
        path: input.to_owned(),
        source: candle_core::Error::Msg(e.to_string()),
    })?;
    let info = Converted {
        model: spec.id.clone(),
        num_parameters: spec.num_parameters(),
        source_sha256: sd.sha256,
    };
    Ok((info, bytes))
}

/// [`convert_to_bytes`], then writes `output` through [`files::write_with`].
pub fn convert(
    input: &Path,
    output: &Path,
    specs: &[ModelSpec],
    limits: Limits,
    existing: files::Existing,
) -> Result<Converted> {
    let (info, bytes) = convert_to_bytes(input, specs, limits)?;
    write_atomic(output, &bytes, existing)?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn spec() -> ModelSpec {
        ModelSpec {
            id: "toy".into(),
            hyperparameters: vec![],
            params: vec![
                ParamSpec {
                    name: "a.weight".into(),
                    shape: vec![2, 3],
                },
                ParamSpec {
                    name: "a.bias".into(),
                    shape: vec![2],
                },
            ],
        }
    }

    fn dict(entries: &[(&str, &[usize])]) -> BTreeMap<String, Tensor> {
        entries
            .iter()
            .map(|(n, s)| {
                (
                    n.to_string(),
                    Tensor::zeros(*s, DType::F32, &Device::Cpu).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn mismatches_name_each_tensor_and_both_shapes() {
        let sd = dict(&[("a.weight", &[3, 2]), ("extra", &[1])]);
        let problems: Vec<String> = mismatches(&sd, &spec())
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            problems,
            [
                "tensor `a.weight` has shape [3, 2], the model expects [2, 3]",
                "missing tensor `a.bias` (expected shape [2])",
                "unexpected tensor `extra` (shape [1])",
            ]
        );
    }

    #[test]
    fn identify_refuses_unrelated_dicts() {
        let sd = dict(&[("x", &[1]), ("y", &[1])]);
        let err = identify(Path::new("f.pth"), &sd, &[spec()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "'f.pth' is not one of the known models (toy); its first tensors are: `x`, `y`"
        );
        let sd = dict(&[("a.weight", &[2, 3]), ("a.bias", &[2])]);
        assert_eq!(identify(Path::new("f"), &sd, &[spec()]).unwrap().id, "toy");
    }
}
