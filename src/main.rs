//! The `converse` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use candle_core::DType;
use clap::{Args, Parser, Subcommand, ValueEnum};

use converse::device::DeviceSpec;
use converse::eval::protocol::{read_u8, to_u8, Degradation};
use converse::eval::run::{evaluate, save_u8, table, EvalSpec};
use converse::kernel::Kernel;
use converse::progress;
use converse::models::ModelKind;
use converse::verify::{golden_files, Verifier};
use converse::weights::WeightsLocator;

/// Image restoration with the released ConverseNet models (ICCV 2025): denoising, x4
/// super-resolution and deblurring.
#[derive(Parser)]
#[command(name = "converse", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert official .pth checkpoints to safetensors (no Python needed).
    Convert(ConvertArgs),
    /// Check this installation against golden outputs of the official code.
    Verify(VerifyArgs),
    /// Reproduce the paper's numbers: degrade a dataset as the official scripts do, restore, score.
    Eval(EvalArgs),
    /// Write degraded inputs (noisy, x4 downscaled or blurred) to try the models on.
    Degrade(DegradeArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Task {
    /// Converse-DnCNN (gray, sigma 25).
    Denoise,
    /// Converse-SRResNet, x4.
    Sr,
    /// ConverseNet (blind) or, with a kernel, Converse-USRNet.
    Deblur,
}

impl Task {
    fn name(self) -> &'static str {
        match self {
            Self::Denoise => "denoise",
            Self::Sr => "sr",
            Self::Deblur => "deblur",
        }
    }
}

#[derive(Args)]
struct EvalArgs {
    #[arg(long, value_enum)]
    task: Task,
    /// Folder of clean images (searched recursively).
    #[arg(long, value_name = "DIR")]
    dataset: PathBuf,
    /// Blur kernel for --task deblur (.npy, PSF image, text, gaussian:S, motion:L,A).
    #[arg(long, value_name = "K", conflicts_with = "kernels")]
    kernel: Option<String>,
    /// Several kernels, comma-separated: one run each.
    #[arg(long, value_name = "K1,K2,...", value_delimiter = ',')]
    kernels: Vec<String>,
    /// Deblur with Converse-USRNet, given the kernel (default: blind ConverseNet).
    #[arg(long)]
    with_kernel: bool,
    /// Noise level on the 0-255 scale (default: 25 for denoise, 2.55 for deblur).
    #[arg(long)]
    sigma: Option<f64>,
    /// Seed of numpy's legacy generator, reset for every image as the official scripts do.
    #[arg(long, default_value_t = 0)]
    seed: u32,
    /// Write the results as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Keep the restored images in this folder.
    #[arg(long, value_name = "DIR")]
    save: Option<PathBuf>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
struct DegradeArgs {
    #[arg(long, value_enum)]
    task: Task,
    /// An image or a folder of images.
    #[arg(short, long)]
    input: PathBuf,
    /// The degraded image (or folder, for a folder input); written as PNG unless the extension
    /// says otherwise.
    #[arg(short, long)]
    output: PathBuf,
    /// Noise level on the 0-255 scale (default: 25 for denoise, 2.55 for deblur).
    #[arg(long)]
    sigma: Option<f64>,
    /// Blur kernel for --task deblur.
    #[arg(long, value_name = "K")]
    kernel: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u32,
}

/// Options every model-running command takes.
#[derive(Args)]
struct CommonArgs {
    /// Folder holding the weights (.pth or .safetensors); see also $CONVERSE_WEIGHTS.
    #[arg(long, value_name = "DIR")]
    weights: Option<PathBuf>,
    /// cpu, cuda or cuda:N (default: cuda if built with it and present, else cpu).
    #[arg(long)]
    device: Option<DeviceSpec>,
    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args)]
struct ConvertArgs {
    /// The checkpoint to convert (with --all: a folder of them).
    input: PathBuf,
    /// Output file (default: INPUT with .safetensors); with --all, the output folder (default:
    /// the input folder).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Convert every .pth file in the INPUT folder.
    #[arg(long)]
    all: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Precision {
    F32,
    F64,
}

#[derive(Args)]
struct VerifyArgs {
    /// Golden .safetensors files, or folders of them.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Folder holding the weights (.pth or .safetensors); see also $CONVERSE_WEIGHTS.
    #[arg(long, value_name = "DIR")]
    weights: Option<PathBuf>,
    /// cpu, cuda or cuda:N (default: cuda if built with it and present, else cpu).
    #[arg(long)]
    device: Option<DeviceSpec>,
    /// Arithmetic precision (f64 checks the maths itself; the bound stays that of f32).
    #[arg(long, value_enum, default_value = "f32")]
    precision: Precision,
}

fn main() -> ExitCode {
    // Errors are for users: keep library backtraces out of them (panics still honour
    // RUST_BACKTRACE).
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Convert(a) => convert(a),
        Command::Verify(a) => verify(a),
        Command::Eval(a) => eval(a),
        Command::Degrade(a) => degrade(a),
    }
}

fn convert_one(input: &Path, output: &Path) -> anyhow::Result<()> {
    if input == output {
        bail!("the output '{}' is the input", output.display())
    }
    let info = converse_convert::convert(
        input,
        output,
        &ModelKind::specs(),
        converse_convert::Limits::default(),
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

fn convert(a: ConvertArgs) -> anyhow::Result<ExitCode> {
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
        return Ok(ExitCode::SUCCESS);
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
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let device = a.device.unwrap_or_else(DeviceSpec::auto).open()?;
    let files = golden_files(&a.paths)?;
    let dtype = match a.precision {
        Precision::F32 => DType::F32,
        Precision::F64 => DType::F64,
    };
    let mut verifier = Verifier::new(WeightsLocator::new(a.weights.as_deref()), device, dtype);
    let (mut passed, mut failed) = (0, 0);
    for f in &files {
        match verifier.run(f) {
            Ok(r) => {
                let ok = r.passed();
                println!(
                    "{:<28} {:<18} max abs err {:.3e}  official f32 {:.3e}  bound {:.3e}  {}",
                    r.name,
                    r.what,
                    r.max_abs_err,
                    r.official,
                    r.bound(),
                    if ok { "pass" } else { "FAIL" }
                );
                if ok {
                    passed += 1
                } else {
                    failed += 1
                }
            }
            Err(e) => {
                println!("{:<28} error: {e:#}", f.display());
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn degradation(task: Task, sigma: Option<f64>, kernel: Option<&Kernel>) -> anyhow::Result<Degradation> {
    Ok(match task {
        Task::Denoise => Degradation::Denoise {
            sigma: sigma.unwrap_or(25.0),
        },
        Task::Sr => Degradation::Sr,
        Task::Deblur => Degradation::Deblur {
            kernel: kernel
                .context("--task deblur needs --kernel (a file, gaussian:SIGMA or motion:LENGTH,ANGLE)")?
                .clone(),
            sigma: sigma.unwrap_or(2.55),
        },
    })
}

fn eval(a: EvalArgs) -> anyhow::Result<ExitCode> {
    let device = a.common.device.unwrap_or_else(DeviceSpec::auto).open()?;
    let kernels: Vec<String> = a.kernel.iter().cloned().chain(a.kernels.iter().cloned()).collect();
    if a.task != Task::Deblur && !kernels.is_empty() {
        bail!("--kernel is for --task deblur")
    }
    if a.task == Task::Deblur && kernels.is_empty() {
        bail!("--task deblur needs --kernel K or --kernels K1,K2,...")
    }
    let kind = match (a.task, a.with_kernel) {
        (Task::Denoise, _) => ModelKind::DnCNN,
        (Task::Sr, _) => ModelKind::SRResNet,
        (Task::Deblur, false) => ModelKind::ConverseNet,
        (Task::Deblur, true) => ModelKind::USRNet,
    };
    let model = WeightsLocator::new(a.common.weights.as_deref()).load(kind, DType::F32, &device)?;
    let total = converse::eval::protocol::list_images(&a.dataset)?.len() * kernels.len().max(1);
    let bar = progress::bar(total as u64, a.common.quiet);
    let mut runs = vec![];
    for k in kernels.iter().map(Some).chain(kernels.is_empty().then_some(None)) {
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
        let save = a.save.as_ref().map(|s| match (&kernel_name, kernels.len()) {
            (Some(n), 2..) => s.join(Path::new(n).file_stem().unwrap_or_default()),
            _ => s.clone(),
        });
        let spec = EvalSpec {
            task: a.task.name(),
            dataset: &a.dataset,
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
        converse_convert::write_atomic(path, json.as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A 2-D kernel as the `(1, 1, h, w)` float32 tensor the model takes.
fn kernel_tensor(k: &Kernel, dev: &candle_core::Device) -> anyhow::Result<candle_core::Tensor> {
    let v: Vec<f32> = k.data.iter().map(|v| *v as f32).collect();
    Ok(candle_core::Tensor::from_vec(v, (1, 1, k.height, k.width), dev)?)
}

fn degrade(a: DegradeArgs) -> anyhow::Result<ExitCode> {
    let kernel = a.kernel.as_deref().map(converse::kernel::load).transpose()?;
    if a.task != Task::Deblur && kernel.is_some() {
        bail!("--kernel is for --task deblur")
    }
    let deg = degradation(a.task, a.sigma, kernel.as_ref())?;
    let jobs: Vec<(PathBuf, PathBuf)> = if a.input.is_dir() {
        if a.output.is_file() {
            bail!("the input is a folder, so the output '{}' must be a folder", a.output.display())
        }
        converse::eval::protocol::list_images(&a.input)?
            .into_iter()
            .map(|p| {
                let rel = p.strip_prefix(&a.input).unwrap_or(&p).with_extension("png");
                let out = a.output.join(rel);
                (p, out)
            })
            .collect()
    } else {
        if a.output.is_dir() {
            bail!("the input is a file, so the output '{}' must be a file", a.output.display())
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
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Whether two paths name the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}
