//! The converter and strict loading, through the library and the `converse convert` command.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::{converse, listing, stderr, stdout};
use converse::models::{Model, ModelKind};
use converse::weights::WeightsLocator;

const COUNTS: [(ModelKind, usize); 4] = [
    (ModelKind::DnCNN, 796_353),
    (ModelKind::SRResNet, 699_072),
    (ModelKind::ConverseNet, 243_267),
    (ModelKind::USRNet, 307_987),
];

fn pth(shared: &Path, kind: ModelKind) -> PathBuf {
    shared.join("weights").join(format!("{}.pth", kind.id()))
}

fn sha_sums(shared: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(shared.join("weights/SHA256SUMS"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(h, n)| (n.trim().to_owned(), h.to_owned()))
        .collect()
}

#[test]
fn specs_have_the_released_parameter_counts() {
    for (kind, n) in COUNTS {
        assert_eq!(kind.spec().unwrap().num_parameters(), n, "{kind}");
    }
    assert!(ModelKind::DnCNN
        .spec()
        .unwrap()
        .params
        .iter()
        .any(|p| p.name == "m_body.3.conv1.3.weight" && p.shape == [1, 128, 7, 7]));
}

#[test]
fn each_checkpoint_converts_and_loads_back() {
    let Some(shared) = common::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let sums = sha_sums(&shared);
    for (kind, n) in COUNTS {
        let out = tmp.path().join(format!("{}.safetensors", kind.id()));
        let o = converse(tmp.path())
            .args(["convert"])
            .arg(pth(&shared, kind))
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stdout(&o).contains(&format!(
            "{}: {} ({n} parameters)",
            out.display(),
            kind.id()
        )));

        let bytes = std::fs::read(&out).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = header.metadata().clone().unwrap();
        assert_eq!(meta["model"], kind.id());
        assert_eq!(meta["class"], kind.class());
        assert_eq!(
            meta["converter_version"],
            converse_convert::CONVERTER_VERSION
        );
        assert_eq!(meta["source_sha256"], sums[&format!("{}.pth", kind.id())]);
        assert_eq!(meta["source_sha256"], kind.sha256());
        assert!(meta["architecture"].starts_with("Config {"));

        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
        let total: usize = tensors.values().map(|t| t.elem_count()).sum();
        assert_eq!(total, n, "{kind}");
        // Same values as the checkpoint itself.
        let sd = converse_convert::read_pth(&pth(&shared, kind), Default::default()).unwrap();
        for (name, t) in &sd.tensors {
            let diff = (t - &tensors[name])
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{name}");
        }
        let model = Model::load(kind, &out, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(model.kind(), kind);
    }
}

#[test]
fn convert_all_writes_every_model() {
    let Some(shared) = common::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let o = converse(tmp.path())
        .args(["convert", "--all"])
        .arg(shared.join("weights"))
        .arg("-o")
        .arg(tmp.path().join("out"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).ends_with("4 converted, 0 failed\n"),
        "{}",
        stdout(&o)
    );
    assert_eq!(
        listing(&tmp.path().join("out")),
        [
            "converse_dncnn.safetensors",
            "converse_srresnet.safetensors",
            "converse_usrnet.safetensors",
            "conversenet.safetensors"
        ]
    );
}

/// Rewrites a `.pth` zip, replacing `from` with `to` (same length) in its pickle.
fn rename_in_pickle(src: &Path, dest: &Path, from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let mut zin = zip::ZipArchive::new(std::fs::File::open(src).unwrap()).unwrap();
    let mut zout = zip::ZipWriter::new(std::fs::File::create(dest).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..zin.len() {
        let mut f = zin.by_index(i).unwrap();
        let name = f.name().unwrap().into_owned();
        let mut data = vec![];
        f.read_to_end(&mut data).unwrap();
        if name.ends_with("data.pkl") {
            let pos = data
                .windows(from.len())
                .position(|w| w == from.as_bytes())
                .expect("name in pickle");
            data[pos..pos + to.len()].copy_from_slice(to.as_bytes());
        }
        zout.start_file(name, opts).unwrap();
        zout.write_all(&data).unwrap();
    }
    zout.finish().unwrap();
}

/// Runs `converse convert BAD -o OUT` and checks: exit 2, the message, and no output left.
fn convert_fails(tmp: &Path, input: &Path, expect: &[&str]) {
    let out_dir = tmp.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let o = converse(tmp)
        .arg("convert")
        .arg(input)
        .arg("-o")
        .arg(out_dir.join("x.safetensors"))
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    for e in expect {
        assert!(err.contains(e), "expected {e:?} in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        listing(&out_dir).is_empty(),
        "left behind: {:?}",
        listing(&out_dir)
    );
}

#[test]
fn bad_checkpoints_are_clear_errors_with_no_output() {
    let Some(shared) = common::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let good = pth(&shared, ModelKind::DnCNN);
    let bytes = std::fs::read(&good).unwrap();

    let truncated = t.join("truncated.pth");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    convert_fails(
        t,
        &truncated,
        &["truncated.pth' is not a PyTorch checkpoint"],
    );

    let corrupt = t.join("corrupt.pth");
    let mut c = bytes.clone();
    for b in c[200..4000].iter_mut() {
        *b ^= 0x5a;
    }
    std::fs::write(&corrupt, &c).unwrap();
    convert_fails(t, &corrupt, &["corrupt.pth' is not a PyTorch checkpoint"]);

    let text = t.join("notes.pth");
    std::fs::write(&text, "just some text\n").unwrap();
    convert_fails(
        t,
        &text,
        &["is not a PyTorch checkpoint: not a zip archive"],
    );

    let empty = t.join("empty.pth");
    std::fs::write(&empty, "").unwrap();
    convert_fails(t, &empty, &["not a zip archive"]);

    convert_fails(
        t,
        &t.join("missing.pth"),
        &["cannot read '", "missing.pth'"],
    );

    // Two LayerNorm biases of the same shape: renaming one to the other leaves it missing.
    let missing = t.join("missing_key.pth");
    rename_in_pickle(
        &good,
        &missing,
        "m_body.0.conv1.0.bias",
        "m_body.0.conv2.0.bias",
    );
    convert_fails(
        t,
        &missing,
        &[
            "does not match model converse_dncnn",
            "missing tensor `m_body.0.conv1.0.bias` (expected shape [64])",
        ],
    );

    let renamed = t.join("renamed_key.pth");
    rename_in_pickle(
        &good,
        &renamed,
        "m_body.0.conv1.0.bias",
        "m_body.0.conv1.0.bia_",
    );
    convert_fails(
        t,
        &renamed,
        &[
            "missing tensor `m_body.0.conv1.0.bias` (expected shape [64])",
            "unexpected tensor `m_body.0.conv1.0.bia_` (shape [64])",
        ],
    );
}

#[test]
fn misshaped_and_extra_tensors_are_named() {
    let Some(shared) = common::shared() else {
        return;
    };
    let sd = converse_convert::read_pth(&pth(&shared, ModelKind::ConverseNet), Default::default())
        .unwrap();
    let spec = ModelKind::ConverseNet.spec().unwrap();
    let mut tensors = sd.tensors.clone();
    tensors.insert(
        "p.m_body.7.conv1.0.weight".into(),
        Tensor::zeros(64, DType::F32, &Device::Cpu).unwrap(),
    );
    tensors.insert(
        "conv2.bias".into(),
        Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap(),
    );
    let problems: Vec<String> = converse_convert::mismatches(&tensors, &spec)
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(
        problems,
        [
            "tensor `conv2.bias` has shape [4], the model expects [3]",
            "unexpected tensor `p.m_body.7.conv1.0.weight` (shape [64])",
        ]
    );
}

fn save(tensors: &HashMap<String, Tensor>, meta: Option<HashMap<String, String>>, p: &Path) {
    let bytes = safetensors::serialize(tensors.iter(), meta).unwrap();
    std::fs::write(p, bytes).unwrap();
}

#[test]
fn safetensors_loading_is_strict() {
    let Some(shared) = common::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let kind = ModelKind::USRNet;
    let sd = converse_convert::read_pth(&pth(&shared, kind), Default::default()).unwrap();
    let base: HashMap<String, Tensor> = sd.tensors.into_iter().collect();
    let load = |t: &HashMap<String, Tensor>, meta| {
        let p = tmp.path().join("w.safetensors");
        save(t, meta, &p);
        Model::load(kind, &p, DType::F32, &Device::Cpu).map(|_| ())
    };
    assert!(load(&base, None).is_ok());

    let mut extra = base.clone();
    extra.insert(
        "d.beta".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    let e = format!("{:#}", load(&extra, None).unwrap_err());
    assert!(
        e.contains("1 tensor(s) that converse_usrnet never uses: `d.beta`"),
        "{e}"
    );

    let mut missing = base.clone();
    missing.remove("kernelnet.fc2.bias");
    let e = format!("{:#}", load(&missing, None).unwrap_err());
    assert!(
        e.contains("missing tensor `kernelnet.fc2.bias` (expected shape [64])"),
        "{e}"
    );

    let mut shaped = base.clone();
    shaped.insert(
        "d.alpha".into(),
        Tensor::zeros((1, 32, 1, 1), DType::F32, &Device::Cpu).unwrap(),
    );
    let e = format!("{:#}", load(&shaped, None).unwrap_err());
    assert!(
        e.contains("tensor `d.alpha` has shape [1, 32, 1, 1], the model expects [1, 64, 1, 1]"),
        "{e}"
    );

    let mut f64s = base.clone();
    f64s.insert(
        "conv1.bias".into(),
        Tensor::zeros(64, DType::F64, &Device::Cpu).unwrap(),
    );
    let e = format!("{:#}", load(&f64s, None).unwrap_err());
    assert!(
        e.contains("tensor `conv1.bias` is F64, converse_usrnet expects F32"),
        "{e}"
    );

    let meta = HashMap::from([("model".to_owned(), "conversenet".to_owned())]);
    let e = format!("{:#}", load(&base, Some(meta)).unwrap_err());
    assert!(
        e.contains("the file holds conversenet weights, not converse_usrnet"),
        "{e}"
    );

    let p = tmp.path().join("junk.safetensors");
    std::fs::write(&p, b"\xff\xff\xff\xff\xff\xff\xff\x7fjunk").unwrap();
    let e = format!(
        "{:#}",
        Model::load(kind, &p, DType::F32, &Device::Cpu).unwrap_err()
    );
    assert!(
        e.contains("junk.safetensors'") && e.contains("not a safetensors file"),
        "{e}"
    );
}

#[test]
fn locator_converts_once_and_names_every_place_it_looked() {
    let Some(shared) = common::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let weights = tmp.path().join("w");
    std::fs::create_dir_all(&weights).unwrap();
    let loc = WeightsLocator {
        dirs: vec![
            (weights.clone(), "--weights".into()),
            (cache.clone(), "cache".into()),
        ],
        cache: Some(cache.clone()),
        download: false,
        progress: None,
    };
    let e = format!(
        "{:#}",
        loc.load(ModelKind::DnCNN, DType::F32, &Device::Cpu)
            .unwrap_err()
    );
    assert!(e.starts_with("weights for converse_dncnn not found: looked for converse_dncnn.safetensors or converse_dncnn.pth in"), "{e}");
    assert!(
        e.contains(&format!("{} (--weights)", weights.display())),
        "{e}"
    );
    assert!(e.contains(&format!("{} (cache)", cache.display())), "{e}");
    assert!(
        e.contains("https://github.com/cszn/ConverseNet/raw/main/model_zoo/converse_dncnn.pth"),
        "{e}"
    );

    std::fs::copy(
        pth(&shared, ModelKind::DnCNN),
        weights.join("converse_dncnn.pth"),
    )
    .unwrap();
    loc.load(ModelKind::DnCNN, DType::F32, &Device::Cpu)
        .unwrap();
    assert_eq!(
        listing(&cache),
        ["converse_dncnn-3b86c7f6e41a0144.safetensors"]
    );

    // A checkpoint of another model under this model's name.
    std::fs::copy(
        pth(&shared, ModelKind::ConverseNet),
        weights.join("converse_usrnet.pth"),
    )
    .unwrap();
    let e = format!(
        "{:#}",
        loc.load(ModelKind::USRNet, DType::F32, &Device::Cpu)
            .unwrap_err()
    );
    assert!(
        e.contains("converse_usrnet.pth' holds conversenet weights, not converse_usrnet"),
        "{e}"
    );
}
