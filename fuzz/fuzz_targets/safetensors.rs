//! Loading a model from safetensors bytes, for each model (building it, never running it).
#![no_main]

use candle_core::{DType, Device};
use converse::models::{Model, ModelKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for kind in ModelKind::ALL {
        let _ = Model::load_bytes(kind, data, DType::F32, &Device::Cpu);
    }
});
