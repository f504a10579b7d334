//! The `converse` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use candle_core::DType;
use clap::{Args, Parser, Subcommand, ValueEnum};

use converse::device::DeviceSpec;
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
