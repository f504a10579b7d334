//! What the job may use, not the host: the memory budget from the cgroup's limit and the threads
//! from the CPUs the process may run on.
//!
//! A process finds its own cgroups through `/proc/self/cgroup` (there may be no cgroup
//! namespace, so the hierarchy's root files show the host's values) and the hierarchies through
//! `/proc/self/mountinfo`. A limit set on any ancestor binds too, so every group from the
//! process's own up to the root is read, and the tightest wins.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::memory::human;

/// Where the system's files are: `/` on a real system, a fake tree in tests.
#[derive(Debug, Clone)]
pub struct System {
    root: PathBuf,
}

impl Default for System {
    fn default() -> Self {
        Self { root: "/".into() }
    }
}

/// Fraction of a cgroup's free memory the budget takes: the rest is left for the page cache the
/// group is charged for and for the allocator's slack.
const CGROUP_SHARE: f64 = 0.9;

/// Limits at or above this are "no limit" (cgroup v1 writes `PAGE_COUNTER_MAX` pages).
const UNLIMITED: u64 = 1 << 60;

/// A cgroup hierarchy the process belongs to: where it is mounted and the process's group in it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Group {
    /// 1 or 2.
    version: u8,
    /// The group's folder.
    dir: PathBuf,
    /// The hierarchy's mount point (the last ancestor read).
    mount: PathBuf,
}

impl Group {
    /// The group's folder and its ancestors up to the mount point, innermost first.
    fn ancestors(&self) -> impl Iterator<Item = &Path> {
        self.dir
            .ancestors()
            .take_while(|d| d.starts_with(&self.mount))
    }
}

impl System {
    /// A fake system under `root` (tests): `root/proc/self/cgroup`, `root/sys/fs/cgroup/...`.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    fn read(&self, p: &Path) -> Option<String> {
        std::fs::read_to_string(p).ok()
    }

    /// The process's group in the hierarchy holding `controller` (v1), else in the unified
    /// (v2) hierarchy.
    fn group(&self, controller: &str) -> Option<Group> {
        let cgroups = self.read(&self.path("/proc/self/cgroup"))?;
        let mountinfo = self
            .read(&self.path("/proc/self/mountinfo"))
            .unwrap_or_default();
        // Lines are `id:controllers:path`; v2's is `0::path`.
        let line = |v1: bool| {
            cgroups.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (id, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
                let hit = if v1 {
                    ctrls.split(',').any(|c| c == controller)
                } else {
                    id == "0" && ctrls.is_empty()
                };
                hit.then(|| path.to_owned())
            })
        };
        let (version, path) = match line(true) {
            Some(p) => (1, p),
            None => (2, line(false)?),
        };
        // Mount lines: `id parent dev root mountpoint opts ... - fstype source superopts`.
        let mount = mountinfo.lines().find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let (root, point) = (*left.get(3)?, *left.get(4)?);
            let ok = match (version, *right.first()?) {
                (1, "cgroup") => right.get(2)?.split(',').any(|o| o == controller),
                (2, "cgroup2") => true,
                _ => false,
            };
            ok.then(|| (root.to_owned(), point.to_owned()))
        });
        let (root, point) = mount.unwrap_or_else(|| {
            let p = if version == 1 {
                format!("/sys/fs/cgroup/{controller}")
            } else {
                "/sys/fs/cgroup".into()
            };
            ("/".into(), p)
        });
        // A bind mount of a subtree: the process's path is relative to the hierarchy's root.
        let rel = Path::new(&path)
            .strip_prefix(&root)
            .unwrap_or(Path::new(&path))
            .to_owned();
        let rel = rel.strip_prefix("/").unwrap_or(&rel);
        let mount = self.path(&point);
        Some(Group {
            version,
            dir: mount.join(rel),
            mount,
        })
    }

    /// The tightest cgroup memory limit over the process's group and its ancestors: (bytes
    /// left, that is the limit less the usage; a description).
    pub fn cgroup_memory(&self) -> Option<(u64, String)> {
        let g = self.group("memory")?;
        let (limit_file, usage_file) = match g.version {
            1 => ("memory.limit_in_bytes", "memory.usage_in_bytes"),
            _ => ("memory.max", "memory.current"),
        };
        let number = |p: PathBuf| self.read(&p)?.trim().parse::<u64>().ok();
        g.ancestors()
            .filter_map(|d| {
                let limit = number(d.join(limit_file)).filter(|&l| l < UNLIMITED)?;
                let used = number(d.join(usage_file)).unwrap_or(0);
                let left = limit.saturating_sub(used);
                let what = format!(
                    "the cgroup v{} limit '{}' ({}, {} in use)",
                    g.version,
                    d.join(limit_file).display(),
                    human(limit),
                    human(used)
                );
                Some((left, what))
            })
            .min_by_key(|(left, _)| *left)
    }

    /// `MemAvailable` from `/proc/meminfo`, in bytes.
    fn mem_available(&self) -> Option<u64> {
        self.read(&self.path("/proc/meminfo"))?
            .lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map(|kib| kib * 1024)
    }

    /// The default memory budget and where it comes from: half of the available memory
    /// (`MemAvailable`), or 9/10 of what the cgroup limit leaves when that is less; 4 GiB when
    /// neither can be read.
    pub fn memory_budget(&self) -> (u64, String) {
        let host = self.mem_available().map(|b| {
            (
                b / 2,
                "half of the available memory (MemAvailable)".to_owned(),
            )
        });
        let cgroup = self.cgroup_memory().map(|(left, what)| {
            let b = (left as f64 * CGROUP_SHARE) as u64;
            (b, format!("9/10 of what {what} leaves"))
        });
        match (host, cgroup) {
            (Some(h), Some(c)) => {
                if c.0 < h.0 {
                    c
                } else {
                    h
                }
            }
            (Some(x), None) | (None, Some(x)) => x,
            (None, None) => (4 << 30, "4 GiB (the available memory is unknown)".into()),
        }
    }

    /// The tightest cgroup CPU quota over the process's group and its ancestors, in whole CPUs
    /// (at least 1), with a description.
    fn cpu_quota(&self) -> Option<(usize, String)> {
        let g = self.group("cpu")?;
        g.ancestors()
            .filter_map(|d| {
                let (quota, period, file) = if g.version == 1 {
                    let q = self
                        .read(&d.join("cpu.cfs_quota_us"))?
                        .trim()
                        .parse::<i64>()
                        .ok()?;
                    let p = self
                        .read(&d.join("cpu.cfs_period_us"))?
                        .trim()
                        .parse::<i64>()
                        .ok()?;
                    (q, p, d.join("cpu.cfs_quota_us"))
                } else {
                    let s = self.read(&d.join("cpu.max"))?;
                    let mut it = s.split_whitespace();
                    let q = it.next()?.parse::<i64>().ok()?;
                    let p = it
                        .next()
                        .and_then(|p| p.parse::<i64>().ok())
                        .unwrap_or(100_000);
                    (q, p, d.join("cpu.max"))
                };
                if quota <= 0 || period <= 0 {
                    return None;
                }
                let cpus = ((quota / period) as usize).max(1);
                let what = format!(
                    "the cgroup CPU quota '{}' ({quota}/{period})",
                    file.display()
                );
                Some((cpus, what))
            })
            .min_by_key(|(cpus, _)| *cpus)
    }
}

/// CPUs in the process's affinity mask (`taskset`, Slurm's task/affinity).
fn affinity() -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: a zeroed cpu_set_t is a valid empty set, filled in by sched_getaffinity.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let r =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        if r != 0 {
            return None;
        }
        let n = unsafe { libc::CPU_COUNT(&set) };
        usize::try_from(n).ok().filter(|&n| n > 0)
    }
    #[cfg(not(target_os = "linux"))]
    None
}

/// Threads for the job and why: the fewest of the affinity mask's CPUs, the cgroup CPU quota and
/// `SLURM_CPUS_PER_TASK` (`env` reads the variables); the machine's CPUs when none is known.
pub fn job_threads(
    sys: &System,
    affinity: Option<usize>,
    env: impl Fn(&str) -> Option<String>,
) -> (usize, String) {
    let mut found: Vec<(usize, String)> = vec![];
    if let Some(n) = affinity {
        found.push((n, format!("the affinity mask ({n} CPUs)")));
    }
    if let Some(q) = sys.cpu_quota() {
        found.push(q);
    }
    if let Some(v) = env("SLURM_CPUS_PER_TASK") {
        if let Some(n) = v.trim().parse::<usize>().ok().filter(|&n| n > 0) {
            found.push((n, format!("SLURM_CPUS_PER_TASK={n}")));
        }
    }
    found
        .into_iter()
        .min_by_key(|(n, _)| *n)
        .unwrap_or_else(|| {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            (n, format!("the machine's {n} CPUs"))
        })
}

static THREADS: OnceLock<(usize, String)> = OnceLock::new();

/// Sizes rayon's global pool (which every CPU kernel runs on) to the job's CPUs, once, before
/// any work: unless `RAYON_NUM_THREADS` is set, which rayon then follows. Returns the threads
/// and why.
pub fn configure_threads() -> &'static (usize, String) {
    THREADS.get_or_init(|| {
        if let Some(v) = std::env::var("RAYON_NUM_THREADS")
            .ok()
            .filter(|v| !v.is_empty())
        {
            return (
                rayon::current_num_threads(),
                format!("RAYON_NUM_THREADS={v}"),
            );
        }
        let (n, why) = job_threads(&System::default(), affinity(), |k| std::env::var(k).ok());
        // candle sizes its own splits from this variable: keep it in step with the pool.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        match rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
        {
            Ok(()) => (n, why),
            // Already built (a library user did): report what it has.
            Err(_) => (
                rayon::current_num_threads(),
                "rayon's pool as it was built".into(),
            ),
        }
    })
}

/// The worker threads and why: as [`configure_threads`] set them, else rayon's default.
pub fn threads() -> (usize, String) {
    THREADS.get().cloned().unwrap_or_else(|| {
        (
            rayon::current_num_threads(),
            "rayon's default pool".to_owned(),
        )
    })
}

/// The default memory budget for one image and where it comes from (see
/// [`System::memory_budget`]).
pub fn memory_budget() -> (u64, String) {
    System::default().memory_budget()
}

/// Fraction of a GPU's free memory the budget takes: the rest is left for cuFFT's work areas and
/// the allocator's slack.
const DEVICE_SHARE: f64 = 0.9;

/// The default memory budget for one image on `device` when it is a GPU, and where it comes
/// from: 9/10 of its free memory (`cuMemGetInfo`, read after the device opened, so the context
/// and the weights are already counted). `None` for the CPU, or when the driver cannot say.
pub fn device_memory_budget(device: &candle_core::Device) -> Option<(u64, String)> {
    #[cfg(feature = "cuda")]
    if let Ok(d) = device.as_cuda_device() {
        let (free, total) = d.cuda_stream().context().mem_get_info().ok()?;
        let (free, total) = (free as u64, total as u64);
        let budget = (free as f64 * DEVICE_SHARE) as u64;
        let what = format!(
            "9/10 of the GPU's free memory ({} of {} free)",
            human(free),
            human(total)
        );
        return Some((budget, what));
    }
    let _ = (device, DEVICE_SHARE);
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, p: &str, text: &str) {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    const MIB: u64 = 1 << 20;

    fn meminfo(root: &Path, available_mib: u64) {
        write(
            root,
            "proc/meminfo",
            &format!(
                "MemTotal:       65536000 kB\nMemFree: 1 kB\nMemAvailable:   {} kB\n",
                available_mib * 1024
            ),
        );
    }

    /// cgroup v2 (unified), the way systemd and Slurm lay it out: a job inside a slice.
    #[test]
    fn cgroup_v2_memory_max_of_the_group_or_an_ancestor_sets_the_budget() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        meminfo(r, 64 * 1024);
        write(r, "proc/self/cgroup", "0::/slurm/job_7/step_batch\n");
        write(
            r,
            "proc/self/mountinfo",
            "22 1 0:21 / /proc rw - proc proc rw\n\
             30 22 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        let g = "sys/fs/cgroup";
        write(r, &format!("{g}/memory.current"), "999999999999\n");
        write(r, &format!("{g}/slurm/memory.max"), "max\n");
        write(
            r,
            &format!("{g}/slurm/job_7/memory.max"),
            &format!("{}\n", 1024 * MIB),
        );
        write(
            r,
            &format!("{g}/slurm/job_7/memory.current"),
            &format!("{}\n", 24 * MIB),
        );
        write(
            r,
            &format!("{g}/slurm/job_7/step_batch/memory.max"),
            "max\n",
        );
        write(
            r,
            &format!("{g}/slurm/job_7/step_batch/memory.current"),
            "0\n",
        );
        let sys = System::at(r);
        let (budget, source) = sys.memory_budget();
        assert_eq!(budget, (1000.0 * MIB as f64 * 0.9) as u64);
        assert_eq!(
            source,
            format!(
                "9/10 of what the cgroup v2 limit '{}' (1.0 GiB, 24 MiB in use) leaves",
                r.join(g).join("slurm/job_7/memory.max").display()
            )
        );
        // The step's own tighter limit wins over the job's.
        write(
            r,
            &format!("{g}/slurm/job_7/step_batch/memory.max"),
            &format!("{}\n", 100 * MIB),
        );
        assert_eq!(sys.memory_budget().0, (100.0 * MIB as f64 * 0.9) as u64);
        // A loose limit leaves the host's half of MemAvailable.
        for d in ["slurm/job_7", "slurm/job_7/step_batch"] {
            write(
                r,
                &format!("{g}/{d}/memory.max"),
                &format!("{}\n", 1u64 << 40),
            );
        }
        assert_eq!(
            sys.memory_budget(),
            (
                32 << 30,
                "half of the available memory (MemAvailable)".into()
            )
        );
    }

    /// cgroup v1 with no cgroup namespace: the process's path is the full one, the root's files
    /// show the host, an ancestor holds the limit, and a cpu quota sits beside.
    #[test]
    fn cgroup_v1_limits_are_found_through_the_process_path_and_its_ancestors() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        meminfo(r, 8192);
        write(
            r,
            "proc/self/cgroup",
            "5:cpu,cpuacct:/batch/a\n4:memory:/batch/a/b\n1:name=systemd:/\n0::/\n",
        );
        write(
            r,
            "proc/self/mountinfo",
            "40 30 0:35 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
             41 30 0:36 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n",
        );
        let m = "sys/fs/cgroup/memory";
        write(
            r,
            &format!("{m}/memory.limit_in_bytes"),
            "9223372036854771712\n",
        );
        write(
            r,
            &format!("{m}/batch/memory.limit_in_bytes"),
            &format!("{}\n", 512 * MIB),
        );
        write(
            r,
            &format!("{m}/batch/memory.usage_in_bytes"),
            &format!("{}\n", 112 * MIB),
        );
        write(
            r,
            &format!("{m}/batch/a/memory.limit_in_bytes"),
            "9223372036854771712\n",
        );
        write(
            r,
            &format!("{m}/batch/a/b/memory.limit_in_bytes"),
            "9223372036854771712\n",
        );
        let sys = System::at(r);
        let (budget, source) = sys.memory_budget();
        assert_eq!(budget, (400.0 * MIB as f64 * 0.9) as u64);
        assert!(
            source.starts_with("9/10 of what the cgroup v1 limit '")
                && source
                    .ends_with("batch/memory.limit_in_bytes' (512 MiB, 112 MiB in use) leaves"),
            "{source}"
        );
        // Threads: the quota (2.5 CPUs: 2), the affinity mask and Slurm's variable.
        let c = "sys/fs/cgroup/cpu,cpuacct";
        write(r, &format!("{c}/cpu.cfs_quota_us"), "-1\n");
        write(r, &format!("{c}/cpu.cfs_period_us"), "100000\n");
        write(r, &format!("{c}/batch/a/cpu.cfs_quota_us"), "250000\n");
        write(r, &format!("{c}/batch/a/cpu.cfs_period_us"), "100000\n");
        let none = |_: &str| None;
        let (n, why) = job_threads(&sys, Some(8), none);
        assert_eq!(n, 2);
        assert!(
            why.starts_with("the cgroup CPU quota '")
                && why.ends_with("a/cpu.cfs_quota_us' (250000/100000)"),
            "{why}"
        );
        assert_eq!(
            job_threads(&sys, Some(1), none),
            (1, "the affinity mask (1 CPUs)".into())
        );
        let slurm = |k: &str| (k == "SLURM_CPUS_PER_TASK").then(|| "1".to_owned());
        assert_eq!(
            job_threads(&sys, Some(8), slurm),
            (1, "SLURM_CPUS_PER_TASK=1".into())
        );
    }

    #[test]
    fn no_cgroup_and_no_meminfo_fall_back() {
        let tmp = tempfile::tempdir().unwrap();
        let sys = System::at(tmp.path());
        assert_eq!(
            sys.memory_budget(),
            (4 << 30, "4 GiB (the available memory is unknown)".into())
        );
        meminfo(tmp.path(), 1000);
        assert_eq!(sys.memory_budget().0, 500 * MIB);
        let (n, why) = job_threads(&sys, None, |_| None);
        assert!(n >= 1 && why.starts_with("the machine's "), "{why}");
    }
}
