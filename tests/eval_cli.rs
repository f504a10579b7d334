//! `converse eval` and `converse degrade` through the real binary, on a tiny dataset.

mod common;

use common::{converse, listing, stderr, stdout};

#[test]
fn eval_writes_the_table_json_and_saved_images() {
    let Some(shared) = common::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("tiny set");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    let img = image::open(shared.join("golden/cli/sr_clean.png")).unwrap();
    img.crop_imm(0, 0, 48, 40).save(data.join("a.png")).unwrap();
    img.crop_imm(8, 8, 44, 36)
        .save(data.join("sub/b.png"))
        .unwrap();
    let json = t.join("r.json");
    let o = converse(t)
        .args(["eval", "--task", "sr", "--device", "cpu", "-q", "--weights"])
        .arg(shared.join("weights"))
        .arg("--dataset")
        .arg(&data)
        .arg("--json")
        .arg(&json)
        .arg("--save")
        .arg(t.join("saved"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("sr on tiny set\n"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("mean ")), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["task"], "sr");
    assert_eq!(v["dataset"], "tiny set");
    let images = v["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(images[0]["name"], "a.png");
    assert_eq!(images[1]["name"], "sub/b.png");
    for i in images {
        for k in ["psnr", "ssim", "psnr_y", "ssim_y", "seconds"] {
            assert!(i[k].as_f64().is_some_and(f64::is_finite), "{k} in {i}");
        }
        assert!(i["psnr"].as_f64().unwrap() > 20.0);
    }
    let mean = (images[0]["psnr"].as_f64().unwrap() + images[1]["psnr"].as_f64().unwrap()) / 2.0;
    assert!((v["mean_psnr"].as_f64().unwrap() - mean).abs() < 1e-12);
    assert!(v["mean_psnr_y"].as_f64().is_some());
    assert_eq!(listing(&t.join("saved")), ["a.png", "sub"]);
    // modcrop 4: 48x40 and 44x36 HR images.
    let saved = image::open(t.join("saved/sub/b.png")).unwrap();
    assert_eq!((saved.width(), saved.height()), (44, 36));
}

#[test]
fn degrade_is_deterministic_and_uses_the_eval_degradations() {
    let Some(shared) = common::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let input = shared.join("golden/cli/denoise_clean.png");
    let run = |name: &str, args: &[&str]| {
        let out = t.join(name);
        let o = converse(t)
            .arg("degrade")
            .args(args)
            .arg("-i")
            .arg(&input)
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        out
    };
    let a = run("a.png", &["--task", "denoise"]);
    let b = run("b.png", &["--task", "denoise"]);
    let c = run("c.png", &["--task", "denoise", "--seed", "1"]);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&c).unwrap());
    let sr = image::open(run("sr.png", &["--task", "sr"])).unwrap();
    assert_eq!((sr.width(), sr.height()), (50, 40));
    let blur = run(
        "blur.png",
        &["--task", "deblur", "--kernel", "gaussian:1.6"],
    );
    assert_eq!(image::open(blur).unwrap().width(), 200);
    let o = converse(t)
        .args(["degrade", "--task", "deblur", "-i"])
        .arg(&input)
        .arg("-o")
        .arg(t.join("x.png"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--task deblur needs --kernel"),
        "{}",
        stderr(&o)
    );
}
