//! Finding the weights: `--weights DIR`, then `$CONVERSE_WEIGHTS`, then the user's cache folder.
//!
//! Each folder may hold the official checkpoint under its released name (`converse_dncnn.pth`)
//! or a converted `converse_dncnn.safetensors`. A `.pth` is converted on first use and the result
//! cached as `<cache>/<id>-<sha256 prefix>.safetensors`, so a changed source is converted again.
//! When nothing is found, the official checkpoint is downloaded into the cache folder
//! ([`crate::download`]) unless `$CONVERSE_NO_DOWNLOAD` is set.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use candle_core::{DType, Device};

use crate::download;
use crate::models::{read_file, Model, ModelKind};
use candle_nn::VarMap;

/// Environment variable naming a weights folder.
pub const ENV_WEIGHTS: &str = "CONVERSE_WEIGHTS";

/// The user's cache folder: `$XDG_CACHE_HOME/converse`, else `~/.cache/converse`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("converse"))
}

/// A weights file found under its released name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Safetensors(PathBuf),
    Pth(PathBuf),
}

/// Where weights are searched for, in order.
#[derive(Debug, Clone)]
pub struct WeightsLocator {
    /// Folders to search, each with how it was named (for error messages).
    pub dirs: Vec<(PathBuf, String)>,
    /// Where converted `.pth` files are cached, and downloaded ones saved.
    pub cache: Option<PathBuf>,
    /// Whether to download the official checkpoint into `cache` when nothing is found.
    pub download: bool,
    /// What follows a download, if anything.
    pub progress: Option<download::Progress>,
}

impl WeightsLocator {
    /// The standard search: `cli_dir`, `$CONVERSE_WEIGHTS`, the cache folder; downloading unless
    /// `$CONVERSE_NO_DOWNLOAD` is set to a non-empty value.
    pub fn new(cli_dir: Option<&Path>) -> Self {
        let mut dirs = vec![];
        if let Some(d) = cli_dir {
            dirs.push((d.to_owned(), "--weights".to_owned()));
        }
        if let Some(d) = std::env::var_os(ENV_WEIGHTS).filter(|v| !v.is_empty()) {
            dirs.push((PathBuf::from(d), format!("${ENV_WEIGHTS}")));
        }
        let cache = default_cache_dir();
        if let Some(c) = &cache {
            dirs.push((c.clone(), "cache".to_owned()));
        }
        let download = std::env::var_os(download::ENV_NO_DOWNLOAD).is_none_or(|v| v.is_empty());
        Self {
            dirs,
            cache,
            download,
            progress: None,
        }
    }

    /// Loads `kind`, converting and caching a `.pth` if that is what is found, and downloading
    /// the official one when nothing is (and `download` is on).
    pub fn load(&self, kind: ModelKind, dtype: DType, dev: &Device) -> anyhow::Result<Model> {
        self.load_with(kind, &|b| Model::load_bytes(kind, b, dtype, dev))
    }

    /// Loads `kind` as [`load`](Self::load) does, for training: its parameters are `Var`s in
    /// `dtype` on `dev`, under their state-dict names ([`Model::trainable`]).
    pub fn load_trainable(
        &self,
        kind: ModelKind,
        dtype: DType,
        dev: &Device,
    ) -> anyhow::Result<(Model, VarMap)> {
        self.load_with(kind, &|b| Model::trainable_bytes(kind, b, dtype, dev))
    }

    /// The state dict [`load`](Self::load) would build `kind` from, on the CPU.
    pub fn load_state_dict(
        &self,
        kind: ModelKind,
    ) -> anyhow::Result<std::collections::HashMap<String, candle_core::Tensor>> {
        self.load_with(kind, &|b| Model::state_dict(kind, b))
    }

    /// [`load`](Self::load), building what `build` makes of the safetensors bytes.
    fn load_with<T>(
        &self,
        kind: ModelKind,
        build: &dyn Fn(&[u8]) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let st_name = format!("{}.safetensors", kind.id());
        let pth_name = format!("{}.pth", kind.id());
        match self.find(kind) {
            Some(Found::Safetensors(st)) => return read_file(kind, &st, build),
            Some(Found::Pth(pth)) => return self.pth_with(kind, &pth, build),
            None => {}
        }
        let download_note = if self.download {
            let url = download::checkpoint_url(kind);
            let fetched = match &self.cache {
                Some(cache) => download::fetch(kind, &url, cache, self.progress),
                None => Err(anyhow!(
                    "cannot download '{url}': no cache folder to save it in (set $XDG_CACHE_HOME)"
                )),
            };
            match fetched {
                Ok(pth) => return self.pth_with(kind, &pth, build),
                Err(e) => format!("\nThe download failed: {e:#}"),
            }
        } else {
            String::new()
        };
        let places: Vec<String> = self
            .dirs
            .iter()
            .map(|(d, how)| format!("  {} ({how})", d.display()))
            .collect();
        let env_note = if std::env::var_os(ENV_WEIGHTS).is_none() {
            format!("\n  ${ENV_WEIGHTS} is not set")
        } else {
            String::new()
        };
        bail!(
            "weights for {kind} not found: looked for {st_name} or {pth_name} in\n{}{env_note}\n\
             Get the official checkpoint from {} and put it in one of these folders, or pass its \
             folder with --weights DIR.{download_note}",
            places.join("\n"),
            kind.url()
        )
    }

    /// The file [`load`](Self::load) takes for `kind`: in the first folder that has one, its
    /// `.safetensors`, else its `.pth`.
    pub fn find(&self, kind: ModelKind) -> Option<Found> {
        self.dirs.iter().find_map(|(dir, _)| {
            let st = dir.join(format!("{}.safetensors", kind.id()));
            let pth = dir.join(format!("{}.pth", kind.id()));
            // Anything but a folder is taken, so that a device or FIFO under a model's name is
            // refused by name when it is read, not passed over.
            let present = |p: &Path| std::fs::metadata(p).is_ok_and(|m| !m.is_dir());
            if present(&st) {
                Some(Found::Safetensors(st))
            } else if present(&pth) {
                Some(Found::Pth(pth))
            } else {
                None
            }
        })
    }

    /// Converts `pth` (through the cache when it can be written) and loads it. It must be the
    /// released checkpoint: its sha256 is compared with the pinned one before it is parsed, so
    /// a tampered file never reaches the pickle reader. Other weights are taken as
    /// `.safetensors`.
    pub fn load_pth(
        &self,
        kind: ModelKind,
        pth: &Path,
        dtype: DType,
        dev: &Device,
    ) -> anyhow::Result<Model> {
        self.pth_with(kind, pth, &|b| Model::load_bytes(kind, b, dtype, dev))
    }

    /// [`load_pth`](Self::load_pth), building what `build` makes of the converted bytes.
    fn pth_with<T>(
        &self,
        kind: ModelKind,
        pth: &Path,
        build: &dyn Fn(&[u8]) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let sha = converse_convert::sha256_file(pth)?;
        if sha != kind.sha256() {
            if let Some(other) = ModelKind::ALL.into_iter().find(|k| k.sha256() == sha) {
                bail!(
                    "'{}' holds {other} weights, not {kind} (it is the released {}.pth)",
                    pth.display(),
                    other.id()
                )
            }
            bail!(
                "'{}' is not the released checkpoint (sha256 {sha}, the release's is {}): it may \
                 be corrupt. To use other {kind} weights, convert them to '{}.safetensors' beside \
                 it (converse convert)",
                pth.display(),
                kind.sha256(),
                kind.id()
            )
        }
        let cached = self
            .cache
            .as_ref()
            .map(|c| c.join(format!("{}-{}.safetensors", kind.id(), &sha[..16])));
        if let Some(c) = cached.as_ref().filter(|c| c.is_file()) {
            return read_file(kind, c, build);
        }
        let (_, bytes) = converse_convert::convert_to_bytes(
            pth,
            &ModelKind::specs()?,
            converse_convert::Limits::from_env()?,
        )?;
        if let Some(c) = &cached {
            // A cache that cannot be written only costs a conversion next time; one that another
            // process wrote meanwhile holds the same bytes.
            crate::files::sweep_folders([c.as_path()]);
            let _ = crate::files::write_bytes(c, crate::files::Existing::Keep, &bytes);
        }
        build(&bytes).with_context(|| format!("cannot load {kind} from '{}'", pth.display()))
    }
}
