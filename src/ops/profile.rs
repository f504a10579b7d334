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
    /// The solve's passes along the grid's rows (the forward transforms, and the inverse ones
    /// with the crop's GELU); work in grid points passed over.
    Rows,
    /// The solve's passes along the grid's columns (gather, forward transform, filter, inverse
    /// transform, scatter); work in grid points passed over.
    Columns,
}

impl OpKind {
    pub const ALL: [OpKind; 6] = [
        Self::Gemm,
        Self::Fft,
        Self::NormAct,
        Self::Transfer,
        Self::Rows,
        Self::Columns,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Gemm => "gemm",
            Self::Fft => "fft",
            Self::NormAct => "norm_act",
            Self::Transfer => "transfer",
            Self::Rows => "rows",
            Self::Columns => "columns",
        }
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];
static WORK: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

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
pub fn snapshot() -> [(f64, f64); 6] {
    OpKind::ALL.map(|k| {
        let i = k as usize;
        (
            NANOS[i].load(Ordering::Relaxed) as f64 * 1e-9,
            WORK[i].load(Ordering::Relaxed) as f64,
        )
    })
}

thread_local! {
    /// Time counted by the regions that ended on this thread, for a region around them to
    /// leave out.
    static INNER: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Times a region until dropped, adding `work` units to `kind`. Regions nest: a region counts
/// its own time only, the regions inside it on its thread left out.
pub struct Timer(Option<TimerState>);

struct TimerState {
    kind: OpKind,
    work: u64,
    start: Instant,
    share: u64,
    /// [`INNER`] at the start.
    inner_at_start: u64,
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            let whole = t.start.elapsed().as_nanos() as u64 / t.share;
            let inner = INNER.with(|n| n.get()) - t.inner_at_start;
            INNER.with(|n| n.set(t.inner_at_start + whole));
            NANOS[t.kind as usize].fetch_add(whole.saturating_sub(inner), Ordering::Relaxed);
            WORK[t.kind as usize].fetch_add(t.work, Ordering::Relaxed);
        }
    }
}

fn start(kind: OpKind, work: impl FnOnce() -> f64, share: u64) -> Timer {
    Timer(ENABLED.load(Ordering::Relaxed).then(|| TimerState {
        kind,
        work: work() as u64,
        start: Instant::now(),
        share,
        inner_at_start: INNER.with(|n| n.get()),
    }))
}

/// A [`Timer`] for a region that runs on one of the pool's threads while the others run
/// the same kind of work: it counts its time divided by the number of threads, so that the
/// kinds' times still add up to the wall time.
#[inline]
pub fn time_shared(kind: OpKind, work: impl FnOnce() -> f64) -> Timer {
    start(kind, work, rayon::current_num_threads().max(1) as u64)
}

/// Starts a [`Timer`] for `kind` (a no-op while the timers are off).
#[inline]
pub fn time(kind: OpKind, work: impl FnOnce() -> f64) -> Timer {
    start(kind, work, 1)
}

/// Nominal flops of a real 2-D FFT round trip over `planes` planes of `h x w`.
pub fn fft_flops(planes: usize, h: usize, w: usize) -> f64 {
    let n = (h * w) as f64;
    planes as f64 * 5.0 * n * n.log2()
}
