//! The fault suite: everyday commands under faults, through the real binary. Every case checks
//! the exit code and the message, that every input is byte-identical afterwards, that no
//! partial output and no temporary file is left, and that every output equals the one an
//! undisturbed run writes.
//!
//! The other reproductions of the issue (a pickle bomb, an overflowing kernel, NaN weights) and
//! the checkpoint cases are in `tests/bad_values.rs`, through the binary too.
//!
//! The filesystem cases (a read-only folder, a full disk, a case-insensitive FAT folder) mount
//! real filesystems and so need root: they skip with a reason elsewhere, and fail under `$CI`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Instant;

use common::{converse, shared, stderr};
use image::{GrayImage, Luma};

/// A model cache shared by every test here (and by concurrent processes: its writes never
/// replace each other).
fn cache() -> PathBuf {
    std::env::temp_dir().join("converse-fault-suite-cache")
}

fn weights() -> Option<PathBuf> {
    shared().map(|s| s.join("weights"))
}

/// `converse ARGS` with the shared weights.
fn cmd(args: &[&str]) -> Command {
    let mut c = converse(&cache());
    c.args(args).env("CONVERSE_NO_DOWNLOAD", "1");
    if let Some(w) = weights() {
        c.env("CONVERSE_WEIGHTS", w);
    }
    c
}

fn run(args: &[&str]) -> Output {
    cmd(args).stdin(Stdio::null()).output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A gray test image with some texture, `seed` making each one different.
fn write_gray(path: &Path, w: u32, h: u32, seed: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    GrayImage::from_fn(w, h, |x, y| {
        Luma([((x * 37 + y * 101 + seed * 53) ^ (x * y + seed)) as u8])
    })
    .save(path)
    .unwrap();
}

/// Every regular file under `dir`, by path relative to it, with its bytes.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    // A running writer's temporary files come and go: what vanished meanwhile is not listed.
    for e in walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .flatten()
    {
        if e.file_type().is_file() {
            let rel = e.path().strip_prefix(dir).unwrap().to_owned();
            if let Ok(bytes) = std::fs::read(e.path()) {
                out.insert(rel, bytes);
            }
        }
    }
    out
}

/// The write helper's temporary files under `dir` (names only: nothing is read).
fn temps(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(converse::files::is_temp_name)
        })
        .map(|e| e.path().strip_prefix(dir).unwrap().to_owned())
        .collect()
}

/// Asserts that the visible files of `out` (temporary files aside) are each a whole output of
/// the `reference` run.
fn assert_no_partial_output(out: &Path, reference: &BTreeMap<PathBuf, Vec<u8>>, at: &str) {
    let leftovers = temps(out);
    for (rel, bytes) in tree(out) {
        if leftovers.contains(&rel) {
            continue;
        }
        let want = reference
            .get(&rel)
            .unwrap_or_else(|| panic!("{at}: unexpected file {}", rel.display()));
        assert!(
            bytes == *want,
            "{at}: {} is not a whole output",
            rel.display()
        );
    }
}

fn assert_code(o: &Output, code: i32, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: stderr:\n{}\nstdout:\n{}",
        stderr(o),
        common::stdout(o)
    );
}

/// Whether the mount cases can run: root (CI runs as root). Elsewhere they skip, saying why;
/// under `$CI` that is a failure.
fn can_mount() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the mount cases need root under CI"
    );
    eprintln!("skipping: mounting filesystems needs root");
    false
}

/// A mounted filesystem, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        sh(&format!("mount -t tmpfs -o size={size} tmpfs '{}'", s(dir)));
        Mount(dir.to_owned())
    }

    fn fat(image: &Path, dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        sh(&format!("mkfs.vfat -C '{}' 8192 >/dev/null", s(image)));
        sh(&format!(
            "fusefat -o rw+ '{}' '{}' >/dev/null",
            s(image),
            s(dir)
        ));
        Mount(dir.to_owned())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let d = s(&self.0).to_owned();
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!("umount '{d}' 2>/dev/null || fusermount -u '{d}'"))
            .status();
    }
}

fn sh(script: &str) {
    let st = Command::new("sh").arg("-c").arg(script).status().unwrap();
    assert!(st.success(), "{script}");
}

/// A folder of small gray images, and the outputs an undisturbed denoise run writes from it.
struct Scene {
    _dir: tempfile::TempDir,
    root: PathBuf,
    input: PathBuf,
    reference: BTreeMap<PathBuf, Vec<u8>>,
    inputs: BTreeMap<PathBuf, Vec<u8>>,
}

impl Scene {
    fn new(sizes: &[(u32, u32)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let input = root.join("in");
        for (i, &(w, h)) in sizes.iter().enumerate() {
            write_gray(&input.join(format!("img{i:02}.png")), w, h, i as u32);
        }
        let out = root.join("reference");
        let o = run(&[
            "restore",
            "--task",
            "denoise",
            "-q",
            "-i",
            s(&input),
            "-o",
            s(&out),
        ]);
        assert_code(&o, 0, "reference run");
        Scene {
            reference: tree(&out),
            inputs: tree(&input),
            _dir: dir,
            root,
            input,
        }
    }

    fn restore(&self, out: &Path, extra: &[&str]) -> Command {
        let mut c = cmd(&[
            "restore",
            "--task",
            "denoise",
            "--device",
            "cpu",
            "-q",
            "-i",
            s(&self.input),
            "-o",
        ]);
        c.arg(out).args(extra).stdin(Stdio::null());
        c
    }

    fn assert_inputs_unchanged(&self) {
        assert!(tree(&self.input) == self.inputs, "an input changed");
    }

    /// The run into `out` is complete: the reference's files exactly, and nothing else.
    fn assert_complete(&self, out: &Path, at: &str) {
        assert_eq!(
            temps(out),
            Vec::<PathBuf>::new(),
            "{at}: temporary files left"
        );
        let got = tree(out);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            self.reference.keys().collect::<Vec<_>>(),
            "{at}"
        );
        assert!(
            got == self.reference,
            "{at}: an output differs from the reference"
        );
        self.assert_inputs_unchanged();
    }
}

#[test]
fn degrade_to_a_name_without_extension_never_replaces_the_input() {
    let Some(_) = weights() else { return };
    let d = tempfile::tempdir().unwrap();
    let photo = d.path().join("photo.png");
    write_gray(&photo, 32, 24, 1);
    let before = std::fs::read(&photo).unwrap();
    let o = run(&[
        "degrade",
        "--task",
        "denoise",
        "-i",
        s(&photo),
        "-o",
        s(&d.path().join("photo")),
    ]);
    assert_code(&o, 2, "degrade -o photo");
    assert_eq!(
        stderr(&o),
        format!(
            "error: cannot tell the output format of '{}' from its extension: use .png, .jpg, \
             .bmp, .tif or .webp\n",
            d.path().join("photo").display()
        )
    );
    assert_eq!(std::fs::read(&photo).unwrap(), before);
    assert_eq!(common::listing(d.path()), ["photo.png"]);
    // The same file spelled otherwise is refused before anything is written.
    let spelled = d.path().join("sub/../photo.png");
    std::fs::create_dir(d.path().join("sub")).unwrap();
    let o = run(&[
        "degrade",
        "--task",
        "denoise",
        "-i",
        s(&photo),
        "-o",
        s(&spelled),
    ]);
    assert_code(&o, 2, "degrade onto itself");
    assert!(
        stderr(&o).contains("which is never overwritten"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(&photo).unwrap(), before);
}

#[test]
fn format_collisions_in_a_folder_are_refused_before_any_work() {
    let Some(_) = weights() else { return };
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("p");
    write_gray(&p.join("a.png"), 24, 24, 1);
    GrayImage::from_fn(24, 24, |x, _| Luma([x as u8 * 9]))
        .save(p.join("a.jpg"))
        .unwrap();
    let before = tree(&p);
    for extra in [&["--overwrite"][..], &[]] {
        let mut args = vec!["restore", "--task", "denoise", "-i", s(&p), "-o", s(&p)];
        args.extend(["--format", "png"]);
        args.extend(extra);
        let o = run(&args);
        assert_code(&o, 2, "--format png into the input folder");
        assert_eq!(
            stderr(&o),
            format!(
                "error: the output '{}' is the input '{}', which is never overwritten\n",
                p.join("a.png").display(),
                p.join("a.png").display()
            )
        );
        assert!(tree(&p) == before);
    }
    // Into another folder: the two inputs would share one output.
    let out = d.path().join("out");
    let o = run(&[
        "restore",
        "--task",
        "denoise",
        "-i",
        s(&p),
        "-o",
        s(&out),
        "--format",
        "png",
    ]);
    assert_code(&o, 2, "two inputs, one output");
    assert_eq!(
        stderr(&o),
        format!(
            "error: '{}' and '{}' would both be written to '{}'\n",
            p.join("a.jpg").display(),
            p.join("a.png").display(),
            out.join("a.png").display()
        )
    );
    assert!(!out.exists());
}

#[test]
fn an_output_folder_inside_the_input_is_left_out_and_reruns_resume() {
    let Some(_) = weights() else { return };
    let scene = Scene::new(&[(24, 20), (20, 24)]);
    let out = scene.input.join("clean");
    for round in 0..2 {
        let o = scene.restore(&out, &["-r"]).output().unwrap();
        assert_code(&o, 0, "restore -r into a folder inside the input");
        let note = format!(
            "note: leaving out '{}': it is the output folder",
            out.display()
        );
        assert_eq!(stderr(&o).matches(&note).count(), round, "{}", stderr(&o));
    }
    assert!(!out.join("clean").exists());
    assert!(tree(&out) == scene.reference);
}

#[test]
fn eval_never_saves_into_its_dataset() {
    let Some(_) = weights() else { return };
    let d = tempfile::tempdir().unwrap();
    let ds = d.path().join("ds");
    write_gray(&ds.join("img.png"), 32, 32, 3);
    let before = tree(&ds);
    for save in [ds.clone(), ds.join("restored")] {
        let o = run(&[
            "eval",
            "--task",
            "denoise",
            "-q",
            "--dataset",
            s(&ds),
            "--save",
            s(&save),
        ]);
        assert_code(&o, 2, "eval --save into the dataset");
        assert_eq!(
            stderr(&o),
            format!(
                "error: --save '{}' is inside the dataset '{}': its images would be read as \
                 part of the dataset next time; save them elsewhere\n",
                save.display(),
                ds.display()
            )
        );
        assert!(tree(&ds) == before);
    }
    // Elsewhere it saves, and a second run does not replace the first's images.
    let save = d.path().join("saved");
    let o = run(&[
        "eval",
        "--task",
        "denoise",
        "-q",
        "--dataset",
        s(&ds),
        "--save",
        s(&save),
    ]);
    assert_code(&o, 0, "eval --save elsewhere");
    let saved = tree(&save);
    assert_eq!(saved.len(), 1);
    let o = run(&[
        "eval",
        "--task",
        "denoise",
        "-q",
        "--dataset",
        s(&ds),
        "--save",
        s(&save),
    ]);
    assert_code(&o, 2, "eval --save again");
    assert_eq!(
        stderr(&o),
        format!(
            "error: '{}' exists (--overwrite replaces it)\n",
            save.join("img.png").display()
        )
    );
    assert!(tree(&save) == saved);
}

/// Kills a folder run at 22 points (SIGKILL and SIGINT, at spread times and while an output is
/// being written); each time what is visible is whole outputs only, and a rerun completes the
/// folder exactly as an undisturbed run does.
#[cfg(unix)]
#[test]
fn killed_runs_leave_whole_outputs_and_reruns_complete_them() {
    let Some(_) = weights() else { return };
    let scene = Scene::new(&[(40, 32), (32, 40), (48, 48), (96, 80), (40, 40), (64, 48)]);
    let start = Instant::now();
    let o = scene
        .restore(&scene.root.join("timed"), &[])
        .output()
        .unwrap();
    assert_code(&o, 0, "timed run");
    let whole = start.elapsed();
    let mut during_write = 0;
    for point in 0..22 {
        let out = scene.root.join(format!("killed{point}"));
        let signal = if point % 2 == 0 {
            libc::SIGKILL
        } else {
            libc::SIGINT
        };
        let mut child = scene
            .restore(&out, &[])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let at = if point < 16 {
            std::thread::sleep(whole.mul_f64((point as f64 + 0.5) / 16.0));
            format!("kill point {point} (timed)")
        } else {
            // While an output is being written: as soon as a temporary file shows.
            let deadline = Instant::now() + whole * 4;
            while temps(&out).is_empty() && Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
            }
            format!("kill point {point} (during a write)")
        };
        kill(&mut child, signal);
        if point >= 16 && !temps(&out).is_empty() {
            during_write += 1;
        }
        if out.exists() {
            assert_no_partial_output(&out, &scene.reference, &at);
        }
        let o = scene.restore(&out, &[]).output().unwrap();
        assert_code(&o, 0, &at);
        scene.assert_complete(&out, &at);
    }
    assert!(
        during_write >= 3,
        "only {during_write} of 6 kills landed during a write"
    );
}

#[cfg(unix)]
fn kill(child: &mut Child, signal: i32) {
    // SAFETY: signalling our own child, which has not been reaped yet.
    unsafe { libc::kill(child.id() as i32, signal) };
    child.wait().unwrap();
}

/// Two and four runs on the same folders at once: every output whole and equal to a single
/// run's, every exit code 0.
#[test]
fn concurrent_runs_never_replace_each_other() {
    let Some(_) = weights() else { return };
    let scene = Scene::new(&[(40, 32), (32, 40), (48, 48), (36, 36), (40, 40), (44, 32)]);
    for n in [2, 4] {
        let out = scene.root.join(format!("together{n}"));
        let children: Vec<Child> = (0..n)
            .map(|_| {
                scene
                    .restore(&out, &[])
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        // Each output is written by exactly one run: the runs' "restored" counts add up to the
        // number of images (a rename that replaced would count some twice).
        let mut restored = 0;
        for c in children {
            let o = c.wait_with_output().unwrap();
            assert_code(&o, 0, &format!("{n} concurrent runs"));
            let err = stderr(&o);
            let summary = err.lines().find(|l| l.contains(" restored, ")).unwrap();
            restored += summary.split(' ').next().unwrap().parse::<usize>().unwrap();
        }
        assert_eq!(restored, scene.reference.len(), "{n} concurrent runs");
        scene.assert_complete(&out, &format!("{n} concurrent runs"));
    }
}

#[test]
fn a_read_only_output_folder_is_refused_before_any_work() {
    let Some(_) = weights() else { return };
    if !can_mount() {
        return;
    }
    let scene = Scene::new(&[(24, 24)]);
    let ro = scene.root.join("ro");
    let _m = Mount::tmpfs(&ro, "1m");
    sh(&format!("mount -o remount,ro '{}'", s(&ro)));
    let out = ro.join("out");
    let o = scene.restore(&out, &[]).output().unwrap();
    assert_code(&o, 2, "read-only output folder");
    assert_eq!(
        stderr(&o),
        format!(
            "error: cannot write in '{}': Read-only file system (os error 30)\n",
            ro.display()
        )
    );
    let o = scene.restore(&out, &["--dry-run"]).output().unwrap();
    assert_code(&o, 2, "read-only output folder, --dry-run");
    assert!(stderr(&o).contains("Read-only file system"));
    assert!(tree(&ro).is_empty());
    scene.assert_inputs_unchanged();
}

#[test]
fn a_full_disk_fails_the_images_that_do_not_fit_and_leaves_no_partial_file() {
    let Some(_) = weights() else { return };
    if !can_mount() {
        return;
    }
    let scene = Scene::new(&[(64, 64), (96, 96), (128, 128), (160, 160)]);
    let small = scene.root.join("small");
    let _m = Mount::tmpfs(&small, "40k");
    let out = small.join("out");
    let o = scene.restore(&out, &[]).output().unwrap();
    assert_code(&o, 1, "full disk");
    let err = stderr(&o);
    assert!(err.contains("No space left on device"), "{err}");
    let failed = err.matches("  failed: '").count();
    assert!((1..4).contains(&failed), "{err}");
    assert_eq!(temps(&small), Vec::<PathBuf>::new());
    assert_no_partial_output(&out, &scene.reference, "full disk");
    assert_eq!(tree(&out).len(), 4 - failed, "{err}");
    scene.assert_inputs_unchanged();
}

#[test]
fn a_name_at_the_filesystem_limit_is_written_and_one_past_it_fails_before_compute() {
    let Some(_) = weights() else { return };
    let d = tempfile::tempdir().unwrap();
    let stem = "n".repeat(251);
    let input = d.path().join("in").join(format!("{stem}.png"));
    write_gray(&input, 24, 24, 5);
    let before = std::fs::read(&input).unwrap();
    let out = d.path().join("out");
    let o = run(&[
        "restore",
        "--task",
        "denoise",
        "--device",
        "cpu",
        "-q",
        "-i",
        s(input.parent().unwrap()),
        "-o",
        s(&out),
    ]);
    assert_code(&o, 0, "255-byte name");
    assert_eq!(common::listing(&out), [format!("{stem}.png")]);
    // As WebP the name is 256 bytes: that image fails before it is computed.
    let webp = d.path().join("webp");
    let o = run(&[
        "restore",
        "--task",
        "denoise",
        "--device",
        "cpu",
        "-q",
        "-i",
        s(&d.path().join("in")),
        "-o",
        s(&webp),
        "--format",
        "webp",
    ]);
    assert_code(&o, 1, "256-byte name");
    assert!(
        stderr(&o).contains(&format!(
            "error: cannot write '{}': its name is 256 bytes, longer than the 255 its folder \
             allows",
            webp.join(format!("{stem}.webp")).display()
        )),
        "{}",
        stderr(&o)
    );
    assert!(tree(&webp).is_empty(), "something was written");
    assert_eq!(std::fs::read(&input).unwrap(), before);
}

/// A FAT folder (through FUSE: case-insensitive): two inputs whose names differ in case only
/// cannot both go there, and an output spelled in another case than its input is the input.
#[test]
fn a_case_insensitive_folder_is_probed_not_guessed() {
    let Some(_) = weights() else { return };
    if !can_mount() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let fat = d.path().join("fat");
    let _m = Mount::fat(&d.path().join("fat.img"), &fat);
    assert!(converse::plan::case_insensitive(&fat));
    // Two inputs, one name on FAT.
    let src = d.path().join("src");
    write_gray(&src.join("A.png"), 24, 24, 1);
    write_gray(&src.join("a.png"), 24, 24, 2);
    let o = run(&[
        "restore",
        "--task",
        "denoise",
        "-i",
        s(&src),
        "-o",
        s(&fat.join("out")),
    ]);
    assert_code(&o, 2, "case collision on FAT");
    assert_eq!(
        stderr(&o),
        format!(
            "error: '{}' and '{}' would both be written to '{}'\n",
            src.join("A.png").display(),
            src.join("a.png").display(),
            fat.join("out/a.png").display()
        )
    );
    assert!(!fat.join("out").exists());
    // An input on FAT, its output spelled in lower case.
    write_gray(&fat.join("PHOTO.PNG"), 24, 24, 3);
    let before = std::fs::read(fat.join("PHOTO.PNG")).unwrap();
    let o = run(&[
        "restore",
        "--task",
        "denoise",
        "--overwrite",
        "-i",
        s(&fat.join("PHOTO.PNG")),
        "-o",
        s(&fat.join("photo.png")),
    ]);
    assert_code(&o, 2, "output is the input on FAT");
    assert!(
        stderr(&o).contains("which is never overwritten"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(fat.join("PHOTO.PNG")).unwrap(), before);
    // A whole run into FAT works, and leaves no temporary file (no hard links, no
    // RENAME_NOREPLACE there).
    let scene = Scene::new(&[(24, 24), (32, 24)]);
    let out = fat.join("run");
    let o = scene.restore(&out, &[]).output().unwrap();
    assert_code(&o, 0, "a run into FAT");
    scene.assert_complete(&out, "FAT");
}

#[test]
fn special_files_are_refused_as_kernels_checkpoints_and_images() {
    let Some(_) = weights() else { return };
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("a.png");
    write_gray(&img, 24, 24, 1);
    let o = run(&[
        "restore",
        "--task",
        "deblur",
        "--kernel",
        "/dev/zero",
        "-i",
        s(&img),
        "-o",
        s(&d.path().join("b.png")),
    ]);
    assert_code(&o, 2, "/dev/zero as a kernel");
    assert_eq!(
        stderr(&o),
        "error: cannot read kernel '/dev/zero': not a regular file but a character device\n"
    );
    let o = run(&[
        "convert",
        "/dev/zero",
        "-o",
        s(&d.path().join("z.safetensors")),
    ]);
    assert_code(&o, 2, "/dev/zero as a checkpoint");
    assert_eq!(
        stderr(&o),
        "error: cannot read '/dev/zero': not a regular file but a character device\n"
    );
    // Under a released name in a weights folder.
    let w = d.path().join("w");
    std::fs::create_dir(&w).unwrap();
    std::os::unix::fs::symlink("/dev/zero", w.join("converse_dncnn.pth")).unwrap();
    let mut c = converse(&d.path().join("cache"));
    let o = c
        .args([
            "restore",
            "--task",
            "denoise",
            "--weights",
            s(&w),
            "-i",
            s(&img),
            "-o",
        ])
        .arg(d.path().join("b.png"))
        .env("CONVERSE_NO_DOWNLOAD", "1")
        .output()
        .unwrap();
    assert_code(&o, 2, "/dev/zero as released weights");
    assert!(
        stderr(&o).contains("not a regular file but a character device"),
        "{}",
        stderr(&o)
    );
    // As an image: a FIFO is not waited on.
    let fifo = d.path().join("f.png");
    sh(&format!("mkfifo '{}'", s(&fifo)));
    let o = run(&[
        "restore",
        "--task",
        "denoise",
        "-i",
        s(&fifo),
        "-o",
        s(&d.path().join("c.png")),
    ]);
    assert_code(&o, 1, "a FIFO as an image");
    assert!(
        stderr(&o).contains("not a regular file but a FIFO (named pipe)"),
        "{}",
        stderr(&o)
    );
    assert!(!d.path().join("b.png").exists() && !d.path().join("c.png").exists());
}

/// One exit-code table for every command: 0 all done, 1 some items failed, 2 a usage or set-up
/// error before any work.
#[test]
fn every_command_follows_the_exit_code_table() {
    let Some(shared) = shared() else { return };
    let d = tempfile::tempdir().unwrap();
    let good = d.path().join("good");
    write_gray(&good.join("a.png"), 24, 24, 1);
    let mixed = d.path().join("mixed");
    write_gray(&mixed.join("a.png"), 24, 24, 1);
    std::fs::write(mixed.join("broken.png"), b"not a png").unwrap();
    let missing = d.path().join("missing");
    let o = |name: &str| d.path().join(name);
    let cases: Vec<(&str, Vec<String>, i32)> = vec![
        (
            "restore ok",
            svec(&[
                "restore",
                "--task",
                "denoise",
                "-i",
                s(&good),
                "-o",
                s(&o("r0")),
            ]),
            0,
        ),
        (
            "restore item fails",
            svec(&[
                "restore",
                "--task",
                "denoise",
                "-i",
                s(&mixed),
                "-o",
                s(&o("r1")),
            ]),
            1,
        ),
        (
            "restore usage",
            svec(&[
                "restore",
                "--task",
                "denoise",
                "-i",
                s(&missing),
                "-o",
                s(&o("r2")),
            ]),
            2,
        ),
        (
            "degrade ok",
            svec(&[
                "degrade",
                "--task",
                "denoise",
                "-i",
                s(&good),
                "-o",
                s(&o("d0")),
            ]),
            0,
        ),
        (
            "degrade item fails",
            svec(&[
                "degrade",
                "--task",
                "denoise",
                "-i",
                s(&mixed),
                "-o",
                s(&o("d1")),
            ]),
            1,
        ),
        (
            "degrade usage",
            svec(&[
                "degrade",
                "--task",
                "sr",
                "--kernel",
                "gaussian:1",
                "-i",
                s(&good),
                "-o",
                s(&o("d2")),
            ]),
            2,
        ),
        (
            "eval ok",
            svec(&["eval", "--task", "denoise", "-q", "--dataset", s(&good)]),
            0,
        ),
        (
            "eval item fails",
            svec(&["eval", "--task", "denoise", "-q", "--dataset", s(&mixed)]),
            1,
        ),
        (
            "eval usage",
            svec(&["eval", "--task", "denoise", "--dataset", s(&missing)]),
            2,
        ),
        (
            "verify ok",
            svec(&["verify", s(&shared.join("golden/dncnn_0.safetensors"))]),
            0,
        ),
        ("verify usage", svec(&["verify", s(&missing)]), 2),
        (
            "demo usage",
            svec(&["demo", "-o", s(&good.join("a.png"))]),
            2,
        ),
        ("convert usage", svec(&["convert", s(&missing)]), 2),
        ("clap usage", svec(&["restore", "--task", "nothing"]), 2),
    ];
    for (what, args, code) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&args);
        assert_code(&out, code, what);
        assert!(!stderr(&out).contains("panicked"), "{what}");
    }
    // convert --all: one good checkpoint and one broken one.
    let pths = o("pths");
    std::fs::create_dir(&pths).unwrap();
    std::fs::copy(
        shared.join("weights/conversenet.pth"),
        pths.join("conversenet.pth"),
    )
    .unwrap();
    std::fs::write(pths.join("broken.pth"), b"PK\x03\x04 not really").unwrap();
    let out = run(&["convert", "--all", s(&pths), "-o", s(&o("st"))]);
    assert_code(&out, 1, "convert --all with a broken checkpoint");
    let out = run(&["convert", "--all", s(&pths), "-o", s(&o("st"))]);
    assert_code(&out, 1, "convert --all again: the good one is skipped");
    assert!(stderr(&out).contains("exists (--overwrite replaces it)"));
}

fn svec(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `--dry-run` reports what would fail later: a name too long, an image too large for WebP.
#[test]
fn dry_runs_report_what_would_fail_after_the_compute() {
    let Some(_) = weights() else { return };
    let d = tempfile::tempdir().unwrap();
    let big = d.path().join("in/wide.png");
    write_gray(&big, 4100, 2, 1);
    let o = run(&[
        "restore",
        "--task",
        "sr",
        "--dry-run",
        "-i",
        s(&big),
        "-o",
        s(&d.path().join("w.webp")),
    ]);
    assert_code(&o, 1, "SR to WebP past 16383 px");
    assert!(
        common::stdout(&o).contains("16400x8 is larger than WebP allows (16383 pixels a side)"),
        "{}",
        common::stdout(&o)
    );
}
