//! Cumulative timers per op kind, for the benchmark's breakdown. Off by default; while off a
//! timer costs one relaxed atomic load and no clock read.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// What a timed region does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// 1x1 convolutions (matrix products); work in flops.
    Gemm,
    /// The Converse2D solves (pad, FFT, filter, inverse FFT, crop); work in nominal FFT flops
    /// `5 N log2 N` per real round trip of `N` points.
    Fft,
    /// LayerNorm, GELU and their fused passes; work in values written.
    NormAct,
    /// Building Converse2D transfer functions; work in frequencies built.
    Transfer,
}

impl OpKind {
    pub const ALL: [OpKind; 4] = [Self::Gemm, Self::Fft, Self::NormAct, Self::Transfer];

    pub fn name(self) -> &'static str {
        match self {
            Self::Gemm => "gemm",
            Self::Fft => "fft",
            Self::NormAct => "norm_act",
            Self::Transfer => "transfer",
        }
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
static WORK: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// Turns the timers on or off.
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Zeroes all counters.
pub fn reset() {
    for c in NANOS.iter().chain(&WORK) {
        c.store(0, Ordering::Relaxed);
    }
}

/// Seconds and work counted per kind since the last [`reset`], in [`OpKind::ALL`] order.
pub fn snapshot() -> [(f64, f64); 4] {
    OpKind::ALL.map(|k| {
        let i = k as usize;
        (
            NANOS[i].load(Ordering::Relaxed) as f64 * 1e-9,
            WORK[i].load(Ordering::Relaxed) as f64,
        )
    })
}

thread_local! {
    /// Time counted by [`time_nested`] regions on this thread, for the region around them to
    /// leave out.
    static NESTED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Times a region until dropped, adding `work` units to `kind`. Regions nest only through
/// [`time_nested`].
pub struct Timer(Option<TimerState>);

struct TimerState {
    kind: OpKind,
    work: u64,
    start: Instant,
    share: u64,
    /// [`NESTED`] at the start (outer regions), or `None` (a nested one).
    nested_at_start: Option<u64>,
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            let mut nanos = t.start.elapsed().as_nanos() as u64 / t.share;
            match t.nested_at_start {
                Some(n0) => nanos = nanos.saturating_sub(NESTED.with(|n| n.get()) - n0),
                None => NESTED.with(|n| n.set(n.get() + nanos)),
            }
            NANOS[t.kind as usize].fetch_add(nanos, Ordering::Relaxed);
            WORK[t.kind as usize].fetch_add(t.work, Ordering::Relaxed);
        }
    }
}

fn start(kind: OpKind, work: impl FnOnce() -> f64, share: u64, nested: bool) -> Timer {
    Timer(ENABLED.load(Ordering::Relaxed).then(|| TimerState {
        kind,
        work: work() as u64,
        start: Instant::now(),
        share,
        nested_at_start: (!nested).then(|| NESTED.with(|n| n.get())),
    }))
}

/// A [`Timer`] for a region that runs on one of the pool's threads while the others run
/// the same kind of work: it counts its time divided by the number of threads, so that the
/// kinds' times still add up to the wall time.
#[inline]
pub fn time_shared(kind: OpKind, work: impl FnOnce() -> f64) -> Timer {
    start(
        kind,
        work,
        rayon::current_num_threads().max(1) as u64,
        false,
    )
}

/// A [`time_shared`] region inside another one on this thread: its time counts for `kind` and
/// not for the region around it.
#[inline]
pub fn time_nested(kind: OpKind, work: impl FnOnce() -> f64) -> Timer {
    start(kind, work, rayon::current_num_threads().max(1) as u64, true)
}

/// Starts a [`Timer`] for `kind` (a no-op while the timers are off).
#[inline]
pub fn time(kind: OpKind, work: impl FnOnce() -> f64) -> Timer {
    start(kind, work, 1, false)
}

/// Nominal flops of a real 2-D FFT round trip over `planes` planes of `h x w`.
pub fn fft_flops(planes: usize, h: usize, w: usize) -> f64 {
    let n = (h * w) as f64;
    planes as f64 * 5.0 * n * n.log2()
}
