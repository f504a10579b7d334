//! `converse restore`: files and folders through a model, nothing lost on the way.

use std::path::Path;

use anyhow::{bail, Context};

use super::progress::RestoreBars;
use crate::cli::RestoreArgs;
use crate::exit_codes::{catch_panic, ExitCode};
use converse::files::{self, Existing};
use converse::image_io::{self, Format};
use converse::memory::human;
use converse::models::Task;
use converse::noise::Rescale;
use converse::ops::Backend;
use converse::plan::{self, Pair};
use converse::report::{Report, Status};
use converse::restore::{Options, Restorer};
use converse::shard::{Selection, Shard};
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
    if a.sigma.is_some() && a.task != Task::Denoise {
        bail!("--sigma is for --task denoise")
    }
    let rescale = match a.task {
        Task::Denoise => {
            super::rescale_for(super::denoise_sigma(a.sigma)?, a.model_file.as_deref())?
        }
        _ => None,
    };
    let kernel = a
        .kernel
        .as_deref()
        .map(|k| {
            converse::kernel::load(k)
                .and_then(|k| converse::restore::model_kernel(&k, a.kernel_flip))
        })
        .transpose()?;
    // A kernel file is read by the run too: no output may replace it.
    let mut also_read = super::kernel_files(&a.kernel);
    also_read.extend(a.model_file.iter().cloned());
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
    // The report grows, but never over an input.
    if let Some(r) = &a.report {
        let inputs: Vec<_> = jobs.iter().map(|j| j.input.clone()).collect();
        let pair = Pair {
            input: a.input.clone(),
            output: r.clone(),
        };
        plan::check_pairs(&[pair], &inputs)?;
    }
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
    // The plan depends on where the model runs: a GPU runs the reference path within its own
    // memory, the CPU the fused kernels (or, with --reference, the reference path) within the
    // host's.
    let device = a.model.device()?;
    let backend = match device.is_cpu() && !a.reference {
        true => Backend::Fused,
        false => Backend::Reference,
    };
    let gpu_budget = converse::resources::device_memory_budget(&device);
    let memory = match gpu_budget {
        Some(_) => format!("device memory of {}", device_name(&device)),
        None => "host memory".to_owned(),
    };
    let (max_memory, budget_source) = match (a.max_memory, gpu_budget) {
        (Some(b), _) => (b, "--max-memory".to_owned()),
        (None, Some(b)) => b,
        (None, None) => converse::resources::memory_budget(),
    };
    let options = Options {
        gray: a.gray,
        x8: a.x8,
        tile: a.tile,
        tile_overlap: a.tile_overlap,
        max_memory,
        backend,
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
        let path = match backend {
            Backend::Fused => "the fused CPU kernels",
            Backend::Reference => "the reference path (candle ops)",
        };
        eprintln!("memory budget: {}, {budget_source}", human(max_memory));
        eprintln!(
            "planned for: {path} on {}, against {memory}",
            device_name(&device)
        );
        eprintln!("threads: {}, {}", threads.0, threads.1);
        if let Some((_, note)) = &shard_note {
            eprintln!("{note}");
        }
        return dry_run(&jobs, kind, &options, &a);
    }
    plan::check_writable(jobs.iter().map(|j| j.output.as_path()))?;
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
    let mut record = |job: &Pair, status, error: Option<&str>, seconds| {
        if let Some(r) = &report {
            if let Err(e) = r.record(&job.input, &job.output, status, error, seconds) {
                eprintln!("error: {}", crate::exit_codes::message(&e));
                report_failed = true;
            }
        }
    };
    if jobs.is_empty() {
        return Ok(ExitCode::Success);
    }
    let model = a.model.load(kind, a.model_file.as_deref(), &device)?;
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
            record(job, Status::Skipped, None, 0.0);
            bars.done();
            continue;
        }
        let start = std::time::Instant::now();
        match catch_panic(|| restore_one(&restorer, rescale, job, &a, &bars)) {
            Ok(Outcome::Restored) => {
                done += 1;
                record(job, Status::Restored, None, start.elapsed().as_secs_f64());
            }
            Ok(Outcome::WrittenMeanwhile) => {
                record(job, Status::Skipped, None, start.elapsed().as_secs_f64());
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
                let e = crate::exit_codes::message(&e);
                bars.suspend(|| eprintln!("error: {e}"));
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
fn shard_jobs(jobs: Vec<Pair>, shard: Shard, kind: ModelKind, a: &RestoreArgs) -> Selection<Pair> {
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

/// `--dry-run`: one line per input, from the image headers only, with what would fail; then (on
/// stderr) the images whose outputs are missing: the work that remains.
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
    // The work that remains: the images whose outputs are missing.
    let remaining: Vec<&Pair> = jobs.iter().filter(|j| !j.output.exists()).collect();
    eprintln!(
        "remaining: {} of {} images have no output",
        remaining.len(),
        jobs.len()
    );
    for job in remaining {
        eprintln!("  '{}'", job.input.display());
    }
    Ok(ExitCode::from_failures(failed))
}

/// `cpu`, `cuda:0`: the device as `--device` names it.
fn device_name(device: &candle_core::Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        _ => "cpu".to_owned(),
    }
}

/// The format `output` is written in: `--format`, else its extension.
fn output_format(a: &RestoreArgs, output: &Path) -> anyhow::Result<Format> {
    a.format
        .or_else(|| Format::from_path(output))
        .with_context(|| format!("cannot tell the output format of '{}'", output.display()))
}

/// Restores one job; `rescale` brings a noisy image to the denoiser's noise level and back.
fn restore_one(
    restorer: &Restorer,
    rescale: Option<Rescale>,
    job: &Pair,
    a: &RestoreArgs,
    bars: &RestoreBars,
) -> anyhow::Result<Outcome> {
    let format = output_format(a, &job.output)?;
    let mut pic = image_io::read(&job.input, a.max_pixels)?;
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
    if let Some(r) = &rescale {
        r.to_model(&mut pic.color);
    }
    let mut out = restorer
        .restore(&pic, &on_step)
        .with_context(|| format!("cannot restore '{}'", job.input.display()))?;
    if let Some(r) = &rescale {
        r.from_model(&mut out.color);
    }
    let existing = Existing::with_overwrite(a.overwrite);
    match image_io::write(&out, &job.output, format, a.quality, existing) {
        Err(e) if files::already_exists(&e) => Ok(Outcome::WrittenMeanwhile),
        r => r.map(|()| Outcome::Restored),
    }
}
