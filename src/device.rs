//! `--device cpu|cuda|cuda:N`.
//!
//! A CUDA build (the `cuda` cargo feature) checks a device before candle opens it, so that each
//! way it can fail gets a plain message: no GPU, a driver older than the CUDA 13 this build
//! needs, an ordinal past the GPUs present, a GPU the kernels were not built for
//! (`CUDA_COMPUTE_CAP` at build time). Every failure is an error of [`DeviceSpec::open`], which
//! the command line turns into exit status 2. With no `--device`, [`DeviceSpec::open_auto`] takes
//! CUDA device 0 only when it really opens, else the CPU. (Without the driver's `libcuda.so.1`
//! a CUDA build does not start at all: candle links the CUDA libraries dynamically.)

use std::str::FromStr;

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
    /// The default: CUDA device 0 when this is a CUDA build and that device opens, else the CPU.
    pub fn auto() -> Self {
        match Self::open_auto().location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => Self::Cuda(gpu_id),
            _ => Self::Cpu,
        }
    }

    /// The default device, opened: CUDA device 0 when this is a CUDA build and that device opens,
    /// else the CPU. When a GPU is there but cannot be used (old driver, old GPU), says why on
    /// stderr; with no GPU at all it stays quiet.
    pub fn open_auto() -> Device {
        if !cfg!(feature = "cuda") {
            return Device::Cpu;
        }
        match Self::Cuda(0).open() {
            Ok(d) => d,
            Err(e) => {
                if !imp::no_gpu(&e) {
                    eprintln!("note: {e:#}; running on the CPU");
                }
                Device::Cpu
            }
        }
    }

    /// The CUDA devices this process can use (`cuda:0` opens; the others are counted), or why
    /// there are none: a CPU build, no GPU, a driver or GPU this build cannot use.
    pub fn cuda_devices() -> Result<Vec<Self>, String> {
        Self::Cuda(0).open().map_err(|e| format!("{e:#}"))?;
        Ok((0..imp::count()).map(Self::Cuda).collect())
    }

    /// Opens the device, with a clear error when CUDA is not built in, or the GPU is absent or
    /// unusable.
    pub fn open(self) -> anyhow::Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => imp::open_cuda(n),
        }
    }
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use anyhow::bail;
    use candle_core::Device;

    pub fn open_cuda(_: usize) -> anyhow::Result<Device> {
        bail!(
            "this build of converse has no CUDA support: rebuild it with the `cuda` cargo feature \
             (scripts/cuda-build, or cargo build --release --features cuda), or use --device cpu"
        )
    }

    pub fn no_gpu(_: &anyhow::Error) -> bool {
        true
    }

    pub fn count() -> usize {
        0
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use anyhow::{anyhow, bail};
    use candle_core::Device;
    use cudarc::driver::{result, sys, DriverError};

    use sys::cudaError_enum as E;

    /// The oldest CUDA the driver must support: the toolkit this build was compiled with.
    const CUDA_MAJOR: i32 = 13;

    /// What to do about a driver too old for [`CUDA_MAJOR`].
    const OLD: &str = "this build needs a driver for CUDA 13.0 or newer (580 or later): update \
                       the driver or use --device cpu";

    /// Why a CUDA device did not open: `NoGpu` is not worth a note when falling back.
    #[derive(Debug)]
    struct NoGpu(String);

    impl std::fmt::Display for NoGpu {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for NoGpu {}

    pub fn no_gpu(e: &anyhow::Error) -> bool {
        e.downcast_ref::<NoGpu>().is_some()
    }

    fn name(e: &DriverError) -> String {
        e.error_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|_| format!("CUDA error {}", e.0 as u32))
    }

    /// The driver initialised, or why not.
    fn init() -> anyhow::Result<()> {
        let Err(e) = result::init() else {
            return Ok(());
        };
        Err(match e.0 {
            E::CUDA_ERROR_NO_DEVICE => anyhow!(NoGpu(format!(
                "no CUDA GPU found ({}): use --device cpu",
                name(&e)
            ))),
            E::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH | E::CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE => {
                let e = name(&e);
                anyhow!(
                    "the NVIDIA driver does not match its kernel module or this GPU ({e}): {OLD}"
                )
            }
            _ => anyhow!("cannot initialise CUDA ({}): use --device cpu", name(&e)),
        })
    }

    /// The GPUs the driver counts (0 when it cannot say).
    pub fn count() -> usize {
        init()
            .ok()
            .and_then(|_| result::device::get_count().ok())
            .map_or(0, |n| n.max(0) as usize)
    }

    /// Checks CUDA device `n` and opens it with candle.
    pub fn open_cuda(n: usize) -> anyhow::Result<Device> {
        init()?;
        let mut version = 0;
        // SAFETY: plain FFI call writing one int.
        unsafe { sys::cuDriverGetVersion(&mut version) }
            .result()
            .map_err(|e| anyhow!("cannot read the CUDA driver version ({})", name(&e)))?;
        if version < CUDA_MAJOR * 1000 {
            bail!(
                "the NVIDIA driver supports CUDA {}.{} only: {OLD}",
                version / 1000,
                version % 1000 / 10
            )
        }
        let count = result::device::get_count()
            .map_err(|e| anyhow!("cannot count the CUDA GPUs ({})", name(&e)))?;
        if count <= 0 {
            return Err(anyhow!(NoGpu("no CUDA GPU found: use --device cpu".into())));
        }
        if n >= count as usize {
            bail!(
                "there is no CUDA device {n}: this machine has {count} (cuda:0 to cuda:{})",
                count - 1
            )
        }
        let dev = result::device::get(n as i32)
            .map_err(|e| anyhow!("cannot open CUDA device {n} ({})", name(&e)))?;
        let attr = |a| {
            // SAFETY: `dev` came from cuDeviceGet.
            unsafe { result::device::get_attribute(dev, a) }
                .map_err(|e| anyhow!("cannot query CUDA device {n} ({})", name(&e)))
        };
        use sys::CUdevice_attribute as A;
        let cap = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)? * 10
            + attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        let built = option_env!("CONVERSE_CUDA_COMPUTE_CAP").and_then(super::Target::parse);
        if let Some(t) = built.filter(|t| !t.runs_on(cap)) {
            let gpu = result::device::get_name(dev).unwrap_or_default();
            bail!(
                "CUDA device {n} ({gpu}) has compute capability {}.{}, but this build's kernels \
                 are for {t}: rebuild with CUDA_COMPUTE_CAP={cap} scripts/cuda-build (or \
                 CUDA_COMPUTE_CAP=80 for kernels that run on any GPU from 8.0 on), or use \
                 --device cpu",
                cap / 10,
                cap % 10
            )
        }
        Device::new_cuda(n).map_err(|e| anyhow!("cannot open CUDA device {n}: {e}"))
    }
}

/// The GPUs a build's kernels run on, from `CUDA_COMPUTE_CAP` read as candle-kernels' builder
/// (cudaforge) reads it: `80` is PTX for compute_80, which the driver compiles for any GPU of
/// 8.0 or newer; from 90 on it adds the `a` suffix (`90` means `90a`), whose code runs on that
/// exact capability only; `f` (family) code runs on the same major version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
enum Target {
    AtLeast(i32),
    Exactly(i32),
    Family(i32),
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
impl Target {
    fn parse(s: &str) -> Option<Self> {
        let s = s.trim().to_ascii_lowercase();
        let s = s.strip_prefix("sm_").unwrap_or(&s);
        let (num, suffix) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
            Some((i, _)) => (&s[..i], Some(&s[i..])),
            None => (s, None),
        };
        let mut base: i32 = num.parse().ok()?;
        if base < 20 {
            base *= 10;
        }
        let suffix = suffix.or(match base {
            120 => Some("a"),
            b if b > 120 => Some("f"),
            b if b >= 90 => Some("a"),
            _ => None,
        });
        match suffix {
            None => Some(Self::AtLeast(base)),
            Some("a") => Some(Self::Exactly(base)),
            Some("f") => Some(Self::Family(base)),
            Some(_) => None,
        }
    }

    fn runs_on(self, cap: i32) -> bool {
        match self {
            Self::AtLeast(b) => cap >= b,
            Self::Exactly(b) => cap == b,
            Self::Family(b) => cap / 10 == b / 10 && cap >= b,
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::AtLeast(b) => write!(
                f,
                "compute_{b} (compute capability {}.{} or newer)",
                b / 10,
                b % 10
            ),
            Self::Exactly(b) => {
                write!(f, "sm_{b}a (compute capability {}.{} only)", b / 10, b % 10)
            }
            Self::Family(b) => write!(
                f,
                "sm_{b}f (compute capability {}.{} to {0}.9)",
                b / 10,
                b % 10
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::Cuda(3)));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "CPU", ""] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn compute_capabilities_read_as_the_kernel_builder_reads_them() {
        use Target::*;
        assert_eq!(Target::parse("80"), Some(AtLeast(80)));
        assert_eq!(Target::parse("8.6"), None);
        assert_eq!(Target::parse("86"), Some(AtLeast(86)));
        assert_eq!(Target::parse("90"), Some(Exactly(90)));
        assert_eq!(Target::parse("sm_90a"), Some(Exactly(90)));
        assert_eq!(Target::parse("100"), Some(Exactly(100)));
        assert_eq!(Target::parse("121"), Some(Family(121)));
        assert_eq!(Target::parse("120f"), Some(Family(120)));
        assert_eq!(Target::parse(""), None);
        assert!(AtLeast(80).runs_on(90) && AtLeast(80).runs_on(120) && !AtLeast(80).runs_on(75));
        assert!(Exactly(90).runs_on(90) && !Exactly(90).runs_on(100) && !Exactly(90).runs_on(89));
        assert!(Family(120).runs_on(121) && !Family(120).runs_on(100));
        assert_eq!(
            Exactly(90).to_string(),
            "sm_90a (compute capability 9.0 only)"
        );
    }

    #[test]
    fn cpu_opens_and_the_default_is_a_device_that_opens() {
        assert!(DeviceSpec::Cpu.open().unwrap().is_cpu());
        let auto = DeviceSpec::auto();
        assert!(auto.open().is_ok(), "{auto:?}");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn without_the_feature_cuda_is_refused_and_the_default_is_the_cpu() {
        assert_eq!(DeviceSpec::auto(), DeviceSpec::Cpu);
        let e = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
        assert!(
            e.contains("no CUDA support") && e.contains("--features cuda"),
            "{e}"
        );
    }

    /// With the stand-in libcuda of `scripts/cuda-build --test` (no GPU): a clear error, the CPU
    /// by default.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_build_without_a_gpu() {
        if std::env::var_os("CONVERSE_CUDA_NOGPU").is_none() {
            eprintln!("skipped: not under scripts/cuda-build --test (CONVERSE_CUDA_NOGPU unset)");
            return;
        }
        assert_eq!(DeviceSpec::auto(), DeviceSpec::Cpu);
        for spec in [DeviceSpec::Cuda(0), DeviceSpec::Cuda(3)] {
            let e = spec.open().unwrap_err();
            assert!(imp::no_gpu(&e), "{e:#}");
            let e = format!("{e:#}");
            assert!(
                e.contains("no CUDA GPU found") && e.contains("--device cpu"),
                "{e}"
            );
        }
    }

    /// On a machine with a GPU: device 0 opens, an ordinal past the last one is refused.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_build_with_a_gpu() {
        if std::env::var_os("CONVERSE_CUDA_NOGPU").is_some() || DeviceSpec::Cuda(0).open().is_err()
        {
            eprintln!("skipped: no usable CUDA GPU");
            return;
        }
        assert_eq!(DeviceSpec::auto(), DeviceSpec::Cuda(0));
        let e = DeviceSpec::Cuda(999).open().unwrap_err().to_string();
        assert!(e.contains("there is no CUDA device 999"), "{e}");
    }
}
