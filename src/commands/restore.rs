//! `converse restore`: files and folders through a model, nothing lost on the way.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::DType;

use crate::cli::RestoreArgs;
use crate::exit_codes::{catch_panic, ExitCode};
use converse::files::{self, Existing};
use converse::image_io::{self, Format};
use converse::memory::human;
use converse::plan::{self, Pair};
use converse::progress::{self, RestoreBars};
use converse::restore::{Options, Restorer, Task};
use converse::ModelKind;

/// How one image ended.
enum Outcome {
    Restored,
    /// Another run wrote the output while this one computed it: theirs is kept.
    WrittenMeanwhile,
}

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
    // A kernel file is read by the run too: no output may replace it.
    let also_read: Vec<PathBuf> = a
        .kernel
        .iter()
        .map(PathBuf::from)
        .filter(|k| k.is_file())
        .collect();
    let plan = plan::plan(&plan::Request {
        input: &a.input,
        output: &a.output,
        recursive: a.recursive,
        inputs: plan::Inputs::Images,
        extension: a.format.map(Format::extension),
        also_read: &also_read,
    })?;
    for note in &plan.notes {
        eprintln!("note: {note}");
    }
    let jobs = plan.pairs;
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
        return dry_run(&jobs, kind, &options, &a);
    }
    plan::check_writable(jobs.iter().map(|j| j.output.as_path()))?;
    let device = a.model.device()?;
    let model = a.model.locator().load(kind, DType::F32, &device)?;
    let restorer = Restorer::new(model, a.task, kernel.as_ref(), device, options)?;
    // A run killed midway (SIGKILL, Ctrl-C) leaves its temporary file: remove those.
    files::sweep_folders(jobs.iter().map(|j| j.output.as_path()));
    let bars = RestoreBars::new(jobs.len() as u64, a.quiet);
    let (mut done, mut skipped, mut failed) = (0, 0, vec![]);
    for job in &jobs {
        if job.output.exists() && !a.overwrite {
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
        match catch_panic(|| restore_one(&restorer, job, &a, &bars)) {
            Ok(Outcome::Restored) => done += 1,
            Ok(Outcome::WrittenMeanwhile) => {
                bars.suspend(|| {
                    eprintln!(
                        "note: skipping '{}': '{}' was written meanwhile by another run",
                        job.input.display(),
                        job.output.display()
                    )
                });
                skipped += 1;
            }
            Err(e) => {
                bars.suspend(|| eprintln!("error: {}", crate::exit_codes::message(&e)));
                failed.push((job.input.clone(), crate::exit_codes::message(&e)));
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

/// `--dry-run`: one line per input, from the image headers only, with what would fail.
fn dry_run(
    jobs: &[Pair],
    kind: ModelKind,
    options: &Options,
    a: &RestoreArgs,
) -> anyhow::Result<ExitCode> {
    plan::check_writable(jobs.iter().map(|j| j.output.as_path()))?;
    let budget = human(options.max_memory);
    let mut failed = 0;
    for job in jobs {
        let line = (|| -> anyhow::Result<String> {
            let (w, h, c) = image_io::probe(&job.input, a.max_pixels)?;
            let plan = options.plan(kind, (h, w, c));
            let s = kind.scale();
            plan::check_output(&job.output, output_format(a, &job.output)?, (w * s, h * s))?;
            let skip = if job.output.exists() && !a.overwrite {
                " (the output exists: skipped without --overwrite)"
            } else {
                ""
            };
            let over = match options.over_budget(&plan) {
                Some(note) => format!("; {note}"),
                None => String::new(),
            };
            Ok(format!(
                "'{}' -> '{}': {kind}, {w}x{h} to {}x{}, {}, estimated peak {} of {budget}{over}{skip}",
                job.input.display(),
                job.output.display(),
                w * s,
                h * s,
                plan.tiling,
                human(plan.peak),
            ))
        })();
        match line {
            Ok(line) => println!("{line}"),
            Err(e) => {
                failed += 1;
                println!(
                    "'{}': error: {}",
                    job.input.display(),
                    crate::exit_codes::message(&e)
                );
            }
        }
    }
    Ok(ExitCode::from_failures(failed))
}

/// The format `output` is written in: `--format`, else its extension.
fn output_format(a: &RestoreArgs, output: &Path) -> anyhow::Result<Format> {
    a.format
        .or_else(|| Format::from_path(output))
        .with_context(|| format!("cannot tell the output format of '{}'", output.display()))
}

fn restore_one(
    restorer: &Restorer,
    job: &Pair,
    a: &RestoreArgs,
    bars: &RestoreBars,
) -> anyhow::Result<Outcome> {
    let format = output_format(a, &job.output)?;
    let pic = image_io::read(&job.input, a.max_pixels)?;
    if pic.alpha.is_some() && !format.has_alpha() {
        bail!(
            "'{}' has an alpha channel, which JPEG cannot store: write a PNG (a .png output or \
             --format png)",
            job.input.display()
        )
    }
    let s = a.task.scale();
    plan::check_output(&job.output, format, (pic.width * s, pic.height * s))?;
    if let Some(note) = restorer.over_budget(&pic) {
        bars.suspend(|| eprintln!("note: '{}': {note}", job.input.display()));
    }
    let steps = restorer.steps(&pic);
    let on_step = bars.start(job.input.display().to_string(), steps);
    let out = progress::with_steps(on_step, || restorer.restore(&pic))
        .with_context(|| format!("cannot restore '{}'", job.input.display()))?;
    let existing = if a.overwrite {
        Existing::Replace
    } else {
        Existing::Keep
    };
    match image_io::write(&out, &job.output, format, a.quality, existing) {
        Err(e) if files::already_exists(&e) => Ok(Outcome::WrittenMeanwhile),
        r => r.map(|()| Outcome::Restored),
    }
}
