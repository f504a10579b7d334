//! `converse restore` end to end, through the real binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{converse, listing, stderr};
use image::{DynamicImage, GenericImageView, ImageBuffer, Luma, Rgb, Rgba};

/// `converse restore` with the shared weights and `args`, on the CPU unless `args` name a device.
fn restore<S: AsRef<std::ffi::OsStr>>(tmp: &Path, shared: &Path, args: &[S]) -> Output {
    let mut c = converse(tmp);
    c.args(["restore", "--weights"])
        .arg(shared.join("weights"))
        .args(args);
    if !args.iter().any(|a| a.as_ref() == "--device") {
        c.args(["--device", "cpu"]);
    }
    c.output().unwrap()
}

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", stderr(o));
    assert!(!stderr(o).contains("panicked"), "{}", stderr(o));
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Fraction of equal samples and the largest difference.
fn compare(a: &Path, b: &Path) -> (f64, i32) {
    let (a, b) = (image::open(a).unwrap(), image::open(b).unwrap());
    assert_eq!(a.dimensions(), b.dimensions());
    let (a, b) = (a.into_bytes(), b.into_bytes());
    assert_eq!(a.len(), b.len());
    let equal = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    let max = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (*x as i32 - *y as i32).abs())
        .max()
        .unwrap();
    (equal as f64 / a.len() as f64, max)
}

fn psnr(a: &Path, b: &Path) -> f64 {
    let (a, b) = (
        image::open(a).unwrap().into_bytes(),
        image::open(b).unwrap().into_bytes(),
    );
    let mse: f64 = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

/// The four end-to-end cases of `../shared/golden/cli`. The official outputs are float32 runs
/// rounded to 8 bits; for Converse-DnCNN and Converse-USRNet the official float32 output is
/// biased against the exact (float64) answer, which we reproduce: there 99.5% equality is out of
/// reach of an exact implementation (the official code itself, in float64, gets 99.15% and
/// 99.06%), so those two are held to 99.0%.
#[test]
fn golden_cli_cases_match_the_official_outputs() {
    let Some(shared) = common::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let g = shared.join("golden/cli");
    let cases: [(&str, &str, &[&str], &str, f64); 4] = [
        ("denoise", "denoise_in.png", &[], "denoise_out.png", 0.990),
        ("sr", "sr_in.png", &[], "sr_out.png", 0.995),
        (
            "deblur",
            "deblur_in.png",
            &[],
            "deblur_blind_out.png",
            0.995,
        ),
        (
            "deblur",
            "deblur_in.png",
            &["--kernel", "KERNEL"],
            "deblur_kernel_out.png",
            0.990,
        ),
    ];
    for (task, input, extra, expected, floor) in cases {
        let out = tmp.path().join(expected);
        let kernel = g.join("deblur_kernel.npy");
        let (input, kernel) = (g.join(input), kernel.to_str().unwrap());
        let mut args = vec!["--task", task, "-i", s(&input), "-o", s(&out)];
        args.extend(
            extra
                .iter()
                .map(|a| if *a == "KERNEL" { kernel } else { a }),
        );
        ok(&restore(tmp.path(), &shared, &args));
        let (equal, max) = compare(&out, &g.join(expected));
        println!(
            "{expected}: {:.2}% of samples equal, max difference {max}",
            equal * 100.0
        );
        assert!(max <= 1, "{expected}: a sample differs by {max}");
        assert!(
            equal >= floor,
            "{expected}: only {:.2}% equal",
            equal * 100.0
        );
    }
}

fn crop_rgb(src: &Path, dest: &Path, w: u32, h: u32) {
    image::open(src)
        .unwrap()
        .crop_imm(0, 0, w, h)
        .save(dest)
        .unwrap();
}

#[test]
fn every_kernel_source_gives_the_same_model() {
    let Some(shared) = common::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let input = t.join("in.png");
    crop_rgb(&shared.join("golden/cli/deblur_in.png"), &input, 40, 32);
    let npy = shared.join("golden/cli/deblur_kernel.npy");
    let k = converse::kernel::load(s(&npy)).unwrap();
    // The same kernel as a text matrix (comma-separated, with a comment) and as a 16-bit PSF.
    let text: String = k
        .data
        .chunks(7)
        .map(|r| {
            r.iter()
                .map(|v| format!("{v:.17e}"))
                .collect::<Vec<_>>()
                .join(", ")
                + "\n"
        })
        .collect();
    std::fs::write(t.join("k.txt"), format!("# psf\n{text}")).unwrap();
    let max = k.data.iter().cloned().fold(0.0, f64::max);
    let psf: Vec<u16> = k
        .data
        .iter()
        .map(|v| (v / max * 65535.0).round() as u16)
        .collect();
    ImageBuffer::<Luma<u16>, _>::from_raw(7, 7, psf)
        .unwrap()
        .save(t.join("k.png"))
        .unwrap();
    // Scaling does not matter (kernels are normalised); a symmetric kernel survives a flip.
    let scaled: String = k
        .data
        .chunks(7)
        .map(|r| {
            r.iter()
                .map(|v| format!("{}", v * 3.0))
                .collect::<Vec<_>>()
                .join(" ")
                + "\n"
        })
        .collect();
    std::fs::write(t.join("k3.txt"), scaled).unwrap();

    let run = |name: &str, kernel: &str, extra: &[&str]| {
        let out = t.join(format!("{name}.png"));
        let mut args = vec![
            "--task",
            "deblur",
            "--kernel",
            kernel,
            "-i",
            s(&input),
            "-o",
            s(&out),
        ];
        args.extend(extra);
        ok(&restore(t, &shared, &args));
        out
    };
    let reference = run("npy", s(&npy), &[]);
    assert_eq!(
        compare(&run("txt", s(&t.join("k.txt")), &[]), &reference),
        (1.0, 0)
    );
    assert_eq!(
        compare(&run("k3", s(&t.join("k3.txt")), &[]), &reference).1,
        0
    );
    let (_, max) = compare(&run("psf", s(&t.join("k.png")), &[]), &reference);
    assert!(max <= 1, "16-bit PSF image: {max}");
    for gen in ["gaussian:1.6", "motion:5,30"] {
        let out = run(&gen.replace([':', ','], "_"), gen, &[]);
        assert!(
            psnr(&out, &reference) < 60.0,
            "{gen} gave the same output as another kernel"
        );
    }
    let g = run("gauss", "gaussian:1.2", &[]);
    assert_eq!(
        compare(&run("gauss_flip", "gaussian:1.2", &["--kernel-flip"]), &g),
        (1.0, 0)
    );
    // An asymmetric kernel does change when flipped.
    std::fs::write(t.join("asym.txt"), "0 0 0\n0 1 2\n0 0 0\n").unwrap();
    let asym = t.join("asym.txt");
    let a = run("asym", s(&asym), &[]);
    assert!(compare(&run("asym_flip", s(&asym), &["--kernel-flip"]), &a).0 < 0.9);
}

#[test]
fn bad_kernels_and_options_are_usage_errors() {
    let Some(shared) = common::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let input = shared.join("golden/cli/sr_in.png");
    let out = t.join("o.png");
    std::fs::write(t.join("k8.txt"), "1 ".repeat(8).trim().to_owned() + "\n").unwrap();
    std::fs::write(t.join("big.txt"), ("1 ".repeat(9) + "\n").repeat(9)).unwrap();
    std::fs::write(t.join("nan.txt"), "0 1 0\n1 nan 1\n0 1 0\n").unwrap();
    std::fs::write(t.join("neg.txt"), "0 -1 0\n0 -1 0\n0 0 0\n").unwrap();
    let [k8, big, nan, neg] =
        ["k8", "big", "nan", "neg"].map(|n| s(&t.join(format!("{n}.txt"))).to_owned());
    let cases: [(&[&str], &str); 8] = [
        (
            &["--task", "deblur", "--kernel", &k8],
            "the kernel is 1x8; the model takes 7x7",
        ),
        (
            &["--task", "deblur", "--kernel", &big],
            "the kernel is 9x9; the model takes 7x7",
        ),
        (
            &["--task", "deblur", "--kernel", &nan],
            "the kernel holds a non-finite value (NaN)",
        ),
        (
            &["--task", "deblur", "--kernel", &neg],
            "the kernel holds a negative value (-1)",
        ),
        (
            &["--task", "deblur", "--kernel", "gaussian:x"],
            "gaussian:SIGMA needs a number, got `x`",
        ),
        (
            &["--task", "sr", "--scale", "2"],
            "--scale 2 is not supported: the released SR model is x4",
        ),
        (
            &["--task", "denoise", "--kernel", "gaussian:1"],
            "--kernel is for --task deblur",
        ),
        (&["--task", "sr", "--device", "cuda"], "cuda"),
    ];
    for (args, msg) in cases {
        if args.contains(&"cuda") && cfg!(feature = "cuda") {
            continue;
        }
        let mut a = args.to_vec();
        a.extend(["-i", s(&input), "-o", s(&out)]);
        let o = restore(t, &shared, &a);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(msg),
            "{args:?}: expected {msg:?} in {}",
            stderr(&o)
        );
        assert!(!out.exists());
    }
}

#[test]
fn alpha_depth_and_orientation_are_kept() {
    let Some(shared) = common::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let rgb = image::open(shared.join("golden/cli/deblur_in.png"))
        .unwrap()
        .crop_imm(0, 0, 36, 28)
        .to_rgb8();
    let rgba = ImageBuffer::from_fn(36, 28, |x, y| {
        let p = rgb.get_pixel(x, y);
        Rgba([p[0], p[1], p[2], ((x * 7 + y * 3) % 256) as u8])
    });
    let with_alpha = t.join("alpha in.png");
    rgba.save(&with_alpha).unwrap();

    // Deblur passes alpha through untouched.
    let out = t.join("deblurred ü.png");
    ok(&restore(
        t,
        &shared,
        &["--task", "deblur", "-i", s(&with_alpha), "-o", s(&out)],
    ));
    let o = image::open(&out).unwrap();
    assert!(o.color().has_alpha());
    assert!(o
        .to_rgba8()
        .pixels()
        .zip(rgba.pixels())
        .all(|(a, b)| a[3] == b[3]));

    // SR resizes it x4.
    let out = t.join("sr.png");
    ok(&restore(
        t,
        &shared,
        &["--task", "sr", "-i", s(&with_alpha), "-o", s(&out)],
    ));
    let o = image::open(&out).unwrap();
    assert_eq!((o.dimensions(), o.color().has_alpha()), ((144, 112), true));

    // JPEG cannot hold alpha: a clear error, unless --format png.
    let jpg = t.join("out.jpg");
    let o = restore(
        t,
        &shared,
        &["--task", "deblur", "-i", s(&with_alpha), "-o", s(&jpg)],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("has an alpha channel, which JPEG cannot store"),
        "{}",
        stderr(&o)
    );
    assert!(!jpg.exists());
    ok(&restore(
        t,
        &shared,
        &[
            "--task",
            "deblur",
            "--format",
            "png",
            "-i",
            s(&with_alpha),
            "-o",
            s(&jpg),
        ],
    ));
    assert_eq!(
        image::ImageReader::open(&jpg)
            .unwrap()
            .with_guessed_format()
            .unwrap()
            .format(),
        Some(image::ImageFormat::Png)
    );

    // 16-bit in, 16-bit out; gray stays gray.
    let g16 = t.join("gray16.png");
    let gray = image::open(shared.join("golden/cli/denoise_in.png"))
        .unwrap()
        .crop_imm(0, 0, 40, 30)
        .to_luma16();
    gray.save(&g16).unwrap();
    let out = t.join("den16.png");
    ok(&restore(
        t,
        &shared,
        &["--task", "denoise", "-i", s(&g16), "-o", s(&out)],
    ));
    assert!(matches!(
        image::open(&out).unwrap(),
        DynamicImage::ImageLuma16(_)
    ));
    // A colour image is denoised per channel and stays colour; --gray writes gray.
    let c8 = t.join("c8.png");
    rgb.save(&c8).unwrap();
    let out = t.join("den_rgb.png");
    ok(&restore(
        t,
        &shared,
        &["--task", "denoise", "-i", s(&c8), "-o", s(&out)],
    ));
    assert!(matches!(
        image::open(&out).unwrap(),
        DynamicImage::ImageRgb8(_)
    ));
    let out = t.join("den_gray.png");
    ok(&restore(
        t,
        &shared,
        &["--task", "denoise", "--gray", "-i", s(&c8), "-o", s(&out)],
    ));
    assert!(matches!(
        image::open(&out).unwrap(),
        DynamicImage::ImageLuma8(_)
    ));

    // A JPEG whose EXIF says "rotate 90° clockwise" (orientation 6) is read upright.
    let jpeg = t.join("rotated.jpg");
    let mut bytes = vec![];
    DynamicImage::ImageRgb8(ImageBuffer::<Rgb<u8>, _>::from_fn(48, 24, |x, _| {
        Rgb([(x * 5) as u8, 90, 40])
    }))
    .write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Jpeg,
    )
    .unwrap();
    std::fs::write(&jpeg, with_exif_orientation(&bytes, 6)).unwrap();
    let out = t.join("rotated.png");
    ok(&restore(
        t,
        &shared,
        &["--task", "deblur", "-i", s(&jpeg), "-o", s(&out)],
    ));
    assert_eq!(image::open(&out).unwrap().dimensions(), (24, 48));
}

/// Inserts an APP1 Exif segment holding only an orientation tag after the JPEG's SOI marker.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec();
    tiff.extend([0, 1]); // one entry
    tiff.extend([0x01, 0x12, 0, 3, 0, 0, 0, 1]); // Orientation, SHORT, count 1
    tiff.extend(orientation.to_be_bytes());
    tiff.extend([0, 0, 0, 0, 0, 0]); // padding and next IFD = 0
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend(tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend([0xFF, 0xE1]);
    out.extend(((app1.len() + 2) as u16).to_be_bytes());
    out.extend(app1);
    out.extend(&jpeg[2..]);
    out
}

#[test]
fn folders_go_on_past_bad_files_and_skip_existing_outputs() {
    let Some(shared) = common::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let src = t.join("in");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let img = image::open(shared.join("golden/cli/deblur_in.png")).unwrap();
    img.crop_imm(0, 0, 32, 24).save(src.join("a.png")).unwrap();
    img.crop_imm(10, 10, 24, 32)
        .save(src.join("sub/b.png"))
        .unwrap();
    std::fs::write(src.join("corrupt.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    std::fs::write(src.join("notes.txt"), "not an image").unwrap();
    let out = t.join("out");
    let run = |extra: &[&str]| {
        let mut a = vec!["--task", "deblur", "-i", s(&src), "-o", s(&out)];
        a.extend(extra);
        restore(t, &shared, &a)
    };
    let o = run(&["--recursive"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("2 restored, 0 skipped, 1 failed"), "{err}");
    assert!(
        err.contains("failed: '") && err.contains("corrupt.png"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(listing(&out), ["a.png", "sub"]);
    assert_eq!(listing(&out.join("sub")), ["b.png"]);
    let before = std::fs::read(out.join("a.png")).unwrap();

    // Again: existing outputs are skipped with a note; --overwrite redoes them.
    std::fs::remove_file(src.join("corrupt.png")).unwrap();
    let o = run(&["--recursive"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("note: skipping '"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("0 restored, 2 skipped, 0 failed"),
        "{}",
        stderr(&o)
    );
    let o = run(&["--recursive", "--overwrite", "--format", "bmp"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(listing(&out), ["a.bmp", "a.png", "sub"]);
    assert_eq!(std::fs::read(out.join("a.png")).unwrap(), before);
    // Without --recursive the subfolder is left alone.
    let flat = t.join("flat");
    let o = restore(
        t,
        &shared,
        &["--task", "deblur", "-i", s(&src), "-o", s(&flat)],
    );
    ok(&o);
    assert_eq!(listing(&flat), ["a.png"]);
    // No temporary files anywhere.
    for dir in [&out, &out.join("sub"), &flat] {
        assert!(
            listing(dir).iter().all(|n| !n.ends_with(".tmp")),
            "{:?}",
            listing(dir)
        );
    }
}

#[test]
fn paths_are_checked_and_the_input_is_never_overwritten() {
    let Some(shared) = common::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let input = t.join("x.png");
    image::open(shared.join("golden/cli/sr_in.png"))
        .unwrap()
        .save(&input)
        .unwrap();
    let before = std::fs::read(&input).unwrap();
    let o = restore(
        t,
        &shared,
        &[
            "--task",
            "sr",
            "--overwrite",
            "-i",
            s(&input),
            "-o",
            s(&input),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stderr(&o),
        format!(
            "error: the output '{}' is the input '{}', which is never overwritten\n",
            input.display(),
            input.display()
        )
    );
    assert_eq!(std::fs::read(&input).unwrap(), before);

    let (missing, xyz) = (
        s(&t.join("missing.png")).to_owned(),
        s(&t.join("o.xyz")).to_owned(),
    );
    let cases: [(&[&str], &str); 4] = [
        (
            &["-i", s(&input), "-o", s(t)],
            "is a file, so the output must be a file",
        ),
        (
            &["-i", s(t), "-o", s(&input)],
            "is a folder, so the output must be a folder",
        ),
        (&["-i", &missing, "-o", "o.png"], "cannot read '"),
        (
            &["-i", s(&input), "-o", &xyz],
            "cannot tell the output format",
        ),
    ];
    for (args, msg) in cases {
        let mut a = vec!["--task", "sr"];
        a.extend(args);
        let o = restore(t, &shared, &a);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains(msg), "{args:?}: {}", stderr(&o));
    }
    let o = restore(
        t,
        &shared,
        &[
            "--task",
            "sr",
            "-i",
            s(&input),
            "-o",
            s(&t.join("no/such/dir/o.png")),
        ],
    );
    ok(&o);
}

#[test]
fn x8_and_tiling_change_little() {
    let Some(shared) = common::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let input = t.join("in.png");
    crop_rgb(&shared.join("golden/cli/deblur_in.png"), &input, 120, 96);
    let run = |name: &str, extra: &[&str]| -> PathBuf {
        let out = t.join(name);
        let mut a = vec!["--task", "deblur", "-i", s(&input), "-o", s(&out)];
        a.extend(extra);
        ok(&restore(t, &shared, &a));
        out
    };
    let whole = run("whole.png", &["--tile", "0"]);
    let x8 = run("x8.png", &["--x8"]);
    let p = psnr(&x8, &whole);
    println!("x8 vs plain: {p:.2} dB");
    assert!(p > 35.0 && p.is_finite(), "{p}");
    let tiled = run("tiled.png", &["--tile", "64", "--tile-overlap", "16"]);
    let p = psnr(&tiled, &whole);
    println!("tiled (64, overlap 16) vs whole: {p:.2} dB");
    assert!(p > 40.0 && p.is_finite(), "{p}");
}
