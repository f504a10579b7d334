//! `converse finetune`: a released model trained further on the user's clean images
//! ([`converse::train`]), with checkpoints, Ctrl-C and `--resume`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context};

use super::{degradation, progress};
use crate::cli::FinetuneArgs;
use crate::exit_codes::ExitCode;
use converse::eval::run::{evaluate, EvalSpec};
use converse::files::Existing;
use converse::models::{ModelKind, Task};
use converse::plan::Pair;
use converse::train::{self, Checkpoint, Degrader, Images, Recipe, Trainer};

/// Steps at the start that are timed to fit `--minutes`; the learning rate holds through them.
const TIMED_STEPS: usize = 10;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C sets [`INTERRUPTED`] once (the run then saves a checkpoint and stops); a second one
/// ends the process as usual.
fn catch_interrupt() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_interrupt as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESETHAND;
        libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut());
    }
}

/// The checkpoint beside `output`: `NAME.ckpt.safetensors`.
fn default_checkpoint(output: &Path) -> PathBuf {
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "finetune".into());
    output.with_file_name(format!("{stem}.ckpt.safetensors"))
}

pub fn run(a: FinetuneArgs) -> anyhow::Result<ExitCode> {
    if a.task != Task::Deblur && (!a.kernel.is_empty() || a.with_kernel) {
        bail!("--kernel and --with-kernel are for --task deblur")
    }
    if a.batch == 0 || a.val_every == 0 || a.checkpoint_every == 0 {
        bail!("--batch, --val-every and --checkpoint-every must be at least 1")
    }
    if !(a.lr.is_finite() && a.lr > 0.0) {
        bail!("--lr must be above 0")
    }
    if a.steps == Some(0) {
        bail!("--steps must be at least 1")
    }
    if let Some(m) = a.minutes.filter(|m| !(m.is_finite() && *m > 0.0)) {
        bail!("--minutes {m}: give a time above 0")
    }
    if a.steps.is_none() && a.minutes.is_none() {
        bail!("give --steps N, --minutes M, or both")
    }
    // Every step frees and allocates the same feature maps.
    converse::alloc::keep_freed_blocks();
    let kind = a.task.model(a.with_kernel);
    let patch = a.patch.unwrap_or(if a.task == Task::Sr { 128 } else { 64 });
    let multiple = match a.task {
        Task::Sr => 4,
        Task::Deblur => 8,
        Task::Denoise => 1,
    };
    if patch < 16 || !patch.is_multiple_of(multiple) {
        bail!(
            "--patch {patch}: give at least 16 pixels, a multiple of {multiple} for --task {}",
            a.task.name()
        )
    }
    let degraders = degraders(&a, kind)?;
    let checkpoint = a
        .checkpoint
        .clone()
        .unwrap_or_else(|| default_checkpoint(&a.output));

    let mut notes = vec![];
    let data = Images::read(&a.data, kind.info().channels, patch, &mut notes)?;
    let val = a
        .val
        .as_ref()
        .map(|d| Images::read(d, kind.info().channels, 16, &mut notes))
        .transpose()?;
    for n in &notes {
        eprintln!("note: {n}");
    }
    let locator = a.model.locator();
    check_files(&a, kind, &checkpoint, &data, val.as_ref(), &locator)?;

    let mut recipe = Recipe {
        model: kind.id().to_owned(),
        degradations: degraders.iter().map(|(l, _)| l.clone()).collect(),
        patch,
        batch: a.batch,
        steps: a.steps.unwrap_or(0),
        lr: a.lr,
        seed: a.seed,
    };
    let degraders: Vec<Degrader> = degraders.into_iter().map(|(_, d)| d).collect();
    let device = a.model.device()?;
    let mut trainer = match &a.resume {
        Some(ckpt) => {
            let ckpt = Checkpoint::read(ckpt)?;
            if a.steps.is_none() {
                recipe.steps = ckpt.recipe.steps;
            }
            eprintln!(
                "resuming '{}' at step {}",
                a.resume
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                ckpt.step
            );
            Trainer::resume(kind, recipe, ckpt, &device)?
        }
        None => {
            let tensors = match &a.from {
                Some(f) => converse::models::read_file(kind, f, |b| {
                    converse::models::Model::state_dict(kind, b)
                })?,
                None => locator.load_state_dict(kind)?,
            };
            Trainer::new(kind, recipe, tensors, &device)?
        }
    };
    catch_interrupt();
    train_loop(
        &a,
        &mut trainer,
        &degraders,
        &data,
        val.as_ref(),
        &checkpoint,
        &device,
    )
}

/// The degradations of the run, each with its label for the recipe.
fn degraders(a: &FinetuneArgs, kind: ModelKind) -> anyhow::Result<Vec<(String, Degrader)>> {
    if a.task != Task::Deblur {
        let d = degradation(a.task, a.sigma, a.jpeg, None)?;
        let label = train::label(&d, None);
        return Ok(vec![(
            label,
            Degrader {
                degradation: d,
                model_kernel: None,
            },
        )]);
    }
    let specs: Vec<String> = match a.kernel.is_empty() {
        true => converse::kernel::STANDARD_SET
            .iter()
            .map(|s| s.to_string())
            .collect(),
        false => a.kernel.clone(),
    };
    specs
        .iter()
        .map(|spec| {
            let k = converse::kernel::load(spec)?;
            let model_kernel = kind
                .info()
                .takes_kernel
                .then(|| k.for_model())
                .transpose()?;
            let d = degradation(a.task, a.sigma, None, Some(&k))?;
            let name = Path::new(spec)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| spec.clone());
            Ok((
                train::label(&d, Some(&name)),
                Degrader {
                    degradation: d,
                    model_kernel,
                },
            ))
        })
        .collect()
}

/// Refuses outputs that are inputs (however spelled), an existing OUTPUT without
/// `--overwrite`, and an earlier run's checkpoint that is neither resumed nor overwritten.
fn check_files(
    a: &FinetuneArgs,
    kind: ModelKind,
    checkpoint: &Path,
    data: &Images,
    val: Option<&Images>,
    locator: &converse::weights::WeightsLocator,
) -> anyhow::Result<()> {
    let mut read: Vec<PathBuf> = data.paths.clone();
    read.extend(val.iter().flat_map(|v| v.paths.iter().cloned()));
    read.extend(super::kernel_files(&a.kernel));
    read.extend(a.from.iter().cloned());
    if let Some(converse::weights::Found::Safetensors(p) | converse::weights::Found::Pth(p)) =
        locator.find(kind)
    {
        read.push(p)
    }
    let resumed_here = a.resume.as_ref().is_some_and(|r| same_file(r, checkpoint));
    if let Some(r) = a.resume.as_ref().filter(|_| !resumed_here) {
        read.push(r.clone());
    }
    let source = PathBuf::from("--data");
    let mut pairs = vec![
        Pair {
            input: source.clone(),
            output: a.output.clone(),
        },
        Pair {
            input: PathBuf::from("--checkpoint"),
            output: checkpoint.to_owned(),
        },
    ];
    if let Some(log) = &a.log {
        pairs.push(Pair {
            input: PathBuf::from("--log"),
            output: log.clone(),
        });
    }
    converse::plan::check_pairs(&pairs, &read)?;
    if a.output.exists() && !a.overwrite {
        bail!(
            "'{}' exists: pass --overwrite to replace it, or choose another -o",
            a.output.display()
        )
    }
    if checkpoint.exists() && !resumed_here && !a.overwrite {
        bail!(
            "'{}' holds the checkpoint of an earlier run: continue it with --resume '{}', or pass \
             --overwrite to start over",
            checkpoint.display(),
            checkpoint.display()
        )
    }
    converse::plan::check_writable(pairs.iter().map(|p| p.output.as_path()))?;
    converse::files::sweep_folders(pairs.iter().map(|p| p.output.as_path()));
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Validation PSNR of the trainer's current weights on `val`, degraded as `eval` does.
fn validate(
    trainer: &Trainer,
    d: &Degrader,
    val: &Images,
    dev: &candle_core::Device,
) -> anyhow::Result<f64> {
    let model = trainer.snapshot()?;
    let dataset = val.paths[0].parent().unwrap_or(Path::new(""));
    let spec = EvalSpec {
        task: "finetune",
        dataset,
        images: &val.paths,
        degradation: d.degradation.clone(),
        kernel_name: None,
        model_kernel: d
            .model_kernel
            .as_ref()
            .map(|k| k.to_tensor(dev))
            .transpose()?,
        rescale: None,
        seed: 0,
        device: dev.clone(),
        save: None,
        existing: Existing::Keep,
    };
    Ok(evaluate(&model, &spec, |_| {})?.mean_psnr)
}

fn train_loop(
    a: &FinetuneArgs,
    trainer: &mut Trainer,
    degraders: &[Degrader],
    data: &Images,
    val: Option<&Images>,
    checkpoint: &Path,
    dev: &candle_core::Device,
) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let budget = a.minutes.map(|m| m * 60.0);
    let mut log = a
        .log
        .as_ref()
        .map(|p| {
            let new = !p.exists();
            converse::files::open_append(p)
                .with_context(|| format!("cannot write the log '{}'", p.display()))
                .and_then(|mut f| {
                    if new {
                        converse::files::append(&mut f, b"step,loss,lr,val_psnr,seconds\n")?;
                    }
                    Ok(f)
                })
        })
        .transpose()?;
    let mut write_log = |line: String| -> anyhow::Result<()> {
        if let (Some(f), Some(p)) = (log.as_mut(), a.log.as_ref()) {
            converse::files::append(f, line.as_bytes())
                .with_context(|| format!("cannot write the log '{}'", p.display()))?;
        }
        Ok(())
    };
    let save_checkpoint = |t: &Trainer| -> anyhow::Result<()> {
        converse::files::write_bytes(checkpoint, Existing::Replace, &t.checkpoint_bytes()?)
            .with_context(|| format!("cannot write the checkpoint '{}'", checkpoint.display()))
    };
    let shown = !a.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let total = |t: &Trainer| t.recipe.steps.max(t.step() + 1) as u64;
    let bar = progress::bar(total(trainer), a.quiet);
    bar.set_position(trainer.step() as u64);
    let mut val_cost = 0.0;
    let mut val_psnr = f64::NAN;
    let mut loss_avg = f64::NAN;
    let mut timed = vec![];
    let run_val = |t: &Trainer, cost: &mut f64| -> anyhow::Result<f64> {
        let v0 = Instant::now();
        let p = validate(t, &degraders[0], val.expect("validation data"), dev)?;
        *cost = v0.elapsed().as_secs_f64();
        Ok(p)
    };
    if val.is_some() && trainer.step() == 0 {
        val_psnr = run_val(trainer, &mut val_cost)?;
        write_log(format!(
            "0,,,{val_psnr:.4},{:.1}\n",
            start.elapsed().as_secs_f64()
        ))?;
        say(
            &bar,
            shown,
            &format!("step 0: validation PSNR {val_psnr:.2} dB"),
        );
    }
    let mut stopped_early = false;
    while trainer.recipe.steps == 0 || trainer.step() < trainer.recipe.steps {
        if INTERRUPTED.load(Ordering::SeqCst) {
            save_checkpoint(trainer)?;
            bar.abandon();
            eprintln!(
                "interrupted at step {}: the checkpoint is '{}'; continue with --resume '{}'",
                trainer.step(),
                checkpoint.display(),
                checkpoint.display()
            );
            return Ok(ExitCode::Interrupted);
        }
        if budget.is_some_and(|b| start.elapsed().as_secs_f64() >= b) {
            stopped_early = true;
            break;
        }
        let t0 = Instant::now();
        let step = trainer.step();
        let batch = train::batch(&trainer.recipe, degraders, data, step, dev)?;
        let r = trainer.train_step(&batch)?;
        let secs = t0.elapsed().as_secs_f64();
        loss_avg = if loss_avg.is_nan() {
            r.loss as f64
        } else {
            0.95 * loss_avg + 0.05 * r.loss as f64
        };
        // Fit the schedule to --minutes once the first steps are timed.
        if trainer.recipe.steps == 0 {
            if step >= 1 {
                timed.push(secs);
            }
            if step + 1 == TIMED_STEPS {
                let per_step = timed.iter().sum::<f64>() / timed.len() as f64
                    + if val.is_some() {
                        val_cost / a.val_every as f64
                    } else {
                        0.0
                    };
                let left = budget.expect("--minutes") * 0.97 - start.elapsed().as_secs_f64();
                trainer.recipe.steps = TIMED_STEPS + (left / per_step).max(0.0) as usize;
                bar.set_length(total(trainer));
                say(
                    &bar,
                    shown,
                    &format!(
                        "{:.2} s a step: {} steps fit in {} min",
                        per_step,
                        trainer.recipe.steps,
                        a.minutes.unwrap_or_default()
                    ),
                );
            }
        }
        let done = trainer.step();
        let mut val_field = String::new();
        if val.is_some() && (done.is_multiple_of(a.val_every) || done == trainer.recipe.steps) {
            val_psnr = run_val(trainer, &mut val_cost)?;
            val_field = format!("{val_psnr:.4}");
            say(
                &bar,
                shown,
                &format!("step {done}: loss {loss_avg:.5}, validation PSNR {val_psnr:.2} dB"),
            );
        }
        write_log(format!(
            "{done},{:.6},{:.3e},{val_field},{:.1}\n",
            r.loss,
            r.lr,
            start.elapsed().as_secs_f64()
        ))?;
        if done.is_multiple_of(a.checkpoint_every) && trainer.recipe.steps != 0 {
            save_checkpoint(trainer)?;
        }
        bar.set_position(done as u64);
        bar.set_message(match val_psnr.is_nan() {
            true => format!("loss {loss_avg:.5}"),
            false => format!("loss {loss_avg:.5}  val {val_psnr:.2} dB"),
        });
    }
    bar.finish_and_clear();
    if trainer.recipe.steps != 0 {
        save_checkpoint(trainer)?;
    }
    let existing = if a.overwrite {
        Existing::Replace
    } else {
        Existing::Keep
    };
    converse::files::write_bytes(&a.output, existing, &trainer.weights_bytes()?)
        .with_context(|| format!("cannot write '{}'", a.output.display()))?;
    let how = if stopped_early {
        format!(
            " (stopped by --minutes at step {} of {})",
            trainer.step(),
            trainer.recipe.steps
        )
    } else {
        String::new()
    };
    eprintln!(
        "wrote '{}' after {} steps in {:.1} min{how}: loss {loss_avg:.5}{}",
        a.output.display(),
        trainer.step(),
        start.elapsed().as_secs_f64() / 60.0,
        if val_psnr.is_nan() {
            String::new()
        } else {
            format!(", validation PSNR {val_psnr:.2} dB")
        }
    );
    Ok(ExitCode::Success)
}

/// Prints a line above the bar, or as it is when the bar is hidden.
fn say(bar: &indicatif::ProgressBar, shown: bool, line: &str) {
    if shown {
        bar.println(line);
    } else {
        eprintln!("{line}");
    }
}
