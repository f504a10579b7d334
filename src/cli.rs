//! The command line: every subcommand's arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use converse::device::DeviceSpec;
use converse::image_io::{self, Format};
use converse::restore::Task;
use converse::shard::ShardSpec;

/// Image restoration with the released ConverseNet models (ICCV 2025): denoising, x4
/// super-resolution and deblurring.
#[derive(Parser)]
#[command(name = "converse", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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

/// Where the models come from and where they run: every command that runs one takes these.
#[derive(Args)]
pub struct ModelArgs {
    /// Folder holding the weights (.pth or .safetensors); see also $CONVERSE_WEIGHTS.
    #[arg(long, value_name = "DIR")]
    pub weights: Option<PathBuf>,
    /// cpu, cuda or cuda:N (default: cuda if built with it and present, else cpu).
    #[arg(long)]
    pub device: Option<DeviceSpec>,
}

#[derive(Args)]
pub struct DemoArgs {
    /// Where to write the before/after panels.
    #[arg(short, long, default_value = "converse-demo")]
    pub output: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Args)]
pub struct RestoreArgs {
    #[arg(long, value_enum)]
    pub task: Task,
    /// An image, or a folder of images.
    #[arg(short, long)]
    pub input: PathBuf,
    /// The restored image (a file for a file, a folder for a folder).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Deblur with this known kernel (Converse-USRNet): .npy, a PSF image, a text matrix,
    /// gaussian:SIGMA or motion:LENGTH,ANGLE. Without it, deblurring is blind (ConverseNet).
    #[arg(long, value_name = "K")]
    pub kernel: Option<String>,
    /// The kernel is a correlation filter: flip it (kernels are taken as in
    /// scipy.ndimage.convolve).
    #[arg(long, requires = "kernel")]
    pub kernel_flip: bool,
    /// Denoise: write a grayscale result from a colour image.
    #[arg(long)]
    pub gray: bool,
    /// SR scale; the released model is x4, the only value accepted.
    #[arg(long)]
    pub scale: Option<usize>,
    /// Self-ensemble: average over the 8 flips and rotations (8x the time).
    #[arg(long)]
    pub x8: bool,
    /// Descend into subfolders of a folder input (the structure is kept).
    #[arg(short, long)]
    pub recursive: bool,
    /// Replace existing outputs (by default they are skipped).
    #[arg(long)]
    pub overwrite: bool,
    /// Output format (default: from the output's extension; for folders, each input's own).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// JPEG quality, 1-100.
    #[arg(long, default_value_t = 95, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub quality: u8,
    /// Tile side in pixels (0: never tile; default: whole when the image fits --max-memory,
    /// else the largest tiles that do).
    #[arg(long, value_name = "SIZE")]
    pub tile: Option<usize>,
    /// Overlap between tiles, in pixels (default: how far the model's output depends on its
    /// input, measured per model; with --tile, at most a quarter of the tile).
    #[arg(long, value_name = "PX")]
    pub tile_overlap: Option<usize>,
    /// Memory budget for a model run, e.g. 8G or 512M (default: 9/10 of what the job's cgroup
    /// limit leaves, or half the available memory when that is less; --dry-run says which).
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub max_memory: Option<u64>,
    /// Refuse images with more pixels than this (decompression bombs).
    #[arg(long, value_name = "N", default_value_t = image_io::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    /// Print the plan (one line per input: model, whole or tiles, estimated peak memory) and
    /// exit, reading no weights and writing nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
    /// Restore only shard K of N (0 to N-1) of the images, balanced by estimated work. `auto`: a
    /// Slurm job array's task (SLURM_ARRAY_TASK_ID less _MIN, of _COUNT); `auto/N`: the
    /// scheduler's index as is (SLURM_ARRAY_TASK_ID, or JOB_COMPLETION_INDEX of a Kubernetes
    /// Indexed Job) of N.
    #[arg(long, value_name = "K/N|auto|auto/N", value_parser = converse::shard::parse)]
    pub shard: Option<ShardSpec>,
    /// Append one JSON line per image to FILE as it finishes: input, output, status (restored,
    /// skipped or failed), error, seconds, shard.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
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

#[derive(Args)]
pub struct EvalArgs {
    #[arg(long, value_enum)]
    pub task: Task,
    /// Folder of clean images (searched recursively).
    #[arg(long, value_name = "DIR")]
    pub dataset: PathBuf,
    /// Blur kernel for --task deblur (.npy, PSF image, text, gaussian:S, motion:L,A).
    #[arg(long, value_name = "K", conflicts_with = "kernels")]
    pub kernel: Option<String>,
    /// Several kernels, comma-separated: one run each.
    #[arg(long, value_name = "K1,K2,...", value_delimiter = ',')]
    pub kernels: Vec<String>,
    /// Deblur with Converse-USRNet, given the kernel (default: blind ConverseNet).
    #[arg(long)]
    pub with_kernel: bool,
    /// Noise level on the 0-255 scale (default: 25 for denoise, 2.55 for deblur).
    #[arg(long)]
    pub sigma: Option<f64>,
    /// Seed of numpy's legacy generator, reset for every image as the official scripts do.
    #[arg(long, default_value_t = 0)]
    pub seed: u32,
    /// Write the results as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Keep the restored images in this folder.
    #[arg(long, value_name = "DIR")]
    pub save: Option<PathBuf>,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Args)]
pub struct DegradeArgs {
    #[arg(long, value_enum)]
    pub task: Task,
    /// An image or a folder of images.
    #[arg(short, long)]
    pub input: PathBuf,
    /// The degraded image (or folder, for a folder input); written as PNG unless the extension
    /// says otherwise.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Noise level on the 0-255 scale (default: 25 for denoise, 2.55 for deblur).
    #[arg(long)]
    pub sigma: Option<f64>,
    /// Blur kernel for --task deblur.
    #[arg(long, value_name = "K")]
    pub kernel: Option<String>,
    /// Seed of numpy's legacy generator.
    #[arg(long, default_value_t = 0)]
    pub seed: u32,
}

#[derive(Args)]
pub struct ConvertArgs {
    /// The checkpoint to convert (with --all: a folder of them).
    pub input: PathBuf,
    /// Output file (default: INPUT with .safetensors); with --all, the output folder (default:
    /// the input folder).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Convert every .pth file in the INPUT folder.
    #[arg(long)]
    pub all: bool,
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
    /// Arithmetic precision (f64 checks the maths itself; the bound stays that of f32).
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: Precision,
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
}
