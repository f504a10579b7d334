//! `converse verify`: golden cases against their float64 answer.

use candle_core::{DType, Device};

use crate::cli::{Precision, VerifyArgs};
use crate::exit_codes::ExitCode;
use converse::ops::with_reference;
use converse::verify::{golden_files, max_abs_diff, CaseReport, Verifier};

pub fn run(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let device = a.model.device()?;
    let files = golden_files(&a.paths)?;
    let dtype = match a.precision {
        Precision::F32 => DType::F32,
        Precision::F64 => DType::F64,
    };
    let mut verifier = Verifier::new(a.model.locator(), device, dtype);
    // --against-cpu: the same cases on the CPU's reference path, output against output.
    let mut cpu = a
        .against_cpu
        .then(|| Verifier::new(a.model.locator(), Device::Cpu, dtype));
    let (mut passed, mut failed) = (0, 0);
    for f in &files {
        let mut against = |r: &CaseReport| -> anyhow::Result<String> {
            let (Some(cpu), Some(y)) = (cpu.as_mut(), &r.output) else {
                return Ok(String::new());
            };
            let theirs = with_reference(|| cpu.run(f))?;
            let Some(y_cpu) = &theirs.output else {
                return Ok(String::new());
            };
            Ok(format!(
                "  vs CPU reference {:.3e}",
                max_abs_diff(y, y_cpu)?
            ))
        };
        match verifier.run(f).and_then(|r| against(&r).map(|c| (r, c))) {
            Ok((r, cpu_diff)) => {
                let ok = r.passed();
                println!(
                    "{:<28} {:<18} max abs err {:.3e}  official f32 {:.3e}  bound {:.3e}  {}{cpu_diff}",
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
