//! Every golden case of `../shared/golden` against its float64 answer `y64`, and every gradient
//! case of `../shared/golden_grad` against the official float64 gradients.

mod common;

use candle_core::{DType, Device};
use converse::verify::{golden_files, Verifier};
use converse::weights::WeightsLocator;

fn verifier(shared: &std::path::Path, cache: &std::path::Path, dtype: DType) -> Verifier {
    let locator = WeightsLocator {
        dirs: vec![(shared.join("weights"), "--weights".into())],
        cache: Some(cache.to_owned()),
        download: false,
        progress: None,
    };
    Verifier::new(locator, Device::Cpu, dtype)
}

#[test]
fn f32_meets_the_bound_on_every_case() {
    f32_meets_the_bound("fused");
}

/// The reference backend, the composed candle ops a GPU runs, here on the CPU in f32 (with the
/// CPU FFT): the device path's own code, tested where CI has no GPU.
#[test]
fn f32_reference_backend_meets_the_bound_on_every_case() {
    converse::ops::with_reference(|| f32_meets_the_bound("reference"));
}

fn f32_meets_the_bound(backend: &str) {
    let Some(shared) = common::shared() else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let mut v = verifier(&shared, cache.path(), DType::F32);
    let files = golden_files(&[shared.join("golden")]).unwrap();
    let (mut ops, mut models) = (0, 0);
    for f in &files {
        let r = v.run(f).unwrap();
        println!(
            "{backend:<9} {:<28} ours {:.3e}  official f32 {:.3e}  bound {:.3e}",
            r.name,
            r.max_abs_err,
            r.official,
            r.bound()
        );
        assert!(
            r.passed(),
            "{backend} {}: {:.3e} > {:.3e}",
            r.name,
            r.max_abs_err,
            r.bound()
        );
        if r.what == "converse2d" {
            ops += 1
        } else {
            models += 1
        }
    }
    assert!(
        ops >= 9 && models >= 8,
        "{ops} operator and {models} model cases"
    );
}

/// In f64 the implementation must reproduce `y64` to rounding: this checks the maths itself.
#[test]
fn f64_reproduces_y64() {
    let Some(shared) = common::shared() else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let mut v = verifier(&shared, cache.path(), DType::F64);
    for f in golden_files(&[shared.join("golden")]).unwrap() {
        let r = v.run(&f).unwrap();
        println!("{:<28} f64 {:.3e}", r.name, r.max_abs_err);
        assert!(r.max_abs_err < 1e-8, "{}: {:.3e}", r.name, r.max_abs_err);
    }
}

/// The gradients of `sum(y * g)` through the operator (every padding mode, scales 1, 2 and 4)
/// and through whole released models, to the input and to every parameter by its state-dict
/// name: in f32 within `max(2 x official f32 error, 1e-5)` per tensor, in f64 within
/// `1e-8 x max(1, max |tensor|)`.
#[test]
fn gradients_meet_their_bounds_in_f32() {
    gradients_meet_their_bounds(DType::F32);
}

#[test]
fn gradients_meet_their_bounds_in_f64() {
    gradients_meet_their_bounds(DType::F64);
}

fn gradients_meet_their_bounds(dtype: DType) {
    let Some(shared) = common::shared() else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let files = golden_files(&[shared.join("golden_grad")]).unwrap();
    {
        let mut v = verifier(&shared, cache.path(), dtype);
        let (mut ops, mut models) = (0, 0);
        for f in &files {
            let r = v.run(f).unwrap();
            println!(
                "{dtype:?} {:<28} {:<40} err {:.3e}  bound {:.3e}",
                r.name,
                r.what,
                r.max_abs_err,
                r.bound()
            );
            assert!(
                r.passed(),
                "{dtype:?} {} {}: {:.3e} > {:.3e}",
                r.name,
                r.what,
                r.max_abs_err,
                r.bound()
            );
            if r.what.starts_with("converse2d") {
                ops += 1
            } else {
                models += 1
            }
        }
        assert!(
            ops >= 6 && models >= 2,
            "{ops} operator and {models} model cases"
        );
    }
}
