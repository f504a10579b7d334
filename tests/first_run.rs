//! What a new user meets first: `--version`, `converse info` (in a clean environment), shell
//! completions (sourced in bash), the man pages (rendered by groff) and `--help` of every command.

mod common;

use std::path::Path;
use std::process::Command;

use common::{shared, stderr, stdout};

/// The binary with nothing from this environment but `HOME` (a fresh folder), `extra`, and
/// the library path a CUDA build may need to start (`scripts/cuda-build --test`).
fn clean(home: &Path, extra: &[(&str, &Path)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_converse"));
    c.env_clear().env("HOME", home);
    if let Some(p) = std::env::var_os("LD_LIBRARY_PATH") {
        c.env("LD_LIBRARY_PATH", p);
    }
    for (k, v) in extra {
        c.env(k, v);
    }
    c
}

fn run_ok(c: &mut Command) -> String {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{:?}: {}", o.status, stderr(&o));
    stdout(&o)
}

/// Whether `program` runs here; under CI its absence is a failure.
fn have(program: &str) -> bool {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let msg = format!("{program} is not installed");
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!("skipping: {msg}");
    }
    ok
}

fn simd_levels() -> [&'static str; 3] {
    ["avx512", "avx2", "portable"]
}

#[test]
fn version_names_the_build_features() {
    let home = tempfile::tempdir().unwrap();
    let out = run_ok(clean(home.path(), &[]).arg("--version"));
    let prefix = format!("converse {} (cpu, ", env!("CARGO_PKG_VERSION"));
    let rest = out
        .strip_prefix(&prefix)
        .and_then(|r| r.strip_suffix(")\n"))
        .unwrap_or_else(|| panic!("{out:?}"));
    let features: Vec<&str> = rest.split(", ").collect();
    assert!(simd_levels().contains(&features[0]), "{out:?}");
    let cuda: &[&str] = if cfg!(feature = "cuda") {
        &["cuda"]
    } else {
        &[]
    };
    assert_eq!(&features[1..], cuda, "{out:?}");
}

#[test]
fn info_json_reports_threads_budget_devices_weights_and_cache() {
    let Some(shared) = shared() else { return };
    let home = tempfile::tempdir().unwrap();
    let weights = shared.join("weights");
    // A folder searched first holding a checkpoint under another model's name.
    let mine = home.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::copy(
        weights.join("conversenet.pth"),
        mine.join("converse_dncnn.pth"),
    )
    .unwrap();
    let out = run_ok(
        clean(home.path(), &[("CONVERSE_WEIGHTS", &weights)])
            .env("RAYON_NUM_THREADS", "3")
            .args(["info", "--json", "--weights"])
            .arg(&mine),
    );
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(j["features"][0], "cpu");
    assert_eq!(j["features"][1], j["simd"]);
    assert!(simd_levels().contains(&j["simd"].as_str().unwrap()), "{j}");
    assert_eq!(j["threads"]["value"], 3);
    assert_eq!(j["threads"]["source"], "RAYON_NUM_THREADS=3");
    assert!(j["memory_budget"]["value"].as_u64().unwrap() > 0, "{j}");
    assert!(!j["memory_budget"]["source"].as_str().unwrap().is_empty());
    assert_eq!(j["devices"]["found"][0], "cpu");
    if !cfg!(feature = "cuda") {
        assert_eq!(j["devices"]["found"].as_array().unwrap().len(), 1);
        assert_eq!(j["devices"]["default"], "cpu");
        let why = j["devices"]["cuda_unavailable"].as_str().unwrap();
        assert!(why.contains("no CUDA support"), "{why}");
    }
    let cache = home.path().join(".cache/converse");
    assert_eq!(j["cache"], cache.to_str().unwrap());
    let folders = &j["weights"]["folders"];
    let expect = [
        (mine.as_path(), "--weights", true),
        (weights.as_path(), "$CONVERSE_WEIGHTS", true),
        (cache.as_path(), "cache", false),
    ];
    assert_eq!(folders.as_array().unwrap().len(), expect.len(), "{folders}");
    for (f, (path, from, exists)) in folders.as_array().unwrap().iter().zip(expect) {
        assert_eq!(f["path"], path.to_str().unwrap());
        assert_eq!(f["from"], from);
        assert_eq!(f["exists"], exists);
    }
    assert_eq!(j["weights"]["download"], true);
    // Every model found, with the sha256 of SHA256SUMS; the impostor is found first and flagged.
    let sums = std::fs::read_to_string(weights.join("SHA256SUMS")).unwrap();
    let sum = |file: &str| {
        sums.lines()
            .find(|l| l.ends_with(file))
            .and_then(|l| l.split_whitespace().next())
            .unwrap()
            .to_owned()
    };
    let models = j["weights"]["models"].as_array().unwrap();
    let ids: Vec<&str> = models
        .iter()
        .map(|m| m["model"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "converse_dncnn",
            "converse_srresnet",
            "conversenet",
            "converse_usrnet"
        ]
    );
    let tasks: Vec<&str> = models.iter().map(|m| m["task"].as_str().unwrap()).collect();
    assert_eq!(tasks, ["denoise", "sr", "deblur", "deblur --kernel"]);
    for m in models {
        let id = m["model"].as_str().unwrap();
        assert_eq!(m["error"], serde_json::Value::Null, "{m}");
        if id == "converse_dncnn" {
            let file = mine.join("converse_dncnn.pth");
            assert_eq!(m["file"], file.to_str().unwrap());
            assert_eq!(m["sha256"], sum("conversenet.pth"));
            assert_eq!(m["sha256_matches"], false);
        } else {
            let file = weights.join(format!("{id}.pth"));
            assert_eq!(m["file"], file.to_str().unwrap());
            assert_eq!(m["sha256"], sum(&format!("{id}.pth")));
            assert_eq!(m["sha256_matches"], true);
        }
    }
}

#[test]
fn info_text_says_where_it_looked_and_what_it_found() {
    let Some(shared) = shared() else { return };
    let home = tempfile::tempdir().unwrap();
    let h = home.path().display();
    // Nothing anywhere, downloads off.
    let out = run_ok(
        clean(home.path(), &[])
            .env("CONVERSE_NO_DOWNLOAD", "1")
            .arg("info"),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        format!("converse {}", env!("CARGO_PKG_VERSION")),
        "{out}"
    );
    assert!(lines[1].starts_with("build          cpu, "), "{out}");
    assert!(
        lines[3].starts_with("threads        ") && lines[3].ends_with(')'),
        "{out}"
    );
    assert!(lines[4].starts_with("memory budget  "), "{out}");
    let tail = [
        "weights        searched in this order:".to_owned(),
        format!("                 '{h}/.cache/converse' (cache, missing)"),
        "  converse_dncnn    denoise          not found".to_owned(),
        "  converse_srresnet sr               not found".to_owned(),
        "  conversenet       deblur           not found".to_owned(),
        "  converse_usrnet   deblur --kernel  not found".to_owned(),
        format!("cache          '{h}/.cache/converse'"),
    ];
    assert_eq!(lines[lines.len() - tail.len()..], tail, "{out}");
    // The shared weights, through $CONVERSE_WEIGHTS.
    let weights = shared.join("weights");
    let out = run_ok(clean(home.path(), &[("CONVERSE_WEIGHTS", &weights)]).arg("info"));
    let w = weights.display();
    for line in [
        format!("                 '{w}' ($CONVERSE_WEIGHTS)"),
        format!(
            "  converse_dncnn    denoise          '{w}/converse_dncnn.pth', sha256 matches the \
             release"
        ),
        format!(
            "  converse_usrnet   deblur --kernel  '{w}/converse_usrnet.pth', sha256 matches the \
             release"
        ),
    ] {
        assert!(out.lines().any(|l| l == line), "no line {line:?} in\n{out}");
    }
}

#[test]
fn bash_completion_completes_commands_and_options() {
    if !have("bash") {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let script = home.path().join("converse.bash");
    std::fs::write(
        &script,
        run_ok(clean(home.path(), &[]).args(["completions", "bash"])),
    )
    .unwrap();
    // Sourced, it registers a completion for `converse`, which completes commands and options.
    let check = r#"source "$1"
complete -p converse
COMP_WORDS=(converse res); COMP_CWORD=1; _converse converse res converse; echo "1: ${COMPREPLY[*]}"
COMP_WORDS=(converse restore --max-m); COMP_CWORD=2; _converse converse --max-m restore
echo "2: ${COMPREPLY[*]}""#;
    let o = Command::new("bash")
        .args(["--norc", "-c", check, "bash"])
        .arg(&script)
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(o.status.success(), "{}{}", out, stderr(&o));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("complete ") && lines[0].ends_with(" converse"),
        "{out}"
    );
    assert_eq!(lines[1], "1: restore", "{out}");
    assert_eq!(lines[2], "2: --max-memory", "{out}");
}

#[test]
fn completions_for_every_shell() {
    let home = tempfile::tempdir().unwrap();
    for (shell, marker) in [
        ("zsh", "#compdef converse"),
        ("fish", "complete -c converse"),
        ("powershell", "Register-ArgumentCompleter"),
        ("bash", "complete -F _converse"),
    ] {
        let out = run_ok(clean(home.path(), &[]).args(["completions", shell]));
        assert!(out.contains(marker), "{shell}: no {marker:?}");
        assert!(out.contains("max-memory"), "{shell}");
    }
    let o = clean(home.path(), &[])
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("invalid value 'tcsh'"),
        "{}",
        stderr(&o)
    );
}

/// groff's warnings on `page` (none expected), and its text.
fn groff(page: &Path) -> (String, String) {
    let o = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-P-cbou"])
        .arg(page)
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    (stderr(&o), stdout(&o))
}

#[test]
fn man_pages_render_without_warnings() {
    if !have("groff") {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let page = home.path().join("converse.1");
    std::fs::write(&page, run_ok(clean(home.path(), &[]).arg("man"))).unwrap();
    let (warnings, text) = groff(&page);
    assert_eq!(warnings, "");
    assert!(text.contains("converse-restore(1)"), "{text}");
    // --dir: one page per command.
    let dir = home.path().join("man1");
    let listed = run_ok(clean(home.path(), &[]).arg("man").arg("--dir").arg(&dir));
    let mut names = common::listing(&dir);
    names.sort();
    assert_eq!(
        names,
        [
            "converse-completions.1",
            "converse-convert.1",
            "converse-degrade.1",
            "converse-demo.1",
            "converse-eval.1",
            "converse-finetune.1",
            "converse-info.1",
            "converse-man.1",
            "converse-restore.1",
            "converse-verify.1",
            "converse.1"
        ]
    );
    assert_eq!(listed.lines().count(), names.len(), "{listed}");
    for n in &names {
        let (warnings, _) = groff(&dir.join(n));
        assert_eq!(warnings, "", "{n}");
    }
    let (_, restore) = groff(&dir.join("converse-restore.1"));
    assert!(restore.contains("--max-memory"), "{restore}");
    assert_eq!(
        std::fs::read(dir.join("converse.1")).unwrap(),
        std::fs::read(&page).unwrap()
    );
}

/// The commands listed by `converse --help`.
fn subcommands(home: &Path) -> Vec<String> {
    let help = run_ok(clean(home, &[]).arg("--help"));
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_help_fits_a_terminal_one_line_per_option_and_ends_with_an_example() {
    let home = tempfile::tempdir().unwrap();
    let commands = subcommands(home.path());
    for c in ["restore", "info", "completions", "man", "demo"] {
        assert!(commands.iter().any(|x| x == c), "{c} not in {commands:?}");
    }
    let mut cases: Vec<Vec<String>> = vec![vec![]];
    cases.extend(commands.iter().map(|c| vec![c.clone()]));
    for args in cases {
        for flag in ["--help", "-h"] {
            let help = run_ok(clean(home.path(), &[]).args(&args).arg(flag));
            let name = format!("converse {} {flag}", args.join(" "));
            for l in help.lines() {
                assert!(l.chars().count() <= 80, "{name}: over 80 columns: {l:?}");
            }
            // Under "Options:", every line is an option with its text (no continuation lines).
            for l in help
                .lines()
                .skip_while(|l| *l != "Options:")
                .skip(1)
                .take_while(|l| !l.is_empty())
            {
                let t = l.trim_start();
                assert!(t.starts_with('-'), "{name}: not one line per option: {l:?}");
                assert!(t.contains("  "), "{name}: an option without text: {l:?}");
            }
            let last = help.lines().rev().find(|l| !l.is_empty()).unwrap();
            let expect = format!("Example: converse {}", args.join(" "));
            assert!(
                last.starts_with(expect.trim_end()),
                "{name}: ends with {last:?}"
            );
        }
    }
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("man1");
    let dir = dir.to_str().unwrap();
    for args in [
        &["info"][..],
        &["info", "--json"],
        &["completions", "bash"],
        &["man"],
        &["man", "--dir", dir],
    ] {
        // A pipe whose reader is gone before the command writes (`converse info | head`).
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = clean(home.path(), &[])
            .args(args)
            .stdout(writer)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o), "", "{args:?}");
    }
}
