//! `--device`: what each build does with it on a machine without a GPU.
//!
//! A CPU build refuses `--device cuda` (exit 2). A CUDA build run by `scripts/cuda-build --test`
//! (the stand-in libraries, `$CONVERSE_CUDA_NOGPU` set) starts, runs on the CPU when asked or by
//! default, and refuses `--device cuda` with exit 2 and a clear message: with the stand-ins (no
//! GPU), with no CUDA library at all, with one library missing, and with a driver too old (the
//! stand-in libcuda's version set by `$CONVERSE_STANDIN_DRIVER_VERSION`). On a machine with a
//! real GPU the CUDA-build cases are skipped (scripts/gpu-check.sh covers that machine).

mod common;

use std::path::Path;

use common::{converse, shared, stderr};

/// `converse restore --task denoise` of the golden input with `extra` arguments.
fn denoise(shared: &Path, tmp: &Path, out: &str, extra: &[&str]) -> (Option<i32>, String) {
    denoise_with(shared, tmp, out, extra, &[])
}

/// [`denoise`] with environment variables set.
fn denoise_with(
    shared: &Path,
    tmp: &Path,
    out: &str,
    extra: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> (Option<i32>, String) {
    let o = converse(tmp)
        .envs(env.iter().copied())
        .args(["restore", "--task", "denoise", "-q", "--weights"])
        .arg(shared.join("weights"))
        .arg("-i")
        .arg(shared.join("golden/cli/denoise_in.png"))
        .arg("-o")
        .arg(tmp.join(out))
        .args(extra)
        .output()
        .unwrap();
    (o.status.code(), stderr(&o))
}

#[cfg(not(feature = "cuda"))]
#[test]
fn a_cpu_build_refuses_cuda_with_exit_2() {
    let Some(shared) = shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    for dev in ["cuda", "cuda:1"] {
        let (code, err) = denoise(&shared, tmp.path(), "o.png", &["--device", dev]);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("no CUDA support") && err.contains("--features cuda"),
            "{err}"
        );
        assert!(!tmp.path().join("o.png").exists());
    }
}

/// Under `scripts/cuda-build --test`, or skipped with a note.
#[cfg(feature = "cuda")]
fn nogpu() -> bool {
    let on = std::env::var_os("CONVERSE_CUDA_NOGPU").is_some();
    if !on {
        eprintln!("skipped: not under scripts/cuda-build --test (CONVERSE_CUDA_NOGPU unset)");
    }
    on
}

#[cfg(feature = "cuda")]
#[test]
fn the_cuda_binary_starts_without_a_gpu() {
    if !nogpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let o = converse(tmp.path()).arg("--help").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[cfg(feature = "cuda")]
#[test]
fn without_a_gpu_cuda_is_refused_with_exit_2_and_the_cpu_runs() {
    if !nogpu() {
        return;
    }
    let Some(shared) = shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    for dev in ["cuda", "cuda:0", "cuda:3"] {
        let (code, err) = denoise(&shared, tmp.path(), "cuda.png", &["--device", dev]);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("no CUDA GPU found") && err.contains("--device cpu"),
            "{err}"
        );
        assert!(!tmp.path().join("cuda.png").exists());
    }
    // --device cpu works, and the default falls back to the CPU, quietly, with the same result.
    let (code, err) = denoise(&shared, tmp.path(), "cpu.png", &["--device", "cpu"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = denoise(&shared, tmp.path(), "default.png", &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("note:"), "{err}");
    let read = |f: &str| std::fs::read(tmp.path().join(f)).unwrap();
    assert_eq!(read("cpu.png"), read("default.png"));
}

/// What the CUDA build needs, as the messages name it.
#[cfg(feature = "cuda")]
const NEEDS: &str = "this build needs CUDA 13.0 or newer (driver 580 or later)";

/// The folder of the stand-in libraries: the one on `$LD_LIBRARY_PATH` (set by
/// `scripts/cuda-build --test`; cargo puts build-script folders before it) that holds libcuda.
#[cfg(feature = "cuda")]
fn standins() -> std::path::PathBuf {
    let path = std::env::var_os("LD_LIBRARY_PATH").expect("LD_LIBRARY_PATH");
    std::env::split_paths(&path)
        .find(|d| d.join("libcuda.so.1").is_file())
        .unwrap_or_else(|| panic!("no libcuda.so.1 on LD_LIBRARY_PATH {path:?}"))
}

/// `--device cpu`, the default and `--device cuda` with `LD_LIBRARY_PATH` set to `libs` (and
/// `env`): the CPU runs (the same output both ways), the default says `CUDA unavailable: {why};
/// running on the CPU` in one line and nothing else, `--device cuda` fails with exit 2 saying
/// `CUDA unavailable: {why}; use --device cpu` and writes nothing.
#[cfg(feature = "cuda")]
fn unavailable(libs: &Path, env: &[(&str, &std::ffi::OsStr)], why: &str) {
    let Some(shared) = shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut env = env.to_vec();
    env.push(("LD_LIBRARY_PATH", libs.as_os_str()));
    let run = |out, extra: &[&str]| denoise_with(&shared, tmp.path(), out, extra, &env);
    let (code, err) = run("cpu.png", &["--device", "cpu"]);
    assert_eq!((code, err.as_str()), (Some(0), ""));
    let (code, err) = run("default.png", &[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        err,
        format!("CUDA unavailable: {why}; running on the CPU\n")
    );
    let read = |f: &str| std::fs::read(tmp.path().join(f)).unwrap();
    assert_eq!(read("cpu.png"), read("default.png"));
    let (code, err) = run("cuda.png", &["--device", "cuda"]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(
        err,
        format!("error: CUDA unavailable: {why}; use --device cpu\n")
    );
    assert!(!tmp.path().join("cuda.png").exists());
}

#[cfg(feature = "cuda")]
#[test]
fn without_any_cuda_library_the_binary_starts_and_says_what_is_missing() {
    if !nogpu() {
        return;
    }
    let none = tempfile::tempdir().unwrap();
    unavailable(
        none.path(),
        &[],
        &format!(
            "no NVIDIA driver found (libcuda.so.1 did not load), {NEEDS}; libcublas.so.13 (or \
             .12), libcurand.so.10, libcufft.so.12 (or .11) not found (pip install nvidia-cublas \
             nvidia-curand nvidia-cufft, or the CUDA toolkit's libraries, on LD_LIBRARY_PATH)"
        ),
    );
    // `info` shows the probe.
    let tmp = tempfile::tempdir().unwrap();
    let o = converse(tmp.path())
        .arg("info")
        .env("LD_LIBRARY_PATH", none.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = common::stdout(&o);
    assert!(
        out.contains("\ncuda driver    not found (libcuda.so.1)\n"),
        "{out}"
    );
    assert!(
        out.contains("\n  cuFFT             libcufft.so.12 (or .11)   not found\n"),
        "{out}"
    );
}

#[cfg(feature = "cuda")]
#[test]
fn a_missing_library_is_named() {
    if !nogpu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let from = standins();
    for lib in [
        "libcuda.so.1",
        "libcublas.so.13",
        "libcublasLt.so.13",
        "libcurand.so.10",
    ] {
        std::os::unix::fs::symlink(from.join(lib), dir.path().join(lib)).unwrap();
    }
    unavailable(
        dir.path(),
        &[],
        &format!(
            "the NVIDIA driver supports CUDA 13.0, {NEEDS}; libcufft.so.12 (or .11) not found \
             (pip install nvidia-cufft, or the CUDA toolkit's libraries, on LD_LIBRARY_PATH)"
        ),
    );
}

#[cfg(feature = "cuda")]
#[test]
fn a_driver_too_old_is_named_with_the_version_needed() {
    if !nogpu() {
        return;
    }
    unavailable(
        &standins(),
        &[("CONVERSE_STANDIN_DRIVER_VERSION", "12020".as_ref())],
        &format!("the NVIDIA driver supports CUDA 12.2, {NEEDS}"),
    );
    // With the libraries and a new enough driver: `info` names what opened.
    let tmp = tempfile::tempdir().unwrap();
    let o = converse(tmp.path()).arg("info").output().unwrap();
    let out = common::stdout(&o);
    assert!(
        out.contains("\ncuda driver    CUDA 13.0 (libcuda.so.1)\n"),
        "{out}"
    );
    assert!(
        out.contains("\n  cuBLAS            libcublas.so.13 (or .12)  libcublas.so.13\n"),
        "{out}"
    );
}
