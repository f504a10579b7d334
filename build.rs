//! For the `cuda` feature: links the CUDA runtime statically and records the compute capability
//! the kernels are built for. Does nothing without the feature.
//!
//! The CUDA libraries (libcuda, cuBLAS, cuRAND, cuFFT) are not linked at all: cudarc opens them
//! at run time (`dynamic-loading`, see vendor/candle-core). The one library left is the CUDA
//! runtime, which candle-kernels' statically built kernels call and which its build script asks
//! for as `-lcudart`: a linker script named `libcudart.so` in a folder searched first turns that
//! into `libcudart_static.a`, so the binary needs no libcudart either (the static runtime opens
//! libcuda itself, and only if those kernels ever run).

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let Some(cudart) = cudart_static() else {
        panic!(
            "no libcudart_static.a under $CUDA_HOME, $CUDA_PATH or beside nvcc on $PATH \
             (lib64, lib, targets/x86_64-linux/lib): scripts/cuda-build sets up a toolkit"
        );
    };
    let dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("cudart");
    std::fs::create_dir_all(&dir).expect("create OUT_DIR/cudart");
    // GNU ld reads a text file where it expects a library as a linker script.
    std::fs::write(
        dir.join("libcudart.so"),
        format!("INPUT({} -ldl -lrt -lpthread)\n", cudart.display()),
    )
    .expect("write the libcudart.so linker script");
    println!("cargo:rustc-link-search=native={}", dir.display());
    // candle-kernels builds its PTX for $CUDA_COMPUTE_CAP (else the local GPU's): device.rs
    // refuses older GPUs with a clear error instead of a failed kernel load.
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_default();
    println!("cargo:rustc-env=CONVERSE_CUDA_COMPUTE_CAP={cap}");
}

/// The toolkit's static CUDA runtime: under `$CUDA_HOME`, `$CUDA_PATH`, or the folder above the
/// `nvcc` on `$PATH`.
fn cudart_static() -> Option<PathBuf> {
    let nvcc_root = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|d| d.join("nvcc").is_file())
            .and_then(|d| d.parent().map(Path::to_path_buf))
    });
    ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(|v| std::env::var_os(v).map(PathBuf::from))
        .chain(nvcc_root)
        .flat_map(|root| ["lib64", "lib", "targets/x86_64-linux/lib"].map(|d| root.join(d)))
        .map(|d| d.join("libcudart_static.a"))
        .find(|f| f.is_file())
}
