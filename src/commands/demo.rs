//! `converse demo`: every model on a synthetic image.

use anyhow::bail;

use crate::cli::DemoArgs;
use crate::exit_codes::ExitCode;
use converse::files::Existing;

pub fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    if a.output.exists() && !a.output.is_dir() {
        bail!(
            "the output '{}' is a file: the demo writes its panels into a folder",
            a.output.display()
        )
    }
    let panels: Vec<_> = converse::demo::FILES
        .iter()
        .map(|f| a.output.join(f))
        .collect();
    converse::plan::check_writable(panels.iter().map(|p| p.as_path()))?;
    converse::files::sweep_folders(panels.iter().map(|p| p.as_path()));
    let existing = Existing::with_overwrite(a.overwrite);
    let device = a.model.device()?;
    println!(
        "{:<14} {:>12} {:>12}  panel (degraded | restored | clean)",
        "task", "PSNR before", "PSNR after"
    );
    // The panels are computed now: a failure from here on is the run's (1), not a set-up error.
    let ran = converse::demo::run(&a.model.locator(), &device, &a.output, existing, |r| {
        println!(
            "{:<14} {:>9.2} dB {:>9.2} dB  {}",
            r.name,
            r.psnr_before,
            r.psnr_after,
            r.file.display()
        );
    });
    if let Err(e) = ran {
        eprintln!("error: {}", crate::exit_codes::message(&e));
        return Ok(ExitCode::SomeFailed);
    }
    Ok(ExitCode::Success)
}
