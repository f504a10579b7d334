//! Bad inputs through the real binary: each case exits with the expected code and message and
//! never panics (RUST_BACKTRACE=1 would print a backtrace). Then: a folder run killed midway
//! resumes where it stopped.

mod common;

use std::io::{Cursor, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::Device;
use common::{converse, listing, stderr, zip_of};
use converse::models::ModelKind;
use image::{GrayImage, ImageFormat, Luma, RgbImage};

struct Case {
    name: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, &'static str)>,
    code: i32,
    expect: &'static [&'static str],
}

fn case(name: &'static str, code: i32, expect: &'static [&'static str], args: Vec<String>) -> Case {
    Case {
        name,
        args,
        env: vec![],
        code,
        expect,
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn png(img: impl Into<image::DynamicImage>) -> Vec<u8> {
    let mut b = vec![];
    img.into()
        .write_to(&mut Cursor::new(&mut b), ImageFormat::Png)
        .unwrap();
    b
}

fn gray(w: u32, h: u32) -> GrayImage {
    GrayImage::from_fn(w, h, |x, y| Luma([(x * 37 + y * 101) as u8]))
}

/// A PNG whose header says `w x h` and whose data is one empty row.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut b = png(gray(1, 1));
    b[16..20].copy_from_slice(&w.to_be_bytes());
    b[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&b[12..29]);
    b[29..33].copy_from_slice(&crc.to_be_bytes());
    b
}

fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, &b| {
        (0..8).fold(c ^ b as u32, |c, _| {
            (c >> 1) ^ (0xEDB8_8320 & (c & 1).wrapping_neg())
        })
    })
}

/// A `.npy` (version 1) holding `data` under the given header fields.
fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
    let h = format!(
        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}\n",
        if fortran { "True" } else { "False" }
    );
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((h.len() as u16).to_le_bytes());
    b.extend(h.as_bytes());
    b.extend(data);
    b
}

fn f64s(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Pickle opcodes: a string and an int (saturated to an i32).
fn pstr(p: &mut Vec<u8>, s: &str) {
    p.push(b'X');
    p.extend((s.len() as u32).to_le_bytes());
    p.extend(s.as_bytes());
}

fn pint(p: &mut Vec<u8>, v: usize) {
    p.push(b'J');
    p.extend((v.min(i32::MAX as usize) as i32).to_le_bytes());
}

/// The pickle `torch.save(state_dict)` writes for float32 tensors given by name, shape and
/// storage length (elements); tensor `i` is in storage `i`.
fn pickle(tensors: &[(&str, &[usize], usize)]) -> Vec<u8> {
    let mut p = b"\x80\x02ccollections\nOrderedDict\n)R(".to_vec();
    for (i, (name, shape, numel)) in tensors.iter().enumerate() {
        pstr(&mut p, name);
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        pstr(&mut p, "storage");
        p.extend(b"ctorch\nFloatStorage\n");
        pstr(&mut p, &i.to_string());
        pstr(&mut p, "cpu");
        pint(&mut p, *numel);
        p.extend(b"tQ");
        pint(&mut p, 0);
        p.push(b'(');
        shape.iter().for_each(|d| pint(&mut p, *d));
        p.extend(b"t(");
        for k in 0..shape.len() {
            pint(&mut p, shape[k + 1..].iter().product());
        }
        p.extend(b"t\x89ccollections\nOrderedDict\n)RtR");
    }
    p.extend(b"u.");
    p
}

/// A checkpoint as `torch.save` writes it: [`pickle`] and the storages, holding zeros (at most
/// 4 MiB each).
fn pth(tensors: &[(&str, &[usize], usize)]) -> Vec<u8> {
    let p = pickle(tensors);
    let data: Vec<(String, Vec<u8>)> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| {
            (
                format!("archive/data/{i}"),
                vec![0u8; (t.2 * 4).min(4 << 20)],
            )
        })
        .collect();
    let mut files: Vec<(&str, &[u8])> = vec![("archive/data.pkl", &p)];
    files.extend(data.iter().map(|(n, d)| (n.as_str(), d.as_slice())));
    zip_of(&files)
}

const TOY: &[(&str, &[usize], usize)] = &[("fc.bias", &[2], 2), ("fc.weight", &[2, 3], 6)];

/// A 64 KiB tmpfs, unmounted when dropped (even when the test fails).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(dir)
            .output()
            .is_ok_and(|o| o.status.success());
        mounted.then(|| Self(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Every failure mode we know of, through the binary.
#[test]
fn bad_inputs_fail_with_clear_errors_and_no_panic() {
    let Some(shared) = common::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let put = |name: &str, bytes: &[u8]| -> String {
        let p = t.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let path = |name: &str| t.join(name).to_str().unwrap().to_owned();
    let weights = shared.join("weights").to_str().unwrap().to_owned();
    let restore = |task: &str, input: &str, out: &str, extra: &[&str]| -> Vec<String> {
        let mut a = strings(&["restore", "--task", task, "--weights", &weights]);
        a.extend(strings(&["-i", input, "-o", &path(&format!("out/{out}"))]));
        a.extend(strings(extra));
        a
    };
    let denoise = |input: &str, out: &str| restore("denoise", input, out, &[]);
    let kernel = |k: &str, out: &str| restore("deblur", &path("img.png"), out, &["--kernel", k]);
    let convert =
        |input: &str, out: &str| strings(&["convert", input, "-o", &path(&format!("conv/{out}"))]);
    std::fs::create_dir_all(t.join("out")).unwrap();
    std::fs::create_dir_all(t.join("conv")).unwrap();

    let good = png(gray(24, 20));
    let img = put("img.png", &good);
    let denoise_to = |weights: &str, out: &str| {
        strings(&[
            "restore",
            "--task",
            "denoise",
            "--weights",
            weights,
            "-i",
            &img,
            "-o",
            out,
        ])
    };
    let mut rgb_jpeg = vec![];
    image::DynamicImage::ImageRgb8(RgbImage::from_fn(32, 32, |x, y| {
        image::Rgb([x as u8 * 8, y as u8 * 8, 90])
    }))
    .write_to(&mut Cursor::new(&mut rgb_jpeg), ImageFormat::Jpeg)
    .unwrap();
    let mut bmp = vec![];
    image::DynamicImage::ImageLuma8(gray(4, 4))
        .write_to(&mut Cursor::new(&mut bmp), ImageFormat::Bmp)
        .unwrap();
    bmp[18..22].copy_from_slice(&1_000_000i32.to_le_bytes());
    bmp[22..26].copy_from_slice(&1_000_000i32.to_le_bytes());
    std::fs::create_dir_all(t.join("no_images/a.png")).unwrap();
    let unreadable = put("unreadable.png", &good);
    std::fs::set_permissions(
        &unreadable,
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .unwrap();

    let k3 = |v: [f64; 9]| {
        v.map(|x| x.to_string())
            .chunks(3)
            .map(|r| r.join(" ") + "\n")
            .collect::<String>()
    };
    let asym = [0., 1., 0., 2., 4., 3., 0., 0., 1.];
    let transposed = [0., 2., 0., 1., 4., 0., 0., 3., 1.];
    let text_k = put("asym.txt", k3(asym).as_bytes());
    let fortran_k = put(
        "fortran.npy",
        &npy("<f8", true, "(3, 3)", &f64s(&transposed)),
    );
    let marker = t.join("pwned");
    let mut evil = b"\x80\x02cos\nsystem\n".to_vec();
    pstr(&mut evil, &format!("touch {}", marker.display()));
    evil.extend(b"\x85R.");
    let mut bomb = b"\x80\x02]q\x00".to_vec();
    bomb.extend(b"h\x00h\x00\x86q\x00".repeat(48));
    bomb.push(b'.');
    let conversenet = ModelKind::ConverseNet.spec().unwrap();
    let mut params: Vec<(&str, &[usize], usize)> = conversenet
        .params
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.shape.as_slice(),
                p.shape.iter().product(),
            )
        })
        .collect();
    let last = params.len() - 1;
    params[last].1 = &[5];
    params[last].2 = 5;
    // Weights folders: a float64 safetensors, and the released checkpoint with 64 bytes flipped.
    let weights_dir = |dir: &str, file: &str, bytes: &[u8]| {
        std::fs::create_dir_all(t.join(dir)).unwrap();
        std::fs::write(t.join(dir).join(file), bytes).unwrap();
        path(dir)
    };
    let f64_bias = candle_core::Tensor::zeros(3, candle_core::DType::F64, &Device::Cpu).unwrap();
    let f64_st = safetensors::serialize([("head.bias", f64_bias)], None).unwrap();
    let st_dir = weights_dir("w_dtype", "converse_dncnn.safetensors", &f64_st);
    let mut corrupt = std::fs::read(shared.join("weights/converse_dncnn.pth")).unwrap();
    let mid = corrupt.len() / 2;
    corrupt[mid..mid + 64].iter_mut().for_each(|b| *b ^= 0x55);
    let corrupt_dir = weights_dir("w_corrupt", "converse_dncnn.pth", &corrupt);
    let s = |p: &Path| p.to_str().unwrap().to_owned();

    let mut cases = vec![
        // Images.
        case("empty image", 1, &["empty.png'", "not a valid image"], denoise(&put("empty.png", b""), "empty.png")),
        case("truncated png", 1, &["truncated.png'", "not a valid image"], denoise(&put("truncated.png", &good[..good.len() / 2]), "truncated.png")),
        case("lying png header", 1, &["100000x100000 pixels, over the limit of 268435456 pixels (raise it with --max-pixels)"], denoise(&put("lying.png", &png_header(100_000, 100_000)), "lying.png")),
        case("zero-size png", 1, &["zero.png'", "not a valid image"], denoise(&put("zero.png", &png_header(0, 0)), "zero.png")),
        case("1x1 image", 0, &[], denoise(&put("one.png", &png(gray(1, 1))), "one.png")),
        case("at the pixel limit", 0, &[], restore("denoise", &put("at.png", &png(gray(8, 8))), "at.png", &["--max-pixels", "64"])),
        case("over the pixel limit", 1, &["9x8 pixels, over the limit of 64 pixels (raise it with --max-pixels)"], restore("denoise", &put("over.png", &png(gray(9, 8))), "over.png", &["--max-pixels", "64"])),
        case("text as png", 1, &["text.png'", "not a valid image"], denoise(&put("text.png", b"hello, world\n"), "text.png")),
        case("text file", 1, &["notes.txt'", "not an image in a supported format"], denoise(&put("notes.txt", b"hello, world\n"), "text.png")),
        case("truncated jpeg", 1, &["cut.jpg'", "not a valid image"], denoise(&put("cut.jpg", &rgb_jpeg[..rgb_jpeg.len() / 3]), "cut.png")),
        case("lying bmp header", 1, &["lying.bmp'", "not a valid image", "Image too large"], denoise(&put("lying.bmp", &bmp), "lying.png")),
        case("gif (unsupported)", 1, &["anim.gif'", "not a valid image"], denoise(&put("anim.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"), "anim.png")),
        case("folder input, file output", 2, &["is a folder, so the output must be a folder"], strings(&["restore", "--task", "denoise", "-i", &path("no_images"), "-o", &img])),
        case("folder without images", 2, &["no images in '", "use --recursive"], restore("denoise", &path("no_images"), "no_images", &[])),
        case("missing image", 2, &["cannot read '", "missing.png'"], denoise(&path("missing.png"), "missing.png")),
        case("unreadable image", 1, &["cannot read '", "unreadable.png'", "ermission denied"], denoise(&unreadable, "unreadable.png")),
        // Kernels.
        case("kernel with NaN", 2, &["the kernel holds a non-finite value (NaN)"], kernel(&put("nan.txt", b"0 1 0\n1 nan 1\n0 1 0\n"), "k.png")),
        case("kernel with Inf", 2, &["the kernel holds a non-finite value (inf)"], kernel(&put("inf.txt", b"0 1 0\n1 inf 1\n0 1 0\n"), "k.png")),
        case("all-zero kernel", 2, &["the kernel sums to 0; it must sum to more than 0"], kernel(&put("zeros.npy", &npy("<f8", false, "(3, 3)", &f64s(&[0.0; 9]))), "k.png")),
        case("negative-sum kernel", 2, &["the kernel holds a negative value (-2)"], kernel(&put("neg.txt", b"0 -2 0\n0 1 0\n0 0 0\n"), "k.png")),
        case("3-D .npy kernel", 2, &["the array has 3 dimensions ([1, 3, 3]); a kernel has 2", "squeeze"], kernel(&put("k3d.npy", &npy("<f8", false, "(1, 3, 3)", &f64s(&[1.0; 9]))), "k.png")),
        case("8x8 kernel", 2, &["the kernel is 8x8; the model takes 7x7"], kernel(&put("k8.npy", &npy("<f4", false, "(8, 8)", &[0, 0, 0x80, 0x3f].repeat(64))), "k.png")),
        case("9x9 kernel", 2, &["the kernel is 9x9; the model takes 7x7"], kernel(&put("k9.txt", ("1 ".repeat(9) + "\n").repeat(9).as_bytes()), "k.png")),
        case("int64 .npy kernel", 2, &["the array's dtype is <i8; a kernel must be float32 or float64"], kernel(&put("int.npy", &npy("<i8", false, "(3, 3)", &[0; 72])), "k.png")),
        case("Fortran-order .npy kernel", 0, &[], kernel(&fortran_k, "fortran.png")),
        case("C-order text kernel", 0, &[], kernel(&text_k, "text_k.png")),
        case("kernel file over 1 MB", 2, &["over the fixed limit of 1048576 bytes for kernels"], kernel(&put("huge.txt", &vec![b' '; (1 << 20) + 1]), "k.png")),
        case(".npy with a bad magic", 2, &["not a .npy file (bad magic)"], kernel(&put("bad.npy", b"PK\x03\x04 not numpy"), "k.png")),
        case(".npy with short data", 2, &["the array data is 8 bytes, its shape 3x3 needs 72"], kernel(&put("short.npy", &npy("<f8", false, "(3, 3)", &f64s(&[1.0]))), "k.png")),
        case(".npy with an overflowing shape", 2, &["the array data is 0 bytes"], kernel(&put("overflow.npy", &npy("<f8", false, "(2305843009213693952, 1)", &[])), "k.png")),
        case("colour PSF image", 2, &["a PSF image must be grayscale"], kernel(&put("psf.jpg", &rgb_jpeg), "k.png")),
        case("empty text kernel", 2, &["no numbers found"], kernel(&put("empty.txt", b"# nothing\n"), "k.png")),
        case("binary text kernel", 2, &["not a text file"], kernel(&put("bin.txt", b"\xff\xfe\x00\x01"), "k.png")),
        case("ragged text kernel", 2, &["row 2 has 1 values, the first row has 3"], kernel(&put("ragged.txt", b"1 2 3\n4\n"), "k.png")),
        case("folder as kernel", 2, &["is a folder, not a file"], kernel(&path("no_images"), "k.png")),
        case("missing kernel", 2, &["cannot read kernel '", "gaussian:SIGMA"], kernel(&path("nope.npy"), "k.png")),
        case("bad generator", 2, &["gaussian:SIGMA needs a positive sigma, got 0"], kernel("gaussian:0", "k.png")),
        // Checkpoints.
        case("checkpoint of another network", 2, &["other.pth' is not one of the known models", "`fc.bias`, `fc.weight`"], convert(&put("other.pth", &pth(TOY)), "other.safetensors")),
        case("tensor of the wrong shape", 2, &["does not match model conversenet", "has shape [5], the model expects"], convert(&put("shape.pth", &pth(&params)), "shape.safetensors")),
        case("zip that is not a checkpoint", 2, &["zip.pth' is not a PyTorch checkpoint: it holds no tensors"], convert(&put("zip.pth", &zip_of(&[("readme.txt", b"hi")])), "zip.safetensors")),
        case("pickle calling os.system", 2, &["evil.pth' is not a PyTorch checkpoint: it holds no tensors"], convert(&put("evil.pth", &zip_of(&[("archive/data.pkl", &evil)])), "evil.safetensors")),
        case("pickle bomb", 2, &["is not a PyTorch checkpoint: reading its pickle would take more than 313 MiB"], convert(&put("bomb.pth", &zip_of(&[("archive/data.pkl", &bomb)])), "bomb.safetensors")),
        case("pickle with a lying string length", 2, &["a string of 4294967295 bytes"], convert(&put("string.pth", &zip_of(&[("archive/data.pkl", b"\x80\x02X\xff\xff\xff\xffabc.")])), "string.safetensors")),
        case("storage smaller than the shape", 2, &["tensor `fc.weight` needs 6 elements but its storage holds 2"], convert(&put("storage.pth", &pth(&[("fc.weight", &[2, 3], 2)])), "storage.safetensors")),
        case("shape whose size overflows", 2, &["tensor `w` has an impossible shape [2000000000, 2000000000, 2000000000]"], convert(&put("overflow.pth", &pth(&[("w", &[2_000_000_000; 3], 1)])), "overflow.safetensors")),
        case("shape larger than the file", 2, &["tensor `w` needs 4000000000 bytes, more than the whole file"], convert(&put("lying.pth", &pth(&[("w", &[1_000_000_000], 1_000_000_000)])), "lying.safetensors")),
        case("empty checkpoint", 2, &["not a zip archive"], convert(&put("empty.pth", b""), "empty.safetensors")),
        case("folder as checkpoint", 2, &["is a folder: use --all"], convert(&path("no_images"), "dir.safetensors")),
        case("converting onto itself", 2, &["is the input"], strings(&["convert", &path("other.pth"), "-o", &path("other.pth")])),
        Case { env: vec![("CONVERSE_MAX_CHECKPOINT_TENSORS", "1")], ..case("too many tensors", 2, &["2 tensors, more than the limit of 1 (raise it with $CONVERSE_MAX_CHECKPOINT_TENSORS)"], convert(&path("other.pth"), "many.safetensors")) },
        Case { env: vec![("CONVERSE_MAX_CHECKPOINT_BYTES", "16")], ..case("too many bytes", 2, &["32 bytes of tensors, more than the limit of 16 bytes (raise it with $CONVERSE_MAX_CHECKPOINT_BYTES)"], convert(&path("other.pth"), "bytes.safetensors")) },
        Case { env: vec![("CONVERSE_MAX_CHECKPOINT_BYTES", "lots")], ..case("bad limit value", 2, &["$CONVERSE_MAX_CHECKPOINT_BYTES must be a whole number, got `lots`"], convert(&path("other.pth"), "lots.safetensors")) },
        // Weights folders.
        case("safetensors of the wrong dtype", 2, &["tensor `head.bias` is F64, converse_dncnn expects F32"], denoise_to(&st_dir, &path("out/dtype.png"))),
        case("corrupt checkpoint in the weights folder", 2, &["converse_dncnn.pth' is not the released checkpoint (sha256 ", "it may be corrupt"], denoise_to(&corrupt_dir, &path("out/corrupt.png"))),
        // Outputs and options.
        case("output in a missing folder", 0, &[], denoise(&img, "new/dir/o.png")),
        case("output equal to the input", 2, &["img.png' is the input '", "img.png', which is never overwritten"], denoise_to(&weights, &img)),
        case("--scale 2 for sr", 2, &["--scale 2 is not supported: the released SR model is x4"], restore("sr", &img, "sr.png", &["--scale", "2"])),
        case("--scale for denoise", 2, &["--scale is for --task sr, not --task denoise"], restore("denoise", &img, "s.png", &["--scale", "4"])),
        case("--quality 0", 2, &["0 is not in 1..=100"], restore("denoise", &img, "q.jpg", &["--quality", "0"])),
        case("--max-memory junk", 2, &["`lots` is not a size"], restore("denoise", &img, "m.png", &["--max-memory", "lots"])),
    ];
    if !cfg!(feature = "cuda") {
        cases.push(case(
            "--device cuda on a CPU build",
            2,
            &["cuda"],
            restore("denoise", &img, "cuda.png", &["--device", "cuda"]),
        ));
    }
    if std::fs::read(&unreadable).is_ok() {
        println!("skipping 'unreadable image': running as root, permissions do not stop reading");
        cases.retain(|c| c.name != "unreadable image");
    }
    // Disk full: a 64 KiB tmpfs, filled up (needs root; skipped where it cannot be mounted).
    let full = t.join("full");
    let full_fs = Tmpfs::mount(&full);
    if full_fs.is_some() {
        let mut filler = std::fs::File::create(full.join("filler")).unwrap();
        while filler.write_all(&[0; 4096]).is_ok() {}
        let a = denoise_to(&weights, &s(&full.join("o.png")));
        cases.push(case(
            "disk full",
            1,
            &["cannot write '", "No space left on device"],
            a,
        ));
    } else {
        println!("skipping 'disk full': cannot mount a tmpfs here (needs root)");
    }
    let cache = t.join("cache");
    let mut failures = vec![];
    for c in &cases {
        let mut cmd = converse(&cache);
        cmd.args(&c.args).env("RUST_BACKTRACE", "1");
        for (k, v) in &c.env {
            cmd.env(k, v);
        }
        let o = cmd.output().unwrap();
        let err = stderr(&o);
        println!(
            "{}: exit {:?}: {}",
            c.name,
            o.status.code(),
            err.lines().next().unwrap_or("")
        );
        let missing: Vec<&str> = c
            .expect
            .iter()
            .filter(|e| !err.contains(*e))
            .copied()
            .collect();
        let panicked = ["panicked", "stack backtrace", "RUST_BACKTRACE"]
            .iter()
            .any(|p| err.contains(p));
        if o.status.code() != Some(c.code) || !missing.is_empty() || panicked {
            failures.push(format!(
                "{}: exit {:?} (expected {}), missing {missing:?}, stderr:\n{err}",
                c.name,
                o.status.code(),
                c.code
            ));
        }
    }
    println!("{} cases", cases.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(cases.len() >= 40);
    // Successes wrote their outputs; failures left nothing, not even a temporary file.
    assert_eq!(listing(&t.join("conv")), Vec::<String>::new());
    assert_eq!(
        listing(&t.join("out")),
        ["at.png", "fortran.png", "new", "one.png", "text_k.png"]
    );
    assert_eq!(image::open(t.join("out/one.png")).unwrap().width(), 1);
    // The same asymmetric kernel, Fortran-order .npy (stored transposed) or text: same result.
    assert_eq!(
        std::fs::read(t.join("out/fortran.png")).unwrap(),
        std::fs::read(t.join("out/text_k.png")).unwrap()
    );
    assert!(!marker.exists(), "the pickle ran a command");
    if full_fs.is_some() {
        assert_eq!(listing(&full), ["filler"]);
    }
    assert_eq!(std::fs::read(&img).unwrap(), good);
}

/// A folder run killed (SIGKILL) after its first output, then run again: exactly the full set,
/// no partial output and no temporary file left.
#[test]
fn a_killed_folder_run_resumes_where_it_stopped() {
    let Some(shared) = common::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (src, out) = (t.join("in"), t.join("out"));
    std::fs::create_dir_all(&src).unwrap();
    let names: Vec<String> = (0..6).map(|i| format!("img{i}.png")).collect();
    for (i, n) in names.iter().enumerate() {
        let img = GrayImage::from_fn(160, 120, |x, y| {
            Luma([(x * 7 + y * 13 + i as u32 * 31) as u8])
        });
        std::fs::write(src.join(n), png(img)).unwrap();
    }
    let run = || {
        let mut c = converse(t);
        c.args(["restore", "--task", "denoise", "--device", "cpu", "-q"])
            .arg("--weights")
            .arg(shared.join("weights"))
            .arg("-i")
            .arg(&src)
            .arg("-o")
            .arg(&out);
        c
    };
    let outputs = || -> Vec<String> {
        let all = if out.is_dir() { listing(&out) } else { vec![] };
        all.into_iter().filter(|n| !n.starts_with('.')).collect()
    };
    let mut child = run().stderr(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while outputs().is_empty() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended with no output"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no output after 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done = outputs();
    assert!(
        done.len() < names.len(),
        "the run finished before it was killed"
    );
    for n in &done {
        image::open(out.join(n)).unwrap();
    }
    // A SIGKILL during a write leaves the temporary file: make sure there is one.
    std::fs::write(out.join(".img5.png.converse-AbCdEf123456.tmp"), b"partial").unwrap();
    let o = run().output().unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let summary = format!(
        "{} restored, {} skipped, 0 failed",
        names.len() - done.len(),
        done.len()
    );
    assert!(err.contains(&summary), "{err}");
    assert_eq!(listing(&out), names);
}

/// Writes the seed corpus of the fuzz targets into `fuzz/corpus/` (run by hand:
/// `cargo test --test bad_inputs -- --ignored`).
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let seed = |target: &str, name: &str, head: &[u8], body: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), [head, body].concat()).unwrap();
    };
    let k = [0., 1., 0., 1., 4., 1., 0., 1., 0.];
    seed(
        "kernel",
        "c_f64.npy",
        &[0],
        &npy("<f8", false, "(3, 3)", &f64s(&k)),
    );
    let f32s: Vec<u8> = k.iter().flat_map(|v| (*v as f32).to_be_bytes()).collect();
    seed(
        "kernel",
        "fortran_f32_be.npy",
        &[0],
        &npy(">f4", true, "(3, 3)", &f32s),
    );
    seed("kernel", "k.txt", &[1], b"# psf\n0, 1, 0\n1 4 1\n0\t1 0\n");
    seed("kernel", "psf.png", &[2], &png(gray(3, 3)));
    let g16 =
        image::ImageBuffer::<Luma<u16>, _>::from_fn(3, 3, |x, y| Luma([(x * 9000 + y) as u16]));
    seed("kernel", "psf16.png", &[2], &png(g16));

    seed("checkpoint", "toy_pth.bin", &[0], &pth(TOY));
    seed("checkpoint", "header_pth.bin", &[0], &pth(TOY)[..64]);
    seed("checkpoint", "toy.pkl", &[1], &pickle(TOY));

    let dev = Device::Cpu;
    let spec = ModelKind::DnCNN.spec().unwrap();
    let first: Vec<(&str, candle_core::Tensor)> = spec.params[..2]
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                candle_core::Tensor::zeros(p.shape.as_slice(), candle_core::DType::F32, &dev)
                    .unwrap(),
            )
        })
        .collect();
    let meta = std::collections::HashMap::from([("model".to_owned(), "converse_dncnn".to_owned())]);
    let st = |meta| safetensors::serialize(first.clone(), meta).unwrap();
    seed("safetensors", "dncnn_first_st.bin", &[], &st(None));
    seed("safetensors", "dncnn_meta_st.bin", &[], &st(Some(meta)));

    let rgb = RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8 * 50, y as u8 * 60, 7]));
    for (name, format) in [
        ("rgb.png", ImageFormat::Png),
        ("rgb.jpg", ImageFormat::Jpeg),
        ("rgb.bmp", ImageFormat::Bmp),
        ("rgb.tif", ImageFormat::Tiff),
        ("rgb.webp", ImageFormat::WebP),
    ] {
        let mut b = vec![];
        image::DynamicImage::ImageRgb8(rgb.clone())
            .write_to(&mut Cursor::new(&mut b), format)
            .unwrap();
        seed("image", name, &[], &b);
    }
    let rgba16 = image::ImageBuffer::<image::Rgba<u16>, _>::from_fn(3, 2, |x, y| {
        image::Rgba([x as u16 * 999, y as u16, 5, 40000])
    });
    seed("image", "rgba16.png", &[], &png(rgba16));
    seed("image", "gray.png", &[], &png(gray(4, 3)));
}
