//! `converse eval`: the paper's numbers, with the official degradations and metrics.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::degradation;
use super::progress;
use crate::cli::EvalArgs;
use crate::exit_codes::ExitCode;
use converse::eval::protocol::{list_images, Degradation};
use converse::eval::run::{evaluate, saved_as, table, EvalSpec};
use converse::files::Existing;
use converse::models::Task;
use converse::plan::{self, Pair};

pub fn run(a: EvalArgs) -> anyhow::Result<ExitCode> {
    let kernels: Vec<String> = a.kernel.iter().chain(&a.kernels).cloned().collect();
    if a.task != Task::Deblur && !kernels.is_empty() {
        bail!("--kernel is for --task deblur")
    }
    if a.task != Task::Deblur && a.with_kernel {
        bail!("--with-kernel is for --task deblur")
    }
    if a.task != Task::Denoise && a.no_rescale {
        bail!("--no-rescale is for --task denoise")
    }
    if a.task == Task::Deblur && kernels.is_empty() {
        bail!("--task deblur needs --kernel K or --kernels K1,K2,...")
    }
    // A bad --sigma or --jpeg stops the run before any work (deblur's kernels are read later).
    if a.task != Task::Deblur || a.jpeg.is_some() {
        degradation(a.task, a.sigma, a.jpeg, None)?;
    }
    let images = list_images(&a.dataset)?;
    if images.is_empty() {
        bail!("no images in '{}'", a.dataset.display())
    }
    let existing = check_outputs(&a, &kernels, &images)?;
    let device = a.model.device()?;
    let kind = a.task.model(a.with_kernel);
    let model = a.model.load(kind, a.model_file.as_deref(), &device)?;
    let bar = progress::bar((images.len() * kernels.len().max(1)) as u64, a.quiet);
    let mut runs = vec![];
    let runs_of: Vec<Option<&String>> = match kernels.is_empty() {
        true => vec![None],
        false => kernels.iter().map(Some).collect(),
    };
    for k in runs_of {
        let kernel = k.map(|k| converse::kernel::load(k)).transpose()?;
        let kernel_name = k.map(|k| kernel_label(k));
        let model_kernel = match (&kernel, a.with_kernel) {
            (Some(k), true) => Some(k.for_model()?.to_tensor(&device)?),
            _ => None,
        };
        let save = a
            .save
            .as_ref()
            .map(|s| save_dir(s, kernel_name.as_deref(), kernels.len()));
        let degradation = degradation(a.task, a.sigma, a.jpeg, kernel.as_ref())?;
        let rescale = match degradation {
            Degradation::Denoise { sigma } if !a.no_rescale => {
                super::rescale_for(sigma, a.model_file.as_deref())?
            }
            _ => None,
        };
        let spec = EvalSpec {
            task: a.task.name(),
            dataset: &a.dataset,
            images: &images,
            degradation,
            rescale,
            kernel_name,
            model_kernel,
            seed: a.seed,
            device: device.clone(),
            save: save.as_deref(),
            existing,
        };
        let run = evaluate(&model, &spec, |name| {
            bar.set_message(name.to_owned());
            bar.inc(1);
        });
        // The work has begun: a failure now is the run's failure (1), not a usage error.
        let run = match run {
            Ok(run) => run,
            Err(e) => {
                bar.finish_and_clear();
                eprintln!("error: {}", crate::exit_codes::message(&e));
                return Ok(ExitCode::SomeFailed);
            }
        };
        bar.suspend(|| print!("{}", table(&run)));
        runs.push(run);
    }
    bar.finish_and_clear();
    if let Some(path) = &a.json {
        let json = if runs.len() == 1 {
            serde_json::to_string_pretty(&runs[0])?
        } else {
            serde_json::to_string_pretty(&runs)?
        };
        let written = converse::files::write_bytes(path, existing, json.as_bytes())
            .with_context(|| format!("cannot write '{}'", path.display()));
        if let Err(e) = written {
            eprintln!("error: {}", crate::exit_codes::message(&e));
            return Ok(ExitCode::SomeFailed);
        }
    }
    Ok(ExitCode::Success)
}

/// The folder `--save` keeps one kernel's images in: a subfolder per kernel when there are
/// several.
fn save_dir(save: &Path, kernel_name: Option<&str>, kernels: usize) -> PathBuf {
    match (kernel_name, kernels) {
        (Some(n), 2..) => save.join(Path::new(n).file_stem().unwrap_or_default()),
        _ => save.to_owned(),
    }
}

/// Checks what the run will write (`--save`'s images, `--json`) before anything is computed:
/// nothing inside the dataset, no input replaced, nothing that exists unless `--overwrite`.
fn check_outputs(a: &EvalArgs, kernels: &[String], images: &[PathBuf]) -> anyhow::Result<Existing> {
    let mut pairs = vec![];
    if let Some(save) = &a.save {
        if plan::inside(save, &a.dataset) {
            bail!(
                "--save '{}' is inside the dataset '{}': its images would be read as part of the \
                 dataset next time; save them elsewhere",
                save.display(),
                a.dataset.display()
            )
        }
        let names: Vec<Option<String>> = match kernels.len() {
            0 => vec![None],
            _ => kernels.iter().map(|k| Some(kernel_label(k))).collect(),
        };
        for name in names {
            let dir = save_dir(save, name.as_deref(), kernels.len());
            pairs.extend(images.iter().map(|i| Pair {
                input: i.clone(),
                output: saved_as(&dir, &a.dataset, i),
            }));
        }
    }
    if let Some(json) = &a.json {
        pairs.push(Pair {
            input: a.dataset.clone(),
            output: json.clone(),
        });
    }
    // Every kernel is read now, so that a bad one stops the run before any work.
    for k in kernels {
        converse::kernel::load(k)?;
    }
    let mut read = super::kernel_files(kernels);
    read.extend(images.iter().cloned());
    read.extend(a.model_file.iter().cloned());
    plan::check_pairs(&pairs, &read)?;
    plan::check_writable(pairs.iter().map(|p| p.output.as_path()))?;
    converse::files::sweep_folders(pairs.iter().map(|p| p.output.as_path()));
    if a.overwrite {
        return Ok(Existing::Replace);
    }
    if let Some(p) = pairs.iter().find(|p| p.output.exists()) {
        bail!("'{}' exists (--overwrite replaces it)", p.output.display())
    }
    Ok(Existing::Keep)
}

/// A kernel as the results name it: its file name, or the spec (`gaussian:1.6`).
fn kernel_label(k: &str) -> String {
    Path::new(k)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| k.to_owned())
}
