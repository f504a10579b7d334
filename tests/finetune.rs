//! `converse finetune` through the real binary, on a few small images: the weights it writes
//! load with `--model` and score better than the released ones on what they were trained on;
//! Ctrl-C saves a checkpoint and `--resume` continues bit for bit; outputs that exist or are
//! inputs are refused; weights of another model are refused by `--model`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{converse, stderr, write_image};

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Setup {
    shared: PathBuf,
    tmp: tempfile::TempDir,
}

impl Setup {
    fn new() -> Option<Self> {
        let shared = common::shared()?;
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        write_image(&data.join("a.png"), 32, 32, false);
        Some(Self { shared, tmp })
    }

    fn p(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = converse(&self.p("cache"));
        c.args(args)
            .env("CONVERSE_WEIGHTS", self.shared.join("weights"))
            .current_dir(self.tmp.path());
        c
    }

    /// `finetune` on the one 32x32 image, JPEG 10, whole-image patches under the eight
    /// symmetries, with `extra` options.
    fn finetune(&self, out: &str, extra: &[&str]) -> Command {
        let mut args = vec![
            "finetune", "--task", "denoise", "--jpeg", "10", "--data", "data", "--patch", "32",
            "--batch", "2", "--device", "cpu", "-q", "-o", out,
        ];
        args.extend(extra);
        self.cmd(&args)
    }
}

/// The mean PSNR `eval` prints for `--jpeg 10` on the training image, with `model` or the
/// released weights.
fn eval_psnr(s: &Setup, model: Option<&str>) -> f64 {
    let mut args = vec![
        "eval",
        "--task",
        "denoise",
        "--jpeg",
        "10",
        "--dataset",
        "data",
        "--device",
        "cpu",
        "-q",
    ];
    if let Some(m) = model {
        args.extend(["--model", m]);
    }
    let o = s.cmd(&args).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let mean = out.lines().find(|l| l.starts_with("mean")).expect(&out);
    mean.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn the_fine_tuned_weights_load_and_beat_the_released_ones_on_their_data() {
    let Some(s) = Setup::new() else { return };
    let o = s
        .finetune(
            "tuned.safetensors",
            &[
                "--steps",
                "6",
                "--log",
                "log.csv",
                "--checkpoint-every",
                "3",
                "--val",
                "data",
                "--val-every",
                "6",
            ],
        )
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(s.p("tuned.ckpt.safetensors").is_file());
    // The loss fell: the validation PSNR on the training image rose from step 0 to the end.
    let log = std::fs::read_to_string(s.p("log.csv")).unwrap();
    let column = |i: usize| -> Vec<f64> {
        log.lines()
            .skip(1)
            .filter_map(|l| l.split(',').nth(i)?.parse().ok())
            .collect()
    };
    assert_eq!(column(1).len(), 6, "a loss per step: {log}");
    let val = column(3);
    assert_eq!(val.len(), 2, "validations at steps 0 and 6: {log}");
    assert!(val[1] > val[0], "the validation PSNR did not rise: {log}");
    let (released, tuned) = (
        eval_psnr(&s, None),
        eval_psnr(&s, Some("tuned.safetensors")),
    );
    assert!(tuned > released, "tuned {tuned} dB, released {released} dB");
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_resume_continues_bit_for_bit() {
    let Some(s) = Setup::new() else { return };
    let steps = ["--steps", "5", "--checkpoint-every", "1"];
    let o = s.finetune("straight.safetensors", &steps).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    let child = s
        .finetune("stopped.safetensors", &steps)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ckpt = s.p("stopped.ckpt.safetensors");
    let start = Instant::now();
    while !ckpt.exists() {
        assert!(start.elapsed() < Duration::from_secs(600), "no checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(
        err.contains("continue with --resume 'stopped.ckpt.safetensors'"),
        "{err}"
    );
    assert!(!s.p("stopped.safetensors").exists(), "no partial output");

    let mut resume = steps.to_vec();
    resume.extend(["--resume", "stopped.ckpt.safetensors"]);
    let o = s.finetune("stopped.safetensors", &resume).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming"), "{}", stderr(&o));
    let a = std::fs::read(s.p("straight.safetensors")).unwrap();
    let b = std::fs::read(s.p("stopped.safetensors")).unwrap();
    assert!(
        a == b,
        "the resumed run's weights differ from the straight run's"
    );

    // Another recipe cannot resume it.
    let mut other = vec!["--steps", "5", "--seed", "7"];
    other.extend(["--resume", "stopped.ckpt.safetensors"]);
    let o = s.finetune("other.safetensors", &other).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("the checkpoint was made with another recipe: seed 0 (now 7)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn outputs_that_exist_or_are_inputs_are_refused_before_any_work() {
    let Some(s) = Setup::new() else { return };
    std::fs::write(s.p("taken.safetensors"), b"mine").unwrap();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["--steps", "1", "-o", "taken.safetensors"],
            "'taken.safetensors' exists: pass --overwrite to replace it, or choose another -o"
                .into(),
        ),
        (
            vec!["--steps", "1", "-o", "data/../data/a.png"],
            "the output 'data/../data/a.png' is the input 'data/a.png', which is never overwritten"
                .into(),
        ),
        (
            vec!["--steps", "1", "-o", "x.safetensors", "--log", "data/a.png"],
            "the output 'data/a.png' is the input 'data/a.png', which is never overwritten".into(),
        ),
        (
            vec!["-o", "x.safetensors"],
            "give --steps N, --minutes M, or both".into(),
        ),
    ];
    for (extra, msg) in cases {
        let mut args = vec![
            "finetune", "--task", "denoise", "--data", "data", "--patch", "32", "--device", "cpu",
        ];
        args.extend(&extra);
        let o = s.cmd(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{extra:?}");
        assert_eq!(stderr(&o).trim(), format!("error: {msg}"), "{extra:?}");
    }
    assert_eq!(std::fs::read(s.p("taken.safetensors")).unwrap(), b"mine");
    // An earlier run's checkpoint is neither resumed nor replaced silently.
    std::fs::write(s.p("y.ckpt.safetensors"), b"earlier").unwrap();
    let o = s
        .finetune("y.safetensors", &["--steps", "1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("holds the checkpoint of an earlier run: continue it with --resume"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read(s.p("y.ckpt.safetensors")).unwrap(),
        b"earlier"
    );
}

#[test]
fn model_refuses_weights_of_another_model() {
    let Some(s) = Setup::new() else { return };
    let sr = s.shared.join("weights/converse_srresnet.safetensors");
    let sr = if sr.is_file() {
        sr
    } else {
        let o = s
            .cmd(&[
                "convert",
                path(&s.shared.join("weights/converse_srresnet.pth")),
                "-o",
                "sr.safetensors",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        s.p("sr.safetensors")
    };
    let o = s
        .cmd(&[
            "restore",
            "--task",
            "denoise",
            "-i",
            "data/a.png",
            "-o",
            "out.png",
            "--model",
            path(&sr),
            "--device",
            "cpu",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stderr(&o).trim(),
        format!(
            "error: cannot load converse_dncnn from '{}': the file holds converse_srresnet \
             weights, not converse_dncnn",
            sr.display()
        )
    );
    assert!(!s.p("out.png").exists());
}
