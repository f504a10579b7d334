//! `scripts/gpu-check.sh --self-test`: the GPU check's parser and verdict, without a GPU. The
//! script reads recorded and synthesised result lines (PASS), then a tampered set, a result off
//! its bound and a missing one (FAIL).

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
