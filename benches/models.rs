//! CPU benchmark of the four released models. Per case:
//! - **what users run**: the whole `converse restore` command on one image, cold (a fresh
//!   process each round), its wall time and peak resident memory; with the official code
//!   configured, the official forward pass in a fresh Python process in the same round, and
//!   the paired ratio (official forward over our whole command);
//! - in a child process, the first forward pass profiled per op kind (the transfer functions'
//!   share included) against the GEMM and FFT rates measured at start, then warm passes.
//!
//! ```sh
//! cargo bench --bench models                     # all cases
//! cargo bench --bench models -- dncnn256 sr128   # some
//! cargo bench --bench models -- conversenet@4000x3000   # a model at any input size (W x H)
//! ```
//!
//! The profile counts, besides each op kind, the solve's passes along the grid's rows and along
//! its columns (ns per grid point of one group of 16 channels).
//!
//! Environment: `CONVERSE_WEIGHTS` (default `../shared/weights`), `CONVERSE_BENCH_JSON` (default
//! `target/bench/models.json`), `CONVERSE_BENCH_REPS` (warm passes, default 3),
//! `CONVERSE_BENCH_ROUNDS` (cold rounds, default 3). With `CONVERSE_OFFICIAL` (a copy of the
//! official repository), `CONVERSE_OFFICIAL_SCRIPT` (`benches/official_bench.py`) and optionally
//! `CONVERSE_PYTHON`, each round also runs the official code.

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

/// The models a case named `model@WxH` may name, with their input channels.
const MODELS: [(&str, ModelKind, usize); 4] = [
    ("dncnn", ModelKind::DnCNN, 1),
    ("sr", ModelKind::SRResNet, 3),
    ("conversenet", ModelKind::ConverseNet, 3),
    ("usrnet", ModelKind::USRNet, 3),
];

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// One case: `(name, model, channels, (h, w))`, and whether the official script knows it.
struct Case {
    name: String,
    kind: ModelKind,
    c: usize,
    hw: (usize, usize),
    listed: bool,
}

/// The case a command-line name picks: one of [`CASES`], or `model@WxH`.
fn case(name: &str) -> Res<Case> {
    if let Some(&(_, kind, c, side)) = CASES.iter().find(|c| c.0 == name) {
        return Ok(Case {
            name: name.into(),
            kind,
            c,
            hw: (side, side),
            listed: true,
        });
    }
    let bad = || format!("unknown case {name}: one of the listed ones, or model@WxH");
    let (model, size) = name.split_once('@').ok_or_else(bad)?;
    let &(_, kind, c) = MODELS.iter().find(|m| m.0 == model).ok_or_else(bad)?;
    let (w, h) = size.split_once('x').ok_or_else(bad)?;
    let hw = (h.parse().map_err(|_| bad())?, w.parse().map_err(|_| bad())?);
    Ok(Case {
        name: name.into(),
        kind,
        c,
        hw,
        listed: false,
    })
}

/// The binary's allocator, so that the in-process passes fault memory in as `converse` does.
#[global_allocator]
static ALLOC: converse::alloc::Allocator = converse::alloc::Allocator;

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
    // As the `converse` binary does.
    converse::alloc::reuse_large_blocks();
    let Case {
        kind,
        c,
        hw: (h, w),
        ..
    } = case(name)?;
    let reps: usize = std::env::var("CONVERSE_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dev = Device::Cpu;
    let model = WeightsLocator::new(Some(&weights_dir())).load(kind, DType::F32, &dev)?;
    let x = Tensor::rand(0f32, 1.0, (1, c, h, w), &dev)?;
    let k = kind
        .info()
        .takes_kernel
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
            OpKind::Rows | OpKind::Columns => {
                format!("\"ns_per_point\": {:.3}", secs * 1e9 / work.max(1.0))
            }
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
    // Then warm calls (the fused kernels make the transfer functions on every call).
    let mut times = vec![];
    for _ in 0..reps {
        let s = Instant::now();
        run()?;
        times.push(s.elapsed().as_secs_f64() * 1e3);
    }
    Ok(format!(
        "{{\"case\": \"{name}\", \"model\": \"{kind}\", \"input\": [1, {c}, {h}, {w}], \
         \"ms_per_image\": {:.1}, \"times_ms\": {times:.1?}, \"first_ms\": {:.1}, \
         \"first_ops\": {{{ops}}}, \"peak_rss_mb\": {:.0}}}",
        if times.is_empty() {
            total * 1e3
        } else {
            median(times.clone())
        },
        total * 1e3,
        vm_hwm_mb()
    ))
}

/// Runs `cmd` to the end: `(wall seconds, peak RSS MiB, stdout)`; its stderr is passed on.
fn measure(cmd: &mut Command) -> Res<(f64, f64, String)> {
    use std::io::Read;
    let start = Instant::now();
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn()?;
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .ok_or("no stdout")?
        .read_to_string(&mut stdout)?;
    #[cfg(target_os = "linux")]
    let (ok, rss) = {
        let mut status = 0;
        // SAFETY: rusage is plain data; wait4 reaps this child and fills it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
        let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        (ok, usage.ru_maxrss as f64 / 1024.0)
    };
    #[cfg(not(target_os = "linux"))]
    let (ok, rss) = (child.wait()?.success(), f64::NAN);
    let wall = start.elapsed().as_secs_f64();
    if !ok {
        return Err(format!("{cmd:?} failed").into());
    }
    Ok((wall, rss, stdout))
}

/// The case's input image, written once under `target/bench`.
fn input_image(name: &str, c: usize, (h, w): (usize, usize)) -> Res<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.png"));
    let v = |x: usize, y: usize, ch: usize| {
        let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
        let t = ((x * 7 + y * 13 + ch * 5) % 23) as f32 / 23.0;
        let v = 0.5 + 0.3 * (6.0 * fx + ch as f32).sin() * (4.0 * fy).cos() + 0.1 * t;
        (v.clamp(0.0, 1.0) * 255.0) as u8
    };
    let (h, w) = (h as u32, w as u32);
    if c == 1 {
        image::GrayImage::from_fn(w, h, |x, y| image::Luma([v(x as usize, y as usize, 0)]))
            .save(&path)?;
    } else {
        image::RgbImage::from_fn(w, h, |x, y| {
            let (x, y) = (x as usize, y as usize);
            image::Rgb([v(x, y, 0), v(x, y, 1), v(x, y, 2)])
        })
        .save(&path)?;
    }
    Ok(path)
}

/// Cold rounds of `converse restore` on one image, each beside the official forward pass when
/// configured; returns the JSON fields and prints a line.
fn cold(case: &Case) -> Res<String> {
    let Case {
        ref name,
        kind,
        c,
        hw,
        listed,
    } = *case;
    let rounds: usize = std::env::var("CONVERSE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let input = input_image(name, c, hw)?;
    let output = input.with_file_name(format!("{name}-out.png"));
    let task = kind.info().task.name();
    let official = std::env::var("CONVERSE_OFFICIAL")
        .ok()
        .zip(std::env::var("CONVERSE_OFFICIAL_SCRIPT").ok())
        .filter(|_| listed);
    let (mut ours, mut ours_rss, mut theirs, mut theirs_rss, mut ratios) =
        (vec![], 0f64, vec![], 0f64, vec![]);
    for _ in 0..rounds {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_converse"));
        cmd.args(["restore", "-q", "--overwrite", "--task", task])
            .arg("--weights")
            .arg(weights_dir())
            .arg("-i")
            .arg(&input)
            .arg("-o")
            .arg(&output);
        if kind.info().takes_kernel {
            cmd.args(["--kernel", "gaussian:1.6"]);
        }
        let (wall, rss, _) = measure(&mut cmd)?;
        if !output.exists() {
            return Err(format!("{name}: converse restore wrote nothing").into());
        }
        ours.push(wall * 1e3);
        ours_rss = ours_rss.max(rss);
        if let Some((repo, script)) = &official {
            let python = std::env::var("CONVERSE_PYTHON").unwrap_or_else(|_| "python3".into());
            let mut cmd = Command::new(python);
            cmd.arg(script).arg(repo).arg(weights_dir()).arg(name);
            let (_, rss, stdout) = measure(&mut cmd)?;
            let ms = stdout
                .split("\"ms_per_image\": ")
                .nth(1)
                .and_then(|r| r.split([',', '}']).next()?.trim().parse::<f64>().ok())
                .ok_or_else(|| format!("official {name} printed no timing: {stdout}"))?;
            theirs.push(ms);
            theirs_rss = theirs_rss.max(rss);
            ratios.push(ms / (wall * 1e3));
        }
    }
    if ours.is_empty() {
        return Ok("\"restore_ms\": null".into());
    }
    let mut line = format!(
        "{name:>14}  converse restore (whole command, cold): {:.0} ms [{:.0}-{:.0}], peak {ours_rss:.0} MiB",
        median(ours.clone()),
        ours.iter().cloned().fold(f64::INFINITY, f64::min),
        ours.iter().cloned().fold(0.0, f64::max),
    );
    let mut json = format!(
        "\"restore_ms\": {:.1}, \"restore_times_ms\": {ours:.1?}, \"restore_peak_rss_mb\": {ours_rss:.0}",
        median(ours.clone())
    );
    if !ratios.is_empty() {
        let ratio = median(ratios.clone());
        write!(
            line,
            "; official forward {:.0} ms, peak {theirs_rss:.0} MiB; {ratio:.1}x [{:.1}-{:.1}]",
            median(theirs.clone()),
            ratios.iter().cloned().fold(f64::INFINITY, f64::min),
            ratios.iter().cloned().fold(0.0, f64::max),
        )?;
        write!(
            json,
            ", \"official_forward_ms\": {:.1}, \"official_times_ms\": {theirs:.1?}, \"official_peak_rss_mb\": {theirs_rss:.0}, \"speedup\": {ratio:.2}, \"speedups\": {ratios:.2?}",
            median(theirs.clone())
        )?;
    }
    println!("{line}");
    Ok(json)
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
    let picked = if args.is_empty() {
        CASES.iter().map(|c| case(c.0)).collect::<Res<Vec<_>>>()?
    } else {
        args.iter().map(|a| case(a)).collect::<Res<Vec<_>>>()?
    };
    let prims = primitives()?;
    for (k, v, what) in &prims {
        println!("{k:>12} {v:8.1}   {what}");
    }
    let mut cases = vec![];
    for case in &picked {
        let name = &case.name;
        let cold = cold(case)?;
        let out = Command::new(std::env::current_exe()?)
            .args(["--child", name])
            .output()?;
        if !out.status.success() {
            return Err(format!("{name}: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        let ours = String::from_utf8(out.stdout)?.trim().to_owned();
        println!("{ours}");
        cases.push(format!("{}, {cold}}}", ours.trim_end_matches('}')));
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
