//! `converse degrade`: degraded inputs made as `eval` makes them.

use std::path::PathBuf;

use anyhow::bail;

use super::degradation;
use crate::cli::DegradeArgs;
use crate::exit_codes::ExitCode;
use converse::eval::protocol::{read_u8, to_u8};
use converse::eval::run::save_u8;
use converse::files::same_file;
use converse::image_io::list_images;
use converse::restore::Task;

pub fn run(a: DegradeArgs) -> anyhow::Result<ExitCode> {
    let kernel = a
        .kernel
        .as_deref()
        .map(converse::kernel::load)
        .transpose()?;
    if a.task != Task::Deblur && kernel.is_some() {
        bail!("--kernel is for --task deblur")
    }
    let deg = degradation(a.task, a.sigma, kernel.as_ref())?;
    let jobs: Vec<(PathBuf, PathBuf)> = if a.input.is_dir() {
        if a.output.is_file() {
            bail!(
                "the input is a folder, so the output '{}' must be a folder",
                a.output.display()
            )
        }
        let images = list_images(&a.input, true)?;
        if images.is_empty() {
            bail!("no images in '{}'", a.input.display())
        }
        images
            .into_iter()
            .map(|p| {
                let rel = p.strip_prefix(&a.input).unwrap_or(&p).with_extension("png");
                let out = a.output.join(rel);
                (p, out)
            })
            .collect()
    } else {
        if a.output.is_dir() {
            bail!(
                "the input is a file, so the output '{}' must be a file",
                a.output.display()
            )
        }
        vec![(a.input.clone(), a.output.clone())]
    };
    let mut failed = 0;
    for (input, output) in &jobs {
        let result = (|| -> anyhow::Result<()> {
            if same_file(input, output) {
                bail!("the output '{}' is the input", output.display())
            }
            let img = read_u8(input, deg.channels())?;
            let d = deg.apply(&img, a.seed)?;
            save_u8(&to_u8(&d.input), output)
        })();
        match result {
            Ok(()) => println!("{} -> {}", input.display(), output.display()),
            Err(e) => {
                eprintln!("error: {e:#}");
                failed += 1;
            }
        }
    }
    Ok(ExitCode::from_failures(failed))
}
