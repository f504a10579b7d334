//! CPU benchmark of the fused kernels' units of work, each on the instruction set this CPU
//! has ([`converse::ops::simd_level`]):
//! - `lanes`: the lane FFT per length, and the direct DFT, Rader's (its sub-plan direct) and
//!   Bluestein's (at a length `2^a` or `3 x 2^a`) for lengths with one large prime factor
//!   (which one the solve takes is marked), then the solve's own plan of the photo lengths
//!   (whose primes the cost model may give nested Rader or other Bluestein lengths);
//!   `LANES=N,...`: only those lengths as planned, one line and two at a time;
//! - `solve`: one group's solve at scale 1 (256 x 256, padding 2 and 6; `SOLVE=HxW+P,...` for
//!   others), its transfer functions made while solving, with the time per grid point of its
//!   passes along the rows and along the columns, its columns transformed two at a time and
//!   one at a time (the solve's choice first);
//! - `scaled`: one group's transfer functions at scale 2 (the SR upsamplers: kernel 2);
//! - `transfer`: one group's transfer-function columns at scale 1 in f64, per kernel size;
//! - `sweep`: the lane FFT at every length from 64 to 8192 (`SWEEP=LO..HI` for others), its
//!   cost per point against the best of the nearest smooth lengths (`2^a 3^b`) above and below;
//!   prints the lengths over 1.5x (`SWEEP_SHOW=R`: over R), the worst ratio and how many
//!   lengths are over 1.5x, 2x, 3x, 4x and 5x.
//!
//! ```sh
//! cargo bench --bench ops                  # all
//! cargo bench --bench ops -- lanes solve   # some
//! ```

use std::collections::HashMap;
use std::time::Instant;

use converse::ops::bench::{factors, GroupSolve, LaneFft, ScaledBuild, TransferColumns};
use converse::ops::profile::{self, OpKind};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The binary's allocator, so that large grids take huge pages as in `converse`.
#[global_allocator]
static ALLOC: converse::alloc::Allocator = converse::alloc::Allocator;

/// Seconds per call of `f`: the best of three batches of about 0.1 s each (the machine may be
/// busy), after one call to warm up.
fn per_call(mut f: impl FnMut(usize)) -> f64 {
    let mut batch = |reps: usize| {
        let t = Instant::now();
        f(reps);
        t.elapsed().as_secs_f64() / reps as f64
    };
    let once = batch(1);
    let reps = ((0.1 / once) as usize).clamp(1, 100_000);
    (0..3).map(|_| batch(reps)).fold(f64::MAX, f64::min)
}

/// Microseconds per transform (of 8 lines) of `fft`.
fn fft_us(mut fft: LaneFft) -> f64 {
    per_call(|reps| fft.run(reps)) * 1e6
}

/// [`fft_us`] with two lines per transform.
fn fft_pairs_us(mut fft: LaneFft) -> f64 {
    per_call(|reps| fft.run_pairs(reps)) * 1e6
}

fn lanes() {
    if let Ok(list) = std::env::var("LANES") {
        for v in list.split(',') {
            match v.trim().parse::<usize>() {
                Ok(n) if n >= 2 => planned(n),
                _ => println!("LANES: {v:?} is not a length of 2 or more"),
            }
        }
        return;
    }
    for m in [
        216, 243, 256, 288, 384, 432, 512, 648, 768, 864, 1024, 1296, 1536, 2048, 3072, 4096,
    ] {
        let t = fft_us(LaneFft::new(m));
        let t2 = fft_pairs_us(LaneFft::new(m));
        println!(
            "m={m:5} {:?}: {t:8.2} us, {:.2} ns per point; in pairs {t2:8.2} us",
            factors(m),
            t * 1e3 / (m as f64 * (m as f64).log2())
        );
    }
    let primes = [
        17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 67, 79, 89, 101, 127, 151, 181, 211, 251, 307, 331,
        353, 373, 383, 389, 401, 421, 457, 503,
    ];
    let photo = [260, 268, 778, 1006, 1028, 1031, 3004, 3012, 4006, 4007];
    let mut at = HashMap::new();
    for n in primes.iter().map(|p| 2 * p).chain(photo) {
        let p = *factors(n).last().unwrap_or(&1);
        let max = usize::MAX;
        let (d, r, b) = (
            fft_us(LaneFft::with_thresholds(n, max, max)),
            fft_us(LaneFft::with_thresholds(n, p - 1, max)),
            fft_us(LaneFft::with_thresholds(n, max, p - 1)),
        );
        let plan = LaneFft::new(n);
        let used = if plan.rader_primes().contains(&p) {
            "rader"
        } else if plan.bluestein_primes().contains(&p) {
            "bluestein"
        } else {
            "direct"
        };
        println!(
            "n={n:5} ({:?}): direct {d:9.2} us, rader {r:8.2} us, bluestein {b:8.2} us; {used}",
            factors(n),
        );
        at.insert(n, (d, plan));
    }
    for n in photo {
        planned(n);
    }
    // The transforms of one group at 3004 x 4006 (scale 1): rows and columns, both ways.
    let (d4, d3) = (at[&4006].0, at[&3004].0);
    let (u4, u3) = (fft_us(LaneFft::new(4006)), fft_us(LaneFft::new(3004)));
    let group = |t4: f64, t3: f64| 2.0 * (3004.0 * t4 + 4006.0 * t3) / 1e3;
    let (d, u) = (group(d4, d3), group(u4, u3));
    println!("one group's FFTs at 3004 x 4006: direct {d:.0} ms, as planned {u:.0} ms");
}

/// Prints the solve's plan of length `n`: its time per transform of 8 lines, one line and two at
/// a time.
fn planned(n: usize) {
    let (one, two) = (fft_us(LaneFft::new(n)), fft_pairs_us(LaneFft::new(n)));
    println!(
        "n={n:5} {:?} as planned: {one:8.2} us per transform ({:.2} ns per point), \
         {two:8.2} in pairs ({:.2})",
        factors(n),
        one * 1e3 / n as f64,
        two * 1e3 / n as f64,
    );
}

/// Nanoseconds per `n log2(n)` of one transform of length `n`: the best of three batches of
/// about 10 ms.
fn quick_ns(n: usize) -> f64 {
    let mut fft = LaneFft::new(n);
    let mut batch = |reps: usize| {
        let t = Instant::now();
        fft.run(reps);
        t.elapsed().as_secs_f64() / reps as f64
    };
    let once = batch(1);
    let reps = ((0.01 / once) as usize).clamp(1, 100_000);
    let t = (0..3).map(|_| batch(reps)).fold(f64::MAX, f64::min);
    t * 1e9 / (n as f64 * (n as f64).log2())
}

fn smooth(mut n: usize) -> bool {
    for p in [2, 3] {
        while n.is_multiple_of(p) {
            n /= p;
        }
    }
    n == 1
}

fn sweep() -> Res<()> {
    let range = std::env::var("SWEEP").unwrap_or_else(|_| "64..8192".into());
    let (lo, hi) = range.split_once("..").ok_or("SWEEP is LO..HI")?;
    let (lo, hi): (usize, usize) = (lo.parse()?, hi.parse()?);
    // Lengths over this ratio are printed (`SWEEP_SHOW`, default 1.5).
    let show: f64 = std::env::var("SWEEP_SHOW").map_or(Ok(1.5), |s| s.parse())?;
    let mut cost: HashMap<usize, f64> = HashMap::new();
    let mut at = |n: usize| *cost.entry(n).or_insert_with(|| quick_ns(n));
    let (mut worst, mut worst_n) = (0.0f64, 0);
    // Lengths over each of these ratios.
    let limits = [1.5, 2.0, 3.0, 4.0, 5.0];
    let mut over = [0usize; 5];
    for n in lo.max(2)..=hi {
        let below = (1..=n).rev().find(|&m| smooth(m)).unwrap_or(1).max(2);
        let above = (n..).find(|&m| smooth(m)).unwrap_or(n);
        let best = at(below).min(at(above));
        let ratio = at(n) / best;
        for (count, limit) in over.iter_mut().zip(limits) {
            *count += usize::from(ratio > limit);
        }
        if ratio > show {
            println!("n={n:5} {:?}: {ratio:.2}x of {best:.3} ns", factors(n));
        }
        if ratio > worst {
            (worst, worst_n) = (ratio, n);
        }
    }
    let counts: Vec<String> = over
        .iter()
        .zip(limits)
        .map(|(n, limit)| format!("{n} over {limit}x"))
        .collect();
    println!(
        "lengths {lo}..={hi}: worst {worst:.2}x at n={worst_n} {:?}; {}",
        factors(worst_n),
        counts.join(", ")
    );
    Ok(())
}

fn solve() -> Res<()> {
    let sizes = match std::env::var("SOLVE") {
        Ok(list) => list
            .split(',')
            .map(|s| -> Option<(usize, usize, usize)> {
                let (hw, pad) = s.split_once('+')?;
                let (h, w) = hw.split_once('x')?;
                Some((h.parse().ok()?, w.parse().ok()?, pad.parse().ok()?))
            })
            .collect::<Option<Vec<_>>>()
            .ok_or("SOLVE is a list of HxW+PAD")?,
        Err(_) => vec![(256, 256, 2), (256, 256, 6)],
    };
    // The profile counts a pass's time over the pool's threads; one group runs on one.
    let threads = rayon::current_num_threads() as f64;
    for (h, w, pad) in sizes {
        let chosen = GroupSolve::new((h, w), pad, 3)?.column_pairs();
        // The solve's choice first, then the other.
        for pairs in [chosen, !chosen] {
            let mut g = GroupSolve::new((h, w), pad, 3)?.with_column_pairs(pairs);
            profile::reset();
            profile::enable(true);
            let ms = per_call(|reps| (0..reps).for_each(|_| g.run())) * 1e3;
            profile::enable(false);
            let snap = profile::snapshot();
            let pass = |k: OpKind| {
                let (secs, work) = snap[k as usize];
                secs * threads * 1e9 / work.max(1.0)
            };
            let share = |k: OpKind| {
                snap[k as usize].0 * threads / (snap.iter().map(|s| s.0).sum::<f64>() * threads)
            };
            println!(
                "{h}x{w}+2*{pad} ({:?} x {:?}), columns {} at a time{}: {ms:.2} ms per group; \
                 rows {:.2} ns per point, columns {:.2} (transfer functions made while \
                 solving: {:.0}% of the group)",
                factors(h + 2 * pad),
                factors(w + 2 * pad),
                if pairs { "two" } else { "one" },
                if pairs == chosen {
                    " (the solve's choice)"
                } else {
                    ""
                },
                pass(OpKind::Rows),
                pass(OpKind::Columns),
                share(OpKind::Transfer) * 100.0
            );
        }
    }
    Ok(())
}

fn scaled() -> Res<()> {
    let mut b = ScaledBuild::new(256, 2, 2, 2)?;
    let ms = per_call(|reps| (0..reps).for_each(|_| b.run())) * 1e3;
    println!("s=2 build: {ms:.2} ms per group");
    Ok(())
}

fn transfer() -> Res<()> {
    for (k, hp) in [(7, 268), (5, 136), (3, 260)] {
        let mut t = TransferColumns::new(hp, k)?;
        let ms = per_call(|reps| (0..reps).for_each(|_| t.run())) * 1e3;
        println!("k={k} {hp}x{hp}: {ms:.3} ms per group");
    }
    Ok(())
}

fn main() -> Res<()> {
    // `cargo bench` passes `--bench`; the other arguments pick parts.
    let picked: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants = |name: &str| picked.is_empty() || picked.iter().any(|p| p == name);
    println!("instruction set: {}", converse::ops::simd_level());
    if wants("lanes") {
        lanes();
    }
    if wants("solve") {
        solve()?;
    }
    if wants("scaled") {
        scaled()?;
    }
    if wants("transfer") {
        transfer()?;
    }
    if wants("sweep") {
        sweep()?;
    }
    Ok(())
}
