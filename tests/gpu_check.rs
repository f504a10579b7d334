//! `scripts/gpu-check.sh --self-test`: the GPU check's parser and verdict, without a GPU. The
//! script reads recorded and synthesised result lines (PASS), then a tampered set, a result off
//! its bound and a missing one (FAIL).

mod common;

use std::process::Command;

#[test]
fn the_gpu_check_passes_good_results_and_fails_tampered_ones() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gpu-check.sh");
    let o = Command::new("bash")
        .arg(script)
        .arg("--self-test")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let verdicts: Vec<&str> = out.lines().filter(|l| l.starts_with("VERDICT")).collect();
    assert_eq!(
        verdicts,
        [
            "VERDICT: PASS (20 checks)",
            "VERDICT: FAIL (3 of 20 checks off their bound or missing)"
        ],
        "{out}"
    );
    let row = |check: &str| {
        out.lines()
            .filter(|l| l.starts_with(&format!("| {check} ")))
            .map(|l| l.split('|').map(str::trim).collect::<Vec<_>>()[2..5].join(" "))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        row("golden f64: max abs err"),
        ["4.400e-12 <= 1e-8 PASS", "3.200e-08 <= 1e-8 FAIL"]
    );
    assert_eq!(row("unit tests: passed"), ["12 >= 1 PASS", "missing  FAIL"]);
}

/// `verify --against-cpu` (the GPU check's tensor comparison), here on the CPU: each operator and
/// model case also runs on the CPU's reference path, and the line gives the largest difference
/// between the two outputs, well within the official f32 error. Gradient cases have no such
/// column.
#[test]
fn verify_against_cpu_prints_the_difference_from_the_reference_path() {
    let Some(shared) = common::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let o = common::converse(tmp.path())
        .args(["verify", "--device", "cpu", "--against-cpu", "--weights"])
        .arg(shared.join("weights"))
        .arg(shared.join("golden/converse2d_3.safetensors"))
        .arg(shared.join("golden/dncnn_1.safetensors"))
        .arg(shared.join("golden_grad/grad_converse2d_0.safetensors"))
        .output()
        .unwrap();
    let out = common::stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}", common::stderr(&o));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    for line in &lines[..2] {
        let number = |after: &str| -> f64 {
            let rest = &line[line.find(after).unwrap_or_else(|| panic!("{line}")) + after.len()..];
            rest.split_whitespace().next().unwrap().parse().unwrap()
        };
        let (diff, official) = (number("vs CPU reference "), number("official f32 "));
        assert!(diff > 0.0 && diff < official / 10.0, "{line}");
    }
    assert!(!lines[2].contains("vs CPU reference"), "{}", lines[2]);
    assert_eq!(lines[3], "3 passed, 0 failed");
}
