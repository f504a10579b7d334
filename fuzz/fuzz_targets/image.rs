//! Image decoding up to the planes the models take (`image_io::decode` then `to_picture`, from
//! memory). The pixel limit is 16M here rather than the default 268M, so that what the limit
//! lets a decoder allocate stays within the fuzzer's 2 GB memory cap.
#![no_main]

use converse::image_io;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = image_io::decode_bytes(data, 1 << 24) {
        let _ = image_io::to_picture(&img);
    }
});
