//! One plan of inputs and outputs for every command that writes files (`restore`, `degrade`,
//! `eval --save`, `convert`, `demo`), made before anything is computed.
//!
//! [`plan`] pairs inputs with outputs: a file goes to a file, a folder to a folder (its files in
//! a fixed order, with `recursive` those of its subfolders too, keeping the relative structure).
//! It then refuses, naming both paths:
//! - an output that is the same file as any input of the run, however spelled: the same device
//!   and inode where the output exists, otherwise the same canonical folder and name, compared
//!   without case where the folder is case-insensitive (found by probing the folder itself);
//! - two inputs that map to the same output.
//!
//! An output folder inside the input tree is left out of the listing (with a note), and symbolic
//! link loops end in a note. [`check_writable`] and [`check_output`] are the checks of what would
//! otherwise fail only after the compute: a folder that cannot be written, a file name too long
//! for its folder, an image too large for its encoder.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context};

use crate::image_io::{self, Format};

/// One input and where its result goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub input: PathBuf,
    pub output: PathBuf,
}

/// The pairs of a run, and notes for the user (folders left out, links that loop).
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub pairs: Vec<Pair>,
    pub notes: Vec<String>,
}

/// Which files of a folder are inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inputs {
    /// Images ([`image_io::is_image`]).
    Images,
    /// PyTorch checkpoints (`.pth`).
    Checkpoints,
}

impl Inputs {
    fn takes(self, path: &Path) -> bool {
        match self {
            Self::Images => image_io::is_image(path),
            Self::Checkpoints => path.extension().is_some_and(|e| e == "pth"),
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Self::Images => "images",
            Self::Checkpoints => ".pth files",
        }
    }
}

/// What to plan.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub input: &'a Path,
    pub output: &'a Path,
    pub recursive: bool,
    pub inputs: Inputs,
    /// The extension every output of a folder run takes (`--format`); `None` keeps each input's.
    pub extension: Option<&'a str>,
    /// Other files the run reads (a kernel): no output may be one of them either.
    pub also_read: &'a [PathBuf],
}

/// Pairs the inputs of `req` with their outputs, and checks them (see the [module docs](self)).
/// Every error is a usage error: nothing has been computed or written.
pub fn plan(req: &Request) -> anyhow::Result<Plan> {
    let meta = std::fs::metadata(req.input)
        .with_context(|| format!("cannot read '{}'", req.input.display()))?;
    let mut plan = Plan::default();
    if !meta.is_dir() {
        if std::fs::metadata(req.output).is_ok_and(|m| m.is_dir()) {
            bail!(
                "the input '{}' is a file, so the output must be a file, but '{}' is a folder",
                req.input.display(),
                req.output.display()
            )
        }
        plan.pairs.push(Pair {
            input: req.input.to_owned(),
            output: req.output.to_owned(),
        });
    } else {
        if std::fs::metadata(req.output).is_ok_and(|m| !m.is_dir()) {
            bail!(
                "the input '{}' is a folder, so the output must be a folder, but '{}' is a file",
                req.input.display(),
                req.output.display()
            )
        }
        let files = list(
            req.input,
            req.recursive,
            req.inputs,
            Some(req.output),
            &mut plan.notes,
        )?;
        if files.is_empty() {
            let hint = if req.recursive {
                ""
            } else {
                " (use --recursive for subfolders)"
            };
            bail!(
                "no {} in '{}'{hint}",
                req.inputs.noun(),
                req.input.display()
            )
        }
        plan.pairs = files
            .into_iter()
            .map(|f| {
                let rel = f.strip_prefix(req.input).unwrap_or(&f).to_owned();
                let out = req.output.join(rel);
                let output = match req.extension {
                    Some(e) => out.with_extension(e),
                    None => out,
                };
                Pair { input: f, output }
            })
            .collect();
    }
    check_pairs(&plan.pairs, req.also_read)?;
    Ok(plan)
}

/// The files of `dir` that `inputs` takes, in a fixed order: by folder, then by name. With
/// `recursive`, subfolders too (links followed), except `skip` (an output folder inside the
/// tree, noted once) and links that loop (noted).
pub fn list(
    dir: &Path,
    recursive: bool,
    inputs: Inputs,
    skip: Option<&Path>,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<PathBuf>> {
    let skip = skip.and_then(|s| s.canonicalize().ok());
    let mut walk = walkdir::WalkDir::new(dir).follow_links(true).min_depth(1);
    if !recursive {
        walk = walk.max_depth(1);
    }
    let mut files = vec![];
    let mut it = walk.into_iter();
    while let Some(entry) = it.next() {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if e.loop_ancestor().is_some() => {
                let at = e.path().unwrap_or(dir);
                notes.push(format!(
                    "leaving out '{}': a symbolic link that loops back to '{}'",
                    at.display(),
                    e.loop_ancestor().unwrap_or(dir).display()
                ));
                continue;
            }
            Err(e) if e.depth() == 0 => {
                return Err(e).with_context(|| format!("cannot list '{}'", dir.display()))
            }
            Err(e) => {
                let at = e.path().unwrap_or(dir).to_owned();
                notes.push(format!("leaving out '{}': {e}", at.display()));
                continue;
            }
        };
        if entry.file_type().is_dir() {
            if skip.is_some() && entry.path().canonicalize().ok() == skip {
                notes.push(format!(
                    "leaving out '{}': it is the output folder",
                    entry.path().display()
                ));
                it.skip_current_dir();
            }
            continue;
        }
        if entry.file_type().is_file() && inputs.takes(entry.path()) {
            files.push(entry.into_path());
        }
    }
    files.sort_by(|a, b| (a.parent(), a.file_name()).cmp(&(b.parent(), b.file_name())));
    Ok(files)
}

/// Refuses an output that is an input (or one of `also_read`), and two inputs with one output.
pub fn check_pairs(pairs: &[Pair], also_read: &[PathBuf]) -> anyhow::Result<()> {
    let mut ids = Identities::default();
    let mut read_nodes: HashMap<(u64, u64), &Path> = HashMap::new();
    let mut read_names: HashMap<PathBuf, &Path> = HashMap::new();
    let inputs = pairs.iter().map(|p| p.input.as_path());
    for path in inputs.chain(also_read.iter().map(PathBuf::as_path)) {
        if let Some(node) = node(path) {
            read_nodes.entry(node).or_insert(path);
        }
        read_names.entry(ids.name(path)).or_insert(path);
    }
    let mut written: HashMap<PathBuf, &Path> = HashMap::new();
    for pair in pairs {
        let name = ids.name(&pair.output);
        let read = node(&pair.output)
            .and_then(|n| read_nodes.get(&n))
            .or_else(|| read_names.get(&name));
        if let Some(read) = read {
            bail!(
                "the output '{}' is the input '{}', which is never overwritten",
                pair.output.display(),
                read.display()
            )
        }
        if let Some(first) = written.insert(name, &pair.input) {
            bail!(
                "'{}' and '{}' would both be written to '{}'",
                first.display(),
                pair.input.display(),
                pair.output.display()
            )
        }
    }
    Ok(())
}

/// Whether `path` (existing or not) lies in the folder `tree` (or is it).
pub fn inside(path: &Path, tree: &Path) -> bool {
    match tree.canonicalize() {
        Ok(tree) => resolve(path).0.starts_with(tree),
        Err(_) => false,
    }
}

/// Refuses to go on when an output folder cannot be written (a read-only filesystem, no
/// permission): found before anything is computed.
pub fn check_writable<'a>(outputs: impl IntoIterator<Item = &'a Path>) -> anyhow::Result<()> {
    let mut seen = std::collections::HashSet::new();
    for out in outputs {
        let parent = out.parent().unwrap_or(Path::new(""));
        if !seen.insert(parent.to_owned()) {
            continue;
        }
        // A file where a folder of the path should be.
        let in_the_way = parent
            .ancestors()
            .filter(|a| !a.as_os_str().is_empty())
            .find(|a| std::fs::metadata(a).is_ok_and(|m| !m.is_dir()));
        if let Some(file) = in_the_way {
            bail!(
                "cannot write '{}': '{}' is a file, not a folder",
                out.display(),
                file.display()
            )
        }
        let dir = nearest_existing(parent);
        writable(&dir).with_context(|| format!("cannot write in '{}'", dir.display()))?;
    }
    Ok(())
}

/// The checks an output passes before its input is computed: a file name its folder's
/// filesystem takes, and an image its encoder takes (`size`: width and height written).
pub fn check_output(output: &Path, format: Format, size: (usize, usize)) -> anyhow::Result<()> {
    check_name(output)?;
    image_io::check_encoder_limits(format, size.0, size.1)
        .with_context(|| format!("cannot write '{}'", output.display()))
}

/// Refuses an output whose file name is longer than its folder's filesystem takes.
pub fn check_name(output: &Path) -> anyhow::Result<()> {
    let name = output.file_name().unwrap_or_default();
    let dir = nearest_existing(output.parent().unwrap_or(Path::new("")));
    let max = name_max(&dir);
    if name.len() > max {
        bail!(
            "cannot write '{}': its name is {} bytes, longer than the {max} its folder allows",
            output.display(),
            name.len()
        )
    }
    Ok(())
}

/// The folder itself if it exists, else its nearest existing ancestor (`.` for a bare name).
fn nearest_existing(dir: &Path) -> PathBuf {
    let mut d = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    loop {
        if d.is_dir() {
            return d.to_owned();
        }
        match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => d = p,
            _ => return PathBuf::from("."),
        }
    }
}

/// `path` with its longest existing prefix made canonical and the rest appended (`.` dropped,
/// `..` applied), and that existing folder.
fn resolve(path: &Path) -> (PathBuf, PathBuf) {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let parts: Vec<Component> = abs.components().collect();
    // The longest prefix that exists, made canonical.
    let (mut out, at) = (0..=parts.len())
        .rev()
        .find_map(|n| {
            let prefix: PathBuf = parts[..n].iter().collect();
            prefix.canonicalize().ok().map(|c| (c, n))
        })
        .unwrap_or_else(|| (PathBuf::from("/"), 0));
    let existing = out.clone();
    for part in &parts[at..] {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    let folder = if at == parts.len() {
        existing.parent().map(Path::to_owned).unwrap_or(existing)
    } else {
        existing
    };
    (out, folder)
}

/// Device and inode of an existing file (links followed).
fn node(path: &Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Names as the filesystem compares them: canonical folder plus name, folded where the folder
/// is case-insensitive (each folder probed once).
#[derive(Default)]
struct Identities {
    insensitive: HashMap<PathBuf, bool>,
}

impl Identities {
    /// Each component is folded when the folder it is in is case-insensitive (a missing folder
    /// is taken to be like its nearest existing ancestor).
    fn name(&mut self, path: &Path) -> PathBuf {
        let (full, _) = resolve(path);
        let (mut actual, mut key) = (PathBuf::new(), PathBuf::new());
        let mut folded = false;
        for part in full.components() {
            if let Component::Normal(n) = part {
                if actual.is_dir() {
                    folded = *self
                        .insensitive
                        .entry(actual.clone())
                        .or_insert_with(|| case_insensitive(&actual));
                }
                match folded {
                    true => key.push(n.to_string_lossy().to_lowercase()),
                    false => key.push(n),
                }
            } else {
                key.push(part);
            }
            actual.push(part);
        }
        key
    }
}

/// Whether `dir` finds names without regard to case. An entry with a cased letter is looked
/// up with its case swapped: not found, the folder is case-sensitive; found as the same inode,
/// it is not. Otherwise (a folder with no such entry, or a filesystem that numbers each
/// spelling apart, as FUSE ones do) a probe file is made and looked up so.
pub fn case_insensitive(dir: &Path) -> bool {
    let entries = std::fs::read_dir(dir).into_iter().flatten().flatten();
    for e in entries.take(64) {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(swapped) = swap_case(&name) {
            let other = dir.join(swapped);
            if std::fs::symlink_metadata(&other).is_err() {
                return false;
            }
            if same_node(&dir.join(&name), &other) {
                return true;
            }
            break;
        }
    }
    // Named as the write helper's temporary files, so that a sweep removes one a killed run left.
    let Ok(probe) = tempfile::Builder::new()
        .prefix(".case-probe.converse-")
        .suffix(".tmp")
        .rand_bytes(12)
        .tempfile_in(dir)
    else {
        return false;
    };
    let name = probe
        .path()
        .file_name()
        .unwrap_or_default()
        .to_string_lossy();
    swap_case(&name).is_some_and(|s| std::fs::symlink_metadata(dir.join(s)).is_ok())
}

/// `name` with the case of its letters swapped, if it has any cased letter.
fn swap_case(name: &str) -> Option<String> {
    let swapped: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    (swapped != name).then_some(swapped)
}

fn same_node(a: &Path, b: &Path) -> bool {
    matches!((node(a), node(b)), (Some(x), Some(y)) if x == y)
}

/// Whether this process may create files in `dir` (a read-only filesystem says no even to
/// root).
fn writable(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
        // SAFETY: a valid NUL-terminated path; access only reads it.
        if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let _ = dir;
    Ok(())
}

/// The longest file name (bytes) `dir`'s filesystem takes.
fn name_max(dir: &Path) -> usize {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        if let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) {
            // SAFETY: a valid NUL-terminated path; pathconf only reads it.
            let n = unsafe { libc::pathconf(c.as_ptr(), libc::_PC_NAME_MAX) };
            if n > 0 {
                return n as usize;
            }
        }
    }
    let _ = dir;
    255
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    fn req<'a>(input: &'a Path, output: &'a Path) -> Request<'a> {
        Request {
            input,
            output,
            recursive: true,
            inputs: Inputs::Images,
            extension: None,
            also_read: &[],
        }
    }

    #[test]
    fn folders_pair_by_relative_path_in_a_fixed_order() {
        let d = tempfile::tempdir().unwrap();
        let i = d.path().join("in");
        for n in [
            "b.png",
            "a.jpg",
            "sub/c.png",
            "notes.txt",
            "sub/deeper/d.bmp",
        ] {
            touch(&i.join(n));
        }
        let o = d.path().join("out");
        let mut r = req(&i, &o);
        r.extension = Some("png");
        let p = plan(&r).unwrap();
        let got: Vec<(PathBuf, PathBuf)> = p
            .pairs
            .iter()
            .map(|p| {
                (
                    p.input.strip_prefix(&i).unwrap().to_owned(),
                    p.output.strip_prefix(&o).unwrap().to_owned(),
                )
            })
            .collect();
        let want: Vec<(PathBuf, PathBuf)> = [
            ("a.jpg", "a.png"),
            ("b.png", "b.png"),
            ("sub/c.png", "sub/c.png"),
            ("sub/deeper/d.bmp", "sub/deeper/d.png"),
        ]
        .iter()
        .map(|(a, b)| (PathBuf::from(a), PathBuf::from(b)))
        .collect();
        assert_eq!(got, want);
        r.recursive = false;
        assert_eq!(plan(&r).unwrap().pairs.len(), 2);
    }

    #[test]
    fn an_output_that_is_an_input_is_refused_however_spelled() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("p/a.png");
        touch(&a);
        touch(&d.path().join("p/a.jpg"));
        // The same file through `..` and `.`.
        let spelled = d.path().join("p/./x/../a.png");
        let e = plan(&req(&a, &spelled)).unwrap_err().to_string();
        assert!(e.starts_with("the output '"), "{e}");
        assert!(e.ends_with("a.png', which is never overwritten"), "{e}");
        // --format png over a folder holding a.jpg and a.png.
        let p = d.path().join("p");
        let mut r = req(&p, &p);
        r.extension = Some("png");
        let e = plan(&r).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "the output '{}' is the input '{}', which is never overwritten",
                p.join("a.png").display(),
                p.join("a.png").display()
            )
        );
        // A kernel the run reads.
        let k = d.path().join("k.png");
        touch(&k);
        let also = [k.clone()];
        let mut r = req(&a, &k);
        r.also_read = &also;
        assert!(plan(&r)
            .unwrap_err()
            .to_string()
            .contains("never overwritten"));
        // Through a symbolic link to the folder.
        #[cfg(unix)]
        {
            let link = d.path().join("link");
            std::os::unix::fs::symlink(&p, &link).unwrap();
            let e = plan(&req(&a, &link.join("a.png"))).unwrap_err();
            assert!(e.to_string().contains("never overwritten"));
        }
    }

    #[test]
    fn two_inputs_with_one_output_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let i = d.path().join("in");
        touch(&i.join("a.jpg"));
        touch(&i.join("a.png"));
        let o = d.path().join("out");
        let mut r = req(&i, &o);
        r.extension = Some("png");
        let e = plan(&r).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "'{}' and '{}' would both be written to '{}'",
                i.join("a.jpg").display(),
                i.join("a.png").display(),
                o.join("a.png").display()
            )
        );
    }

    #[test]
    fn an_output_folder_inside_the_input_is_left_out_once() {
        let d = tempfile::tempdir().unwrap();
        let i = d.path().join("photos");
        touch(&i.join("a.png"));
        touch(&i.join("clean/a.png"));
        touch(&i.join("clean/clean/a.png"));
        let o = i.join("clean");
        let p = plan(&req(&i, &o)).unwrap();
        assert_eq!(p.pairs.len(), 1);
        assert_eq!(p.pairs[0].output, o.join("a.png"));
        assert_eq!(
            p.notes,
            [format!(
                "leaving out '{}': it is the output folder",
                o.display()
            )]
        );
    }

    #[cfg(unix)]
    #[test]
    fn link_loops_end_in_a_note() {
        let d = tempfile::tempdir().unwrap();
        let i = d.path().join("in");
        touch(&i.join("a.png"));
        std::os::unix::fs::symlink(&i, i.join("loop")).unwrap();
        let mut notes = vec![];
        let files = list(&i, true, Inputs::Images, None, &mut notes).unwrap();
        assert_eq!(files, [i.join("a.png")]);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].starts_with(&format!("leaving out '{}'", i.join("loop").display())));
        assert!(notes[0].contains("loops back"), "{notes:?}");
    }

    #[test]
    fn resolves_missing_tails_and_dots() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().canonicalize().unwrap();
        let (p, folder) = resolve(&d.path().join("x/./y/../z.png"));
        assert_eq!(p, base.join("x/z.png"));
        assert_eq!(folder, base);
        assert!(inside(&d.path().join("new/deeper"), d.path()));
        assert!(!inside(d.path(), &d.path().join("new")));
    }

    #[test]
    fn this_filesystem_is_case_sensitive_and_names_are_too_long_past_its_limit() {
        let d = tempfile::tempdir().unwrap();
        assert!(!case_insensitive(d.path()));
        touch(&d.path().join("Mixed.png"));
        assert!(!case_insensitive(d.path()));
        let ok = d.path().join(format!("{}.png", "a".repeat(251)));
        check_output(&ok, Format::Png, (1, 1)).unwrap();
        let long = d.path().join(format!("{}.webp", "a".repeat(251)));
        let e = check_output(&long, Format::Webp, (1, 1))
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("its name is 256 bytes, longer than the 255 its folder allows"),
            "{e}"
        );
        let e = check_output(&ok, Format::Webp, (16384, 2)).unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            format!(
                "cannot write '{}': 16384x2 is larger than WebP allows (16383 pixels a side)",
                ok.display()
            )
        );
    }
}
