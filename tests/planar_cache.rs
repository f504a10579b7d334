//! The reference path's kept transfer functions are bounded: one size per layer, a byte budget
//! for all layers, least recently used evicted first; eviction never changes a result. The
//! reference path runs on the CPU here (f32 inside `with_reference`, and f64), as it does on a GPU.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Device, Module, Tensor};
use converse::ops::planar_cache::{budget, held_bytes, set_budget, DEFAULT_BUDGET};
use converse::ops::{with_reference, Converse2d, Converse2dConfig, PaddingMode};
use converse::{Model, ModelKind};

/// The store is process-wide: the tests here take turns.
static TURN: Mutex<()> = Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bytes of one layer's transfer functions at input `(h, w)`.
fn worth(layer: &Converse2d, (h, w): (usize, usize), dtype: DType) -> usize {
    let c = layer.config();
    let (hp, wp) = (h + 2 * c.padding, w + 2 * c.padding);
    let channels = layer.weight().dim(1).unwrap();
    channels * c.scale * c.scale * 2 * hp * (wp / 2 + 1) * dtype.size_in_bytes()
}

fn layer(channels: usize, seed: f32) -> Converse2d {
    let cfg = Converse2dConfig {
        kernel_size: 3,
        scale: 2,
        padding: 2,
        padding_mode: PaddingMode::Reflect,
        eps: 1e-3,
    };
    let dev = Device::Cpu;
    let w = (Tensor::rand(0f32, 0.3, (1, channels, 3, 3), &dev).unwrap() + seed as f64).unwrap();
    let b = Tensor::rand(-1f32, 1.0, (1, channels, 1, 1), &dev).unwrap();
    Converse2d::from_tensors(w, b, cfg).unwrap()
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    d.to_scalar::<f32>().unwrap() == 0.0
}

#[test]
fn three_sizes_keep_one_and_the_budget_evicts_the_oldest() {
    let _turn = turn();
    assert_eq!(budget(), DEFAULT_BUDGET);
    let base = held_bytes();
    let a = layer(4, 0.0);
    let sizes = [(9, 8), (12, 10), (7, 13)];
    let inputs: Vec<Tensor> = sizes
        .iter()
        .map(|&(h, w)| Tensor::rand(0f32, 1.0, (1, 4, h, w), &Device::Cpu).unwrap())
        .collect();
    let mut first = Vec::new();
    for (x, &size) in inputs.iter().zip(&sizes) {
        first.push(with_reference(|| a.forward(x).unwrap()));
        assert_eq!(held_bytes() - base, worth(&a, size, DType::F32), "{size:?}");
    }
    // Sizes come back: rebuilt, the same results.
    for (x, want) in inputs.iter().zip(&first) {
        assert!(same(&with_reference(|| a.forward(x).unwrap()), want));
    }
    let one = worth(&a, sizes[2], DType::F32);
    assert_eq!(held_bytes() - base, one);

    // A budget below one layer's worth keeps nothing, and the result stays.
    a.clear_cache();
    assert_eq!(held_bytes(), base);
    set_budget(base + one - 1);
    assert!(same(
        &with_reference(|| a.forward(&inputs[2]).unwrap()),
        &first[2]
    ));
    assert_eq!(held_bytes(), base);

    // Room for one and a half: the second layer's entry evicts the first layer's.
    set_budget(base + one + one / 2);
    let b = layer(4, 0.1);
    with_reference(|| a.forward(&inputs[2]).unwrap());
    assert_eq!(held_bytes() - base, one);
    with_reference(|| b.forward(&inputs[2]).unwrap());
    assert_eq!(held_bytes() - base, one);
    assert!(same(
        &with_reference(|| a.forward(&inputs[2]).unwrap()),
        &first[2]
    ));

    // Lowering the budget evicts at once; dropping a layer drops its entries.
    set_budget(base);
    assert_eq!(held_bytes(), base);
    set_budget(DEFAULT_BUDGET);
    with_reference(|| b.forward(&inputs[0]).unwrap());
    assert_eq!(held_bytes() - base, worth(&b, sizes[0], DType::F32));
    drop(b);
    assert_eq!(held_bytes(), base);
    drop(a);
}

/// A folder of mixed sizes through a whole model (Converse-DnCNN, zero weights, f64: the
/// reference path, as `verify` runs it): what stays kept is exactly the last size's worth.
#[test]
fn a_folder_of_mixed_sizes_keeps_one_sizes_worth() {
    let _turn = turn();
    let base = held_bytes();
    let spec = ModelKind::DnCNN.spec().unwrap();
    let tensors: HashMap<String, Tensor> = spec
        .params
        .iter()
        .map(|p| {
            let t = Tensor::zeros(p.shape.clone(), DType::F32, &Device::Cpu).unwrap();
            (p.name.clone(), t)
        })
        .collect();
    let model = Model::from_tensors(ModelKind::DnCNN, tensors, DType::F64, &Device::Cpu).unwrap();
    let layers = model.converse_layers().len();
    assert!(layers >= 20, "{layers} Converse2D layers");
    let worth_all = |size| -> usize {
        let l = model.converse_layers();
        l.iter().map(|l| worth(l, size, DType::F64)).sum()
    };
    let sizes = [(20, 24), (28, 16), (24, 24)];
    for &(h, w) in &sizes {
        let x = Tensor::zeros((1, 1, h, w), DType::F64, &Device::Cpu).unwrap();
        model.forward(&x, None).unwrap();
        assert_eq!(held_bytes() - base, worth_all((h, w)), "after {h}x{w}");
    }
    let all: usize = sizes.iter().map(|&s| worth_all(s)).sum();
    assert!(held_bytes() - base < all / 2);
    model.clear_caches();
    assert_eq!(held_bytes(), base);
}
