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
use converse::report::{Report, Status};
use converse::restore::{plan, Job, Options, Restorer, Task};
use converse::shard::{Selection, Shard};
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
    let (max_memory, budget_source) = match a.max_memory {
        Some(b) => (b, "--max-memory".to_owned()),
        None => converse::resources::memory_budget(),
    };
    let options = Options {
        gray: a.gray,
        x8: a.x8,
        tile: a.tile,
        tile_overlap: a.tile_overlap,
        max_memory,
    };
    let kind = a.task.model(kernel.is_some());
    // --shard: the split is over every image, done or not, so every task (and every rerun)
    // maps each image to the same shard.
    let shard = a.shard.map(|s| s.resolve()).transpose()?;
    let (jobs, shard_note) = match shard {
        Some((s, source)) => {
            let sel = shard_jobs(jobs, s, kind, &a);
            let note = format!(
                "shard {s} ({source}): {} of {} images, {:.1}% of the estimated work",
                sel.items.len(),
                sel.total_items,
                sel.percent()
            );
            (sel.items, Some((s, note)))
        }
        None => (jobs, None),
    };
    if a.dry_run {
        let threads = converse::resources::threads();
        eprintln!("memory budget: {}, {budget_source}", human(max_memory));
        eprintln!("threads: {}, {}", threads.0, threads.1);
        if let Some((_, note)) = &shard_note {
            eprintln!("{note}");
        }
        return Ok(dry_run(&jobs, kind, &options, &a));
    }
    if let Some((_, note)) = &shard_note {
        if !a.quiet {
            eprintln!("{note}");
        }
    }
    let report = a
        .report
        .as_deref()
        .map(|p| Report::open(p, shard_note.as_ref().map(|(s, _)| *s)))
        .transpose()?;
    let mut report_failed = false;
    let mut record = |job: &Job, status, error: Option<&str>, seconds| {
        if let Some(r) = &report {
            if let Err(e) = r.record(&job.input, &job.output, status, error, seconds) {
                eprintln!("error: {e:#}");
                report_failed = true;
            }
        }
    };
    if jobs.is_empty() {
        return Ok(ExitCode::Success);
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
            record(job, Status::Skipped, None, 0.0);
            bars.done();
            continue;
        }
        let start = std::time::Instant::now();
        match restore_one(&restorer, job, &a, &bars) {
            Ok(()) => {
                done += 1;
                record(job, Status::Restored, None, start.elapsed().as_secs_f64());
            }
            Err(e) => {
                bars.suspend(|| eprintln!("error: {e:#}"));
                let e = format!("{e:#}");
                record(job, Status::Failed, Some(&e), start.elapsed().as_secs_f64());
                failed.push((job.input.clone(), e));
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
    Ok(ExitCode::from_failures(
        failed.len() + report_failed as usize,
    ))
}

/// The jobs of `shard`, split over all `jobs` by the work their headers estimate (an unreadable
/// header counts as the least work; the image fails in its shard).
fn shard_jobs(jobs: Vec<Job>, shard: Shard, kind: ModelKind, a: &RestoreArgs) -> Selection<Job> {
    let work: Vec<u64> = jobs
        .iter()
        .map(|j| {
            image_io::probe(&j.input, a.max_pixels).map_or(1, |(w, h, c)| {
                converse::shard::work(kind, (h, w, c), a.gray, a.x8)
            })
        })
        .collect();
    converse::shard::select(jobs, &work, shard)
}

/// `--dry-run`: one line per input, from the image headers only; then (on stderr) the images
/// whose outputs are missing: the work that remains.
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
    let remaining: Vec<&Job> = jobs.iter().filter(|j| !j.output.exists()).collect();
    eprintln!(
        "remaining: {} of {} images have no output",
        remaining.len(),
        jobs.len()
    );
    for job in remaining {
        eprintln!("  '{}'", job.input.display());
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
