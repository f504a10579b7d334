//! The README's examples run as written: every fenced block opened with ```` ```sh example ````
//! runs under `bash -euo pipefail` in a fresh folder, which is also `$HOME`, holding the inputs
//! the examples name (`photo.jpg`, and `photos/` with a subfolder), small generated images, with
//! the built `converse` first on `PATH` and the shared weights in `$CONVERSE_WEIGHTS`. Each block
//! must succeed and leave every output it names with `-o`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{shared, stderr, stdout};
use image::{ImageBuffer, Luma, Rgb};

const README: &str = include_str!("../README.md");

/// The marker that opens a block this test runs.
const MARKER: &str = "```sh example";

/// The example blocks, each with the README line it starts on.
fn examples(readme: &str) -> Vec<(usize, String)> {
    let mut blocks = vec![];
    let mut current: Option<(usize, String)> = None;
    for (i, line) in readme.lines().enumerate() {
        match &mut current {
            None if line.trim_end() == MARKER => current = Some((i + 1, String::new())),
            None => {}
            Some(_) if line.trim_end() == "```" => blocks.extend(current.take()),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    assert!(current.is_none(), "an example block is not closed");
    blocks
}

/// The inputs the examples name: a colour photo and a folder with a gray image in a subfolder.
fn make_inputs(dir: &Path) {
    let photo = ImageBuffer::from_fn(64, 48, |x, y| {
        Rgb([(x * 4) as u8, (y * 5) as u8, (128 + ((x * y) % 97)) as u8])
    });
    photo.save(dir.join("photo.jpg")).unwrap();
    std::fs::create_dir_all(dir.join("photos/2024")).unwrap();
    photo.save(dir.join("photos/beach.png")).unwrap();
    ImageBuffer::from_fn(40, 32, |x, y| Luma([((x * 6 + y * 3) % 256) as u8]))
        .save(dir.join("photos/2024/scan.png"))
        .unwrap();
}

/// The outputs a block names with `-o` (except in `--dry-run` lines), `--dir` or `>`, with `~/`
/// taken from `home`.
fn outputs(block: &str, home: &Path) -> Vec<PathBuf> {
    block
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let flags: &[&str] = if l.contains("--dry-run") {
                &["--dir", ">"]
            } else {
                &["-o", "--dir", ">"]
            };
            let i = words.iter().position(|w| flags.contains(w))?;
            let w = words.get(i + 1)?;
            Some(match w.strip_prefix("~/") {
                Some(rest) => home.join(rest),
                None => PathBuf::from(w),
            })
        })
        .collect()
}

#[test]
fn the_example_blocks_are_found() {
    let text = "a\n```sh example\necho 1\n```\n```sh\nnot this\n```\n```sh example\nb\nc\n```\n";
    assert_eq!(
        examples(text),
        [(2, "echo 1\n".to_owned()), (8, "b\nc\n".to_owned())]
    );
    assert_eq!(
        outputs(
            "x -i a.png -o b.png  # -o c.png\nx --dry-run -o d/\nx -o e/\nx > ~/f\nx --dir g\n",
            Path::new("/h")
        ),
        ["b.png", "e/", "/h/f", "g"].map(PathBuf::from)
    );
}

#[test]
fn every_readme_example_runs() {
    let Some(shared) = shared() else { return };
    let blocks = examples(README);
    assert!(blocks.len() >= 3, "only {} example blocks", blocks.len());
    let bin = Path::new(env!("CARGO_BIN_EXE_converse"));
    let path = std::env::join_paths(std::iter::once(bin.parent().unwrap().to_owned()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    // One cache for every block: each checkpoint is converted once.
    let cache = tempfile::tempdir().unwrap();
    for (line, block) in blocks {
        let dir = tempfile::tempdir().unwrap();
        make_inputs(dir.path());
        let o = Command::new("bash")
            .args(["--norc", "-euo", "pipefail", "-c", &block])
            .current_dir(dir.path())
            .env("HOME", dir.path())
            .env("PATH", &path)
            .env("CONVERSE_WEIGHTS", shared.join("weights"))
            .env("XDG_CACHE_HOME", cache.path())
            .env("CONVERSE_NO_DOWNLOAD", "1")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "README.md line {line}: {:?}\n{block}\nstdout:\n{}\nstderr:\n{}",
            o.status,
            stdout(&o),
            stderr(&o)
        );
        for out in outputs(&block, dir.path()) {
            assert!(
                dir.path().join(&out).exists(),
                "README.md line {line}: no '{}'",
                out.display()
            );
        }
    }
}

#[test]
fn the_readme_starts_with_the_user_and_stays_short() {
    let lines: Vec<&str> = README.lines().collect();
    assert!(lines.len() <= 250, "README.md has {} lines", lines.len());
    let position = |s: &str| lines.iter().position(|l| l.contains(s)).unwrap();
    // The two commands near the top, then install, the quick start and the rest in order.
    let order = [
        "cargo run --release -- demo",
        "cargo test --release --workspace",
        "## Install",
        "cargo install --locked --path .",
        "scripts/cuda-build --install",
        "## Quick start",
        "## Options of `converse restore`",
        "## Where the weights come from",
        "## More",
    ];
    let at: Vec<usize> = order.iter().map(|s| position(s)).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{order:?} at {at:?}");
    assert!(at[1] < 40, "the two commands start at line {}", at[0] + 1);
    // Every local link points at a file that exists.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for part in README.split("](").skip(1) {
        let target = part.split([')', '#']).next().unwrap();
        if target.is_empty() || target.starts_with("http") {
            continue;
        }
        assert!(
            root.join(target).exists(),
            "README.md links to missing '{target}'"
        );
    }
}
