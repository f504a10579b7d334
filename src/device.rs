//! `--device cpu|cuda|cuda:N`.
//!
//! A CUDA build (the `cuda` cargo feature) links no CUDA library: cudarc opens libcuda, cuBLAS,
//! cuRAND and cuFFT at run time, so the binary starts on any machine. Before any CUDA work,
//! [`cuda_probe`] opens each of them the way cudarc will (same names, same order: CUDA 13
//! libraries first, else CUDA 12's) and reads the driver's CUDA version; `converse info` prints
//! it. Then a device is checked before candle opens it, so that each way it can fail gets a
//! plain message: no driver, a driver older than the CUDA 13.0 this build needs, a missing
//! library, no GPU, an ordinal past the GPUs present, a GPU the kernels were not built for
//! (`CUDA_COMPUTE_CAP` at build time). Every failure is an error of [`DeviceSpec::open`], which
//! the command line turns into exit status 2. With no `--device`, [`DeviceSpec::open_auto`] takes
//! CUDA device 0 only when it really opens, else the CPU, saying why on stderr in one line
//! (`CUDA unavailable: <reason>; running on the CPU`) unless there is simply no GPU.

use std::str::FromStr;

use candle_core::Device;
use serde::Serialize;

/// The oldest CUDA version the driver must support (`cuDriverGetVersion`'s 1000 x major + 10 x
/// minor): the toolkit the kernels are compiled with. Its PTX (ISA 9.0) and the static CUDA
/// runtime need it, which means driver 580 or later.
pub const MIN_DRIVER_CUDA: i32 = 13000;

/// The oldest NVIDIA driver branch that supports [`MIN_DRIVER_CUDA`].
pub const MIN_DRIVER_BRANCH: u32 = 580;

/// What a CUDA build found of the driver and the libraries it opens at run time.
#[derive(Debug, Clone, Serialize)]
pub struct CudaProbe {
    /// The file name libcuda opened under (e.g. `libcuda.so.1`), `null` when none did.
    pub libcuda: Option<String>,
    /// The CUDA version the driver supports (e.g. `13.0`), `null` without a driver.
    pub driver_cuda: Option<String>,
    /// Whether the driver is new enough for this build.
    pub driver_ok: bool,
    /// cuBLAS, cuRAND and cuFFT, each with the file that opened.
    pub libraries: Vec<ProbedLibrary>,
}

/// One CUDA library and the file name it opened under.
#[derive(Debug, Clone, Serialize)]
pub struct ProbedLibrary {
    /// The library, e.g. `cuBLAS`.
    pub library: &'static str,
    /// The file names this build takes, e.g. `libcublas.so.13 (or .12)`.
    pub wanted: &'static str,
    /// The PyPI wheel that holds it (CUDA 13).
    pub wheel: &'static str,
    /// The file name it opened under, `null` when none did.
    pub file: Option<String>,
}

impl CudaProbe {
    /// Why CUDA cannot be used, in one line naming the driver's CUDA version found, the one
    /// needed and each missing library; `None` when the driver and every library are there.
    pub fn problem(&self) -> Option<String> {
        let missing: Vec<&ProbedLibrary> =
            self.libraries.iter().filter(|l| l.file.is_none()).collect();
        if self.driver_ok && missing.is_empty() {
            return None;
        }
        let need = format!(
            "this build needs CUDA {}.{} or newer (driver {MIN_DRIVER_BRANCH} or later)",
            MIN_DRIVER_CUDA / 1000,
            MIN_DRIVER_CUDA % 1000 / 10
        );
        let mut s = match &self.driver_cuda {
            None => format!("no NVIDIA driver found (libcuda.so.1 did not load), {need}"),
            Some(v) => format!("the NVIDIA driver supports CUDA {v}, {need}"),
        };
        if !missing.is_empty() {
            let names: Vec<&str> = missing.iter().map(|l| l.wanted).collect();
            let wheels: Vec<&str> = missing.iter().map(|l| l.wheel).collect();
            s += &format!(
                "; {} not found (pip install {}, or the CUDA toolkit's libraries, on \
                 LD_LIBRARY_PATH)",
                names.join(", "),
                wheels.join(" ")
            );
        }
        Some(s)
    }
}

/// The driver and libraries a CUDA build finds here, probed once per process; `None` in a CPU
/// build.
pub fn cuda_probe() -> Option<&'static CudaProbe> {
    imp::probe()
}

/// CUDA found unusable before any CUDA call: [`CudaProbe::problem`].
#[derive(Debug)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CUDA unavailable: {}; use --device cpu", self.0)
    }
}

impl std::error::Error for Unavailable {}

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
    /// The default: CUDA device 0 when this is a CUDA build and that device opens, else the CPU
    /// (quietly: [`Self::open_auto`] is the one that says why).
    pub fn auto() -> Self {
        if cfg!(feature = "cuda") && Self::Cuda(0).open().is_ok() {
            Self::Cuda(0)
        } else {
            Self::Cpu
        }
    }

    /// The default device, opened: CUDA device 0 when this is a CUDA build and that device opens,
    /// else the CPU. When CUDA cannot be used (no driver, old driver, missing library, old GPU),
    /// says why on stderr in one line; with the libraries there but no GPU it stays quiet.
    pub fn open_auto() -> Device {
        if !cfg!(feature = "cuda") {
            return Device::Cpu;
        }
        match Self::Cuda(0).open() {
            Ok(d) => d,
            Err(e) => {
                if let Some(Unavailable(why)) = e.downcast_ref() {
                    eprintln!("CUDA unavailable: {why}; running on the CPU");
                } else if !imp::no_gpu(&e) {
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

    pub fn probe() -> Option<&'static super::CudaProbe> {
        None
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use anyhow::{anyhow, bail};
    use candle_core::Device;
    use cudarc::driver::{result, sys, DriverError};

    use sys::cudaError_enum as E;

    /// cuBLAS, cuRAND and cuFFT as cudarc names them, with what [`super::ProbedLibrary`] says.
    const LIBRARIES: [(&str, &str, &str, &str); 3] = [
        (
            "cublas",
            "cuBLAS",
            "libcublas.so.13 (or .12)",
            "nvidia-cublas",
        ),
        ("curand", "cuRAND", "libcurand.so.10", "nvidia-curand"),
        ("cufft", "cuFFT", "libcufft.so.12 (or .11)", "nvidia-cufft"),
    ];

    /// The first of cudarc's file names for `name` that opens, as cudarc's own loader tries
    /// them (it keeps the first that opens).
    fn open_as_cudarc(name: &str) -> Option<String> {
        cudarc::get_lib_name_candidates(name)
            .into_iter()
            .find(|file| {
                // SAFETY: loading a CUDA library runs its initialisers, as cudarc's load does.
                unsafe { libloading::Library::new(file) }.is_ok()
            })
    }

    pub fn probe() -> Option<&'static super::CudaProbe> {
        static PROBE: std::sync::OnceLock<super::CudaProbe> = std::sync::OnceLock::new();
        Some(PROBE.get_or_init(|| {
            let libcuda = open_as_cudarc("cuda");
            let version = libcuda.as_ref().and_then(|_| {
                let mut v = 0;
                // SAFETY: libcuda opened above; a plain FFI call writing one int.
                unsafe { sys::cuDriverGetVersion(&mut v) }
                    .result()
                    .ok()
                    .map(|_| v)
            });
            super::CudaProbe {
                libcuda,
                driver_cuda: version.map(|v| format!("{}.{}", v / 1000, v % 1000 / 10)),
                driver_ok: version.is_some_and(|v| v >= super::MIN_DRIVER_CUDA),
                libraries: LIBRARIES
                    .iter()
                    .map(|&(name, library, wanted, wheel)| super::ProbedLibrary {
                        library,
                        wanted,
                        wheel,
                        file: open_as_cudarc(name),
                    })
                    .collect(),
            }
        }))
    }

    /// What to do about a driver too old for this build.
    fn old() -> String {
        format!(
            "this build needs a driver for CUDA {}.{} or newer ({} or later): update the driver \
             or use --device cpu",
            super::MIN_DRIVER_CUDA / 1000,
            super::MIN_DRIVER_CUDA % 1000 / 10,
            super::MIN_DRIVER_BRANCH
        )
    }

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
                    "the NVIDIA driver does not match its kernel module or this GPU ({e}): {}",
                    old()
                )
            }
            _ => anyhow!("cannot initialise CUDA ({}): use --device cpu", name(&e)),
        })
    }

    /// The GPUs the driver counts (0 when it cannot say).
    pub fn count() -> usize {
        if probe().and_then(|p| p.problem()).is_some() {
            return 0;
        }
        init()
            .ok()
            .and_then(|_| result::device::get_count().ok())
            .map_or(0, |n| n.max(0) as usize)
    }

    /// Checks CUDA device `n` and opens it with candle: the driver and libraries first (nothing
    /// of cudarc's runs before they are known to be there: its loader panics on a missing one).
    pub fn open_cuda(n: usize) -> anyhow::Result<Device> {
        if let Some(why) = probe().and_then(|p| p.problem()) {
            return Err(anyhow!(super::Unavailable(why)));
        }
        init()?;
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
    fn the_probe_names_the_driver_found_the_one_needed_and_each_missing_library() {
        let lib = |library, wanted, wheel, file: Option<&str>| ProbedLibrary {
            library,
            wanted,
            wheel,
            file: file.map(Into::into),
        };
        let mut p = CudaProbe {
            libcuda: Some("libcuda.so.1".into()),
            driver_cuda: Some("13.0".into()),
            driver_ok: true,
            libraries: vec![
                lib(
                    "cuBLAS",
                    "libcublas.so.13 (or .12)",
                    "nvidia-cublas",
                    Some("libcublas.so.12"),
                ),
                lib(
                    "cuFFT",
                    "libcufft.so.12 (or .11)",
                    "nvidia-cufft",
                    Some("libcufft.so.12"),
                ),
            ],
        };
        assert_eq!(p.problem(), None);
        p.driver_cuda = Some("12.8".into());
        p.driver_ok = false;
        let need = "this build needs CUDA 13.0 or newer (driver 580 or later)";
        assert_eq!(
            p.problem().unwrap(),
            format!("the NVIDIA driver supports CUDA 12.8, {need}")
        );
        p.libraries[1].file = None;
        assert_eq!(
            p.problem().unwrap(),
            format!(
                "the NVIDIA driver supports CUDA 12.8, {need}; libcufft.so.12 (or .11) not found \
                 (pip install nvidia-cufft, or the CUDA toolkit's libraries, on LD_LIBRARY_PATH)"
            )
        );
        p.libcuda = None;
        p.driver_cuda = None;
        assert!(p.problem().unwrap().starts_with(&format!(
            "no NVIDIA driver found (libcuda.so.1 did not load), {need}; "
        )));
        assert_eq!(
            Unavailable("why".into()).to_string(),
            "CUDA unavailable: why; use --device cpu"
        );
        assert_eq!(cuda_probe().is_some(), cfg!(feature = "cuda"));
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
