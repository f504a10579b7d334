//! Finding `../shared` (or `$CONVERSE_SHARED`) for the tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use image::{ImageBuffer, Luma, Rgb};

/// The shared data folder, or `None` (with a printed reason) when it is missing outside CI.
/// Under CI (`$CI` set) missing data is a failure.
pub fn shared() -> Option<PathBuf> {
    let dir = std::env::var_os("CONVERSE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    if dir.join("golden").is_dir() && dir.join("weights").is_dir() {
        return Some(dir);
    }
    let msg = format!(
        "shared data not found at '{}' (set CONVERSE_SHARED)",
        dir.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("skipping: {msg}");
    None
}

/// The `converse` binary with a private cache folder and no weights from the environment.
/// Downloads go to a closed local port (nothing listens on 9), so no test reaches the internet.
pub fn converse(cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_converse"));
    c.env("XDG_CACHE_HOME", cache)
        .env("CONVERSE_WEIGHTS_URL", "http://127.0.0.1:9/")
        .env_remove("CONVERSE_NO_DOWNLOAD")
        .env_remove("CONVERSE_WEIGHTS")
        .env_remove("RUST_LIB_BACKTRACE");
    c
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Files in a folder, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A deterministic photo-like image: smooth shapes and texture.
pub fn write_image(path: &Path, w: u32, h: u32, color: bool) {
    let v = |x: u32, y: u32, c: u32| {
        let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
        let t = ((x * 7 + y * 13 + c * 5) % 23) as f32 / 23.0;
        let v = 0.5 + 0.3 * (6.0 * fx + c as f32).sin() * (4.0 * fy).cos() + 0.1 * t;
        (v.clamp(0.0, 1.0) * 255.0) as u8
    };
    if color {
        ImageBuffer::from_fn(w, h, |x, y| Rgb([v(x, y, 0), v(x, y, 1), v(x, y, 2)]))
            .save(path)
            .unwrap()
    } else {
        ImageBuffer::from_fn(w, h, |x, y| Luma([v(x, y, 0)]))
            .save(path)
            .unwrap()
    }
}

/// A zip of stored files, as `torch.save` writes them.
pub fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(vec![]));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in files {
        z.start_file(*name, opts).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap().into_inner()
}
