//! The command line: every subcommand's arguments.

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand, ValueEnum};

use converse::device::DeviceSpec;
use converse::image_io::{self, Format};
use converse::models::Task;
use converse::shard::ShardSpec;

/// Restore images with the released ConverseNet models: denoise, x4 SR, deblur.
#[derive(Parser)]
#[command(
    name = "converse",
    version,
    after_help = "Example: converse restore --task denoise -i noisy.png -o clean.png"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The command line, with `--version` naming this build's features.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command().version(crate::commands::info::version())
}

/// Parses the process's arguments (exiting with clap's message and status on an error).
pub fn parse() -> Cli {
    use clap::FromArgMatches;
    Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit())
}

/// Parses one of a library enum's values by its name: the library's types carry no clap.
fn one_of<T: Copy + Send + Sync + 'static>(
    all: &'static [T],
    name: fn(T) -> &'static str,
) -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(all.iter().map(|v| name(*v))).map(move |s| {
        *all.iter()
            .find(|v| name(**v) == s)
            .expect("the parser accepts only these names")
    })
}

#[derive(Subcommand)]
pub enum Command {
    /// Convert official .pth checkpoints to safetensors.
    #[command(after_help = "Example: converse convert converse_dncnn.pth")]
    Convert(ConvertArgs),
    /// Denoise, super-resolve (x4) or deblur an image or a folder.
    #[command(after_help = "Example: converse restore --task sr -i small.png -o big.png")]
    Restore(RestoreArgs),
    /// See every model at work on a synthetic image: no input needed.
    #[command(after_help = "Example: converse demo -o converse-demo")]
    Demo(DemoArgs),
    /// Check this installation against the official code's outputs.
    #[command(after_help = "Example: converse verify ../shared/golden")]
    Verify(VerifyArgs),
    /// Reproduce the paper's numbers on a dataset.
    #[command(after_help = "Example: converse eval --task sr --dataset testsets/set5")]
    Eval(EvalArgs),
    /// Fine-tune a released model on your own clean images.
    #[command(
        after_help = "Example: converse finetune --task sr --data DIR --steps 500 -o sr.safetensors"
    )]
    Finetune(FinetuneArgs),
    /// Write noisy, x4-downscaled or blurred copies to try the models on.
    #[command(after_help = "Example: converse degrade --task sr -i photo.png -o small.png")]
    Degrade(DegradeArgs),
    /// Show what converse sees: CPU, threads, memory, devices, weights.
    #[command(after_help = "Example: converse info --json")]
    Info(InfoArgs),
    /// Print a shell completion script.
    #[command(after_help = "Example: converse completions zsh > ~/.zfunc/_converse")]
    Completions(CompletionsArgs),
    /// Print the man page, or write a page per command with --dir.
    #[command(after_help = "Example: converse man | man -l -")]
    Man(ManArgs),
}

#[derive(Args)]
pub struct InfoArgs {
    /// Print JSON, for scripts.
    #[arg(long)]
    pub json: bool,
    /// A weights folder to search first, as --weights does.
    #[arg(long, value_name = "DIR")]
    pub weights: Option<PathBuf>,
}

#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args)]
pub struct ManArgs {
    /// Write a page per command into DIR.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Where the models come from and where they run: every command that runs one takes these.
#[derive(Args)]
pub struct ModelArgs {
    /// Weights folder (also $CONVERSE_WEIGHTS).
    #[arg(long, value_name = "DIR")]
    pub weights: Option<PathBuf>,
    /// cpu, cuda or cuda:N (default: cuda if usable).
    #[arg(long)]
    pub device: Option<DeviceSpec>,
}

#[derive(Args)]
pub struct DemoArgs {
    /// Folder for the panels.
    #[arg(short, long, default_value = "converse-demo")]
    pub output: PathBuf,
    /// Replace files that are not this demo's panels.
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// What to do: denoise, sr (x4) or deblur.
    #[arg(long, value_parser = one_of(&Task::ALL, Task::name), hide_possible_values = true)]
    pub task: Task,
    /// An image, or a folder of images.
    #[arg(short, long, value_name = "IN")]
    pub input: PathBuf,
    /// The result: a file for a file, a folder for a folder.
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
    /// Known blur kernel: FILE, gaussian:S or motion:L,A.
    #[arg(long, value_name = "K")]
    pub kernel: Option<String>,
    /// The kernel is a correlation filter: flip it.
    #[arg(long, requires = "kernel")]
    pub kernel_flip: bool,
    /// Denoise: write gray from a colour image.
    #[arg(long)]
    pub gray: bool,
    /// Denoise: the noise level, 0-255 scale (default 25).
    #[arg(long, value_name = "S", allow_negative_numbers = true, value_parser = parse_sigma)]
    pub sigma: Option<f64>,
    /// SR scale (the released model is x4 only).
    #[arg(long)]
    pub scale: Option<usize>,
    /// Average over 8 flips and rotations (8x the time).
    #[arg(long)]
    pub x8: bool,
    /// Descend into subfolders of a folder input.
    #[arg(short, long)]
    pub recursive: bool,
    /// Replace existing outputs (default: skip them).
    #[arg(long)]
    pub overwrite: bool,
    /// png, jpeg, bmp, tiff or webp (default: by extension).
    #[arg(long, value_parser = one_of(&Format::ALL, Format::name), hide_possible_values = true)]
    pub format: Option<Format>,
    /// JPEG quality, 1 to 100.
    #[arg(long, default_value_t = 95, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub quality: u8,
    /// Tile side in pixels, 0: whole (default: by memory).
    #[arg(long, value_name = "SIZE")]
    pub tile: Option<usize>,
    /// Overlap between tiles in pixels (default: per model).
    #[arg(long, value_name = "PX")]
    pub tile_overlap: Option<usize>,
    /// Memory budget, e.g. 8G (default: from the job).
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub max_memory: Option<u64>,
    /// Refuse larger images.
    #[arg(long, value_name = "N", default_value_t = image_io::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    /// Print the plan (tiles, peak memory) and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Run the reference path (candle ops, what a GPU runs) on the CPU too: slower, for checks.
    #[arg(long, hide = true)]
    pub reference: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
    /// Only shard K of N, or auto (Slurm, Kubernetes).
    #[arg(long, value_name = "K/N", value_parser = converse::shard::parse)]
    pub shard: Option<ShardSpec>,
    /// Append a JSON line per image to FILE.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Weights to run instead of the released (finetune).
    #[arg(long = "model", value_name = "FILE")]
    pub model_file: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// `8G`, `512M`, `64K` or plain bytes.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
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

/// A noise level on the 0-255 scale: a finite number, 0 or more.
pub fn parse_sigma(s: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("`{s}` is not a noise level (a number from 0, on the 0-255 scale)"))
}

/// A JPEG quality, 1 to 100.
pub fn parse_quality(s: &str) -> Result<u8, String> {
    s.trim()
        .parse::<u8>()
        .ok()
        .filter(|q| (1..=100).contains(q))
        .ok_or_else(|| format!("`{s}` is not a JPEG quality (1 to 100)"))
}

#[derive(Args)]
pub struct EvalArgs {
    /// denoise, sr or deblur.
    #[arg(long, value_parser = one_of(&Task::ALL, Task::name), hide_possible_values = true)]
    pub task: Task,
    /// Folder of clean images (searched recursively).
    #[arg(long, value_name = "DIR")]
    pub dataset: PathBuf,
    /// Blur kernel: FILE, gaussian:S or motion:L,A.
    #[arg(long, value_name = "K", conflicts_with = "kernels")]
    pub kernel: Option<String>,
    /// Several kernels, comma-separated: a run each.
    #[arg(long, value_name = "K1,K2,...", value_delimiter = ',')]
    pub kernels: Vec<String>,
    /// Deblur given the kernel (default: blind).
    #[arg(long)]
    pub with_kernel: bool,
    /// Noise, 0-255 scale (default: 25; deblur 2.55).
    #[arg(long, allow_negative_numbers = true, value_parser = parse_sigma)]
    pub sigma: Option<f64>,
    /// Denoise: JPEG at quality Q (1-100) instead of noise.
    #[arg(long, value_name = "Q", conflicts_with = "sigma", value_parser = parse_quality)]
    pub jpeg: Option<u8>,
    /// Denoise: run the sigma-25 model without rescaling.
    #[arg(long)]
    pub no_rescale: bool,
    /// Seed of numpy's generator, per image.
    #[arg(long, default_value_t = 0)]
    pub seed: u32,
    /// Write the results as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Keep the restored images here (outside the dataset).
    #[arg(long, value_name = "DIR")]
    pub save: Option<PathBuf>,
    /// Replace existing files of --save and --json.
    #[arg(long)]
    pub overwrite: bool,
    /// Weights to run instead of the released (finetune).
    #[arg(long = "model", value_name = "FILE")]
    pub model_file: Option<PathBuf>,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Args)]
pub struct FinetuneArgs {
    /// denoise, sr or deblur.
    #[arg(long, value_parser = one_of(&Task::ALL, Task::name), hide_possible_values = true)]
    pub task: Task,
    /// Clean training images (a folder, recursive).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// The fine-tuned weights (.safetensors).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Noise, 0-255 scale (default: 25; deblur 2.55).
    #[arg(long, allow_negative_numbers = true, value_parser = parse_sigma)]
    pub sigma: Option<f64>,
    /// Denoise: JPEG quality Q (1-100), not noise.
    #[arg(long, value_name = "Q", conflicts_with = "sigma", value_parser = parse_quality)]
    pub jpeg: Option<u8>,
    /// Deblur: blur kernels (default: the standard set).
    #[arg(long, value_name = "K1,K2,...", value_delimiter = ',')]
    pub kernel: Vec<String>,
    /// Deblur: train USRNet, given the kernel.
    #[arg(long)]
    pub with_kernel: bool,
    /// Side of the clean patches (default: 64; sr 128).
    #[arg(long, value_name = "PX")]
    pub patch: Option<usize>,
    /// Patches per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Steps in all (default: as many as --minutes allow).
    #[arg(long, value_name = "N")]
    pub steps: Option<usize>,
    /// Stop after this long, and fit the schedule to it.
    #[arg(long, value_name = "M")]
    pub minutes: Option<f64>,
    /// Learning rate (cosine to 1/100).
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Seed of patches and noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Validation folder: PSNR every --val-every steps.
    #[arg(long, value_name = "DIR")]
    pub val: Option<PathBuf>,
    /// Steps between validations.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub val_every: usize,
    /// Steps between checkpoints.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub checkpoint_every: usize,
    /// Checkpoint file (default: OUT.ckpt.safetensors).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Continue this checkpoint's run (same options).
    #[arg(long, value_name = "CKPT")]
    pub resume: Option<PathBuf>,
    /// Start from these weights, not the released.
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
    /// Append step,loss,lr,val_psnr,seconds to FILE.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Replace OUTPUT; restart an existing checkpoint.
    #[arg(long)]
    pub overwrite: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Args)]
pub struct DegradeArgs {
    /// denoise, sr or deblur.
    #[arg(long, value_parser = one_of(&Task::ALL, Task::name), hide_possible_values = true)]
    pub task: Task,
    /// An image or a folder of images.
    #[arg(short, long, value_name = "IN")]
    pub input: PathBuf,
    /// The degraded image (by extension), or a folder of PNGs.
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
    /// Replace existing outputs (by default they are skipped).
    #[arg(long)]
    pub overwrite: bool,
    /// Noise, 0-255 scale (default: 25; deblur 2.55).
    #[arg(long, allow_negative_numbers = true, value_parser = parse_sigma)]
    pub sigma: Option<f64>,
    /// Denoise: JPEG at quality Q (1-100) instead of noise.
    #[arg(long, value_name = "Q", conflicts_with = "sigma", value_parser = parse_quality)]
    pub jpeg: Option<u8>,
    /// Blur kernel: FILE, gaussian:S or motion:L,A.
    #[arg(long, value_name = "K")]
    pub kernel: Option<String>,
    /// Seed of numpy's legacy generator.
    #[arg(long, default_value_t = 0)]
    pub seed: u32,
}

#[derive(Args)]
pub struct ConvertArgs {
    /// The checkpoint (with --all: a folder of them).
    pub input: PathBuf,
    /// Output file, or folder with --all (default: beside).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Convert every .pth file in the INPUT folder.
    #[arg(long)]
    pub all: bool,
    /// Replace existing outputs (by default they are skipped).
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Precision {
    F32,
    F64,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Golden .safetensors files, or folders of them.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// f32, or f64 to check the maths.
    #[arg(long, value_enum, default_value = "f32", hide_possible_values = true)]
    pub precision: Precision,
    /// Also run each case on the CPU's reference path (the candle ops a GPU runs) and print the
    /// largest difference between the two outputs (the GPU check's tensor comparison).
    #[arg(long, hide = true)]
    pub against_cpu: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("8G"), Ok(8 << 30));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5k"), Ok(1536));
        assert_eq!(parse_bytes("100"), Ok(100));
        assert!(parse_bytes("-1G").is_err());
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn noise_levels_and_qualities_parse() {
        assert_eq!(parse_sigma("50"), Ok(50.0));
        assert_eq!(parse_sigma("0"), Ok(0.0));
        for bad in ["-5", "nan", "inf", "x"] {
            assert!(parse_sigma(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_quality("10"), Ok(10));
        for bad in ["0", "101", "-1", "ten"] {
            assert!(parse_quality(bad).is_err(), "{bad}");
        }
    }
}
