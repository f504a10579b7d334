//! `--device cpu|cuda|cuda:N`.

use std::str::FromStr;

use anyhow::bail;
use candle_core::Device;

/// A device as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device `{s}` (cpu, cuda or cuda:N)")),
        }
    }
}

impl DeviceSpec {
    /// The default: CUDA when built with it and a GPU is present, else the CPU.
    pub fn auto() -> Self {
        if cfg!(feature = "cuda") && candle_core::utils::cuda_is_available() {
            Self::Cuda(0)
        } else {
            Self::Cpu
        }
    }

    /// Opens the device, with a clear error when CUDA is not built in or not present.
    pub fn open(self) -> anyhow::Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => {
                if !cfg!(feature = "cuda") {
                    bail!(
                        "this build of converse has no CUDA support: rebuild it with the `cuda` \
                         cargo feature (cargo build --release --features cuda), or use --device cpu"
                    )
                }
                Device::new_cuda(n)
                    .map_err(|e| anyhow::anyhow!("cannot open CUDA device {n}: {e}"))?;
                bail!(
                    "CUDA device {n} is present, but the CUDA backend of converse's FFT op is not \
                     written yet: use --device cpu"
                )
            }
        }
    }
}
