//! Splitting one folder run into shards: `--shard K/N` and `--shard auto` (a Slurm job array or
//! a Kubernetes Indexed Job).
//!
//! Every item goes to exactly one of N shards. The split balances the estimated work ([`work`],
//! from the image headers) with the longest-processing-time rule: items in decreasing work (ties
//! in input order) each go to the shard with the least work so far (ties to the lowest index).
//! No shard then exceeds the mean by more than the largest item. The split depends only on the
//! items and their work, never on the machine (memory budget, threads), so every task of an
//! array computes the same split.

use std::fmt;

use anyhow::bail;

use crate::models::ModelKind;

/// One shard of a split: `index` from 0 to `count - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// What `--shard` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardSpec {
    /// `K/N`.
    Fixed(Shard),
    /// `auto` (`None`) or `auto/N`: from the scheduler's variables.
    Auto(Option<usize>),
}

/// The variables `--shard auto` reads.
const SLURM_ID: &str = "SLURM_ARRAY_TASK_ID";
const SLURM_MIN: &str = "SLURM_ARRAY_TASK_MIN";
const SLURM_MAX: &str = "SLURM_ARRAY_TASK_MAX";
const SLURM_COUNT: &str = "SLURM_ARRAY_TASK_COUNT";
const SLURM_STEP: &str = "SLURM_ARRAY_TASK_STEP";
const K8S_INDEX: &str = "JOB_COMPLETION_INDEX";

/// Parses `K/N`, `auto` or `auto/N` (the `--shard` value parser).
pub fn parse(s: &str) -> Result<ShardSpec, String> {
    let count = |n: &str| match n.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "`{s}`: the shard count must be a whole number from 1"
        )),
    };
    let usage = || format!("`{s}` is not a shard: give K/N (K from 0 to N-1), auto or auto/N");
    if s.trim() == "auto" {
        return Ok(ShardSpec::Auto(None));
    }
    let (k, n) = s.split_once('/').ok_or_else(usage)?;
    if k.trim() == "auto" {
        return Ok(ShardSpec::Auto(Some(count(n)?)));
    }
    let count = count(n)?;
    let index = k.trim().parse::<usize>().map_err(|_| usage())?;
    if index >= count {
        return Err(format!(
            "`{s}`: the shard index must be below the count (0 to {})",
            count - 1
        ));
    }
    Ok(ShardSpec::Fixed(Shard { index, count }))
}

impl ShardSpec {
    /// The shard, and where it came from, with the process's environment.
    pub fn resolve(self) -> anyhow::Result<(Shard, String)> {
        self.resolve_with(|k| std::env::var(k).ok())
    }

    /// The shard, and where it came from, with `env` for the scheduler's variables.
    ///
    /// - `K/N` is taken as is.
    /// - `auto` under a Slurm job array: the task's place in the array (`SLURM_ARRAY_TASK_ID`
    ///   less `SLURM_ARRAY_TASK_MIN`) of `SLURM_ARRAY_TASK_COUNT`, so `--array=1-8` gives
    ///   shards 0 to 7. A stepped or sparse array is refused.
    /// - `auto/N`: the scheduler's index as is (`SLURM_ARRAY_TASK_ID`, else
    ///   `JOB_COMPLETION_INDEX`) of N. This is how a Kubernetes Indexed Job gives its shard,
    ///   and how a Slurm resubmission of some tasks (`--array=3,7`) keeps their shards.
    pub fn resolve_with(
        self,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<(Shard, String)> {
        let count = match self {
            Self::Fixed(s) => return Ok((s, format!("--shard {s}"))),
            Self::Auto(count) => count,
        };
        let number = |name: &str| -> anyhow::Result<Option<usize>> {
            match env(name) {
                None => Ok(None),
                Some(v) => match v.trim().parse::<usize>() {
                    Ok(n) => Ok(Some(n)),
                    Err(_) => bail!("--shard auto: {name}={v} is not a whole number"),
                },
            }
        };
        let (index, name) = if let Some(id) = number(SLURM_ID)? {
            (id, SLURM_ID)
        } else if let Some(i) = number(K8S_INDEX)? {
            (i, K8S_INDEX)
        } else {
            bail!(
                "--shard auto found no scheduler: it reads {SLURM_ID}, {SLURM_MIN} and \
                 {SLURM_COUNT} (a Slurm job array, sbatch --array) or {K8S_INDEX} (a Kubernetes \
                 Indexed Job, with --shard auto/N), and none is set; give the shard as --shard K/N"
            )
        };
        if let Some(count) = count {
            if index >= count {
                bail!(
                    "--shard auto/{count}: {name}={index} is not a shard of {count} (0 to {}); \
                     with auto/N the scheduler's index is the shard",
                    count - 1
                )
            }
            return Ok((Shard { index, count }, format!("{name}={index} of {count}")));
        }
        if name == K8S_INDEX {
            bail!(
                "--shard auto: {K8S_INDEX} is set but the number of shards is not known: give it \
                 as --shard auto/N (the Job's completions)"
            )
        }
        let need = |name: &str| -> anyhow::Result<usize> {
            number(name)?.ok_or_else(|| {
                anyhow::anyhow!(
                    "--shard auto: {SLURM_ID} is set but {name} is not: give the shard as \
                     --shard K/N"
                )
            })
        };
        let (min, n) = (need(SLURM_MIN)?, need(SLURM_COUNT)?);
        let max = number(SLURM_MAX)?;
        let step = number(SLURM_STEP)?.unwrap_or(1);
        let last = min + n.saturating_sub(1);
        if n == 0 || step != 1 || max.is_some_and(|m| m != last) || index < min || index > last {
            let max = max.map_or_else(|| "?".into(), |m| m.to_string());
            bail!(
                "--shard auto: the Slurm array ({n} tasks from {min} to {max}, step {step}) is \
                 stepped or sparse, so its task ids are not the shards 0 to N-1: submit a \
                 contiguous range (e.g. --array=0-{}), or give --shard auto/N to take \
                 {SLURM_ID} as the shard",
                n.max(1) - 1
            )
        }
        Ok((
            Shard {
                index: index - min,
                count: n,
            },
            format!("{SLURM_ID}={index} of {SLURM_MIN}={min}, {SLURM_COUNT}={n}"),
        ))
    }
}

/// Estimated work of restoring an `h x w` image with `channels` colour channels: pixels at the
/// model's working resolution, times the model runs (a colour denoise runs three gray planes,
/// the x8 ensemble eight times), times the model's blocks. At least 1.
pub fn work(kind: ModelKind, (h, w, channels): (usize, usize, usize), gray: bool, x8: bool) -> u64 {
    let s = kind.scale() as u64;
    let px = (h as u64) * (w as u64) * s * s;
    let planes = crate::restore::colour::runs(kind, channels, gray);
    (px * planes * if x8 { 8 } else { 1 } * kind.blocks_per_forward()).max(1)
}

/// The shard of each item, by work (see the module's header).
pub fn assign(work: &[u64], count: usize) -> Vec<usize> {
    let count = count.max(1);
    let mut order: Vec<usize> = (0..work.len()).collect();
    order.sort_by(|&a, &b| work[b].cmp(&work[a]).then(a.cmp(&b)));
    let mut load = vec![0u64; count];
    let mut shard = vec![0; work.len()];
    for i in order {
        let least = (0..count)
            .min_by_key(|&k| (load[k], k))
            .expect("count >= 1");
        load[least] += work[i];
        shard[i] = least;
    }
    shard
}

/// One shard's part of a split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection<T> {
    /// The shard's items, in input order.
    pub items: Vec<T>,
    /// How many items there were in all.
    pub total_items: usize,
    /// The shard's work and all the work.
    pub work: u64,
    pub total_work: u64,
}

impl<T> Selection<T> {
    /// The shard's share of the work, in percent.
    pub fn percent(&self) -> f64 {
        100.0 * self.work as f64 / self.total_work.max(1) as f64
    }
}

/// The items of `shard` out of all `items`, each with its work.
pub fn select<T>(items: Vec<T>, work: &[u64], shard: Shard) -> Selection<T> {
    assert_eq!(items.len(), work.len(), "one work figure per item");
    let of = assign(work, shard.count);
    let total_items = items.len();
    let mut picked = 0;
    let items: Vec<T> = items
        .into_iter()
        .zip(&of)
        .zip(work)
        .filter(|((_, &k), _)| k == shard.index)
        .map(|((item, _), w)| {
            picked += w;
            item
        })
        .collect();
    Selection {
        items,
        total_items,
        work: picked,
        total_work: work.iter().sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn resolve(spec: &str, vars: &[(&str, &str)]) -> anyhow::Result<Shard> {
        Ok(parse(spec).unwrap().resolve_with(env(vars))?.0)
    }

    fn shard(index: usize, count: usize) -> Shard {
        Shard { index, count }
    }

    /// Mixed sizes: thumbnails to 12 MP, a few equal, over three models' worth of work.
    fn mixed() -> Vec<u64> {
        let mut v = vec![];
        for (i, (h, w)) in [
            (16, 16),
            (4000, 3000),
            (64, 48),
            (480, 320),
            (480, 320),
            (1920, 1080),
            (33, 700),
            (256, 256),
            (1024, 768),
            (12, 9),
            (2048, 2048),
            (300, 200),
            (800, 600),
            (256, 256),
            (5, 5000),
            (640, 480),
            (3000, 2000),
            (100, 100),
            (720, 1280),
            (1, 1),
        ]
        .into_iter()
        .enumerate()
        {
            let kind = [
                ModelKind::DnCNN,
                ModelKind::SRResNet,
                ModelKind::ConverseNet,
            ][i % 3];
            v.push(work(kind, (h, w, 1 + 2 * (i % 2)), false, i % 5 == 0));
        }
        v
    }

    #[test]
    fn shard_values_parse() {
        assert_eq!(parse("3/8"), Ok(ShardSpec::Fixed(shard(3, 8))));
        assert_eq!(parse(" 0 / 1 "), Ok(ShardSpec::Fixed(shard(0, 1))));
        assert_eq!(parse("auto"), Ok(ShardSpec::Auto(None)));
        assert_eq!(parse("auto/4"), Ok(ShardSpec::Auto(Some(4))));
        assert_eq!(
            parse("8/8").unwrap_err(),
            "`8/8`: the shard index must be below the count (0 to 7)"
        );
        assert_eq!(
            parse("0/0").unwrap_err(),
            "`0/0`: the shard count must be a whole number from 1"
        );
        assert_eq!(
            parse("auto/0").unwrap_err(),
            "`auto/0`: the shard count must be a whole number from 1"
        );
        for bad in ["3", "-1/4", "a/4", "", "auto4"] {
            assert_eq!(
                parse(bad).unwrap_err(),
                format!("`{bad}` is not a shard: give K/N (K from 0 to N-1), auto or auto/N"),
            );
        }
    }

    #[test]
    fn every_item_is_in_exactly_one_shard_and_shards_balance() {
        let work = mixed();
        let total: u64 = work.iter().sum();
        let largest = *work.iter().max().unwrap();
        for n in 1..=16 {
            let mut seen = vec![0; work.len()];
            let mut loads = vec![];
            for k in 0..n {
                let items: Vec<usize> = (0..work.len()).collect();
                let sel = select(items, &work, shard(k, n));
                assert_eq!(sel.total_items, work.len());
                assert_eq!(sel.total_work, total);
                assert_eq!(sel.work, sel.items.iter().map(|&i| work[i]).sum::<u64>());
                assert!(sel.items.windows(2).all(|p| p[0] < p[1]), "input order");
                for i in sel.items {
                    seen[i] += 1;
                }
                loads.push(sel.work);
            }
            assert!(seen.iter().all(|&c| c == 1), "N={n}: {seen:?}");
            // No shard exceeds the mean by more than the largest item.
            let mean = total as f64 / n as f64;
            for (k, &l) in loads.iter().enumerate() {
                assert!(
                    l as f64 <= mean + largest as f64,
                    "N={n}: shard {k} has {l}, mean {mean}, largest {largest}"
                );
            }
        }
    }

    #[test]
    fn the_split_is_deterministic_and_balances_by_work_not_count() {
        let work = mixed();
        for n in 1..=16 {
            assert_eq!(assign(&work, n), assign(&work, n));
        }
        // One large item and six small ones: the large one is a shard alone.
        let work = [1, 1, 1, 100, 1, 1, 1];
        assert_eq!(assign(&work, 2), [1, 1, 1, 0, 1, 1, 1]);
        // Equal work goes round the shards in input order.
        assert_eq!(assign(&[5; 5], 3), [0, 1, 2, 0, 1]);
        assert_eq!(assign(&[], 4), Vec::<usize>::new());
    }

    #[test]
    fn work_follows_pixels_model_and_runs() {
        let dn = work(ModelKind::DnCNN, (100, 100, 1), false, false);
        assert_eq!(dn, 100 * 100 * ModelKind::DnCNN.blocks_per_forward());
        assert_eq!(work(ModelKind::DnCNN, (100, 100, 3), false, false), 3 * dn);
        assert_eq!(work(ModelKind::DnCNN, (100, 100, 3), true, false), dn);
        assert_eq!(work(ModelKind::DnCNN, (100, 100, 1), false, true), 8 * dn);
        let sr = work(ModelKind::SRResNet, (100, 100, 3), false, false);
        assert_eq!(
            sr,
            16 * 100 * 100 * ModelKind::SRResNet.blocks_per_forward()
        );
        assert_eq!(work(ModelKind::DnCNN, (0, 0, 1), false, false), 1);
    }

    #[test]
    fn fixed_shards_ignore_the_environment() {
        let slurm = [(SLURM_ID, "3"), (SLURM_MIN, "0"), (SLURM_COUNT, "4")];
        assert_eq!(resolve("1/2", &slurm).unwrap(), shard(1, 2));
        let (_, source) = parse("1/2").unwrap().resolve_with(env(&[])).unwrap();
        assert_eq!(source, "--shard 1/2");
    }

    #[test]
    fn auto_reads_a_slurm_array() {
        let vars = |id: &'static str, min, max, count| {
            [
                (SLURM_ID, id),
                (SLURM_MIN, min),
                (SLURM_MAX, max),
                (SLURM_COUNT, count),
                (SLURM_STEP, "1"),
            ]
        };
        assert_eq!(
            resolve("auto", &vars("2", "0", "3", "4")).unwrap(),
            shard(2, 4)
        );
        // --array=1-8: tasks 1 to 8 are shards 0 to 7.
        for id in 1..=8 {
            let id_s: &'static str = Box::leak(id.to_string().into_boxed_str());
            assert_eq!(
                resolve("auto", &vars(id_s, "1", "8", "8")).unwrap(),
                shard(id - 1, 8)
            );
        }
        let (_, source) = parse("auto")
            .unwrap()
            .resolve_with(env(&vars("5", "1", "8", "8")))
            .unwrap();
        assert_eq!(
            source,
            "SLURM_ARRAY_TASK_ID=5 of SLURM_ARRAY_TASK_MIN=1, SLURM_ARRAY_TASK_COUNT=8"
        );
        // Without SLURM_ARRAY_TASK_MAX and _STEP (older Slurm), a contiguous array still maps.
        let short = [(SLURM_ID, "7"), (SLURM_MIN, "4"), (SLURM_COUNT, "4")];
        assert_eq!(resolve("auto", &short).unwrap(), shard(3, 4));
        // auto/N takes the task id as the shard: a resubmitted --array=2 keeps shard 2 of 4.
        assert_eq!(
            resolve("auto/4", &vars("2", "2", "2", "1")).unwrap(),
            shard(2, 4)
        );
        assert_eq!(
            resolve("auto/4", &vars("4", "0", "4", "5"))
                .unwrap_err()
                .to_string(),
            "--shard auto/4: SLURM_ARRAY_TASK_ID=4 is not a shard of 4 (0 to 3); with auto/N the \
             scheduler's index is the shard"
        );
    }

    #[test]
    fn auto_refuses_stepped_and_sparse_arrays() {
        let stepped = [
            (SLURM_ID, "4"),
            (SLURM_MIN, "0"),
            (SLURM_MAX, "12"),
            (SLURM_COUNT, "4"),
            (SLURM_STEP, "4"),
        ];
        assert_eq!(
            resolve("auto", &stepped).unwrap_err().to_string(),
            "--shard auto: the Slurm array (4 tasks from 0 to 12, step 4) is stepped or sparse, so \
             its task ids are not the shards 0 to N-1: submit a contiguous range (e.g. \
             --array=0-3), or give --shard auto/N to take SLURM_ARRAY_TASK_ID as the shard"
        );
        // --array=0,3,7 (sparse): three tasks between 0 and 7.
        let sparse = [
            (SLURM_ID, "3"),
            (SLURM_MIN, "0"),
            (SLURM_MAX, "7"),
            (SLURM_COUNT, "3"),
        ];
        let e = resolve("auto", &sparse).unwrap_err().to_string();
        assert!(
            e.contains("(3 tasks from 0 to 7, step 1) is stepped or sparse"),
            "{e}"
        );
        let missing = [(SLURM_ID, "3"), (SLURM_COUNT, "4")];
        assert_eq!(
            resolve("auto", &missing).unwrap_err().to_string(),
            "--shard auto: SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_MIN is not: give the \
             shard as --shard K/N"
        );
        let bad = [(SLURM_ID, "x")];
        assert_eq!(
            resolve("auto", &bad).unwrap_err().to_string(),
            "--shard auto: SLURM_ARRAY_TASK_ID=x is not a whole number"
        );
    }

    #[test]
    fn auto_reads_a_kubernetes_indexed_job() {
        let k8s = [(K8S_INDEX, "5")];
        assert_eq!(resolve("auto/8", &k8s).unwrap(), shard(5, 8));
        let (_, source) = parse("auto/8").unwrap().resolve_with(env(&k8s)).unwrap();
        assert_eq!(source, "JOB_COMPLETION_INDEX=5 of 8");
        assert_eq!(
            resolve("auto", &k8s).unwrap_err().to_string(),
            "--shard auto: JOB_COMPLETION_INDEX is set but the number of shards is not known: \
             give it as --shard auto/N (the Job's completions)"
        );
        assert!(resolve("auto/4", &k8s)
            .unwrap_err()
            .to_string()
            .starts_with("--shard auto/4: JOB_COMPLETION_INDEX=5 is not a shard of 4 (0 to 3)"));
    }

    #[test]
    fn auto_without_a_scheduler_names_the_variables() {
        let none = "--shard auto found no scheduler: it reads SLURM_ARRAY_TASK_ID, \
                    SLURM_ARRAY_TASK_MIN and SLURM_ARRAY_TASK_COUNT (a Slurm job array, sbatch \
                    --array) or JOB_COMPLETION_INDEX (a Kubernetes Indexed Job, with --shard \
                    auto/N), and none is set; give the shard as --shard K/N";
        assert_eq!(resolve("auto", &[]).unwrap_err().to_string(), none);
        assert_eq!(resolve("auto/4", &[]).unwrap_err().to_string(), none);
        // A Slurm job that is not an array.
        let plain = [("SLURM_JOB_ID", "12"), ("SLURM_CPUS_PER_TASK", "2")];
        assert_eq!(resolve("auto", &plain).unwrap_err().to_string(), none);
    }
}
