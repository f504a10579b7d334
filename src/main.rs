//! The `converse` command line.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use candle_core::DType;
use clap::{Args, Parser, Subcommand, ValueEnum};

use converse::device::DeviceSpec;
use converse::eval::protocol::{read_u8, to_u8, Degradation};
use converse::eval::run::{evaluate, save_u8, table, EvalSpec};
use converse::image_io::{self, Format};
use converse::kernel::Kernel;
use converse::models::ModelKind;
use converse::progress;
use converse::restore::{plan, Options, Restorer, Task};
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
    /// Restore images: denoise, super-resolve (x4) or deblur, a file or a folder.
    Restore(RestoreArgs),
    /// See every model at work on a synthetic image: no input needed.
    Demo(DemoArgs),
    /// Check this installation against golden outputs of the official code.
    Verify(VerifyArgs),
    /// Reproduce the paper's numbers: degrade a dataset as the official scripts do, restore, score.
    Eval(EvalArgs),
    /// Write degraded inputs (noisy, x4 downscaled or blurred) to try the models on.
    Degrade(DegradeArgs),
}

#[derive(Args)]
struct DemoArgs {
    /// Where to write the before/after panels.
    #[arg(short, long, default_value = "converse-demo")]
    output: PathBuf,
    /// Folder holding the weights (.pth or .safetensors); see also $CONVERSE_WEIGHTS.
    #[arg(long, value_name = "DIR")]
    weights: Option<PathBuf>,
    /// cpu, cuda or cuda:N (default: cuda if built with it and present, else cpu).
    #[arg(long)]
    device: Option<DeviceSpec>,
}

#[derive(Args)]
struct RestoreArgs {
    #[arg(long, value_enum)]
    task: Task,
    /// An image, or a folder of images.
    #[arg(short, long)]
    input: PathBuf,
    /// The restored image (a file for a file, a folder for a folder).
    #[arg(short, long)]
    output: PathBuf,
    /// Deblur with this known kernel (Converse-USRNet): .npy, a PSF image, a text matrix,
    /// gaussian:SIGMA or motion:LENGTH,ANGLE. Without it, deblurring is blind (ConverseNet).
    #[arg(long, value_name = "K")]
    kernel: Option<String>,
    /// The kernel is a correlation filter: flip it (kernels are taken as in
    /// scipy.ndimage.convolve).
    #[arg(long, requires = "kernel")]
    kernel_flip: bool,
    /// Denoise: write a grayscale result from a colour image.
    #[arg(long)]
    gray: bool,
    /// SR scale; the released model is x4, the only value accepted.
    #[arg(long)]
    scale: Option<usize>,
    /// Self-ensemble: average over the 8 flips and rotations (8x the time).
    #[arg(long)]
    x8: bool,
    /// Descend into subfolders of a folder input (the structure is kept).
    #[arg(short, long)]
    recursive: bool,
    /// Replace existing outputs (by default they are skipped).
    #[arg(long)]
    overwrite: bool,
    /// Output format (default: from the output's extension; for folders, each input's own).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// JPEG quality, 1-100.
    #[arg(long, default_value_t = 95, value_parser = clap::value_parser!(u8).range(1..=100))]
    quality: u8,
    /// Tile side in pixels (0: never tile; default: tile only beyond --max-memory).
    #[arg(long, value_name = "SIZE")]
    tile: Option<usize>,
    /// Overlap between tiles, in pixels.
    #[arg(long, value_name = "PX", default_value_t = converse::restore::DEFAULT_TILE_OVERLAP)]
    tile_overlap: usize,
    /// Memory budget for a model run, e.g. 8G or 512M (default: half the available memory).
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    max_memory: Option<u64>,
    /// Refuse images with more pixels than this (decompression bombs).
    #[arg(long, value_name = "N", default_value_t = image_io::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    #[command(flatten)]
    common: CommonArgs,
}

/// `8G`, `512M`, `64K` or plain bytes.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim().trim_end_matches(['B', 'b']).trim_end_matches('i');
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    num.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0)
        .map(|v| (v * mult as f64) as u64)
        .ok_or_else(|| format!("`{s}` is not a size (e.g. 8G, 512M)"))
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
        Command::Restore(a) => restore(a),
        Command::Demo(a) => demo(a),
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
        converse_convert::Limits::from_env()?,
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

fn degradation(
    task: Task,
    sigma: Option<f64>,
    kernel: Option<&Kernel>,
) -> anyhow::Result<Degradation> {
    Ok(match task {
        Task::Denoise => Degradation::Denoise {
            sigma: sigma.unwrap_or(25.0),
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

fn eval(a: EvalArgs) -> anyhow::Result<ExitCode> {
    let device = a.common.device.unwrap_or_else(DeviceSpec::auto).open()?;
    let kernels: Vec<String> = a
        .kernel
        .iter()
        .cloned()
        .chain(a.kernels.iter().cloned())
        .collect();
    if a.task != Task::Deblur && !kernels.is_empty() {
        bail!("--kernel is for --task deblur")
    }
    if a.task == Task::Deblur && kernels.is_empty() {
        bail!("--task deblur needs --kernel K or --kernels K1,K2,...")
    }
    let kind = a.task.model(a.with_kernel);
    let model = WeightsLocator::new(a.common.weights.as_deref()).load(kind, DType::F32, &device)?;
    let total = converse::eval::protocol::list_images(&a.dataset)?.len() * kernels.len().max(1);
    let bar = progress::bar(total as u64, a.common.quiet);
    let mut runs = vec![];
    for k in kernels
        .iter()
        .map(Some)
        .chain(kernels.is_empty().then_some(None))
    {
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
    Ok(candle_core::Tensor::from_vec(
        v,
        (1, 1, k.height, k.width),
        dev,
    )?)
}

fn degrade(a: DegradeArgs) -> anyhow::Result<ExitCode> {
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
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Whether two paths name the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

fn restore(a: RestoreArgs) -> anyhow::Result<ExitCode> {
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
    let device = a.common.device.unwrap_or_else(DeviceSpec::auto).open()?;
    let model = WeightsLocator::new(a.common.weights.as_deref()).load(
        a.task.model(kernel.is_some()),
        DType::F32,
        &device,
    )?;
    let options = Options {
        gray: a.gray,
        x8: a.x8,
        tile: a.tile,
        tile_overlap: a.tile_overlap,
        max_memory: a
            .max_memory
            .unwrap_or_else(converse::restore::default_max_memory),
    };
    let restorer = Restorer::new(model, a.task, kernel.as_ref(), device, options)?;
    // A run killed midway (SIGKILL, Ctrl-C) leaves its temporary file: remove those.
    let out_dirs: BTreeSet<&Path> = jobs.iter().filter_map(|j| j.output.parent()).collect();
    out_dirs.into_iter().for_each(image_io::remove_stale_temps);
    let bar = progress::bar(jobs.len() as u64, a.common.quiet);
    let (mut done, mut skipped, mut failed) = (0, 0, vec![]);
    for job in &jobs {
        bar.set_message(job.input.display().to_string());
        if job.output.exists() && !a.overwrite && !same_file(&job.input, &job.output) {
            bar.suspend(|| {
                eprintln!(
                    "note: skipping '{}': '{}' exists (--overwrite replaces it)",
                    job.input.display(),
                    job.output.display()
                )
            });
            skipped += 1;
            bar.inc(1);
            continue;
        }
        match restore_one(&restorer, job, &a) {
            Ok(()) => done += 1,
            Err(e) => {
                bar.suspend(|| eprintln!("error: {e:#}"));
                failed.push((job.input.clone(), format!("{e:#}")));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
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
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn restore_one(
    restorer: &Restorer,
    job: &converse::restore::Job,
    a: &RestoreArgs,
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
    let out = restorer
        .restore(&pic)
        .with_context(|| format!("cannot restore '{}'", job.input.display()))?;
    if let Some(parent) = job.output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create '{}'", parent.display()))?;
    }
    image_io::write(&out, &job.output, format, a.quality)
}

fn demo(a: DemoArgs) -> anyhow::Result<ExitCode> {
    let device = a.device.unwrap_or_else(DeviceSpec::auto).open()?;
    let locator = WeightsLocator::new(a.weights.as_deref());
    println!(
        "{:<14} {:>12} {:>12}  panel (degraded | restored | clean)",
        "task", "PSNR before", "PSNR after"
    );
    converse::demo::run(&locator, &device, &a.output, |r| {
        println!(
            "{:<14} {:>9.2} dB {:>9.2} dB  {}",
            r.name,
            r.psnr_before,
            r.psnr_after,
            r.file.display()
        );
    })?;
    Ok(ExitCode::SUCCESS)
}
