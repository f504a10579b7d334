//! `converse demo`: every model on a synthetic image.

use crate::cli::DemoArgs;
use crate::exit_codes::ExitCode;

pub fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    let device = a.model.device()?;
    println!(
        "{:<14} {:>12} {:>12}  panel (degraded | restored | clean)",
        "task", "PSNR before", "PSNR after"
    );
    converse::demo::run(&a.model.locator(), &device, &a.output, |r| {
        println!(
            "{:<14} {:>9.2} dB {:>9.2} dB  {}",
            r.name,
            r.psnr_before,
            r.psnr_after,
            r.file.display()
        );
    })?;
    Ok(ExitCode::Success)
}
