//! Downloading an official checkpoint when no weights are found anywhere.
//!
//! The file comes from the official `model_zoo/` ([`ModelKind::url`]) or from
//! `$CONVERSE_WEIGHTS_URL/<id>.pth`, is written to a temporary file in the destination folder,
//! checked against the sha256 pinned in the source ([`ModelKind::sha256`]) and only then renamed
//! to its released name. A failed or corrupt download leaves no file behind.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use sha2::{Digest, Sha256};

use crate::models::ModelKind;

/// Environment variable: a base URL to download checkpoints from instead of the official
/// repository (`<base>/<id>.pth`).
pub const ENV_URL: &str = "CONVERSE_WEIGHTS_URL";

/// Environment variable: set to a non-empty value to never download.
pub const ENV_NO_DOWNLOAD: &str = "CONVERSE_NO_DOWNLOAD";

/// Longest wait to resolve and connect to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Longest wait for any single read: a stalled server fails instead of hanging.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest download accepted (the released checkpoints are a few MB).
const MAX_BYTES: u64 = 1 << 30;

/// Where `kind` is downloaded from: `$CONVERSE_WEIGHTS_URL/<id>.pth` when that is set, else the
/// official [`ModelKind::url`].
pub fn checkpoint_url(kind: ModelKind) -> String {
    match std::env::var(ENV_URL).ok().filter(|v| !v.is_empty()) {
        Some(base) => format!("{}/{}.pth", base.trim_end_matches('/'), kind.id()),
        None => kind.url(),
    }
}

/// Follows a download: called with the file's name and size (when known) as it starts, it
/// returns what is then called with the bytes of each piece received.
pub type Progress = fn(&str, Option<u64>) -> Box<dyn Fn(u64)>;

/// Downloads `kind`'s checkpoint from `url` into `dir/<id>.pth` (creating `dir`) through the
/// one write helper, reporting to `progress` if given, checks its sha256 before it takes its name, and returns the path. On any
/// error nothing is left in `dir`; a download killed midway leaves a temporary file that the
/// next sweep of `dir` removes.
pub fn fetch(
    kind: ModelKind,
    url: &str,
    dir: &Path,
    progress: Option<Progress>,
) -> anyhow::Result<PathBuf> {
    let name = format!("{}.pth", kind.id());
    let dest = dir.join(&name);
    crate::files::sweep(dir);
    let written = crate::files::write_with(&dest, crate::files::Existing::Keep, |file| {
        let got = download(url, file, &name, progress)?;
        let expected = kind.sha256();
        if got != expected {
            bail!(
                "the file downloaded from '{url}' is corrupt: expected sha256 {expected}, got \
                 {got}; it was deleted"
            )
        }
        Ok(())
    });
    match written {
        // Another process downloaded it meanwhile: its file was checked the same way.
        Err(e) if crate::files::already_exists(&e) => Ok(dest),
        // The helper's own errors (creating, flushing, renaming) name the file here.
        Err(e) if e.is::<std::io::Error>() => {
            Err(e.context(format!("cannot write '{}'", dest.display())))
        }
        r => r.map(|()| dest.clone()),
    }
}

/// Streams `url` into `file`, reporting to `progress` under `label`, and returns its sha256.
fn download(
    url: &str,
    file: &mut std::fs::File,
    label: &str,
    progress: Option<Progress>,
) -> anyhow::Result<String> {
    let mut config = ureq::Agent::config_builder()
        .timeout_resolve(Some(CONNECT_TIMEOUT))
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_per_read(Some(READ_TIMEOUT));
    // A local mirror is reached directly, whatever proxy the environment names.
    let host = url.split("://").nth(1).unwrap_or("");
    if ["127.", "localhost", "[::1]"]
        .iter()
        .any(|p| host.starts_with(p))
    {
        config = config.proxy(None);
    }
    let agent: ureq::Agent = config.build().into();
    let response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::StatusCode(code) => {
            anyhow!("cannot download '{url}': the server answered HTTP {code}")
        }
        e => anyhow!("cannot download '{url}': {e}"),
    })?;
    let body = response.into_body();
    let total = body.content_length();
    let mut reader = body.into_with_config().limit(MAX_BYTES).reader();
    let mut hash = Sha256::new();
    let advance = progress.map(|start| start(label, total));
    let mut buf = vec![0u8; 1 << 16];
    let mut done: u64 = 0;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let of = total.map(|t| format!(" of {t}")).unwrap_or_default();
                bail!("the download of '{url}' broke off after {done}{of} bytes: {e}")
            }
        };
        file.write_all(&buf[..n])
            .with_context(|| format!("cannot write the download of '{label}'"))?;
        hash.update(&buf[..n]);
        done += n as u64;
        if let Some(advance) = &advance {
            advance(n as u64)
        }
    }
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
