//! Spatial padding in the four modes of `torch.nn.functional.pad` (candle has only zero and
//! replicate). One padding-source map ([`PaddingMode::sources`]) serves both paths: applied with
//! `index_select` here, so the same code runs on every device, and read directly by the fused CPU
//! solve.

use std::fmt;
use std::str::FromStr;

use candle_core::{Result, Tensor};

/// How values outside the image are made up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaddingMode {
    /// Wrap around (`circular`).
    Circular,
    /// Mirror without repeating the edge (`reflect`).
    Reflect,
    /// Repeat the edge (`replicate`).
    Replicate,
    /// Zeros (`constant` with value 0).
    Zeros,
}

impl PaddingMode {
    /// Every mode.
    pub const ALL: [PaddingMode; 4] = [Self::Circular, Self::Reflect, Self::Replicate, Self::Zeros];

    /// The name PyTorch uses.
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::Circular => "circular",
            Self::Reflect => "reflect",
            Self::Replicate => "replicate",
            Self::Zeros => "constant",
        }
    }

    /// Source index of position `i` (which may lie outside `0..n`); `None` for zeros.
    fn source(self, i: isize, n: isize) -> Option<isize> {
        match self {
            Self::Circular => Some(i.rem_euclid(n)),
            Self::Replicate => Some(i.clamp(0, n - 1)),
            Self::Reflect => Some(if i < 0 {
                -i
            } else if i >= n {
                2 * (n - 1) - i
            } else {
                i
            }),
            Self::Zeros => None,
        }
    }

    /// The padding-source map of a side of `n` padded by `p` on both ends: for each of the
    /// `n + 2p` padded positions, the input position it copies, or `None` for a zero.
    pub(crate) fn sources(self, n: usize, p: usize) -> Vec<Option<usize>> {
        (0..n + 2 * p)
            .map(|i| match i.checked_sub(p).filter(|&i| i < n) {
                Some(i) => Some(i),
                None => self
                    .source(i as isize - p as isize, n as isize)
                    .map(|s| s as usize),
            })
            .collect()
    }
}

impl fmt::Display for PaddingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.torch_name())
    }
}

impl FromStr for PaddingMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "circular" => Ok(Self::Circular),
            "reflect" => Ok(Self::Reflect),
            "replicate" => Ok(Self::Replicate),
            "constant" | "zeros" | "zero" => Ok(Self::Zeros),
            _ => Err(format!(
                "unknown padding mode `{s}` (circular, reflect, replicate or constant)"
            )),
        }
    }
}

/// Fails when `mode` cannot pad a dimension of `n` by `p`.
pub(crate) fn check_padding(mode: PaddingMode, p: usize, n: usize) -> Result<()> {
    let limit = match mode {
        PaddingMode::Reflect => n.saturating_sub(1),
        PaddingMode::Circular => n,
        _ => usize::MAX,
    };
    if n == 0 || p > limit {
        candle_core::bail!(
            "{mode} padding of {p} needs a dimension larger than {} (got {n})",
            if mode == PaddingMode::Reflect {
                p
            } else {
                p - 1
            }
        )
    }
    Ok(())
}

/// Pads the last two dims of `x` by `p` on every side.
pub fn pad2d(x: &Tensor, p: usize, mode: PaddingMode) -> Result<Tensor> {
    if p == 0 {
        return Ok(x.clone());
    }
    let r = x.rank();
    if r < 2 {
        candle_core::bail!("pad2d needs at least 2 dims, got {:?}", x.shape())
    }
    let mut out = x.contiguous()?;
    for dim in [r - 2, r - 1] {
        let n = out.dim(dim)?;
        check_padding(mode, p, n)?;
        out = if mode == PaddingMode::Zeros {
            out.pad_with_zeros(dim, p, p)?
        } else {
            let idx: Vec<u32> = mode
                .sources(n, p)
                .into_iter()
                .map(|i| i.unwrap_or(0) as u32)
                .collect();
            let idx = Tensor::from_vec(idx, n + 2 * p, out.device())?;
            out.index_select(&idx, dim)?
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn row(mode: PaddingMode, p: usize) -> Vec<f32> {
        let x = Tensor::new(&[[1f32, 2., 3., 4.]; 3], &Device::Cpu).unwrap();
        pad2d(&x, p, mode).unwrap().to_vec2::<f32>().unwrap()[p].clone()
    }

    #[test]
    fn modes_match_torch() {
        assert_eq!(
            row(PaddingMode::Circular, 2),
            [3., 4., 1., 2., 3., 4., 1., 2.]
        );
        assert_eq!(
            row(PaddingMode::Reflect, 2),
            [3., 2., 1., 2., 3., 4., 3., 2.]
        );
        assert_eq!(
            row(PaddingMode::Replicate, 2),
            [1., 1., 1., 2., 3., 4., 4., 4.]
        );
        assert_eq!(row(PaddingMode::Zeros, 1), [0., 1., 2., 3., 4., 0.]);
        let map = PaddingMode::Reflect.sources(4, 2);
        assert_eq!(map, [2, 1, 0, 1, 2, 3, 2, 1].map(Some));
        assert_eq!(
            PaddingMode::Zeros.sources(2, 1),
            [None, Some(0), Some(1), None]
        );
    }

    #[test]
    fn too_much_padding_is_an_error() {
        let x = Tensor::zeros((3, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let e = pad2d(&x, 3, PaddingMode::Reflect).unwrap_err().to_string();
        assert!(
            e.contains("reflect padding of 3 needs a dimension larger than 3 (got 3)"),
            "{e}"
        );
        assert!(pad2d(&x, 3, PaddingMode::Circular).is_ok());
        assert!(pad2d(&x, 4, PaddingMode::Circular).is_err());
        assert!(pad2d(&x, 9, PaddingMode::Replicate).is_ok());
        assert_eq!("constant".parse::<PaddingMode>(), Ok(PaddingMode::Zeros));
        assert!("wrap".parse::<PaddingMode>().is_err());
    }
}
