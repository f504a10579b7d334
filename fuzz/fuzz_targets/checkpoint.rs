//! The `.pth` reader and converter. The first byte picks the mode: 0, the input is the whole
//! file; otherwise it is the pickle (`archive/data.pkl`), put in a zip beside eight storages
//! (`archive/data/0` to `7`, 256 bytes each) so that the interpreter is reached every time.
#![no_main]

use std::io::Write;
use std::sync::OnceLock;

use converse::models::ModelKind;
use converse_convert::{convert_to_bytes, Limits, ModelSpec};
use libfuzzer_sys::fuzz_target;

fn specs() -> &'static [ModelSpec] {
    static SPECS: OnceLock<Vec<ModelSpec>> = OnceLock::new();
    SPECS.get_or_init(|| ModelKind::specs().expect("the model code builds"))
}

fn zipped(pickle: &[u8]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(vec![]));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", opts).unwrap();
    z.write_all(pickle).unwrap();
    for i in 0..8 {
        z.start_file(format!("archive/data/{i}"), opts).unwrap();
        z.write_all(&[0x3f; 256]).unwrap();
    }
    z.finish().unwrap().into_inner()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode == 0 {
        rest.to_vec()
    } else {
        zipped(rest)
    };
    let path = std::env::temp_dir().join(format!("converse-fuzz-{}.pth", std::process::id()));
    std::fs::write(&path, file).unwrap();
    // 64 tensors at most: a pickle budget of 3 MiB, so that no input takes long.
    let limits = Limits {
        max_tensors: 64,
        ..Limits::default()
    };
    let _ = convert_to_bytes(&path, specs(), limits);
});
