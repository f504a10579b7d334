//! CPU benchmark of the four released models: milliseconds per image, the time per op kind
//! against the GEMM and FFT rates measured at start, and peak resident memory per model (each
//! case runs in a child process, so its `VmHWM` is its own).
//!
//! ```sh
//! cargo bench --bench models                     # all cases
//! cargo bench --bench models -- dncnn256 sr128   # some
//! ```
//!
//! Environment: `CONVERSE_WEIGHTS` (default `../shared/weights`), `CONVERSE_BENCH_JSON` (default
//! `target/bench/models.json`), `CONVERSE_BENCH_REPS` (timed runs per case after one warm-up,
//! default 3). With `CONVERSE_OFFICIAL` (a copy of the official repository),
//! `CONVERSE_OFFICIAL_SCRIPT` (a script that times one case, see the README) and optionally
//! `CONVERSE_PYTHON`, each case is also run with the official PyTorch code under
//! `/usr/bin/time -v`, right after ours, and the ratio is reported.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use converse::ops::profile::{self, OpKind};
use converse::ops::{irfft2, rfft2};
use converse::weights::WeightsLocator;
use converse::ModelKind;

/// `(name, model, channels, side)`.
const CASES: [(&str, ModelKind, usize, usize); 5] = [
    ("dncnn256", ModelKind::DnCNN, 1, 256),
    ("dncnn512", ModelKind::DnCNN, 1, 512),
    ("sr128", ModelKind::SRResNet, 3, 128),
    ("conversenet256", ModelKind::ConverseNet, 3, 256),
    ("usrnet256", ModelKind::USRNet, 3, 256),
];

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median seconds of `reps` runs of `f` after one warm-up.
fn time(reps: usize, mut f: impl FnMut() -> candle_core::Result<()>) -> Res<f64> {
    f()?;
    let mut t = vec![];
    for _ in 0..reps {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    Ok(median(t))
}

/// The primitives' rates on this machine: GEMM GFLOP/s, FFT nominal GFLOP/s (and ms per round
/// trip) and a streaming pass's GB/s.
fn primitives() -> Res<Vec<(&'static str, f64, String)>> {
    let dev = Device::Cpu;
    let w = Tensor::rand(-1f32, 1.0, (128, 64), &dev)?;
    let x = Tensor::rand(-1f32, 1.0, (64, 65536), &dev)?;
    let s = time(5, || w.matmul(&x).map(drop))?;
    let gemm = 2.0 * 128.0 * 64.0 * 65536.0 / s * 1e-9;
    let planes = Tensor::rand(-1f32, 1.0, (128, 268, 268), &dev)?;
    let s_fft = time(5, || irfft2(&rfft2(&planes)?, 268).map(drop))?;
    let fft = profile::fft_flops(128, 268, 268) / s_fft * 1e-9;
    let big = Tensor::rand(-1f32, 1.0, (128, 65536), &dev)?;
    let s = time(5, || big.affine(1.5, 0.5).map(drop))?;
    let stream = 2.0 * 4.0 * 128.0 * 65536.0 / s * 1e-9;
    Ok(vec![
        (
            "gemm_gflops",
            gemm,
            "matmul [128x64]x[64x65536], f32 (candle, gemm crate)".into(),
        ),
        (
            "fft_gflops",
            fft,
            format!(
                "rfft2+irfft2 of 128 planes 268x268, f32: {:.1} ms; nominal 5 N log2 N per round trip",
                s_fft * 1e3
            ),
        ),
        (
            "stream_gbps",
            stream,
            "x*a+b over 128x65536 f32 (read + write)".into(),
        ),
    ])
}

fn vm_hwm_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn weights_dir() -> PathBuf {
    std::env::var_os("CONVERSE_WEIGHTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/weights"))
}

/// Runs one case in this process and returns its JSON object.
fn child(name: &str) -> Res<String> {
    let &(_, kind, c, side) = CASES
        .iter()
        .find(|c| c.0 == name)
        .ok_or_else(|| format!("unknown case {name}"))?;
    let reps: usize = std::env::var("CONVERSE_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dev = Device::Cpu;
    let model = WeightsLocator::new(Some(&weights_dir())).load(kind, DType::F32, &dev)?;
    let x = Tensor::rand(0f32, 1.0, (1, c, side, side), &dev)?;
    let k = (kind == ModelKind::USRNet)
        .then(|| -> candle_core::Result<Tensor> {
            let k = Tensor::rand(0f32, 1.0, (1, 1, 7, 7), &dev)?;
            k.broadcast_div(&k.sum_all()?)
        })
        .transpose()?;
    let run = || -> candle_core::Result<()> {
        model
            .forward(&x, k.as_ref())
            .map(drop)
            .map_err(candle_core::Error::msg)
    };
    // The first call, profiled: what a one-image run does (every transfer function built).
    profile::reset();
    profile::enable(true);
    let s = Instant::now();
    run()?;
    let total = s.elapsed().as_secs_f64();
    profile::enable(false);
    let mut ops = String::new();
    let mut counted = 0.0;
    for (kind, (secs, work)) in OpKind::ALL.into_iter().zip(profile::snapshot()) {
        counted += secs;
        let rate = match kind {
            OpKind::NormAct => format!("\"ns_per_value\": {:.3}", secs * 1e9 / work.max(1.0)),
            OpKind::Transfer => format!("\"share\": {:.3}", secs / total),
            _ => format!("\"gflops\": {:.2}", work / secs.max(1e-12) * 1e-9),
        };
        write!(
            ops,
            "\"{}\": {{\"ms\": {:.1}, {rate}}}, ",
            kind.name(),
            secs * 1e3
        )?;
    }
    write!(ops, "\"rest\": {{\"ms\": {:.1}}}", (total - counted) * 1e3)?;
    // Then the next calls, which reuse the kept transfer functions.
    let mut times = vec![];
    for _ in 0..reps {
        let s = Instant::now();
        run()?;
        times.push(s.elapsed().as_secs_f64() * 1e3);
    }
    Ok(format!(
        "{{\"case\": \"{name}\", \"model\": \"{kind}\", \"input\": [1, {c}, {side}, {side}], \
         \"ms_per_image\": {:.1}, \"times_ms\": {times:.1?}, \"first_ms\": {:.1}, \
         \"first_ops\": {{{ops}}}, \"peak_rss_mb\": {:.0}}}",
        median(times.clone()),
        total * 1e3,
        vm_hwm_mb()
    ))
}

/// Runs the official code on `name` under `/usr/bin/time -v`: `(ms per image, peak RSS MiB)`.
fn official(name: &str) -> Option<(f64, f64)> {
    let repo = std::env::var("CONVERSE_OFFICIAL").ok()?;
    let script = std::env::var("CONVERSE_OFFICIAL_SCRIPT").ok()?;
    let python = std::env::var("CONVERSE_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(python)
        .arg(script)
        .arg(repo)
        .arg(weights_dir())
        .arg(name)
        .output()
        .ok()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let field = |text: &str, key: &str| -> Option<f64> {
        let rest = &text[text.find(key)? + key.len()..];
        let end = rest.find([',', '}', '\n']).unwrap_or(rest.len());
        rest[..end].trim().parse().ok()
    };
    let ms = field(&stdout, "\"ms_per_image\":");
    let rss = field(&stderr, "Maximum resident set size (kbytes):");
    if ms.is_none() {
        eprintln!("official {name} failed:\n{stderr}");
    }
    Some((ms?, rss? / 1024.0))
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if let [flag, name] = args.as_slice() {
        if flag == "--child" {
            println!("{}", child(name)?);
            return Ok(());
        }
    }
    let picked: Vec<_> = CASES
        .iter()
        .filter(|c| args.is_empty() || args.iter().any(|a| a == c.0))
        .collect();
    let prims = primitives()?;
    for (k, v, what) in &prims {
        println!("{k:>12} {v:8.1}   {what}");
    }
    let mut cases = vec![];
    for &&(name, ..) in &picked {
        let out = Command::new(std::env::current_exe()?)
            .args(["--child", name])
            .output()?;
        if !out.status.success() {
            return Err(format!("{name}: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        let ours = String::from_utf8(out.stdout)?.trim().to_owned();
        println!("{ours}");
        let mut json = ours.trim_end_matches('}').to_owned();
        if let Some((ms, rss)) = official(name) {
            let our_ms = ours
                .split("\"ms_per_image\": ")
                .nth(1)
                .and_then(|r| r.split(',').next()?.parse::<f64>().ok())
                .unwrap_or(f64::NAN);
            println!(
                "{name:>14}  official {ms:.0} ms, peak {rss:.0} MiB; speed-up {:.1}x",
                ms / our_ms
            );
            write!(
                json,
                ", \"official_ms_per_image\": {ms:.1}, \"official_peak_rss_mb\": {rss:.0}, \
                 \"speedup\": {:.2}",
                ms / our_ms
            )?;
        }
        json.push('}');
        cases.push(json);
    }
    let prims = prims
        .iter()
        .map(|(k, v, what)| format!("\"{k}\": {v:.2}, \"{k}_what\": \"{what}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let json = format!(
        "{{\"threads\": {}, \"primitives\": {{{prims}}}, \"cases\": [\n  {}\n]}}\n",
        rayon::current_num_threads(),
        cases.join(",\n  ")
    );
    let path = std::env::var_os("CONVERSE_BENCH_JSON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench/models.json")
        });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, json)?;
    println!("wrote {}", path.display());
    Ok(())
}
