//! One folder run split over a cluster, through the binary: `--shard`, `--report`, and the
//! job's resources (threads from the CPUs it may use, the memory budget from its cgroup). The
//! real Slurm cluster is `scripts/slurm-test`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{converse, stderr, stdout, write_image};

/// The variables `--shard auto` and the thread count read: removed, so that a test run inside a
/// Slurm job does not see its own.
const SCHEDULER_VARS: [&str; 8] = [
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_MAX",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_STEP",
    "JOB_COMPLETION_INDEX",
    "SLURM_CPUS_PER_TASK",
    "RAYON_NUM_THREADS",
];

fn bin(tmp: &Path) -> Command {
    let mut c = converse(tmp);
    for v in SCHEDULER_VARS {
        c.env_remove(v);
    }
    c
}

/// The sizes of [`mixed_folder`]'s images: thumbnails to 1 MP.
const SIZES: [(u32, u32); 20] = [
    (16, 16),
    (1200, 900),
    (64, 48),
    (480, 320),
    (480, 320),
    (200, 120),
    (33, 700),
    (256, 256),
    (1024, 768),
    (12, 9),
    (640, 640),
    (300, 200),
    (800, 600),
    (256, 256),
    (5, 900),
    (640, 480),
    (96, 96),
    (100, 100),
    (720, 400),
    (1, 1),
];

/// Whether image `i` of [`mixed_folder`] is in colour.
fn colour(i: usize) -> bool {
    !i.is_multiple_of(3)
}

/// 20 images of mixed sizes ([`SIZES`]), gray and colour.
fn mixed_folder(dir: &Path) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    let mut names = vec![];
    for (i, (w, h)) in SIZES.into_iter().enumerate() {
        let name = format!("img{i:02}.png");
        write_image(&dir.join(&name), w, h, colour(i));
        names.push(name);
    }
    names
}

/// `restore --task denoise --dry-run` of `input` into `output`, with `args` and `env`.
fn dry_run(tmp: &Path, input: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = bin(tmp);
    c.args([
        "restore",
        "--task",
        "denoise",
        "--device",
        "cpu",
        "--dry-run",
        "-i",
    ])
    .arg(input)
    .arg("-o")
    .arg(tmp.join("out"))
    .args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// The file names of the images a dry run lists.
fn listed(o: &Output) -> Vec<String> {
    assert_eq!(o.status.code(), Some(0), "{}", stderr(o));
    stdout(o)
        .lines()
        .map(|l| {
            let input = l.strip_prefix('\'').unwrap().split('\'').next().unwrap();
            Path::new(input)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// The `shard ...` line of a dry run's notes.
fn shard_note(o: &Output) -> String {
    let err = stderr(o);
    err.lines()
        .find(|l| l.starts_with("shard "))
        .unwrap_or_else(|| panic!("no shard line in:\n{err}"))
        .to_owned()
}

#[test]
fn every_image_is_in_exactly_one_shard_whatever_exists_already() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let names = mixed_folder(&input);
    let mut percents = BTreeMap::new();
    let mut split = |n: usize| -> Vec<Vec<String>> {
        (0..n)
            .map(|k| {
                let o = dry_run(tmp.path(), &input, &["--shard", &format!("{k}/{n}")], &[]);
                let note = shard_note(&o);
                let p: f64 = note
                    .rsplit(", ")
                    .next()
                    .unwrap()
                    .split('%')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                let shares = percents.entry(n).or_insert_with(Vec::new);
                if shares.len() < n {
                    shares.push(p);
                }
                let got = listed(&o);
                assert!(
                    note.starts_with(&format!(
                        "shard {k}/{n} (--shard {k}/{n}): {} of 20 images, ",
                        got.len()
                    )) && note.ends_with("% of the estimated work"),
                    "{note}"
                );
                got
            })
            .collect()
    };
    let mut splits = BTreeMap::new();
    for n in 1..=16 {
        let shards = split(n);
        let mut seen: Vec<String> = shards.concat();
        seen.sort();
        assert_eq!(seen, names, "N={n}: every image in exactly one shard");
        assert!(shards.iter().all(|s| !s.is_empty()), "N={n}: {shards:?}");
        splits.insert(n, shards);
    }
    // Deterministic, and over the full set: outputs that exist change nothing.
    std::fs::create_dir_all(tmp.path().join("out")).unwrap();
    for name in &names[..7] {
        std::fs::copy(input.join(name), tmp.path().join("out").join(name)).unwrap();
    }
    for n in [3, 4, 16] {
        assert_eq!(split(n), splits[&n], "N={n}");
    }
    // Balanced by work: no shard's share exceeds the mean by more than the largest image's
    // (work here: pixels times the planes a denoise runs, 3 for colour).
    let work: Vec<f64> = SIZES
        .iter()
        .enumerate()
        .map(|(i, (w, h))| (w * h) as f64 * if colour(i) { 3.0 } else { 1.0 })
        .collect();
    let total: f64 = work.iter().sum();
    let largest = 100.0 * work.iter().cloned().fold(0.0, f64::max) / total;
    for (n, shares) in &percents {
        for (k, p) in shares.iter().enumerate() {
            assert!(
                *p <= 100.0 / *n as f64 + largest + 0.05,
                "N={n}: shard {k} has {p}% (largest image {largest}%)"
            );
        }
        let sum: f64 = shares.iter().sum();
        assert!((sum - 100.0).abs() < 0.05 * *n as f64, "N={n}: {shares:?}");
    }
}

#[test]
fn shard_auto_reads_slurm_arrays_and_indexed_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    mixed_folder(&input);
    let fixed = |k: usize, n: usize| {
        listed(&dry_run(
            tmp.path(),
            &input,
            &["--shard", &format!("{k}/{n}")],
            &[],
        ))
    };
    // sbatch --array=1-8: tasks 1 to 8 are shards 0 to 7.
    for id in 1..=8 {
        let id_s = id.to_string();
        let env = [
            ("SLURM_ARRAY_TASK_ID", id_s.as_str()),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "8"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
            ("SLURM_ARRAY_TASK_STEP", "1"),
        ];
        let o = dry_run(tmp.path(), &input, &["--shard", "auto"], &env);
        assert_eq!(listed(&o), fixed(id - 1, 8), "task {id}");
        assert!(shard_note(&o).starts_with(&format!(
            "shard {}/8 (SLURM_ARRAY_TASK_ID={id} of SLURM_ARRAY_TASK_MIN=1, \
             SLURM_ARRAY_TASK_COUNT=8): ",
            id - 1
        )));
    }
    // A resubmitted task alone (--array=2) keeps its shard with auto/N.
    let env = [
        ("SLURM_ARRAY_TASK_ID", "2"),
        ("SLURM_ARRAY_TASK_MIN", "2"),
        ("SLURM_ARRAY_TASK_MAX", "2"),
        ("SLURM_ARRAY_TASK_COUNT", "1"),
    ];
    let o = dry_run(tmp.path(), &input, &["--shard", "auto/4"], &env);
    assert_eq!(listed(&o), fixed(2, 4));
    // A Kubernetes Indexed Job.
    let o = dry_run(
        tmp.path(),
        &input,
        &["--shard", "auto/4"],
        &[("JOB_COMPLETION_INDEX", "3")],
    );
    assert_eq!(listed(&o), fixed(3, 4));
    assert!(shard_note(&o).starts_with("shard 3/4 (JOB_COMPLETION_INDEX=3 of 4): "));
    // Neither: a usage error naming the variables, before any work.
    let o = dry_run(tmp.path(), &input, &["--shard", "auto"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stderr(&o),
        "error: --shard auto found no scheduler: it reads SLURM_ARRAY_TASK_ID, \
         SLURM_ARRAY_TASK_MIN and SLURM_ARRAY_TASK_COUNT (a Slurm job array, sbatch --array) or \
         JOB_COMPLETION_INDEX (a Kubernetes Indexed Job, with --shard auto/N), and none is set; \
         give the shard as --shard K/N\n"
    );
    assert_eq!(stdout(&o), "");
    // A sparse array (--array=0,3,7) is refused.
    let env = [
        ("SLURM_ARRAY_TASK_ID", "3"),
        ("SLURM_ARRAY_TASK_MIN", "0"),
        ("SLURM_ARRAY_TASK_MAX", "7"),
        ("SLURM_ARRAY_TASK_COUNT", "3"),
        ("SLURM_ARRAY_TASK_STEP", "1"),
    ];
    let o = dry_run(tmp.path(), &input, &["--shard", "auto"], &env);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).starts_with(
            "error: --shard auto: the Slurm array (3 tasks from 0 to 7, step 1) is stepped or \
             sparse"
        ),
        "{}",
        stderr(&o)
    );
    // A bad value is a usage error from the parser.
    let o = dry_run(tmp.path(), &input, &["--shard", "4/4"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("`4/4`: the shard index must be below the count (0 to 3)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_dry_run_says_what_remains_the_threads_and_the_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let names = mixed_folder(&input);
    std::fs::create_dir_all(tmp.path().join("out")).unwrap();
    for name in &names[3..] {
        std::fs::write(tmp.path().join("out").join(name), b"done").unwrap();
    }
    let o = dry_run(tmp.path(), &input, &[], &[]);
    let err = stderr(&o);
    let remaining = format!(
        "remaining: 3 of 20 images have no output\n  '{0}/img00.png'\n  '{0}/img01.png'\n  \
         '{0}/img02.png'\n",
        input.display()
    );
    assert!(err.ends_with(&remaining), "{err}");
    assert!(err.starts_with("memory budget: "), "{err}");
    let o = dry_run(tmp.path(), &input, &["--max-memory", "300M"], &[]);
    assert!(
        stderr(&o).starts_with("memory budget: 300 MiB, --max-memory\n"),
        "{}",
        stderr(&o)
    );
    // Threads: RAYON_NUM_THREADS, the affinity mask (taskset), SLURM_CPUS_PER_TASK.
    let threads = |o: &Output| {
        stderr(o)
            .lines()
            .find(|l| l.starts_with("threads: "))
            .unwrap_or_default()
            .to_owned()
    };
    let o = dry_run(tmp.path(), &input, &[], &[("RAYON_NUM_THREADS", "3")]);
    assert_eq!(threads(&o), "threads: 3, RAYON_NUM_THREADS=3");
    let cpus = std::thread::available_parallelism().unwrap().get();
    if cpus > 1 {
        let o = dry_run(tmp.path(), &input, &[], &[("SLURM_CPUS_PER_TASK", "1")]);
        assert_eq!(threads(&o), "threads: 1, SLURM_CPUS_PER_TASK=1");
        let o = dry_run(tmp.path(), &input, &[], &[]);
        assert_eq!(
            threads(&o),
            format!("threads: {cpus}, the affinity mask ({cpus} CPUs)")
        );
    }
    let o = Command::new("taskset")
        .args(["-c", "0"])
        .arg(env!("CARGO_BIN_EXE_converse"))
        .args([
            "restore",
            "--task",
            "sr",
            "--device",
            "cpu",
            "--dry-run",
            "-i",
        ])
        .arg(&input)
        .arg("-o")
        .arg(tmp.path().join("out"))
        .env_remove("RAYON_NUM_THREADS")
        .env_remove("SLURM_CPUS_PER_TASK")
        .output();
    match o {
        Ok(o) => assert_eq!(threads(&o), "threads: 1, the affinity mask (1 CPUs)"),
        Err(e) if std::env::var_os("CI").is_none() => eprintln!("skipping taskset: {e}"),
        Err(e) => panic!("taskset: {e}"),
    }
}

/// One JSON line per image, appended; a rerun adds its own lines (skipped).
#[test]
fn the_report_has_a_line_per_image() {
    let Some(shared) = common::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    write_image(&input.join("a.png"), 40, 30, false);
    write_image(&input.join("b.png"), 24, 48, false);
    std::fs::write(input.join("c.png"), b"not a png").unwrap();
    let out = tmp.path().join("out");
    let report = tmp.path().join("report.jsonl");
    let run = || {
        bin(tmp.path())
            .args([
                "restore",
                "--task",
                "denoise",
                "--device",
                "cpu",
                "-q",
                "--shard",
                "0/1",
                "--weights",
            ])
            .arg(shared.join("weights"))
            .arg("-i")
            .arg(&input)
            .arg("-o")
            .arg(&out)
            .arg("--report")
            .arg(&report)
            .output()
            .unwrap()
    };
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&report)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let o = run();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let first = lines();
    assert_eq!(first.len(), 3);
    let by_name = |v: &[serde_json::Value], name: &str| {
        v.iter()
            .find(|l| l["input"].as_str().unwrap().ends_with(name))
            .cloned()
            .unwrap()
    };
    for name in ["a.png", "b.png"] {
        let l = by_name(&first, name);
        assert_eq!(l["status"], "restored", "{l}");
        assert_eq!(l["output"], out.join(name).to_str().unwrap());
        assert_eq!(l["error"], serde_json::Value::Null);
        assert_eq!(l["shard"], "0/1");
        assert!(l["seconds"].as_f64().unwrap() > 0.0, "{l}");
        assert!(out.join(name).exists());
    }
    let c = by_name(&first, "c.png");
    assert_eq!(c["status"], "failed");
    assert!(
        c["error"]
            .as_str()
            .unwrap()
            .starts_with(&format!("'{}'", input.join("c.png").display())),
        "{c}"
    );
    // The rerun appends: the two done are skipped, the bad one fails again.
    let o = run();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let all = lines();
    assert_eq!(all.len(), 6);
    assert_eq!(all[..3], first[..]);
    let statuses: Vec<&str> = all[3..]
        .iter()
        .map(|l| l["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["skipped", "skipped", "failed"]);
    // A report that cannot be opened (a file where its folder should be) is a usage error before
    // any work.
    std::fs::write(tmp.path().join("a-file"), b"x").unwrap();
    let o = bin(tmp.path())
        .args([
            "restore",
            "--task",
            "denoise",
            "--device",
            "cpu",
            "--weights",
        ])
        .arg(shared.join("weights"))
        .arg("-i")
        .arg(&input)
        .arg("-o")
        .arg(tmp.path().join("out2"))
        .arg("--report")
        .arg(tmp.path().join("a-file/r.jsonl"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).starts_with(&format!(
            "error: cannot open the report '{}': ",
            tmp.path().join("a-file/r.jsonl").display()
        )),
        "{}",
        stderr(&o)
    );
    assert!(!tmp.path().join("out2").exists());
}

/// A child memory cgroup (v1) of this process's own, with a low limit: removed on drop.
struct MemoryCgroup {
    dir: PathBuf,
}

impl MemoryCgroup {
    /// `None` (with the reason) where cgroup v1's memory controller is not writable here.
    fn new(limit: u64) -> Result<Self, String> {
        let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        let path = own
            .lines()
            .find_map(|l| {
                let mut p = l.splitn(3, ':');
                let (_, ctrls, path) = (p.next()?, p.next()?, p.next()?);
                ctrls
                    .split(',')
                    .any(|c| c == "memory")
                    .then(|| path.to_owned())
            })
            .ok_or("no cgroup v1 memory controller in /proc/self/cgroup")?;
        let dir = Path::new("/sys/fs/cgroup/memory")
            .join(path.trim_start_matches('/'))
            .join(format!("converse-test-{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create '{}': {e}", dir.display()))?;
        let group = Self { dir };
        std::fs::write(group.dir.join("memory.limit_in_bytes"), limit.to_string())
            .map_err(|e| format!("cannot set the limit: {e}"))?;
        Ok(group)
    }

    /// `converse args...` run inside the group.
    fn run(&self, tmp: &Path, args: &[std::ffi::OsString]) -> Output {
        let mut c = bin(tmp);
        let procs = self.dir.join("cgroup.procs");
        c.args(args);
        let prog = c.get_program().to_owned();
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg("echo $$ > \"$0\" && exec \"$@\"")
            .arg(&procs)
            .arg(prog)
            .args(c.get_args());
        for (k, v) in c.get_envs() {
            match v {
                Some(v) => sh.env(k, v),
                None => sh.env_remove(k),
            };
        }
        sh.output().unwrap()
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap()
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The budget comes from the job's cgroup limit, found through /proc/self/cgroup (the
/// hierarchy's root shows the host's value): the dry run says so and tiles a large image, and a
/// real run inside the group finishes without being killed.
#[test]
fn the_memory_budget_follows_a_real_cgroup_v1_limit() {
    let limit: u64 = 100 << 20;
    let group = match MemoryCgroup::new(limit) {
        Ok(g) => g,
        Err(why) if std::env::var_os("CI").is_none() => {
            eprintln!("skipping: no writable cgroup v1 memory controller: {why}");
            return;
        }
        Err(why) => panic!("no writable cgroup v1 memory controller under CI: {why}"),
    };
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("large.png");
    write_image(&input, 400, 400, false);
    let out = tmp.path().join("out.png");
    let args = |extra: &[&str]| -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> =
            ["restore", "--task", "denoise", "--device", "cpu", "-q"]
                .iter()
                .chain(extra)
                .map(Into::into)
                .collect();
        v.extend(["--tile-overlap".into(), "32".into(), "-i".into()]);
        v.push(input.clone().into());
        v.push("-o".into());
        v.push(out.clone().into());
        v
    };
    let o = group.run(tmp.path(), &args(&["--dry-run"]));
    let err = stderr(&o);
    let source = format!(
        "9/10 of what the cgroup v1 limit '{}' (100 MiB, ",
        group.dir.join("memory.limit_in_bytes").display()
    );
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("memory budget: ") && first.contains(&source),
        "{err}"
    );
    let line = stdout(&o);
    assert!(line.contains("400x400 to 400x400, 4 tiles (2x2)"), "{line}");
    assert!(!line.contains("over the budget"), "{line}");
    let Some(shared) = common::shared() else {
        return;
    };
    let mut real = args(&["--weights"]);
    let at = real.iter().position(|a| a == "--weights").unwrap() + 1;
    real.insert(at, shared.join("weights").into());
    let o = group.run(tmp.path(), &real);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(out.exists());
    let peak: u64 = group
        .read("memory.max_usage_in_bytes")
        .trim()
        .parse()
        .unwrap();
    assert!(peak <= limit, "{peak}");
    let oom = group.read("memory.oom_control");
    assert!(
        !oom.lines()
            .any(|l| l.starts_with("oom_kill ") && l != "oom_kill 0"),
        "{oom}"
    );
    eprintln!(
        "a run under a {} MiB limit peaked at {} MiB",
        limit >> 20,
        peak >> 20
    );
}
