//! Denoising away from sigma 25 (`--sigma`) and JPEG as a degradation (`--jpeg`), through the
//! real binary: refused values, the sigma-25 bit identity, the rescaling's gain at sigma 50 and
//! the JPEG round trip through `degrade` and `eval`.

mod common;

use std::path::{Path, PathBuf};

use common::{converse, stderr, stdout};
use converse::eval::metrics::psnr;
use converse::eval::protocol::{jpeg, list_images, read_u8, Degradation, ImageU8};

/// Runs `converse ARGS` with the shared weights; returns (exit code, stdout, stderr).
fn run(shared: &Path, tmp: &Path, args: &[&str]) -> (i32, String, String) {
    let o = converse(tmp)
        .args(args)
        .env("CONVERSE_WEIGHTS", shared.join("weights"))
        .output()
        .unwrap();
    (o.status.code().unwrap_or(-1), stdout(&o), stderr(&o))
}

/// `converse COMMAND --task denoise -q EXTRA -i INPUT -o OUTPUT`, which must succeed.
fn denoise(shared: &Path, tmp: &Path, command: &str, extra: &[&str], input: &Path, output: &Path) {
    let mut args = vec![command, "--task", "denoise"];
    if command == "restore" {
        args.extend(["-q", "--device", "cpu"]);
    }
    args.extend(extra);
    args.extend(["-i", path(input), "-o", path(output)]);
    let (code, _, err) = run(shared, tmp, &args);
    assert_eq!(code, 0, "{args:?}: {err}");
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// PSNR of two gray 8-bit images (no border), as `eval` scores them.
fn psnr_of(a: &ImageU8, b: &ImageU8) -> f64 {
    psnr(&a.data, &b.data, a.height, a.width, 1, 0)
}

/// A 128x128 crop of Set12's first image, in a folder of its own.
fn small_set12(shared: &Path, tmp: &Path) -> (PathBuf, PathBuf) {
    let dir = tmp.join("set");
    std::fs::create_dir_all(&dir).unwrap();
    let clean = dir.join("01.png");
    image::open(shared.join("testsets/set12/01.png"))
        .unwrap()
        .crop_imm(64, 64, 128, 128)
        .to_luma8()
        .save(&clean)
        .unwrap();
    (dir, clean)
}

#[test]
fn bad_noise_levels_and_qualities_are_refused_with_their_messages() {
    let Some(shared) = common::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let input = shared.join("golden/cli/denoise_in.png");
    let out = t.join("out.png");
    let (i, o) = (path(&input), path(&out));
    let set = shared.join("testsets/set12");
    let d = path(&set);
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "restore", "--task", "denoise", "--sigma", "0", "-i", i, "-o", o,
            ],
            "error: --sigma 0: denoising needs a noise level above 0\n",
        ),
        (
            &[
                "restore", "--task", "denoise", "--sigma", "-5", "-i", i, "-o", o,
            ],
            "error: invalid value '-5' for '--sigma <S>': `-5` is not a noise level (a number \
             from 0, on the 0-255 scale)\n",
        ),
        (
            &[
                "restore", "--task", "denoise", "--sigma", "NaN", "-i", i, "-o", o,
            ],
            "error: invalid value 'NaN' for '--sigma <S>': `NaN` is not a noise level (a number \
             from 0, on the 0-255 scale)\n",
        ),
        (
            &["restore", "--task", "sr", "--sigma", "50", "-i", i, "-o", o],
            "error: --sigma is for --task denoise\n",
        ),
        (
            &["eval", "--task", "denoise", "--sigma", "0", "--dataset", d],
            "error: --sigma 0: denoising needs a noise level above 0\n",
        ),
        (
            &[
                "degrade", "--task", "denoise", "--sigma", "0", "-i", i, "-o", o,
            ],
            "error: --sigma 0: denoising needs a noise level above 0\n",
        ),
        (
            &[
                "degrade", "--task", "denoise", "--jpeg", "0", "-i", i, "-o", o,
            ],
            "error: invalid value '0' for '--jpeg <Q>': `0` is not a JPEG quality (1 to 100)\n",
        ),
        (
            &["eval", "--task", "denoise", "--jpeg", "101", "--dataset", d],
            "error: invalid value '101' for '--jpeg <Q>': `101` is not a JPEG quality (1 to \
             100)\n",
        ),
        (
            &["degrade", "--task", "sr", "--jpeg", "10", "-i", i, "-o", o],
            "error: --jpeg is for --task denoise\n",
        ),
        (
            &["eval", "--task", "sr", "--jpeg", "10", "--dataset", d],
            "error: --jpeg is for --task denoise\n",
        ),
        (
            &["eval", "--task", "sr", "--no-rescale", "--dataset", d],
            "error: --no-rescale is for --task denoise\n",
        ),
    ];
    for (args, expect) in cases {
        let (code, _, err) = run(&shared, t, args);
        assert_eq!(code, 2, "{args:?}: {err}");
        let first = err.split_inclusive('\n').next().unwrap_or("");
        assert_eq!(first, *expect, "{args:?}");
        assert!(!out.exists(), "{args:?} wrote its output");
    }
    // --jpeg and --sigma are two degradations: one at a time.
    let (code, _, err) = run(
        &shared,
        t,
        &[
            "degrade", "--task", "denoise", "--jpeg", "10", "--sigma", "5", "-i", i, "-o", o,
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.starts_with("error: the argument '--jpeg <Q>' cannot be used with '--sigma <SIGMA>'"),
        "{err}"
    );
}

#[test]
fn sigma_25_is_the_default_bit_for_bit() {
    let Some(shared) = common::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let input = shared.join("golden/cli/denoise_in.png");
    let (a, b) = (t.join("a.png"), t.join("b.png"));
    denoise(&shared, t, "restore", &[], &input, &a);
    denoise(&shared, t, "restore", &["--sigma", "25"], &input, &b);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

#[test]
fn rescaling_restores_sigma_50_far_better_than_the_plain_model() {
    let Some(shared) = common::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (set, clean) = small_set12(&shared, t);
    let noisy = t.join("noisy.png");
    denoise(&shared, t, "degrade", &["--sigma", "50"], &clean, &noisy);
    let (plain, rescaled) = (t.join("plain.png"), t.join("rescaled.png"));
    denoise(&shared, t, "restore", &[], &noisy, &plain);
    denoise(&shared, t, "restore", &["--sigma", "50"], &noisy, &rescaled);
    let truth = read_u8(&clean, 1).unwrap();
    let score = |p: &Path| psnr_of(&read_u8(p, 1).unwrap(), &truth);
    let (p_noisy, p_plain, p_rescaled) = (score(&noisy), score(&plain), score(&rescaled));
    assert!(
        p_rescaled > p_plain + 4.0 && p_rescaled > p_noisy + 6.0,
        "noisy {p_noisy:.2} dB, plain {p_plain:.2} dB, rescaled {p_rescaled:.2} dB"
    );
    // `eval` applies the same rule by default, and --no-rescale gives the plain model.
    let mean = |extra: &[&str]| {
        let json = t.join("r.json");
        let mut args = vec![
            "eval",
            "--task",
            "denoise",
            "-q",
            "--sigma",
            "50",
            "--overwrite",
        ];
        args.extend(["--dataset", path(&set), "--json", path(&json)]);
        args.extend(extra);
        let (code, out, err) = run(&shared, t, &args);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        (
            out,
            v["rescaled"].as_bool().unwrap(),
            v["mean_psnr"].as_f64().unwrap(),
        )
    };
    let (out, on, rescaled_db) = mean(&[]);
    assert!(on);
    assert!(
        out.starts_with("denoise on set, sigma 50, rescaled to sigma 25\n"),
        "{out}"
    );
    let (out, on, plain_db) = mean(&["--no-rescale"]);
    assert!(!on);
    assert!(out.starts_with("denoise on set, sigma 50\n"), "{out}");
    assert!(rescaled_db > plain_db + 5.0, "{rescaled_db} vs {plain_db}");
    println!("eval, sigma 50: plain {plain_db:.2} dB, rescaled {rescaled_db:.2} dB");
}

#[test]
fn jpeg_round_trips_through_degrade_and_eval() {
    let Some(shared) = common::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (set, clean) = small_set12(&shared, t);
    let q10 = t.join("q10.png");
    denoise(&shared, t, "degrade", &["--jpeg", "10"], &clean, &q10);
    // `degrade` writes exactly the library's degradation, which `eval` scores.
    let truth = read_u8(&clean, 1).unwrap();
    let degraded = read_u8(&q10, 1).unwrap();
    assert_eq!(degraded, jpeg(&truth, 10).unwrap());
    let input_db = psnr_of(&degraded, &truth);
    assert!((20.0..35.0).contains(&input_db), "{input_db}");
    let json = t.join("r.json");
    let mut args = vec!["eval", "--task", "denoise", "-q", "--jpeg", "10"];
    args.extend(["--dataset", path(&set), "--json", path(&json)]);
    let (code, out, err) = run(&shared, t, &args);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("denoise on set, JPEG quality 10\n"),
        "{out}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["jpeg"], 10);
    assert!(
        v.get("sigma").is_none() && v.get("rescaled").is_none(),
        "{v}"
    );
    let model_db = v["mean_psnr"].as_f64().unwrap();
    assert!(model_db > input_db + 0.3, "{input_db} -> {model_db}");
}

/// The JPEG quality-10 inputs of Set12 and their PSNR (the figure in docs/accuracy.md).
#[test]
fn jpeg_quality_10_on_set12() {
    let Some(shared) = common::shared() else {
        return;
    };
    let set = shared.join("testsets/set12");
    let deg = Degradation::Jpeg { quality: 10 };
    let images = list_images(&set).unwrap();
    assert_eq!(images.len(), 12);
    let mut sum = 0.0;
    for p in &images {
        let img = read_u8(p, 1).unwrap();
        let d = deg.apply(&img, 0).unwrap();
        let input = converse::eval::protocol::to_u8(&d.input);
        assert_eq!(d.clean, img);
        sum += psnr_of(&input, &img);
    }
    let mean = sum / images.len() as f64;
    println!("Set12, JPEG quality 10: input {mean:.2} dB");
    assert!((27.0..28.5).contains(&mean), "{mean}");
}
