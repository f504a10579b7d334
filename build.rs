//! Links cuFFT for the `cuda` feature (cudarc's build script, in candle's dynamic-linking mode,
//! links the other CUDA libraries but not cuFFT) and records the compute capability the kernels
//! are built for. Does nothing without the feature.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo:rustc-link-lib=dylib=cufft");
    // Where scripts/cuda-build keeps its link stubs (never an rpath: only the linker sees them).
    println!("cargo:rerun-if-env-changed=CONVERSE_CUDA_LINK_DIR");
    if let Some(dir) = std::env::var_os("CONVERSE_CUDA_LINK_DIR") {
        println!("cargo:rustc-link-search=native={}", dir.to_string_lossy());
    }
    // candle-kernels builds its PTX for $CUDA_COMPUTE_CAP (else the local GPU's): device.rs
    // refuses older GPUs with a clear error instead of a failed kernel load.
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_default();
    println!("cargo:rustc-env=CONVERSE_CUDA_COMPUTE_CAP={cap}");
}
