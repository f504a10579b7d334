//! Kernel files, every format: the first byte picks the parser, as the extension does for
//! `--kernel`; a parsed kernel goes on to the checks the model's 7x7 frame makes, and one that
//! passes them must be normalised into 0..=1.
#![no_main]

use converse::kernel;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&format, bytes)) = data.split_first() else {
        return;
    };
    let k = match format % 3 {
        0 => kernel::parse_npy(bytes),
        1 => std::str::from_utf8(bytes)
            .map_err(anyhow::Error::from)
            .and_then(kernel::parse_text),
        _ => kernel::parse_image(bytes),
    };
    if let Ok(k) = k {
        // A kernel the model takes is finite, every value in 0..=1 (its sum is checked).
        if let Ok(m) = k.flipped().for_model() {
            assert!(
                m.data.iter().all(|v| (0.0..=1.0).contains(v)),
                "{:?}",
                m.data
            );
        }
    }
});
