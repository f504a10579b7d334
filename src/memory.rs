//! How much memory a restore takes, and the tiling ([`crate::tiling`]) that keeps it within a
//! budget.
//!
//! The planner knows the backend ([`Workload::backend`]). A GPU, and `restore --reference` on
//! the CPU, run the reference path (candle ops), which holds far more per pixel than the fused
//! kernels: its model is a measured `a + b x pixels` per model ([`reference_peak`]), planned
//! against the GPU's free memory on a GPU and against host memory on the CPU.
//!
//! The fused CPU path's estimate has constants fitted to measured peaks (VmHWM of whole
//! `converse restore` runs at several sizes and thread counts; `tests/planner.rs` checks it, and
//! the reference path's, against fresh runs). It has three parts:
//! - the process, the weights and the libraries ([`BASE`]);
//! - per pixel of the working resolution, the feature maps a block reads and writes, and the
//!   image itself;
//! - the solve grids of one `ConverseBlock`: one per group of 16 hidden channels, at most
//!   [`GRID_BUDGET`] bytes of them at once, but at least one per thread, spread evenly over
//!   the passes ([`groups_per_pass`], as the block runs them).

use crate::models::ModelKind;
use crate::ops::cpu::branch::{groups_per_pass, GRID_BUDGET};
use crate::ops::Backend;
use crate::tiling::{Tiling, MIN_TILE};

/// The process, weights and libraries, measured on a 16x16 image (17-21 MiB), rounded up.
pub const BASE: u64 = 24 << 20;
/// Headroom over the fitted model.
const MARGIN: f64 = 1.05;
/// Bytes of one group's solve grid per padded pixel: 8 complex f32 lanes.
const GRID_BYTES_PER_PX: u64 = 64;
/// Hidden channels of a `ConverseBlock` (2 x 64 features), 16 to a group.
const GROUPS: usize = 8;

/// What one image asks of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    pub kind: ModelKind,
    /// Input size.
    pub height: usize,
    pub width: usize,
    /// Colour channels of the input (1 or 3).
    pub channels: usize,
    /// Output side over input side.
    pub scale: usize,
    /// The 8-fold self-ensemble.
    pub x8: bool,
    /// The path the model runs: fused CPU kernels or the reference path (candle ops).
    pub backend: Backend,
}

/// Peak bytes of one model run on an `h x w` input (a whole image or one tile) with `threads`
/// worker threads and `grid_budget` bytes for a block's solve grids ([`GRID_BUDGET`] unless
/// [`plan_tiles`] gives a whole image more), the process included.
pub fn model_peak(
    kind: ModelKind,
    (h, w): (usize, usize),
    scale: usize,
    threads: usize,
    grid_budget: usize,
) -> u64 {
    let px = (h * scale * w * scale) as u64;
    let info = kind.info();
    let grid = grid_bytes(kind, (h, w), scale);
    let in_flight = groups_per_pass(GROUPS, grid as usize, grid_budget, threads) as u64;
    let fitted = BASE + px * info.feature_bytes_per_px + in_flight * grid;
    (fitted as f64 * MARGIN) as u64
}

/// Bytes of one group's solve grid for an `h x w` input.
fn grid_bytes(kind: ModelKind, (h, w): (usize, usize), scale: usize) -> u64 {
    let pad = kind.info().block_padding;
    ((h * scale + 2 * pad) * (w * scale + 2 * pad)) as u64 * GRID_BYTES_PER_PX
}

/// Headroom over the reference path's fitted model.
const REFERENCE_MARGIN: f64 = 1.1;

/// Peak bytes of one run of the reference path (candle ops, as a GPU runs it) on an `h x w`
/// input, with elements of `elem_bytes` (4 for f32, 8 for f64), the process included: the
/// model's [`reference_bytes`](crate::models::ModelInfo::reference_bytes) `a + b x pixels`,
/// fitted to the peak RSS of `restore --reference` on the CPU (docs/performance.md), with `b`
/// scaled by the element size.
pub fn reference_peak(
    kind: ModelKind,
    (h, w): (usize, usize),
    scale: usize,
    elem_bytes: u64,
) -> u64 {
    let px = (h * scale * w * scale) as u64;
    let (a, b) = kind.info().reference_bytes;
    ((a + px * b * elem_bytes / 4) as f64 * REFERENCE_MARGIN) as u64
}

/// Peak bytes of one run of `job`'s model on an `h x w` input on its backend.
fn run_peak(job: &Workload, hw: (usize, usize), threads: usize, grid_budget: usize) -> u64 {
    match job.backend {
        Backend::Fused => model_peak(job.kind, hw, job.scale, threads, grid_budget),
        Backend::Reference => reference_peak(job.kind, hw, job.scale, 4),
    }
}

/// Whole-image buffers beyond one model run: the picture in f32, the output, and, when tiled,
/// the blending sums; for a colour denoise (three gray runs) the planes done so far.
fn image_bytes(job: &Workload, tiled: bool) -> u64 {
    let (px, c) = ((job.height * job.width) as u64, job.channels as u64);
    let px_out = px * (job.scale * job.scale) as u64;
    let mut bytes = 0;
    if job.kind.info().channels == 1 && c == 3 {
        bytes += 2 * c * 4 * px;
    }
    if job.x8 {
        bytes += 2 * c * 4 * px_out;
    }
    if tiled {
        bytes += c * 4 * px + (c * 4 * 2 + 4) * px_out;
    }
    bytes
}

/// A plan for one image: its tiling, the estimated peak, and the bytes a block's solve grids
/// may take at once ([`GRID_BUDGET`], or more for a whole image where the budget holds them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TilePlan {
    pub tiling: Tiling,
    pub peak: u64,
    pub grid_budget: usize,
}

/// How the user asked to tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileRequest {
    /// Tile side: `None` from the budget, `Some(0)` never.
    pub tile: Option<usize>,
    /// Overlap: `None` for the model's [`reach`](crate::models::ModelInfo::reach).
    pub overlap: Option<usize>,
    /// Bytes one image may take.
    pub budget: u64,
}

/// Plans `job` within the request, for `threads` worker threads: whole when it fits (or with
/// `--tile 0`), else tiles as large as the budget allows, balanced over the image. A whole
/// image of a model without upscaling takes as many of a block's solve grids at once as the
/// budget holds (all eight groups' at most): each pass of groups reads the block's feature
/// maps once more.
pub fn plan_tiles(job: &Workload, req: &TileRequest, threads: usize) -> TilePlan {
    let (h, w) = (job.height, job.width);
    let peak_of = |th: usize, tw: usize, tiled: bool, grids: usize| {
        run_peak(job, (th, tw), threads, grids) + image_bytes(job, tiled)
    };
    let whole_with = |grids: usize| TilePlan {
        tiling: Tiling::Whole,
        peak: peak_of(h, w, false, grids),
        grid_budget: grids,
    };
    let whole = whole_with(GRID_BUDGET);
    // Only where every block runs at the working size: SR's blocks at the output size are
    // its last two, for which the extra grids' fresh pages cost what the passes save (SR to
    // 2048x1536: 14.6 s with all eight against 13.6 s without, 3.1 against 2.2 GB peak).
    let roomy = || {
        if job.backend != Backend::Fused || job.scale > 1 {
            return whole;
        }
        let grid = grid_bytes(job.kind, (h, w), job.scale) as usize;
        (1..=GROUPS)
            .rev()
            .map(|k| whole_with((k * grid).max(GRID_BUDGET)))
            .find(|p| p.peak <= req.budget)
            .unwrap_or(whole)
    };
    // An explicit tile side is kept: without an explicit overlap, the reach is cut to a quarter
    // of it.
    let overlap = match (req.overlap, req.tile) {
        (Some(o), _) => o,
        (None, Some(t)) if t > 0 => job.kind.info().reach.min(t / 4),
        (None, _) => job.kind.info().reach,
    };
    let side = match req.tile {
        Some(0) => return roomy(),
        Some(t) => t.max(2 * overlap + 16),
        None if whole.peak <= req.budget => return roomy(),
        None => {
            // The largest square tile that fits; the smallest if none does.
            let (mut lo, mut hi) = (MIN_TILE + 2 * overlap, h.max(w));
            while lo < hi {
                let mid = (lo + hi).div_ceil(2);
                if peak_of(mid.min(h), mid.min(w), true, GRID_BUDGET) <= req.budget {
                    lo = mid
                } else {
                    hi = mid - 1
                }
            }
            lo
        }
    };
    let tiling = Tiling::balanced((h, w), side, overlap);
    let Tiling::Tiles { tile: (th, tw), .. } = tiling else {
        return whole;
    };
    TilePlan {
        tiling,
        peak: peak_of(th, tw, true, GRID_BUDGET),
        grid_budget: GRID_BUDGET,
    }
}

/// `2.5 GiB`, `740 MiB`.
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB", b / (1u64 << 20) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(kind: ModelKind, h: usize, w: usize) -> Workload {
        Workload {
            kind,
            height: h,
            width: w,
            channels: 3,
            scale: kind.scale(),
            x8: false,
            backend: Backend::Fused,
        }
    }

    fn req(budget: u64) -> TileRequest {
        TileRequest {
            tile: None,
            overlap: None,
            budget,
        }
    }

    #[test]
    fn a_12_megapixel_photo_runs_whole_in_12_gib() {
        // Two threads, as here and in CI; each further thread adds a grid (770 MB at this
        // size), up to eight.
        for kind in [ModelKind::DnCNN, ModelKind::ConverseNet, ModelKind::USRNet] {
            let p = plan_tiles(&job(kind, 3000, 4000), &req(12 << 30), 2);
            assert_eq!(p.tiling, Tiling::Whole, "{kind}");
            assert!(p.peak <= 12 << 30, "{kind}: {}", human(p.peak));
        }
    }

    /// A whole image takes more grids at once where the budget holds them, within it; tiles,
    /// and a budget that holds no more, keep the default.
    #[test]
    fn a_whole_image_takes_the_grids_the_budget_holds() {
        let j = job(ModelKind::ConverseNet, 1536, 2048);
        let grid = grid_bytes(j.kind, (1536, 2048), 1) as usize;
        let default = plan_tiles(&j, &req(64 << 30), 2);
        assert_eq!(default.tiling, Tiling::Whole);
        // All eight groups' grids, a pass each block instead of four.
        assert_eq!(default.grid_budget, 8 * grid);
        let at = |grids: usize| model_peak(j.kind, (1536, 2048), 1, 2, grids);
        assert_eq!(default.peak, at(8 * grid));
        // A budget for five grids: the block runs four at a time (4 and 4), within it.
        let five = plan_tiles(&j, &req(at(5 * grid)), 2);
        assert_eq!(five.peak, at(5 * grid));
        assert_eq!(groups_per_pass(8, grid, five.grid_budget, 2), 4);
        // Just under the default's estimate: tiles, with the default grids.
        let tight = plan_tiles(&j, &req(at(GRID_BUDGET) - 1), 2);
        assert!(matches!(tight.tiling, Tiling::Tiles { .. }));
        assert_eq!(tight.grid_budget, GRID_BUDGET);
        // SR keeps the default grids.
        let sr = Workload {
            kind: ModelKind::SRResNet,
            scale: 4,
            ..job(ModelKind::SRResNet, 384, 512)
        };
        assert_eq!(plan_tiles(&sr, &req(64 << 30), 2).grid_budget, GRID_BUDGET);
        // --tile 0 over the budget: whole, with the default grids.
        let forced = TileRequest {
            tile: Some(0),
            ..req(1 << 30)
        };
        let p = plan_tiles(&j, &forced, 2);
        assert_eq!((p.tiling, p.grid_budget), (Tiling::Whole, GRID_BUDGET));
    }

    #[test]
    fn tiles_are_as_large_as_the_budget_allows_and_cover_the_image() {
        for kind in ModelKind::ALL {
            let j = job(kind, 2000, 3000);
            // SR tiles need 4x the side and 192 px of overlap: a larger budget.
            let budget = if kind == ModelKind::SRResNet {
                8 << 30
            } else {
                600 << 20
            };
            let p = plan_tiles(&j, &req(budget), 2);
            let Tiling::Tiles {
                tile: (th, tw),
                overlap,
                rows,
                cols,
            } = p.tiling
            else {
                panic!("{kind}: whole at {}", human(budget))
            };
            assert!(p.peak <= budget, "{kind}: {}", human(p.peak));
            assert_eq!(overlap, kind.info().reach);
            // Covered, and by as few tiles as fit: one row or column fewer would not.
            assert!(rows * (th - overlap) + overlap >= 2000);
            assert!(cols * (tw - overlap) + overlap >= 3000);
            let fits = |h: usize, w: usize| {
                model_peak(kind, (h, w), j.scale, 2, GRID_BUDGET) + image_bytes(&j, true) <= budget
            };
            let fewer = |n: usize, k: usize| (n + (k - 2) * overlap).div_ceil(k - 1);
            assert!(
                rows == 1 || !fits(fewer(2000, rows), fewer(2000, rows)),
                "{kind}"
            );
            assert!(
                cols == 1 || !fits(fewer(3000, cols), fewer(3000, cols)),
                "{kind}"
            );
        }
    }

    #[test]
    fn the_reference_path_plans_with_its_own_model() {
        // A 12-megapixel denoise on a GPU with 70 GiB free: whole on the fused kernels' model,
        // tiles on the reference path's (about 15 kB per pixel).
        let fused = job(ModelKind::DnCNN, 3000, 4000);
        let reference = Workload {
            backend: Backend::Reference,
            ..fused
        };
        let budget = 70 << 30;
        assert_eq!(plan_tiles(&fused, &req(budget), 2).tiling, Tiling::Whole);
        let p = plan_tiles(&reference, &req(budget), 2);
        assert!(matches!(p.tiling, Tiling::Tiles { .. }), "{}", p.tiling);
        assert!(p.peak <= budget, "{}", human(p.peak));
        // 1024x1024 runs whole there, within the model: a + b x pixels, with the margin.
        let small = Workload {
            height: 1024,
            width: 1024,
            channels: 1,
            ..reference
        };
        let p = plan_tiles(&small, &req(budget), 2);
        assert_eq!(p.tiling, Tiling::Whole);
        let (a, b) = ModelKind::DnCNN.info().reference_bytes;
        assert_eq!(
            p.peak,
            ((a + b * (1 << 20)) as f64 * REFERENCE_MARGIN) as u64
        );
        // f64 doubles the per-pixel part only.
        assert_eq!(
            reference_peak(ModelKind::DnCNN, (1024, 1024), 1, 8),
            ((a + 2 * b * (1 << 20)) as f64 * REFERENCE_MARGIN) as u64
        );
    }

    #[test]
    fn explicit_tiles_and_never() {
        let j = job(ModelKind::DnCNN, 1000, 1000);
        let never = TileRequest {
            tile: Some(0),
            overlap: None,
            budget: 1,
        };
        assert_eq!(plan_tiles(&j, &never, 2).tiling, Tiling::Whole);
        let fixed = TileRequest {
            tile: Some(400),
            overlap: Some(20),
            budget: 1,
        };
        let t = plan_tiles(&j, &fixed, 2).tiling;
        assert_eq!(t.count(), 9);
        assert_eq!(t.to_string(), "9 tiles (3x3) of up to 347x347, overlap 20");
        let small = TileRequest {
            tile: Some(100),
            overlap: None,
            budget: 1,
        };
        assert_eq!(
            plan_tiles(&j, &small, 2).tiling.to_string(),
            "169 tiles (13x13) of up to 100x100, overlap 25"
        );
    }
}
