//! Downloading missing checkpoints, from a tiny HTTP server on 127.0.0.1 serving `../shared/weights`
//! (good, corrupt, or cut off mid-body): no test reaches the internet.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use candle_core::{DType, Device};
use common::{converse, listing, stderr, stdout};
use converse::download;
use converse::weights::WeightsLocator;
use converse::ModelKind;

const DNCNN_CACHED: &str = "converse_dncnn-3b86c7f6e41a0144.safetensors";

/// How the server answers a request for a file it has.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Good,
    /// One byte flipped.
    Corrupt,
    /// The full `Content-Length`, half the body, then the connection is closed.
    DropMidBody,
}

/// A server answering `max_requests` requests, then gone.
struct Server {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    base: String,
    /// The paths asked for, in order.
    requests: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(weights: PathBuf, mode: Mode, max_requests: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(vec![]));
        let log = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming().take(max_requests).flatten() {
                let _ = answer(stream, &weights, mode, &log);
            }
        });
        Self { base, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// Reads one request and answers it: `/<name>` is `weights/<name>`, anything else a 404.
fn answer(
    mut stream: TcpStream,
    weights: &Path,
    mode: Mode,
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = vec![];
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 << 10 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
    log.lock().unwrap().push(path.clone());
    let name = path.trim_start_matches('/');
    let file = weights.join(name);
    let body = match std::fs::read(&file) {
        Ok(b) if !name.contains('/') && !name.starts_with('.') => b,
        _ => {
            return stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
        }
    };
    let mut body = body;
    let sent = match mode {
        Mode::Good => body.len(),
        Mode::Corrupt => {
            let mid = body.len() / 2;
            body[mid] ^= 1;
            body.len()
        }
        Mode::DropMidBody => body.len() / 2,
    };
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(&body[..sent])?;
    stream.flush()?;
    stream.shutdown(std::net::Shutdown::Both)
}

fn pth(shared: &Path) -> PathBuf {
    shared.join("weights/converse_dncnn.pth")
}

#[test]
fn a_good_download_is_checked_saved_and_converted() {
    let Some(shared) = common::shared() else {
        return;
    };
    let server = Server::start(shared.join("weights"), Mode::Good, 1);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let url = format!("{}/converse_dncnn.pth", server.base);
    let got = download::fetch(ModelKind::DnCNN, &url, &cache, None).unwrap();
    assert_eq!(got, cache.join("converse_dncnn.pth"));
    assert_eq!(
        std::fs::read(&got).unwrap(),
        std::fs::read(pth(&shared)).unwrap()
    );
    let loc = WeightsLocator {
        dirs: vec![(cache.clone(), "cache".into())],
        cache: Some(cache.clone()),
        download: false,
        progress: None,
    };
    let model = loc
        .load(ModelKind::DnCNN, DType::F32, &Device::Cpu)
        .unwrap();
    assert_eq!(model.kind(), ModelKind::DnCNN);
    assert_eq!(listing(&cache), [DNCNN_CACHED, "converse_dncnn.pth"]);
    assert_eq!(server.requests(), ["/converse_dncnn.pth"]);
}

/// Fetches `file` from a server in `mode` into a fresh cache, which must fail and leave the
/// cache empty: the URL and the error.
fn failed_fetch(shared: &Path, mode: Mode, file: &str) -> (String, String) {
    let server = Server::start(shared.join("weights"), mode, 1);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let url = format!("{}/{file}", server.base);
    let e = download::fetch(ModelKind::DnCNN, &url, &cache, None).unwrap_err();
    assert!(listing(&cache).is_empty(), "{:?}", listing(&cache));
    (url, format!("{e:#}"))
}

#[test]
fn a_corrupt_download_is_deleted_and_both_checksums_named() {
    let Some(shared) = common::shared() else {
        return;
    };
    let (url, e) = failed_fetch(&shared, Mode::Corrupt, "converse_dncnn.pth");

    // The server's corruption, reproduced here to name the checksum the error must quote.
    let mut bad = std::fs::read(pth(&shared)).unwrap();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    let tmp = tempfile::tempdir().unwrap();
    let bad_path = tmp.path().join("bad.pth");
    std::fs::write(&bad_path, bad).unwrap();
    let actual = converse_convert::sha256_file(&bad_path).unwrap();
    assert_eq!(
        e,
        format!(
            "the file downloaded from '{url}' is corrupt: expected sha256 {}, got {actual}; it \
             was deleted",
            ModelKind::DnCNN.sha256()
        )
    );
}

#[test]
fn a_dropped_connection_is_an_error_and_leaves_nothing_behind() {
    let Some(shared) = common::shared() else {
        return;
    };
    let (url, e) = failed_fetch(&shared, Mode::DropMidBody, "converse_dncnn.pth");
    let size = std::fs::metadata(pth(&shared)).unwrap().len();
    assert!(
        e.starts_with(&format!("the download of '{url}' broke off after "))
            && e.contains(&format!(" of {size} bytes: ")),
        "{e}"
    );
}

#[test]
fn an_http_error_is_an_error_and_leaves_nothing_behind() {
    let Some(shared) = common::shared() else {
        return;
    };
    let (url, e) = failed_fetch(&shared, Mode::Good, "no_such_model.pth");
    assert_eq!(
        e,
        format!("cannot download '{url}': the server answered HTTP 404")
    );
}

#[test]
fn verify_downloads_missing_weights_once() {
    let Some(shared) = common::shared() else {
        return;
    };
    let server = Server::start(shared.join("weights"), Mode::Good, 1);
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let verify = |url: &str| {
        converse(tmp.path())
            .args(["verify", "--device", "cpu", "--weights"])
            .arg(&empty)
            .arg(shared.join("golden/dncnn_1.safetensors"))
            .env("CONVERSE_WEIGHTS_URL", url)
            .output()
            .unwrap()
    };
    // A base with a trailing slash.
    let o = verify(&format!("{}/", server.base));
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(out.ends_with("1 passed, 0 failed\n"), "{out}");
    let cache = tmp.path().join("converse");
    assert_eq!(listing(&cache), [DNCNN_CACHED, "converse_dncnn.pth"]);
    assert_eq!(server.requests(), ["/converse_dncnn.pth"]);

    // The second run finds it in the cache: nothing listens on port 9.
    let o = verify("http://127.0.0.1:9");
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert_eq!(listing(&cache), [DNCNN_CACHED, "converse_dncnn.pth"]);
}

#[test]
fn a_failed_download_is_added_to_the_not_found_error() {
    let Some(shared) = common::shared() else {
        return;
    };
    let server = Server::start(shared.join("weights"), Mode::Corrupt, 1);
    let tmp = tempfile::tempdir().unwrap();
    // A base without a trailing slash.
    let o = converse(tmp.path())
        .args(["verify", "--device", "cpu", "--weights"])
        .arg(tmp.path().join("nowhere"))
        .arg(shared.join("golden/dncnn_1.safetensors"))
        .env("CONVERSE_WEIGHTS_URL", &server.base)
        .output()
        .unwrap();
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("weights for converse_dncnn not found"),
        "{out}"
    );
    assert!(out.contains("nowhere (--weights)"), "{out}");
    assert!(
        out.contains("https://github.com/cszn/ConverseNet/raw/main/model_zoo/converse_dncnn.pth"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "\nThe download failed: the file downloaded from '{}/converse_dncnn.pth' is corrupt: \
             expected sha256 {}, got ",
            server.base,
            ModelKind::DnCNN.sha256()
        )),
        "{out}"
    );
    assert!(out.ends_with("0 passed, 1 failed\n"), "{out}");
    assert!(listing(&tmp.path().join("converse")).is_empty());
    assert_eq!(server.requests(), ["/converse_dncnn.pth"]);
}

#[test]
fn converse_no_download_turns_it_off() {
    let Some(shared) = common::shared() else {
        return;
    };
    let server = Server::start(shared.join("weights"), Mode::Good, 1);
    let tmp = tempfile::tempdir().unwrap();
    let o = converse(tmp.path())
        .args(["verify", "--device", "cpu", "--weights"])
        .arg(tmp.path().join("nowhere"))
        .arg(shared.join("golden/dncnn_1.safetensors"))
        .env("CONVERSE_WEIGHTS_URL", &server.base)
        .env("CONVERSE_NO_DOWNLOAD", "1")
        .output()
        .unwrap();
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("weights for converse_dncnn not found"),
        "{out}"
    );
    assert!(!out.contains("download failed"), "{out}");
    assert!(server.requests().is_empty());
    assert!(!tmp.path().join("converse").exists());
}
