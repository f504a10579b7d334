//! `converse verify`: golden cases against their float64 answer.

use candle_core::DType;

use crate::cli::{Precision, VerifyArgs};
use crate::exit_codes::ExitCode;
use converse::verify::{golden_files, Verifier};

pub fn run(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let device = a.model.device()?;
    let files = golden_files(&a.paths)?;
    let dtype = match a.precision {
        Precision::F32 => DType::F32,
        Precision::F64 => DType::F64,
    };
    let mut verifier = Verifier::new(a.model.locator(), device, dtype);
    let (mut passed, mut failed) = (0, 0);
    for f in &files {
        match verifier.run(f) {
            Ok(r) => {
                let ok = r.passed();
                println!(
                    "{:<28} {:<18} max abs err {:.3e}  official f32 {:.3e}  bound {:.3e}  {}",
                    r.name,
                    r.what,
                    r.max_abs_err,
                    r.official,
                    r.bound(),
                    if ok { "pass" } else { "FAIL" }
                );
                if ok {
                    passed += 1
                } else {
                    failed += 1
                }
            }
            Err(e) => {
                println!(
                    "{:<28} error: {}",
                    f.display(),
                    crate::exit_codes::message(&e)
                );
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(ExitCode::from_failures(failed))
}
