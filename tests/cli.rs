//! `converse verify` and general command-line behaviour, through the real binary.

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use common::{converse, stderr, stdout};

#[test]
fn verify_prints_a_line_per_case_and_a_summary() {
    let Some(shared) = common::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let o = converse(tmp.path())
        .args(["verify", "--device", "cpu", "--weights"])
        .arg(shared.join("weights"))
        .arg(shared.join("golden/converse2d_3.safetensors"))
        .arg(shared.join("golden/dncnn_1.safetensors"))
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("converse2d_3.safetensors") && lines[0].ends_with("pass"));
    assert!(lines[0].contains("official f32 1.212e-4"), "{}", lines[0]);
    assert!(lines[1].starts_with("dncnn_1.safetensors") && lines[1].contains("converse_dncnn"));
    assert_eq!(lines[2], "2 passed, 0 failed");
}

#[test]
fn verify_fails_a_wrong_answer_and_exits_1() {
    let Some(shared) = common::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // The operator case with y64 nudged by 1e-3 at one value: twice the official error is 2.4e-4.
    let src = shared.join("golden/converse2d_3.safetensors");
    let bytes = std::fs::read(&src).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone();
    let mut t: HashMap<String, Tensor> =
        candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
    let y64 = &t["y64"];
    let mut bump = vec![0f64; y64.elem_count()];
    bump[0] = 1e-3;
    let bump = Tensor::from_vec(bump, y64.shape(), &Device::Cpu).unwrap();
    t.insert("y64".into(), (y64 + bump).unwrap());
    let bad = tmp.path().join("converse2d_bad.safetensors");
    std::fs::write(&bad, safetensors::serialize(t.iter(), meta).unwrap()).unwrap();
    let o = converse(tmp.path())
        .args(["verify"])
        .arg(&bad)
        .output()
        .unwrap();
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.lines().next().unwrap().ends_with("FAIL"), "{out}");
    assert!(out.ends_with("0 passed, 1 failed\n"), "{out}");
}

#[test]
fn setup_errors_exit_2_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let o = converse(tmp.path()).args(args).output().unwrap();
        (o.status.code(), stderr(&o))
    };
    let (code, err) = run(&["verify", "/nonexistent/golden"]);
    assert_eq!(code, Some(2));
    assert_eq!(err, "error: '/nonexistent/golden' does not exist\n");

    let (code, err) = run(&["verify", "--device", "gpu", "x"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("unknown device `gpu` (cpu, cuda or cuda:N)"),
        "{err}"
    );

    if !cfg!(feature = "cuda") {
        let (code, err) = run(&["verify", "--device", "cuda", tmp.path().to_str().unwrap()]);
        assert_eq!(code, Some(2));
        assert!(
            err.contains("no CUDA support: rebuild it with the `cuda` cargo feature"),
            "{err}"
        );
    }

    let (code, err) = run(&["convert", tmp.path().to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(err.contains("is a folder: use --all"), "{err}");
}

#[test]
fn model_cases_need_weights_and_say_where_they_looked() {
    let Some(shared) = common::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let o = converse(tmp.path())
        .args(["verify", "--weights"])
        .arg(tmp.path().join("nowhere"))
        .arg(shared.join("golden/usrnet_1.safetensors"))
        .output()
        .unwrap();
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("weights for converse_usrnet not found"),
        "{out}"
    );
    assert!(out.contains("nowhere (--weights)"), "{out}");
    assert!(out.contains("$CONVERSE_WEIGHTS is not set"), "{out}");
    assert!(
        !out.contains("candle_core::"),
        "no backtraces in messages: {out}"
    );
    assert!(out.ends_with("0 passed, 1 failed\n"), "{out}");
}

/// `convert` never replaces its input, however the output is spelled: the same name through
/// `./`, an absolute path, or a symbolic link.
#[test]
fn convert_never_replaces_its_input() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = dir.join("a.pth");
    // A real checkpoint when there is one: converting it would succeed and replace it.
    match common::shared() {
        Some(shared) => std::fs::copy(shared.join("weights/converse_dncnn.pth"), &input).map(drop),
        None => std::fs::write(&input, b"a checkpoint"),
    }
    .unwrap();
    let before = std::fs::read(&input).unwrap();
    let mut outputs = vec!["./a.pth".to_owned(), input.display().to_string()];
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&input, dir.join("link.pth")).unwrap();
        outputs.push("link.pth".to_owned());
    }
    for out in outputs {
        let o = converse(dir)
            .current_dir(dir)
            .args(["convert", "a.pth", "-o", &out])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{out}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("is the input 'a.pth', which is never overwritten"),
            "{out}: {}",
            stderr(&o)
        );
        assert!(
            std::fs::read(&input).unwrap() == before,
            "{out}: the input changed"
        );
    }
}

#[test]
fn eval_refuses_options_of_another_task() {
    let tmp = tempfile::tempdir().unwrap();
    for (task, opt, msg) in [
        (
            "denoise",
            "--with-kernel",
            "--with-kernel is for --task deblur",
        ),
        ("sr", "--with-kernel", "--with-kernel is for --task deblur"),
    ] {
        let o = converse(tmp.path())
            .args(["eval", "--task", task, "--dataset"])
            .arg(tmp.path())
            .arg(opt)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{task} {opt}");
        assert_eq!(stderr(&o).trim(), format!("error: {msg}"));
    }
}

/// `degrade` (like `eval` and `restore`) lists the formats this build reads, TIFF and WebP
/// included, and nothing it cannot read.
#[test]
fn folders_list_the_formats_this_build_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let img = image::RgbImage::from_fn(24, 20, |x, y| image::Rgb([x as u8 * 9, y as u8 * 11, 90]));
    for name in ["a.TIFF", "b.webp", "c.png"] {
        img.save(input.join(name)).unwrap();
    }
    std::fs::write(input.join("d.ppm"), b"P6\n1 1\n255\n\x00\x00\x00").unwrap();
    let out = tmp.path().join("out");
    let o = converse(tmp.path())
        .args(["degrade", "--task", "denoise", "-i"])
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(common::listing(&out), ["a.png", "b.png", "c.png"]);
}
