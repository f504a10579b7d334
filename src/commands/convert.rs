//! `converse convert`: official checkpoints to safetensors.

use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::cli::ConvertArgs;
use crate::exit_codes::{catch_panic, ExitCode};
use converse::files::{self, Existing};
use converse::models::ModelKind;
use converse::plan;

fn convert_one(input: &Path, output: &Path, existing: Existing) -> anyhow::Result<()> {
    let info = converse_convert::convert(
        input,
        output,
        &ModelKind::specs()?,
        converse_convert::Limits::from_env()?,
        existing,
    )?;
    println!(
        "{} -> {}: {} ({} parameters)",
        input.display(),
        output.display(),
        info.model,
        info.num_parameters
    );
    Ok(())
}

pub fn run(a: ConvertArgs) -> anyhow::Result<ExitCode> {
    if !a.all && a.input.is_dir() {
        bail!(
            "'{}' is a folder: use --all to convert every .pth in it",
            a.input.display()
        )
    }
    if a.all && !a.input.is_dir() {
        bail!(
            "--all takes a folder, and '{}' is not one",
            a.input.display()
        )
    }
    let output: PathBuf = match (&a.output, a.all) {
        (Some(o), _) => o.clone(),
        (None, true) => a.input.clone(),
        (None, false) => a.input.with_extension("safetensors"),
    };
    let plan = plan::plan(&plan::Request {
        input: &a.input,
        output: &output,
        recursive: false,
        inputs: plan::Inputs::Checkpoints,
        extension: Some("safetensors"),
        also_read: &[],
    })?;
    super::prepare(&plan)?;
    let existing = Existing::with_overwrite(a.overwrite);
    let (mut converted, mut failed) = (0, 0);
    for pair in &plan.pairs {
        if pair.output.exists() && !a.overwrite {
            eprintln!(
                "note: skipping '{}': '{}' exists (--overwrite replaces it)",
                pair.input.display(),
                pair.output.display()
            );
            continue;
        }
        match catch_panic(|| convert_one(&pair.input, &pair.output, existing)) {
            Ok(()) => converted += 1,
            Err(e) if files::already_exists(&e) => eprintln!(
                "note: skipping '{}': '{}' was written meanwhile by another run",
                pair.input.display(),
                pair.output.display()
            ),
            // One file given: its failure is the run's (a bad checkpoint is a set-up error).
            Err(e) if !a.all => return Err(e),
            Err(e) => {
                eprintln!("error: {}", crate::exit_codes::message(&e));
                failed += 1;
            }
        }
    }
    if a.all {
        println!("{converted} converted, {failed} failed");
    }
    Ok(ExitCode::from_failures(failed))
}
