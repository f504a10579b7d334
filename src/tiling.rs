//! Tiling: how an image is cut into overlapping tiles, and how the tiles' outputs are blended
//! back. The planner ([`crate::memory::plan_tiles`]) chooses a [`Tiling`]; the restorer runs it
//! with [`run_tiled`].

use candle_core::{DType, Tensor};

/// Smallest tile side.
pub const MIN_TILE: usize = 64;

/// How an image is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tiling {
    /// In one piece: exact.
    Whole,
    /// In `rows x cols` tiles of up to `tile` (height, width) input pixels, `overlap` apart.
    Tiles {
        tile: (usize, usize),
        overlap: usize,
        rows: usize,
        cols: usize,
    },
}

impl Tiling {
    /// How many model runs the tiling makes.
    pub fn count(&self) -> usize {
        match self {
            Self::Whole => 1,
            Self::Tiles { rows, cols, .. } => rows * cols,
        }
    }

    /// Tiles of at most `max` a side, `overlap` apart, balanced over an `h x w` image; whole
    /// when one tile covers it.
    pub fn balanced((h, w): (usize, usize), max: usize, overlap: usize) -> Self {
        if max >= h && max >= w {
            return Self::Whole;
        }
        let (rows, th) = balance(h, max, overlap);
        let (cols, tw) = balance(w, max, overlap);
        Self::Tiles {
            tile: (th, tw),
            overlap,
            rows,
            cols,
        }
    }
}

impl std::fmt::Display for Tiling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Whole => write!(f, "whole"),
            Self::Tiles {
                tile: (th, tw),
                overlap,
                rows,
                cols,
            } => write!(
                f,
                "{} tiles ({rows}x{cols}) of up to {tw}x{th}, overlap {overlap}",
                rows * cols
            ),
        }
    }
}

/// Tiles along a side of `n` with tiles of at most `max` overlapping by `overlap`: how many,
/// and the even size that covers the side with that many.
pub fn balance(n: usize, max: usize, overlap: usize) -> (usize, usize) {
    if n <= max {
        return (1, n);
    }
    let count = (n - overlap).div_ceil(max - overlap);
    let size = (n + (count - 1) * overlap).div_ceil(count);
    (count, size.min(n))
}

/// Tile origins along a side of `n` pixels: tiles of `tile` overlapping by at least `overlap`,
/// the last one flush with the end.
fn starts(n: usize, tile: usize, overlap: usize) -> Vec<usize> {
    if n <= tile {
        return vec![0];
    }
    let step = tile - overlap;
    let mut starts: Vec<usize> = (0..)
        .map(|i| i * step)
        .take_while(|s| s + tile < n)
        .collect();
    starts.push(n - tile);
    starts
}

/// Blending weights along a tile side of `n`: linear ramps over `overlap` at the sides that
/// border another tile, 1 elsewhere (never 0, so every pixel has weight).
fn ramp(n: usize, overlap: usize, before: bool, after: bool) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let mut w = 1.0f32;
            if before && i < overlap {
                w = w.min((i + 1) as f32 / (overlap + 1) as f32);
            }
            if after && n - i <= overlap {
                w = w.min((n - i) as f32 / (overlap + 1) as f32);
            }
            w
        })
        .collect()
}

/// Runs `run` on `x` `(1, C, H, W)` as `tiling` says and blends the outputs (`scale` times the
/// input's side) with linear ramps across the overlaps.
pub fn run_tiled(
    x: &Tensor,
    tiling: Tiling,
    scale: usize,
    run: impl Fn(&Tensor) -> anyhow::Result<Tensor>,
) -> anyhow::Result<Tensor> {
    let Tiling::Tiles {
        tile: (tile_h, tile_w),
        overlap,
        ..
    } = tiling
    else {
        return run(x);
    };
    let (_, c, h, w) = x.dims4()?;
    let s = scale;
    let overlap = overlap.min(tile_h.min(tile_w) / 2);
    let rows = starts(h, tile_h, overlap);
    let cols = starts(w, tile_w, overlap);
    let mut out = vec![0f32; c * h * s * w * s];
    let mut weight = vec![0f32; h * s * w * s];
    for &r in &rows {
        for &q in &cols {
            let (th, tw) = (tile_h.min(h - r), tile_w.min(w - q));
            let y = run(&x.narrow(2, r, th)?.narrow(3, q, tw)?.contiguous()?)?;
            let y = y.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            // Ramps only on sides that have a neighbour.
            let ramp_h = ramp(th * s, overlap * s, r > 0, r + th < h);
            let ramp_w = ramp(tw * s, overlap * s, q > 0, q + tw < w);
            let (oh, ow) = (th * s, tw * s);
            for i in 0..oh {
                for j in 0..ow {
                    let wt = ramp_h[i] * ramp_w[j];
                    let dst = (r * s + i) * w * s + q * s + j;
                    weight[dst] += wt;
                    for ch in 0..c {
                        out[ch * h * s * w * s + dst] += wt * y[ch * oh * ow + i * ow + j];
                    }
                }
            }
        }
    }
    let plane = h * s * w * s;
    for (i, v) in out.iter_mut().enumerate() {
        *v /= weight[i % plane];
    }
    Ok(Tensor::from_vec(out, (1, c, h * s, w * s), x.device())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_the_side_and_ramps_never_vanish() {
        assert_eq!(starts(100, 100, 10), [0]);
        assert_eq!(starts(250, 100, 20), [0, 80, 150]);
        for n in [101, 177, 1000] {
            let s = starts(n, 64, 16);
            assert_eq!(*s.last().unwrap() + 64, n);
            assert!(s.windows(2).all(|p| p[1] > p[0] && p[1] - p[0] <= 48));
        }
        let r = ramp(10, 3, true, true);
        assert_eq!(r, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25]);
        assert!(ramp(10, 3, false, false).iter().all(|v| *v == 1.0));
    }

    #[test]
    fn balanced_tiles_are_as_many_as_planned() {
        assert_eq!(balance(100, 100, 10), (1, 100));
        assert_eq!(balance(250, 100, 20), (3, 97));
        assert_eq!(Tiling::balanced((90, 80), 96, 24), Tiling::Whole);
        for n in [200, 257, 1000] {
            let (count, size) = balance(n, 96, 24);
            assert_eq!(starts(n, size, 24).len(), count, "{n}");
        }
    }
}
