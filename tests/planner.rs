//! The memory planner against real runs, and `restore --dry-run`, through the binary.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{converse, stderr, stdout, write_image};
use converse::models::Task;
use converse::ops::Backend;
use converse::restore::Options;

/// Runs `cmd` to the end; returns its peak resident memory (VmHWM) in bytes.
#[cfg(target_os = "linux")]
#[allow(clippy::zombie_processes)] // wait4 below reaps the child and reads its peak
fn peak_rss(cmd: &mut Command, log: &Path) -> u64 {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: rusage is plain data, filled by wait4 for the child just spawned.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    usage.ru_maxrss as u64 * 1024
}

/// Sizes (width, height) a model is measured at, per task and `--kernel`.
type Case = (Task, bool, [(u32, u32); 2]);

/// Restores each case whole (`--tile 0`, on the CPU) in a child process on `backend`, and
/// checks the planner's estimate over the child's peak RSS is within `band`.
#[cfg(target_os = "linux")]
fn check_estimates(backend: Backend, cases: &[Case], band: std::ops::RangeInclusive<f64>) {
    let Some(shared) = common::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let options = Options {
        tile: Some(0),
        backend,
        ..Options::default()
    };
    let mut report = vec![];
    for &(task, with_kernel, sizes) in cases {
        let kind = task.model(with_kernel);
        for (w, h) in sizes {
            let color = task != Task::Denoise;
            let input = tmp.path().join(format!("{kind}-{w}x{h}.png"));
            write_image(&input, w, h, color);
            let mut cmd = converse(tmp.path());
            cmd.args(["restore", "-q", "--device", "cpu", "--tile", "0"])
                .args(["--task", task.name()])
                .arg("--weights")
                .arg(shared.join("weights"))
                .arg("-i")
                .arg(&input)
                .arg("-o")
                .arg(tmp.path().join("out.png"))
                .arg("--overwrite");
            if backend == Backend::Reference {
                cmd.arg("--reference");
            }
            if with_kernel {
                cmd.args(["--kernel", "gaussian:1.6"]);
            }
            let real = peak_rss(&mut cmd, &tmp.path().join("log"));
            let c = if color { 3 } else { 1 };
            let est = options.plan(kind, (h as usize, w as usize, c)).peak;
            let ratio = est as f64 / real as f64;
            report.push(format!(
                "{backend:?} {kind} {w}x{h}: estimate {} MiB, peak {} MiB, ratio {ratio:.2}",
                est >> 20,
                real >> 20
            ));
            assert!(band.contains(&ratio), "{}", report.join("\n"));
        }
    }
    eprintln!("{}", report.join("\n"));
}

#[cfg(target_os = "linux")]
#[test]
fn estimates_cover_the_measured_peak_within_one_and_a_half() {
    let cases: [Case; 4] = [
        (Task::Denoise, false, [(256, 256), (512, 384)]),
        (Task::Sr, false, [(64, 64), (128, 96)]),
        (Task::Deblur, false, [(256, 256), (512, 384)]),
        (Task::Deblur, true, [(256, 256), (512, 384)]),
    ];
    check_estimates(Backend::Fused, &cases, 1.0..=1.5);
}

/// The reference path's model (`a + b x pixels` per model, what a GPU plans with) against the
/// peak RSS of `restore --reference` on the CPU. The band: the model may be up to 10% under a
/// peak (the fit's own error is within 7%; allocator slack varies with the machine), and at most
/// 1.6x over it (the fit overestimates the smallest sizes, where padding counts most; more
/// would tile images that fit).
#[cfg(target_os = "linux")]
#[test]
fn the_reference_path_estimate_covers_its_measured_peak() {
    let cases: [Case; 4] = [
        (Task::Denoise, false, [(64, 64), (128, 128)]),
        (Task::Sr, false, [(32, 32), (48, 48)]),
        (Task::Deblur, false, [(64, 64), (128, 128)]),
        (Task::Deblur, true, [(64, 64), (128, 128)]),
    ];
    check_estimates(Backend::Reference, &cases, 0.9..=1.6);
}

#[test]
fn dry_run_prints_the_plan_reads_no_weights_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir(&input).unwrap();
    write_image(&input.join("a.png"), 300, 200, true);
    write_image(&input.join("b.png"), 1200, 900, true);
    std::fs::write(input.join("c.png"), b"not a png").unwrap();
    let out = tmp.path().join("out");
    let o = converse(tmp.path())
        .args([
            "restore",
            "--task",
            "deblur",
            "--device",
            "cpu",
            "--dry-run",
            "--max-memory",
            "400M",
        ])
        .args(["--weights", "/nonexistent"])
        .arg("-i")
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}\n{}", stderr(&o));
    assert!(
        lines[0].contains("a.png'")
            && lines[0].contains("conversenet, 300x200 to 300x200, whole, estimated peak"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("b.png'") && lines[1].contains(" tiles (") && !lines[1].contains("whole"),
        "{}",
        lines[1]
    );
    assert!(lines[2].contains("c.png': error: "), "{}", lines[2]);
    let err = stderr(&o);
    assert!(
        err.starts_with("memory budget: 400 MiB, --max-memory\n")
            && err.contains("\nplanned for: the fused CPU kernels on cpu, against host memory\n"),
        "{err}"
    );
    // The bad file fails its line; nothing was read or written.
    assert_eq!(o.status.code(), Some(1));
    assert!(!out.exists());
    assert!(!tmp.path().join("converse").exists());
}

/// A plan the budget cannot hold (the image is smaller than the smallest tile the model's
/// overlap allows) says so, in the dry run and as a note before the real run, which still runs.
#[test]
fn a_plan_over_the_budget_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("small.png");
    write_image(&input, 40, 30, true);
    let out = tmp.path().join("big.png");
    let why = "over the budget: the image is smaller than the smallest tile with the model's \
               overlap (raise --max-memory, or lower --tile-overlap)";
    let run = |budget: &str, extra: &[&str], weights: &Path| {
        converse(tmp.path())
            .args(["restore", "--task", "sr", "--device", "cpu"])
            .args(["--max-memory", budget])
            .args(extra)
            .arg("--weights")
            .arg(weights)
            .arg("-i")
            .arg(&input)
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap()
    };
    let o = run("10M", &["--dry-run"], Path::new("/nonexistent"));
    let line = stdout(&o);
    assert!(
        line.contains("converse_srresnet, 40x30 to 160x120, whole, estimated peak ")
            && line.trim_end().ends_with(&format!("of 10 MiB; {why}")),
        "{line}"
    );
    assert_eq!(o.status.code(), Some(0));
    // Within the budget, no note.
    let o = run("8G", &["--dry-run"], Path::new("/nonexistent"));
    let line = stdout(&o);
    assert!(
        line.contains(", whole, estimated peak ") && !line.contains("over the budget"),
        "{line} {}",
        stderr(&o)
    );
    let Some(shared) = common::shared() else {
        return;
    };
    let o = run("10M", &[], &shared.join("weights"));
    let err = stderr(&o);
    assert!(
        err.contains("note: '")
            && err.contains("small.png': estimated peak ")
            && err.contains(&format!("of 10 MiB, {why}")),
        "{err}"
    );
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(out.exists());
}

/// `--reference` plans for the reference path (what a GPU runs) against host memory: the same
/// image that runs whole on the fused kernels is tiled within the same budget.
#[test]
fn dry_run_says_which_path_and_memory_it_planned_for() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("a.png");
    write_image(&input, 1024, 1024, false);
    let run = |extra: &[&str]| {
        converse(tmp.path())
            .args([
                "restore",
                "--task",
                "denoise",
                "--device",
                "cpu",
                "--dry-run",
            ])
            .args(["--max-memory", "4G", "--weights", "/nonexistent"])
            .args(extra)
            .arg("-i")
            .arg(&input)
            .arg("-o")
            .arg(tmp.path().join("out.png"))
            .output()
            .unwrap()
    };
    let fused = run(&[]);
    let (line, err) = (stdout(&fused), stderr(&fused));
    assert!(line.contains("1024x1024 to 1024x1024, whole,"), "{line}");
    assert!(
        err.contains("\nplanned for: the fused CPU kernels on cpu, against host memory\n"),
        "{err}"
    );
    let reference = run(&["--reference"]);
    let (line, err) = (stdout(&reference), stderr(&reference));
    assert!(
        line.contains(" tiles (") && !line.contains("whole"),
        "{line}"
    );
    assert!(
        err.starts_with("memory budget: 4.0 GiB, --max-memory\n")
            && err.contains(
                "\nplanned for: the reference path (candle ops) on cpu, against host memory\n"
            ),
        "{err}"
    );
    assert_eq!(reference.status.code(), Some(0));
}
