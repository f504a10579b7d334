//! `converse degrade`: degraded inputs made as `eval` makes them.

use anyhow::bail;

use super::degradation;
use crate::cli::DegradeArgs;
use crate::exit_codes::{catch_panic, ExitCode};
use converse::eval::protocol::{read_u8, to_u8};
use converse::eval::run::save_u8;
use converse::files::{self, Existing};
use converse::image_io::Format;
use converse::models::Task;
use converse::plan;

pub fn run(a: DegradeArgs) -> anyhow::Result<ExitCode> {
    let kernel = a
        .kernel
        .as_deref()
        .map(converse::kernel::load)
        .transpose()?;
    if a.task != Task::Deblur && kernel.is_some() {
        bail!("--kernel is for --task deblur")
    }
    let deg = degradation(a.task, a.sigma, a.jpeg, kernel.as_ref())?;
    let folder = a.input.is_dir();
    if !folder && Format::from_path(&a.output).is_none() {
        bail!(
            "cannot tell the output format of '{}' from its extension: use .png, .jpg, .bmp, \
             .tif or .webp",
            a.output.display()
        )
    }
    let also_read = super::kernel_files(&a.kernel);
    let plan = plan::plan(&plan::Request {
        input: &a.input,
        output: &a.output,
        recursive: true,
        inputs: plan::Inputs::Images,
        extension: folder.then_some("png"),
        also_read: &also_read,
    })?;
    super::prepare(&plan)?;
    let existing = Existing::with_overwrite(a.overwrite);
    let mut failed = 0;
    for pair in &plan.pairs {
        let (input, output) = (&pair.input, &pair.output);
        if output.exists() && !a.overwrite {
            eprintln!(
                "note: skipping '{}': '{}' exists (--overwrite replaces it)",
                input.display(),
                output.display()
            );
            continue;
        }
        let result = catch_panic(|| {
            plan::check_name(output)?;
            let img = read_u8(input, deg.channels())?;
            let d = deg.apply(&img, a.seed)?;
            let format = Format::from_path(output).unwrap_or(Format::Png);
            plan::check_output(output, format, (d.input.width, d.input.height))?;
            save_u8(&to_u8(&d.input), output, existing)
        });
        match result {
            Ok(()) => println!("{} -> {}", input.display(), output.display()),
            Err(e) if files::already_exists(&e) => eprintln!(
                "note: skipping '{}': '{}' was written meanwhile by another run",
                input.display(),
                output.display()
            ),
            Err(e) => {
                eprintln!("error: {}", crate::exit_codes::message(&e));
                failed += 1;
            }
        }
    }
    Ok(ExitCode::from_failures(failed))
}
