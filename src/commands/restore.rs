//! `converse restore`: files and folders through a model, nothing lost on the way.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Context};
use candle_core::DType;

use crate::cli::RestoreArgs;
use crate::exit_codes::ExitCode;
use converse::files::{remove_stale_temps, same_file};
use converse::image_io::{self, Format};
use converse::memory::human;
use converse::progress::{self, RestoreBars};
use converse::restore::{plan, Job, Options, Restorer, Task};
use converse::ModelKind;

pub fn run(a: RestoreArgs) -> anyhow::Result<ExitCode> {
    match (a.task, a.scale) {
        (_, None) | (Task::Sr, Some(4)) => {}
        (Task::Sr, Some(s)) => {
            bail!("--scale {s} is not supported: the released SR model is x4 (--scale 4)")
        }
        (t, Some(_)) => bail!("--scale is for --task sr, not --task {}", t.name()),
    }
    if a.kernel.is_some() && a.task != Task::Deblur {
        bail!("--kernel is for --task deblur")
    }
    if a.gray && a.task != Task::Denoise {
        bail!("--gray is for --task denoise")
    }
    let kernel = a
        .kernel
        .as_deref()
        .map(|k| {
            converse::kernel::load(k)
                .and_then(|k| converse::restore::model_kernel(&k, a.kernel_flip))
        })
        .transpose()?;
    let jobs = plan(
        &a.input,
        &a.output,
        a.recursive,
        a.format.map(Format::extension),
    )?;
    if jobs.len() == 1
        && !a.input.is_dir()
        && a.format.is_none()
        && Format::from_path(&a.output).is_none()
    {
        bail!(
            "cannot tell the output format of '{}' from its extension: use .png, .jpg, .bmp, .tif, \
             .webp or --format",
            a.output.display()
        )
    }
    let options = Options {
        gray: a.gray,
        x8: a.x8,
        tile: a.tile,
        tile_overlap: a.tile_overlap,
        max_memory: a
            .max_memory
            .unwrap_or_else(converse::restore::default_max_memory),
    };
    let kind = a.task.model(kernel.is_some());
    if a.dry_run {
        return Ok(dry_run(&jobs, kind, &options, &a));
    }
    let device = a.model.device()?;
    let model = a.model.locator().load(kind, DType::F32, &device)?;
    let restorer = Restorer::new(model, a.task, kernel.as_ref(), device, options)?;
    // A run killed midway (SIGKILL, Ctrl-C) leaves its temporary file: remove those.
    let out_dirs: BTreeSet<&Path> = jobs.iter().filter_map(|j| j.output.parent()).collect();
    out_dirs.into_iter().for_each(remove_stale_temps);
    let bars = RestoreBars::new(jobs.len() as u64, a.quiet);
    let (mut done, mut skipped, mut failed) = (0, 0, vec![]);
    for job in &jobs {
        if job.output.exists() && !a.overwrite && !same_file(&job.input, &job.output) {
            bars.suspend(|| {
                eprintln!(
                    "note: skipping '{}': '{}' exists (--overwrite replaces it)",
                    job.input.display(),
                    job.output.display()
                )
            });
            skipped += 1;
            bars.done();
            continue;
        }
        match restore_one(&restorer, job, &a, &bars) {
            Ok(()) => done += 1,
            Err(e) => {
                bars.suspend(|| eprintln!("error: {e:#}"));
                failed.push((job.input.clone(), format!("{e:#}")));
            }
        }
        bars.done();
    }
    bars.finish();
    if jobs.len() > 1 || !failed.is_empty() || skipped > 0 {
        eprintln!(
            "{done} restored, {skipped} skipped, {} failed",
            failed.len()
        );
        for (p, e) in &failed {
            eprintln!(
                "  failed: '{}': {}",
                p.display(),
                e.lines().next().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::from_failures(failed.len()))
}

/// `--dry-run`: one line per input, from the image headers only.
fn dry_run(jobs: &[Job], kind: ModelKind, options: &Options, a: &RestoreArgs) -> ExitCode {
    let budget = human(options.max_memory);
    let mut failed = 0;
    for job in jobs {
        match image_io::probe(&job.input, a.max_pixels) {
            Ok((w, h, c)) => {
                let plan = options.plan(kind, (h, w, c));
                let s = kind.scale();
                let skip = if job.output.exists() && !a.overwrite {
                    " (the output exists: skipped without --overwrite)"
                } else {
                    ""
                };
                let over = match options.over_budget(&plan) {
                    Some(note) => format!("; {note}"),
                    None => String::new(),
                };
                println!(
                    "'{}' -> '{}': {kind}, {w}x{h} to {}x{}, {}, estimated peak {} of {budget}{over}{skip}",
                    job.input.display(),
                    job.output.display(),
                    w * s,
                    h * s,
                    plan.tiling,
                    human(plan.peak),
                );
            }
            Err(e) => {
                failed += 1;
                println!("'{}': error: {e:#}", job.input.display());
            }
        }
    }
    ExitCode::from_failures(failed)
}

fn restore_one(
    restorer: &Restorer,
    job: &Job,
    a: &RestoreArgs,
    bars: &RestoreBars,
) -> anyhow::Result<()> {
    if same_file(&job.input, &job.output) {
        bail!(
            "'{}': the output is the input, which is never overwritten",
            job.input.display()
        )
    }
    let format = a
        .format
        .or_else(|| Format::from_path(&job.output))
        .with_context(|| {
            format!(
                "cannot tell the output format of '{}'",
                job.output.display()
            )
        })?;
    let pic = image_io::read(&job.input, a.max_pixels)?;
    if pic.alpha.is_some() && !format.has_alpha() {
        bail!(
            "'{}' has an alpha channel, which JPEG cannot store: write a PNG (a .png output or \
             --format png)",
            job.input.display()
        )
    }
    if let Some(note) = restorer.over_budget(&pic) {
        bars.suspend(|| eprintln!("note: '{}': {note}", job.input.display()));
    }
    let steps = restorer.steps(&pic);
    let on_step = bars.start(job.input.display().to_string(), steps);
    let out = progress::with_steps(on_step, || restorer.restore(&pic))
        .with_context(|| format!("cannot restore '{}'", job.input.display()))?;
    if let Some(parent) = job.output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create '{}'", parent.display()))?;
    }
    image_io::write(&out, &job.output, format, a.quality)
}
