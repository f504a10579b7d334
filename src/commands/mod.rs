//! One module per command, each with `run(args) -> anyhow::Result<ExitCode>`.

pub mod completions;
pub mod convert;
pub mod degrade;
pub mod demo;
pub mod eval;
pub mod finetune;
pub mod info;
pub mod man;
pub mod progress;
pub mod restore;
pub mod verify;

use anyhow::Context;
use std::path::Path;

use candle_core::{DType, Device};

use crate::cli::ModelArgs;
use converse::device::DeviceSpec;
use converse::eval::protocol::Degradation;
use converse::kernel::Kernel;
use converse::models::{Model, ModelKind, Task};
use converse::noise::Rescale;
use converse::weights::WeightsLocator;

impl ModelArgs {
    /// The device asked for, or the default one, opened.
    pub fn device(&self) -> anyhow::Result<Device> {
        match self.device {
            Some(d) => d.open(),
            None => Ok(DeviceSpec::open_auto()),
        }
    }

    /// The model to run: `file` when given (it must hold `kind`'s tensors, each with its
    /// shape, and no others), else the released weights.
    pub fn load(
        &self,
        kind: ModelKind,
        file: Option<&Path>,
        device: &Device,
    ) -> anyhow::Result<Model> {
        match file {
            Some(f) => Model::load(kind, f, DType::F32, device),
            None => self.locator().load(kind, DType::F32, device),
        }
    }

    pub fn locator(&self) -> WeightsLocator {
        WeightsLocator {
            progress: Some(progress::download_bar),
            ..WeightsLocator::new(self.weights.as_deref())
        }
    }
}

/// Writes `bytes` to stdout. A reader that has gone (`converse info | head`) ends the output
/// quietly, without an error.
pub fn print_out(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// The degradation of `task` as the official scripts make it, or JPEG at quality `jpeg` for
/// denoising.
pub fn degradation(
    task: Task,
    sigma: Option<f64>,
    jpeg: Option<u8>,
    kernel: Option<&Kernel>,
) -> anyhow::Result<Degradation> {
    if jpeg.is_some() && task != Task::Denoise {
        anyhow::bail!("--jpeg is for --task denoise")
    }
    Ok(match task {
        Task::Denoise => match jpeg {
            Some(quality) => Degradation::Jpeg { quality },
            None => Degradation::Denoise {
                sigma: denoise_sigma(sigma)?,
            },
        },
        Task::Sr => Degradation::Sr,
        Task::Deblur => Degradation::Deblur {
            kernel: kernel
                .context(
                    "--task deblur needs --kernel (a file, gaussian:SIGMA or motion:LENGTH,ANGLE)",
                )?
                .clone(),
            sigma: sigma.unwrap_or(2.55),
        },
    })
}

/// The noise level of `--task denoise`: `--sigma`, above 0, or the model's 25.
pub fn denoise_sigma(sigma: Option<f64>) -> anyhow::Result<f64> {
    match sigma {
        Some(s) if s <= 0.0 => anyhow::bail!("--sigma {s}: denoising needs a noise level above 0"),
        Some(s) => Ok(s),
        None => Ok(converse::noise::MODEL_SIGMA),
    }
}

/// The rescaling of denoising at noise level `sigma` ([`Rescale::for_sigma`]), which is made
/// for the released sigma-25 model: weights from `converse finetune` run as they were trained.
pub fn rescale_for(sigma: f64, model_file: Option<&Path>) -> anyhow::Result<Option<Rescale>> {
    let rescale = Rescale::for_sigma(sigma);
    if let (Some(_), Some(f)) = (rescale, model_file) {
        if let Some(recipe) = converse::train::Recipe::of_file(f)? {
            eprintln!(
                "note: '{}' was fine-tuned on {}: it runs without the sigma-{} rescaling",
                f.display(),
                recipe.degradations.join(", "),
                converse::noise::MODEL_SIGMA
            );
            return Ok(None);
        }
    }
    Ok(rescale)
}

/// The kernel files among `specs` (`gaussian:…` and `motion:…` are not files): a run reads them,
/// so no output may replace one.
pub fn kernel_files<'a>(specs: impl IntoIterator<Item = &'a String>) -> Vec<std::path::PathBuf> {
    specs
        .into_iter()
        .map(std::path::PathBuf::from)
        .filter(|k| k.is_file())
        .collect()
}

/// What every writing command does with its plan before the first write: print its notes,
/// refuse output folders that cannot be written, and sweep the temporary files that killed runs
/// left there.
pub fn prepare(plan: &converse::plan::Plan) -> anyhow::Result<()> {
    for note in &plan.notes {
        eprintln!("note: {note}");
    }
    converse::plan::check_writable(plan.pairs.iter().map(|p| p.output.as_path()))?;
    converse::files::sweep_folders(plan.pairs.iter().map(|p| p.output.as_path()));
    Ok(())
}
