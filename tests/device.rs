//! `--device`: what each build does with it on a machine without a GPU.
//!
//! A CPU build refuses `--device cuda` (exit 2). A CUDA build run by `scripts/cuda-build --test`
//! (the stand-in libcuda, `$CONVERSE_CUDA_NOGPU` set) starts, runs on the CPU when asked or by
//! default, and refuses `--device cuda` with exit 2 and a clear message. On a machine with a real
//! GPU the CUDA-build cases are skipped (scripts/gpu-check.sh covers that machine).

mod common;

use std::path::Path;

use common::{converse, shared, stderr};

/// `converse restore --task denoise` of the golden input with `extra` arguments.
fn denoise(shared: &Path, tmp: &Path, out: &str, extra: &[&str]) -> (Option<i32>, String) {
    let o = converse(tmp)
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
