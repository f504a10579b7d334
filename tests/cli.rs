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
