//! `converse eval`: the paper's numbers, with the official degradations and metrics.

use std::path::Path;

use anyhow::bail;
use candle_core::DType;

use super::{degradation, kernel_tensor};
use crate::cli::EvalArgs;
use crate::exit_codes::ExitCode;
use converse::eval::protocol::list_images;
use converse::eval::run::{evaluate, table, EvalSpec};
use converse::progress;
use converse::restore::Task;

pub fn run(a: EvalArgs) -> anyhow::Result<ExitCode> {
    let kernels: Vec<String> = a.kernel.iter().chain(&a.kernels).cloned().collect();
    if a.task != Task::Deblur && !kernels.is_empty() {
        bail!("--kernel is for --task deblur")
    }
    if a.task != Task::Deblur && a.with_kernel {
        bail!("--with-kernel is for --task deblur")
    }
    if a.task == Task::Deblur && kernels.is_empty() {
        bail!("--task deblur needs --kernel K or --kernels K1,K2,...")
    }
    let images = list_images(&a.dataset)?;
    if images.is_empty() {
        bail!("no images in '{}'", a.dataset.display())
    }
    let device = a.model.device()?;
    let kind = a.task.model(a.with_kernel);
    let model = a.model.locator().load(kind, DType::F32, &device)?;
    let bar = progress::bar((images.len() * kernels.len().max(1)) as u64, a.quiet);
    let mut runs = vec![];
    let runs_of: Vec<Option<&String>> = match kernels.is_empty() {
        true => vec![None],
        false => kernels.iter().map(Some).collect(),
    };
    for k in runs_of {
        let kernel = k.map(|k| converse::kernel::load(k)).transpose()?;
        let kernel_name = k.map(|k| {
            Path::new(k)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| k.clone())
        });
        let model_kernel = match (&kernel, a.with_kernel) {
            (Some(k), true) => Some(kernel_tensor(&k.for_model()?, &device)?),
            _ => None,
        };
        let save = a
            .save
            .as_ref()
            .map(|s| match (&kernel_name, kernels.len()) {
                (Some(n), 2..) => s.join(Path::new(n).file_stem().unwrap_or_default()),
                _ => s.clone(),
            });
        let spec = EvalSpec {
            task: a.task.name(),
            dataset: &a.dataset,
            images: &images,
            degradation: degradation(a.task, a.sigma, kernel.as_ref())?,
            kernel_name,
            model_kernel,
            seed: a.seed,
            device: device.clone(),
            save: save.as_deref(),
        };
        let run = evaluate(&model, &spec, |name| {
            bar.set_message(name.to_owned());
            bar.inc(1);
        })?;
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
        converse::files::write_atomic(path, json.as_bytes())?;
    }
    Ok(ExitCode::Success)
}
