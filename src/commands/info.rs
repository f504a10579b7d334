//! `converse info`: what this installation sees (build, CPU, threads, memory budget, devices,
//! weights, cache), as text or, with `--json`, for scripts.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cli::InfoArgs;
use crate::exit_codes::ExitCode;
use converse::device::{cuda_probe, CudaProbe, DeviceSpec};
use converse::memory::human;
use converse::weights::{Found, WeightsLocator};
use converse::ModelKind;

/// The features of this build: `cpu`, the instruction set its fused CPU kernels run with here
/// (`avx512`, `avx2` or `portable`), and `cuda` when built with it.
pub fn features() -> Vec<&'static str> {
    let mut f = vec!["cpu", converse::ops::simd_level()];
    if cfg!(feature = "cuda") {
        f.push("cuda");
    }
    f
}

/// What `--version` prints after the name: `0.1.0 (cpu, avx512)`.
pub fn version() -> String {
    format!("{} ({})", env!("CARGO_PKG_VERSION"), features().join(", "))
}

/// The threads and memory budget a run gets by default, each with what set it.
pub struct Resources {
    pub threads: usize,
    pub threads_source: String,
    pub memory_budget: u64,
    pub memory_budget_source: String,
}

/// This process's default resources: rayon's thread count and the default `--max-memory`.
pub fn resources() -> Resources {
    let (threads, threads_source) = converse::resources::threads();
    let (memory_budget, memory_budget_source) = converse::resources::memory_budget();
    Resources {
        threads,
        threads_source,
        memory_budget,
        memory_budget_source,
    }
}

#[derive(Serialize)]
struct Info {
    version: &'static str,
    features: Vec<&'static str>,
    simd: &'static str,
    threads: Sourced,
    memory_budget: Sourced,
    devices: Devices,
    weights: Weights,
    cache: Option<PathBuf>,
}

/// A value and what set it.
#[derive(Serialize)]
struct Sourced {
    value: u64,
    source: String,
}

#[derive(Serialize)]
struct Devices {
    /// Every device a run can use, the CPU first.
    found: Vec<String>,
    /// What a run without `--device` takes.
    default: String,
    /// Why no CUDA device is usable (`null` when one is).
    cuda_unavailable: Option<String>,
    /// The driver and CUDA libraries a CUDA build found (`null` in a CPU build).
    cuda: Option<&'static CudaProbe>,
}

#[derive(Serialize)]
struct Weights {
    /// The folders searched, in order, each with what named it.
    folders: Vec<Folder>,
    models: Vec<ModelWeights>,
    /// Whether a missing checkpoint is downloaded (`$CONVERSE_NO_DOWNLOAD` unset).
    download: bool,
}

#[derive(Serialize)]
struct Folder {
    path: PathBuf,
    from: String,
    exists: bool,
}

#[derive(Serialize)]
struct ModelWeights {
    model: &'static str,
    task: String,
    /// The file a run would load, or `null` when none is found.
    file: Option<PathBuf>,
    /// The sha256 of the `.pth`, or the `source_sha256` a converted file records.
    sha256: Option<String>,
    /// Whether that sha256 is the released checkpoint's (`null`: unknown, e.g. weights of your
    /// own, or no file).
    sha256_matches: Option<bool>,
    /// What went wrong reading the file, if anything.
    error: Option<String>,
}

pub fn run(a: InfoArgs) -> anyhow::Result<ExitCode> {
    let info = gather(&WeightsLocator::new(a.weights.as_deref()));
    let out = if a.json {
        serde_json::to_string_pretty(&info)? + "\n"
    } else {
        text(&info)
    };
    super::print_out(out.as_bytes())?;
    Ok(ExitCode::Success)
}

fn gather(locator: &WeightsLocator) -> Info {
    let cuda = DeviceSpec::cuda_devices();
    let r = resources();
    let mut found = vec![DeviceSpec::Cpu.to_string()];
    found.extend(cuda.iter().flatten().map(|d| d.to_string()));
    Info {
        version: env!("CARGO_PKG_VERSION"),
        features: features(),
        simd: converse::ops::simd_level(),
        threads: Sourced {
            value: r.threads as u64,
            source: r.threads_source,
        },
        memory_budget: Sourced {
            value: r.memory_budget,
            source: r.memory_budget_source,
        },
        devices: Devices {
            default: DeviceSpec::auto().to_string(),
            found,
            cuda_unavailable: cuda.err(),
            cuda: cuda_probe(),
        },
        weights: Weights {
            folders: locator
                .dirs
                .iter()
                .map(|(path, from)| Folder {
                    exists: path.is_dir(),
                    path: path.clone(),
                    from: from.clone(),
                })
                .collect(),
            models: ModelKind::ALL.map(|k| model_weights(locator, k)).into(),
            download: locator.download,
        },
        cache: locator.cache.clone(),
    }
}

/// The task that runs `kind`: `denoise`, `sr`, `deblur` or `deblur --kernel`.
fn task_of(kind: ModelKind) -> String {
    let info = kind.info();
    let flag = if info.takes_kernel { " --kernel" } else { "" };
    format!("{}{flag}", info.task.name())
}

fn model_weights(locator: &WeightsLocator, kind: ModelKind) -> ModelWeights {
    let mut m = ModelWeights {
        model: kind.id(),
        task: task_of(kind),
        file: None,
        sha256: None,
        sha256_matches: None,
        error: None,
    };
    let sha = match locator.find(kind) {
        None => return m,
        Some(Found::Pth(p)) => {
            let sha = converse_convert::sha256_file(&p)
                .map(Some)
                .map_err(Into::into);
            m.file = Some(p);
            sha
        }
        Some(Found::Safetensors(p)) => {
            let sha = source_sha256(&p);
            m.file = Some(p);
            sha
        }
    };
    match sha {
        Ok(sha) => {
            m.sha256_matches = sha.as_ref().map(|s| s == kind.sha256());
            m.sha256 = sha;
        }
        Err(e) => m.error = Some(format!("{e:#}")),
    }
    m
}

/// The sha256 of the `.pth` a converted file was made from, as its metadata records it.
fn source_sha256(path: &Path) -> anyhow::Result<Option<String>> {
    let bytes = converse::files::read_regular(path, converse::models::MAX_SAFETENSORS_BYTES)
        .map_err(|e| anyhow::anyhow!("cannot read '{}': {e}", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow::anyhow!("'{}' is not a safetensors file: {e}", path.display()))?;
    Ok(meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(converse_convert::META_SOURCE_SHA256))
        .cloned())
}

fn text(i: &Info) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "converse {}", i.version);
    let _ = writeln!(s, "build          {}", i.features.join(", "));
    let _ = writeln!(s, "cpu kernels    {}", i.simd);
    let (t, m) = (&i.threads, &i.memory_budget);
    let _ = writeln!(s, "threads        {} ({})", t.value, t.source);
    let _ = writeln!(s, "memory budget  {} ({})", human(m.value), m.source);
    let d = &i.devices;
    let _ = writeln!(
        s,
        "devices        {} (default {})",
        d.found.join(", "),
        d.default
    );
    if let Some(why) = &d.cuda_unavailable {
        let _ = writeln!(s, "               {why}");
    }
    if let Some(p) = d.cuda {
        let driver = match (&p.driver_cuda, &p.libcuda) {
            (Some(v), Some(f)) => format!("CUDA {v} ({f})"),
            _ => "not found (libcuda.so.1)".to_owned(),
        };
        let _ = writeln!(s, "cuda driver    {driver}");
        for l in &p.libraries {
            let file = l.file.as_deref().unwrap_or("not found");
            let _ = writeln!(s, "  {:<17} {:<25} {file}", l.library, l.wanted);
        }
    }
    let _ = writeln!(s, "weights        searched in this order:");
    for f in &i.weights.folders {
        let missing = if f.exists { "" } else { ", missing" };
        let _ = writeln!(
            s,
            "                 '{}' ({}{missing})",
            f.path.display(),
            f.from
        );
    }
    for m in &i.weights.models {
        let state = match (&m.file, m.sha256_matches, &m.error) {
            (None, ..) if i.weights.download => "not found (downloaded on first use)".to_owned(),
            (None, ..) => "not found".to_owned(),
            (Some(f), _, Some(e)) => format!("'{}': {e}", f.display()),
            (Some(f), Some(true), _) => format!("'{}', sha256 matches the release", f.display()),
            (Some(f), Some(false), _) => {
                format!("'{}', sha256 differs from the release's", f.display())
            }
            (Some(f), None, _) => format!("'{}', not from a released checkpoint", f.display()),
        };
        let _ = writeln!(s, "  {:<17} {:<16} {state}", m.model, m.task);
    }
    let cache = i.cache.as_ref().map_or_else(
        || "none ($HOME and $XDG_CACHE_HOME unset)".to_owned(),
        |c| format!("'{}'", c.display()),
    );
    let _ = writeln!(s, "cache          {cache}");
    s
}
