//! Bad values through the real binary: pickle bombs, tampered released checkpoints, kernels
//! whose sum overflows and weights that make the output non-finite. Each is refused with its
//! exit code and message, writes nothing and leaves its inputs as they were. The runs that read
//! a bomb are held to 2 GiB of address space and 60 s of CPU (`ulimit -v -t`), so a regression
//! fails the test instead of taking the machine's memory.

mod common;

use std::io::Cursor;
use std::path::Path;
use std::process::{Command, Output};

use common::{converse, listing, stderr, zip_of};
use converse::models::ModelKind;
use image::{GrayImage, ImageFormat, Luma};

/// `cmd` run under `ulimit -v 2 GiB -t 60`, with the same program, arguments and environment.
fn limited(cmd: &Command) -> Output {
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg("ulimit -v 2097152 && ulimit -t 60 && exec \"$@\"")
        .arg("sh")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    sh.output().unwrap()
}

/// A pickle that builds one object from `base`, then doubles it 48 times through the memo.
fn bomb(base: &[u8]) -> Vec<u8> {
    let mut p = b"\x80\x02".to_vec();
    p.extend(base);
    p.extend(b"q\x00");
    p.extend(b"h\x00h\x00\x86q\x00".repeat(48));
    p.push(b'.');
    p
}

/// The bases: each container opcode, and the objects `R`, `\x81`, `Q` and `b` build.
const BASES: &[(&str, &[u8])] = &[
    ("d", b"d"),
    ("empty dict", b"}"),
    ("empty list", b"]"),
    ("empty tuple", b")"),
    ("mark", b"("),
    ("mark, tuple", b"(t"),
    ("tuple1", b"N\x85"),
    ("tuple2", b"NN\x86"),
    ("tuple3", b"NNN\x87"),
    ("reduce", b"cmod\nname\n)R"),
    ("reduce to OrderedDict", b"ccollections\nOrderedDict\n)R"),
    ("newobj", b"cmod\nname\n)\x81"),
    ("persistent id", b"NQ"),
    ("build", b"}}b"),
    ("appends", b"](NNe"),
    ("setitems", b"}(NNu"),
    ("string", b"X\x03\x00\x00\x00abc"),
];

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = GrayImage::from_fn(w, h, |x, y| Luma([(x * 37 + y * 101) as u8]));
    let mut b = vec![];
    image::DynamicImage::ImageLuma8(img)
        .write_to(&mut Cursor::new(&mut b), ImageFormat::Png)
        .unwrap();
    b
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every bomb, through `convert` (and `convert --all`) and as a released checkpoint's name in
/// `restore --weights DIR`: refused before it is interpreted, nothing written.
#[test]
fn pickle_bombs_are_refused_with_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (bombs, out, weights) = (t.join("bombs"), t.join("out"), t.join("weights"));
    for d in [&bombs, &out, &weights] {
        std::fs::create_dir_all(d).unwrap();
    }
    let img = t.join("img.png");
    std::fs::write(&img, png(20, 16)).unwrap();
    // The reproduction, byte for byte, then the variants.
    let mut cases: Vec<(String, Vec<u8>)> = vec![("issue".into(), bomb(b"d]q\x00"))];
    cases.extend(BASES.iter().map(|(n, b)| (n.to_string(), bomb(b))));
    let mut failures = vec![];
    for (i, (name, pickle)) in cases.iter().enumerate() {
        let file = zip_of(&[("archive/data.pkl", pickle)]);
        let pth = bombs.join(format!("b{i}.pth"));
        std::fs::write(&pth, &file).unwrap();
        let mut cmd = converse(t);
        cmd.args(["convert", s(&pth), "-o", s(&out.join("b.safetensors"))]);
        let o = limited(&cmd);
        let expect = format!(
            "error: '{}' is not a PyTorch checkpoint: reading its pickle would take more than 313 \
             MiB (a pickle bomb?); raise the limit with $CONVERSE_MAX_CHECKPOINT_TENSORS\n",
            pth.display()
        );
        if o.status.code() != Some(2) || stderr(&o) != expect {
            failures.push(format!("convert, {name}: {:?}: {}", o.status, stderr(&o)));
        }
        // Under the released name: the sha256 is compared first, the pickle never read.
        std::fs::write(weights.join("converse_dncnn.pth"), &file).unwrap();
        let mut cmd = converse(t);
        cmd.args(["restore", "--task", "denoise", "--device", "cpu"])
            .args(["--weights", s(&weights)])
            .args(["-i", s(&img), "-o", s(&out.join("img.png"))]);
        let o = limited(&cmd);
        let err = stderr(&o);
        let released = format!(
            "error: '{}' is not the released checkpoint (sha256 ",
            weights.join("converse_dncnn.pth").display()
        );
        let sha = format!("the release's is {}): it may", ModelKind::DnCNN.sha256());
        if o.status.code() != Some(2) || !err.starts_with(&released) || !err.contains(&sha) {
            failures.push(format!("restore --weights, {name}: {:?}: {err}", o.status));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // A folder of bombs: each fails alone (exit 1), and nothing is written.
    let mut cmd = converse(t);
    cmd.args(["convert", "--all", s(&bombs), "-o", s(&out)]);
    let o = limited(&cmd);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(
        err.matches("reading its pickle would take more than")
            .count(),
        cases.len()
    );
    assert!(
        common::stdout(&o).contains(&format!("0 converted, {} failed", cases.len())),
        "{}",
        common::stdout(&o)
    );
    assert_eq!(listing(&out), Vec::<String>::new());
    assert_eq!(std::fs::read(&img).unwrap(), png(20, 16));
    // `(l`: candle has no LIST opcode and stops at once, with its own message.
    let pth = t.join("list.pth");
    std::fs::write(&pth, zip_of(&[("archive/data.pkl", &bomb(b"(l"))])).unwrap();
    let mut cmd = converse(t);
    cmd.args(["convert", s(&pth), "-o", s(&out.join("l.safetensors"))]);
    let o = limited(&cmd);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("list.pth' is not a PyTorch checkpoint: unknown op-code 108"),
        "{}",
        stderr(&o)
    );
    assert_eq!(listing(&out), Vec::<String>::new());
}

/// A released checkpoint with one byte changed is refused by its sha256, with no parse (the
/// cache stays empty); the untouched one loads and is cached.
#[test]
fn a_tampered_released_checkpoint_is_refused_by_its_sha256() {
    let Some(shared) = common::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (weights, cache) = (t.join("weights"), t.join("cache"));
    std::fs::create_dir_all(&weights).unwrap();
    let mut pth = std::fs::read(shared.join("weights/conversenet.pth")).unwrap();
    let last = pth.len() - 1;
    pth[last] ^= 1;
    std::fs::write(weights.join("conversenet.pth"), &pth).unwrap();
    let img = t.join("img.png");
    std::fs::write(&img, png(20, 16)).unwrap();
    let o = converse(&cache)
        .args(["restore", "--task", "deblur", "--device", "cpu"])
        .args(["--weights", s(&weights)])
        .args(["-i", s(&img), "-o", s(&t.join("o.png"))])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("conversenet.pth' is not the released checkpoint (sha256 "),
        "{err}"
    );
    assert!(!t.join("o.png").exists());
    assert!(
        !cache.join("converse").exists(),
        "the checkpoint was parsed"
    );
}

/// Kernels whose values overflow their sum, in text and as float64 `.npy`, and a NaN kernel:
/// refused with the path by every command that reads kernels (restore, degrade), nothing written.
#[test]
fn kernels_whose_sum_overflows_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let img = t.join("img.png");
    std::fs::write(&img, png(24, 24)).unwrap();
    let text = t.join("big.txt");
    std::fs::write(&text, "1e308 1e308 1e308\n").unwrap();
    let npy = t.join("big.npy");
    let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 3), }\n";
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((header.len() as u16).to_le_bytes());
    b.extend(header.as_bytes());
    b.extend([f64::MAX / 4.0; 9].iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(&npy, b).unwrap();
    let nan = t.join("nan.txt");
    std::fs::write(&nan, "0 1 0\n1 nan 1\n0 1 0\n").unwrap();
    let overflow = "the kernel's values are too large: their sum overflows (inf); scale them \
                    down (only their ratios matter)";
    let cases = [
        (&text, overflow),
        (&npy, overflow),
        (&nan, "the kernel holds a non-finite value (NaN)"),
    ];
    let out = t.join("out");
    for (kernel, msg) in cases {
        for cmd in ["restore", "degrade"] {
            // No weights are needed: the kernel is read first.
            let o = converse(t)
                .args([cmd, "--task", "deblur", "--kernel", s(kernel)])
                .args(["-i", s(&img), "-o", s(&out.join("o.png"))])
                .env("CONVERSE_NO_DOWNLOAD", "1")
                .output()
                .unwrap();
            let expect = format!("error: kernel '{}': {msg}\n", kernel.display());
            assert_eq!(
                (o.status.code(), stderr(&o)),
                (Some(2), expect),
                "{cmd} {}",
                kernel.display()
            );
            assert!(!out.exists());
        }
    }
    assert_eq!(std::fs::read(&img).unwrap(), png(24, 24));
}

/// The released Converse-DnCNN with one NaN in a bias: the output is not finite, so the image
/// fails (exit 1) and nothing is written, in `restore`; `eval` stops on it (exit 2).
#[test]
fn a_non_finite_output_is_an_error_for_its_image() {
    let Some(shared) = common::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (_, bytes) = converse_convert::convert_to_bytes(
        &shared.join("weights/converse_dncnn.pth"),
        &ModelKind::specs().unwrap(),
        Default::default(),
    )
    .unwrap();
    let mut tensors =
        candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu).unwrap();
    let bias = tensors
        .get_mut("m_head.0.bias")
        .expect("Converse-DnCNN has m_head.0.bias");
    let mut v = bias.to_vec1::<f32>().unwrap();
    v[0] = f32::NAN;
    *bias = candle_core::Tensor::new(v, &candle_core::Device::Cpu).unwrap();
    let weights = t.join("weights");
    std::fs::create_dir_all(&weights).unwrap();
    candle_core::safetensors::save(&tensors, weights.join("converse_dncnn.safetensors")).unwrap();

    let input = t.join("in");
    std::fs::create_dir_all(&input).unwrap();
    for n in ["a.png", "b.png"] {
        std::fs::write(input.join(n), png(20, 16)).unwrap();
    }
    let out = t.join("out");
    let o = converse(t)
        .args([
            "restore",
            "--task",
            "denoise",
            "--device",
            "cpu",
            "-q",
            "--weights",
            s(&weights),
        ])
        .args(["-i", s(&input), "-o", s(&out)])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    for n in ["a.png", "b.png"] {
        let msg = format!(
            "error: cannot restore '{}': the model's output is not finite (320 of 320 values are \
             NaN or infinite): the weights may be corrupt\n",
            input.join(n).display()
        );
        assert!(err.contains(&msg), "{err}");
    }
    assert!(err.contains("0 restored, 0 skipped, 2 failed"), "{err}");
    assert!(
        !out.exists() || listing(&out).is_empty(),
        "{:?}",
        listing(&out)
    );
    assert_eq!(listing(&input), ["a.png", "b.png"]);
    for n in ["a.png", "b.png"] {
        assert_eq!(std::fs::read(input.join(n)).unwrap(), png(20, 16));
    }
    // eval: the same message for the image, and nothing saved.
    let save = t.join("save");
    let o = converse(t)
        .args(["eval", "--task", "denoise", "--device", "cpu", "-q"])
        .args(["--weights", s(&weights)])
        .args(["--dataset", s(&input), "--save", s(&save)])
        .output()
        .unwrap();
    let err = stderr(&o);
    // The images were being computed: a failure of the run (1), not a set-up error.
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "cannot restore '{}': the model's output is not finite",
            input.join("a.png").display()
        )),
        "{err}"
    );
    assert!(!save.exists());
}

/// Writes pickle-bomb seeds for the `checkpoint` fuzz target into `fuzz/corpus/checkpoint/`
/// (mode byte 1: a bare pickle), one per base (run by hand:
/// `cargo test --release --test bad_values -- --ignored write_pickle_bomb_seeds`).
#[test]
#[ignore]
fn write_pickle_bomb_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/checkpoint");
    std::fs::create_dir_all(&dir).unwrap();
    let mut seeds: Vec<(String, Vec<u8>)> = vec![("issue".into(), bomb(b"d]q\x00"))];
    seeds.extend(BASES.iter().map(|(n, b)| (n.to_string(), bomb(b))));
    for (name, pickle) in seeds {
        let name = format!(
            "bomb_{}.pkl",
            name.replace([' ', ','], "_").replace("__", "_")
        );
        std::fs::write(dir.join(name), [&[1u8][..], &pickle].concat()).unwrap();
    }
}
