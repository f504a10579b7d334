//! `converse convert`: official checkpoints to safetensors.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::cli::ConvertArgs;
use crate::exit_codes::ExitCode;
use converse::files::same_file;
use converse::models::ModelKind;

fn convert_one(input: &Path, output: &Path) -> anyhow::Result<()> {
    if same_file(input, output) {
        bail!(
            "the output '{}' is the input '{}', which is never overwritten",
            output.display(),
            input.display()
        )
    }
    let info = converse_convert::convert(
        input,
        output,
        &ModelKind::specs()?,
        converse_convert::Limits::from_env()?,
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
    if !a.all {
        if a.input.is_dir() {
            bail!(
                "'{}' is a folder: use --all to convert every .pth in it",
                a.input.display()
            )
        }
        let out = a
            .output
            .unwrap_or_else(|| a.input.with_extension("safetensors"));
        convert_one(&a.input, &out)?;
        return Ok(ExitCode::Success);
    }
    let out_dir = a.output.unwrap_or_else(|| a.input.clone());
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create '{}'", out_dir.display()))?;
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&a.input)
        .with_context(|| format!("cannot list '{}'", a.input.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "pth"))
        .collect();
    inputs.sort();
    if inputs.is_empty() {
        bail!("no .pth files in '{}'", a.input.display())
    }
    let mut failed = 0;
    for input in &inputs {
        let name = input.with_extension("safetensors");
        let out = out_dir.join(name.file_name().unwrap_or_default());
        if let Err(e) = convert_one(input, &out) {
            eprintln!("error: {e:#}");
            failed += 1;
        }
    }
    println!("{} converted, {failed} failed", inputs.len() - failed);
    Ok(ExitCode::from_failures(failed))
}
