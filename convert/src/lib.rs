//! Converts PyTorch checkpoints (`.pth`: a zip holding a pickled state dict) into safetensors, in
//! Rust, with no Python.
//!
//! The converter is strict: a checkpoint is matched against the parameter lists of the models it
//! knows ([`ModelSpec`], supplied by the caller; the `converse` crate derives them from its model
//! code) and every missing, unexpected or misshaped tensor is reported by name. The output is
//! written to a temporary file beside the destination and renamed, so a failed conversion never
//! leaves a partial file.

pub mod files;

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

/// Reads every entry of the zip at `path` once, which checks its CRC (the tensor reader does
/// not: a corrupt checkpoint would convert silently), and runs [`check_pickle`] on the pickles
/// the reader will interpret, all within one budget of `budget` bytes. What is not a zip is left
/// for the reader to report.
fn check_zip(path: &Path, budget: u64) -> std::result::Result<(), String> {
    let file = std::fs::File::open(path).map(std::io::BufReader::new);
    let Some(mut zip) = file.ok().and_then(|f| zip::ZipArchive::new(f).ok()) else {
        return Ok(());
    };
    let mut spent = 0u64;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| format!("zip entry {i}: {e}"))?;
        let name = entry.name().map(|n| n.into_owned()).unwrap_or_default();
        let mut pickle = vec![];
        let read = if name.ends_with("data.pkl") {
            // One byte over the budget is enough to refuse it.
            let left = budget.saturating_sub(spent);
            (&mut entry)
                .take(left.saturating_add(1))
                .read_to_end(&mut pickle)
                .map(drop)
        } else {
            std::io::copy(&mut entry, &mut std::io::sink()).map(drop)
        };
        read.map_err(|e| format!("`{name}` is corrupt ({e})"))?;
        if name.ends_with("data.pkl") {
            check_pickle(&pickle, &mut spent, budget).map_err(|e| {
                format!("{e} (a pickle bomb?); raise the limit with ${ENV_MAX_TENSORS}")
            })?;
        }
    }
    Ok(())
}

/// What candle's pickle interpreter (`candle_core::pickle::Stack`) holds for one object: the
/// kind, where it changes what an opcode does, and the bytes the object takes there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `Object::Mark`, which `t`, `e` and `u` pop back to.
    Mark,
    /// `Object::Dict`, which `s` and `u` add to and `b` merges.
    Dict,
    /// `Object::List`, which `a` and `e` add to.
    List,
    /// The class `collections.OrderedDict` or `collections.defaultdict`, which `R` turns into an
    /// empty dict.
    DictClass,
    /// Anything else.
    Other,
}

#[derive(Debug, Clone, Copy)]
struct Obj {
    kind: Kind,
    bytes: u64,
}

/// Bytes counted for each object the interpreter makes: twice the size of its `Object` (for the
/// spare capacity of the vectors holding it), strings counted on top.
const OBJECT_BYTES: u64 = 2 * std::mem::size_of::<candle_core::pickle::Object>() as u64;

/// Walks a pickle exactly as candle's interpreter will (the same opcodes, each popping, pushing
/// and copying what it does there, the same errors), counting what the interpreter would
/// allocate: every byte read, every object made and every deep copy (the interpreter copies the
/// whole object on each memo put and get, so a few hundred bytes can ask for terabytes), and a
/// string's length before its bytes are read. Refuses the pickle once that passes `budget` (with
/// `spent` carried over from earlier pickles), or when a string is longer than the data left.
/// Stops quietly where the interpreter would stop with an error of its own.
fn check_pickle(p: &[u8], spent: &mut u64, budget: u64) -> std::result::Result<(), String> {
    fn take<'a>(p: &'a [u8], at: &mut usize, n: usize) -> Option<&'a [u8]> {
        let s = p.get(*at..at.checked_add(n)?)?;
        *at += n;
        Some(s)
    }
    fn uint(b: &[u8]) -> u64 {
        b.iter().rev().fold(0, |v, &x| v << 8 | x as u64)
    }
    /// candle's `read_to_newline`: up to a newline or the end (never an error), less its last
    /// byte and then a `\r`.
    fn line<'a>(p: &'a [u8], at: &mut usize) -> &'a [u8] {
        let rest = &p[*at..];
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .map_or(rest.len(), |n| n + 1);
        *at += n;
        let l = &rest[..n.saturating_sub(1)];
        l.strip_suffix(b"\r").unwrap_or(l)
    }
    let mut spend = |n: u64| -> std::result::Result<(), String> {
        *spent = spent.saturating_add(n);
        if *spent > budget {
            return Err(format!(
                "reading its pickle would take more than {} MiB",
                budget >> 20
            ));
        }
        Ok(())
    };
    spend(p.len() as u64)?;
    let new = |kind: Kind, bytes: u64| Obj {
        kind,
        bytes: bytes.saturating_add(OBJECT_BYTES),
    };
    let mut stack: Vec<Obj> = vec![];
    let mut memo: HashMap<u32, Obj> = HashMap::new();
    // `pop` and `pop_to_marker`; `None` where the interpreter fails.
    let pop = |stack: &mut Vec<Obj>| stack.pop();
    let pop_to_mark = |stack: &mut Vec<Obj>| -> Option<u64> {
        let mark = stack.iter().rposition(|o| o.kind == Kind::Mark)?;
        let bytes = stack[mark + 1..]
            .iter()
            .fold(0u64, |a, o| a.saturating_add(o.bytes));
        stack.truncate(mark);
        Some(bytes)
    };
    let mut at = 0;
    while let Some(&[op]) = take(p, &mut at, 1) {
        // The object pushed, if any; `None` from a step where the interpreter fails.
        let pushed: Option<Option<Obj>> = match op {
            0x80 => take(p, &mut at, 1).map(|_| None),
            b'c' => {
                let (module, class) = (line(p, &mut at), line(p, &mut at));
                let kind = match (module, class) {
                    (b"collections", b"OrderedDict" | b"defaultdict") => Kind::DictClass,
                    _ => Kind::Other,
                };
                // Lossy UTF-8: an invalid byte becomes 3.
                let len = 3 * (module.len() + class.len()) as u64;
                spend(len)?;
                Some(Some(new(kind, len)))
            }
            b'K' => take(p, &mut at, 1).map(|_| Some(new(Kind::Other, 0))),
            b'M' => take(p, &mut at, 2).map(|_| Some(new(Kind::Other, 0))),
            b'J' => take(p, &mut at, 4).map(|_| Some(new(Kind::Other, 0))),
            b'G' => take(p, &mut at, 8).map(|_| Some(new(Kind::Other, 0))),
            b'X' => {
                let Some(n) = take(p, &mut at, 4).map(uint) else {
                    return Ok(());
                };
                if n > (p.len() - at) as u64 {
                    return Err(format!(
                        "the pickle holds a string of {n} bytes but only {} bytes follow",
                        p.len() - at
                    ));
                }
                // Allocated before it is read.
                spend(n)?;
                take(p, &mut at, n as usize)
                    .filter(|s| std::str::from_utf8(s).is_ok())
                    .map(|_| Some(new(Kind::Other, n)))
            }
            b'Q' => pop(&mut stack).map(|o| Some(new(Kind::Other, o.bytes))),
            b't' => pop_to_mark(&mut stack).map(|b| Some(new(Kind::Other, b))),
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                stack
                    .len()
                    .checked_sub(n)
                    .map(|start| stack.drain(start..).map(|o| o.bytes).sum::<u64>())
                    .map(|b| Some(new(Kind::Other, b)))
            }
            0x88 | 0x89 | b'N' | b')' => Some(Some(new(Kind::Other, 0))),
            b'}' | b'd' => Some(Some(new(Kind::Dict, 0))),
            b']' => Some(Some(new(Kind::List, 0))),
            b'(' => Some(Some(new(Kind::Mark, 0))),
            b'a' | b'e' | b's' | b'u' => {
                let (added, into) = match op {
                    b'a' => (pop(&mut stack).map(|o| o.bytes), Kind::List),
                    b'e' => (pop_to_mark(&mut stack), Kind::List),
                    b's' => (
                        pop(&mut stack)
                            .zip(pop(&mut stack))
                            .map(|(v, k)| v.bytes.saturating_add(k.bytes)),
                        Kind::Dict,
                    ),
                    _ => {
                        // `u` checks for pairs after finding the dict.
                        let mark = stack.iter().rposition(|o| o.kind == Kind::Mark);
                        let pairs = mark.is_some_and(|m| (stack.len() - m - 1).is_multiple_of(2));
                        let added = pop_to_mark(&mut stack);
                        (added.filter(|_| pairs), Kind::Dict)
                    }
                };
                match (added, stack.last_mut()) {
                    (Some(a), Some(last)) if last.kind == into => {
                        last.bytes = last.bytes.saturating_add(a);
                        Some(None)
                    }
                    _ => None,
                }
            }
            b'b' | b'R' | 0x81 => pop(&mut stack).zip(pop(&mut stack)).map(|(args, obj)| {
                Some(match (op, obj.kind, args.kind) {
                    (b'b', Kind::Dict, Kind::Dict) => Obj {
                        kind: Kind::Dict,
                        bytes: obj.bytes.saturating_add(args.bytes),
                    },
                    (b'R', Kind::DictClass, _) => new(Kind::Dict, 0),
                    _ => new(Kind::Other, obj.bytes.saturating_add(args.bytes)),
                })
            }),
            b'.' => return Ok(()),
            b'h' | b'j' | b'q' | b'r' => {
                let width = if matches!(op, b'h' | b'q') { 1 } else { 4 };
                let Some(id) = take(p, &mut at, width).map(|b| uint(b) as u32) else {
                    return Ok(());
                };
                let copy = match op {
                    b'h' | b'j' => memo.get(&id).copied(),
                    _ => stack.last().copied(),
                };
                let Some(copy) = copy else { return Ok(()) };
                spend(copy.bytes)?;
                if matches!(op, b'q' | b'r') {
                    memo.insert(id, copy);
                    Some(None)
                } else {
                    Some(Some(copy))
                }
            }
            0x8a => take(p, &mut at, 1)
                .and_then(|n| take(p, &mut at, n[0] as usize))
                .map(|_| Some(new(Kind::Other, 0))),
            _ => None,
        };
        match pushed {
            None => return Ok(()),
            Some(None) => {}
            Some(Some(obj)) => {
                // A memo get's copy is counted above; anything else is one new object (its
                // parts are moved in, or counted above).
                if !matches!(op, b'h' | b'j') {
                    spend(OBJECT_BYTES)?;
                }
                stack.push(obj)
            }
        }
    }
    Ok(())
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

    /// Pickles that build one object from `base` and then double it `rounds` times through the
    /// memo (put, get, get, pair, put).
    fn doubling(base: &[u8], rounds: usize) -> Vec<u8> {
        let mut p = b"\x80\x02".to_vec();
        p.extend(base);
        p.extend(b"q\x00");
        p.extend(b"h\x00h\x00\x86q\x00".repeat(rounds));
        p.push(b'.');
        p
    }

    /// Every kind of object candle's interpreter can build, each as the base of a bomb.
    const BASES: &[&[u8]] = &[
        b"d",
        b"}",
        b"]",
        b")",
        b"(",
        b"(t",
        b"N",
        b"K\x01",
        b"M\x01\x02",
        b"J\x01\x02\x03\x04",
        b"G\x3f\xf0\x00\x00\x00\x00\x00\x00",
        b"\x8a\x02\x01\x02",
        b"\x88",
        b"\x89",
        b"X\x03\x00\x00\x00abc",
        b"cmod\nname\n",
        b"N\x85",
        b"NN\x86",
        b"NNN\x87",
        b"NQ",
        b"cmod\nname\n)R",
        b"ccollections\nOrderedDict\n)R",
        b"cmod\nname\n)\x81",
        b"}}b",
        b"]Na",
        b"](NNe",
        b"}NNs",
        b"}(NNu",
        b"(NNNd",
    ];

    #[test]
    fn every_base_is_run_by_candle_and_each_bomb_is_refused() {
        let budget = Limits::default().pickle_budget();
        for base in BASES {
            // Small: candle runs it to the end, and so does the check.
            let small = doubling(base, 3);
            let mut stack = candle_core::pickle::Stack::empty();
            stack
                .read_loop(&mut std::io::Cursor::new(&small))
                .unwrap_or_else(|e| panic!("{}: {e}", small.escape_ascii()));
            let mut spent = 0;
            check_pickle(&small, &mut spent, budget).unwrap();
            assert!(
                spent > 8 * OBJECT_BYTES,
                "{}: {spent}",
                small.escape_ascii()
            );
            // Doubled 48 times: refused, long before the end.
            let bomb = doubling(base, 48);
            let e = check_pickle(&bomb, &mut 0, budget).unwrap_err();
            assert_eq!(
                e, "reading its pickle would take more than 313 MiB",
                "{base:?}"
            );
        }
        // With 4-byte memo ids too.
        let mut bomb = b"\x80\x02dr\x00\x00\x00\x01".to_vec();
        bomb.extend(b"j\x00\x00\x00\x01j\x00\x00\x00\x01\x86r\x00\x00\x00\x01".repeat(48));
        assert!(check_pickle(&bomb, &mut 0, budget).is_err());
    }

    #[test]
    fn the_check_stops_where_candle_fails() {
        // Each fails in candle before the doubling: `l` is no opcode there, `a` needs a list,
        // `s` a dict, `t` a mark, `h` a memo entry, `X` valid UTF-8; `R` on a plain class makes
        // no dict, so `s` fails after it.
        for base in [
            &b"(l"[..],
            b"}Na",
            b"]NNs",
            b"Nt",
            b"h\x05",
            b"X\x01\x00\x00\x00\xff",
            b"cmod\nOrderedDict\n)RNNs",
            b"}(NNNu",
        ] {
            let bomb = doubling(base, 48);
            let mut stack = candle_core::pickle::Stack::empty();
            assert!(
                stack.read_loop(&mut std::io::Cursor::new(&bomb)).is_err(),
                "{base:?}"
            );
            assert_eq!(check_pickle(&bomb, &mut 0, 1 << 20), Ok(()), "{base:?}");
        }
    }

    #[test]
    fn a_long_pickle_and_a_long_string_are_refused_before_reading() {
        let budget = 1 << 20;
        let mut nones = vec![b'N'; 1 << 20];
        nones.push(b'.');
        let e = check_pickle(&nones, &mut 0, budget).unwrap_err();
        assert_eq!(e, "reading its pickle would take more than 1 MiB");
        // The budget is shared by the pickles of one file.
        let mut spent = budget - 10;
        assert!(check_pickle(b"\x80\x02NN.", &mut spent, budget).is_err());
        let e = check_pickle(b"\x80\x02X\xff\xff\xff\xffabc.", &mut 0, budget).unwrap_err();
        assert_eq!(
            e,
            "the pickle holds a string of 4294967295 bytes but only 4 bytes follow"
        );
        let mut string = b"X\x00\x00\x20\x00".to_vec();
        string.extend(vec![b'a'; 2 << 20]);
        assert!(check_pickle(&string, &mut 0, 64 << 20).is_ok());
        assert!(check_pickle(&string, &mut 0, 3 << 20).is_err());
    }
}
