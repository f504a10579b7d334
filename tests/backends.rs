//! The two backends on every model, with random weights (no shared data needed): the fused f32
//! CPU kernels and the reference candle ops in f32 must both agree with the reference in f64.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use converse::eval::numpy_rng::LegacyRng;
use converse::ops::with_reference;
use converse::{Model, ModelKind};

/// Random weights for `kind`, shaped by its parameter list: 1x1 and linear weights around 0,
/// LayerNorm scales around 1, Converse2D kernels normalised and positive, their biases giving
/// `λ` near 1e-2, USRNet's `alpha` near 1e-3.
fn random_weights(kind: ModelKind, seed: u32) -> HashMap<String, Tensor> {
    let mut rng = LegacyRng::new(seed);
    let spec = kind.spec().unwrap();
    spec.params
        .iter()
        .map(|p| {
            let n: usize = p.shape.iter().product();
            let mut v = vec![0.0; n];
            rng.fill_normal(&mut v, 0.0, 1.0);
            let name = p.name.as_str();
            let converse = p.shape.len() == 4 && p.shape[0] == 1;
            let v: Vec<f32> = if converse && p.shape[2] > 1 {
                // A kernel (1, C, k, k): positive, each channel summing to 1.
                let k = p.shape[2] * p.shape[3];
                v.chunks(k)
                    .flat_map(|c| {
                        let a: Vec<f64> = c.iter().map(|x| x.abs() + 0.1).collect();
                        let s: f64 = a.iter().sum();
                        a.into_iter().map(move |x| (x / s) as f32)
                    })
                    .collect()
            } else if converse && name.ends_with("bias") {
                v.iter().map(|x| (4.5 + x) as f32).collect()
            } else if name.ends_with("alpha1") || name.ends_with("alpha2") {
                v.iter().map(|x| (0.5 + 0.1 * x) as f32).collect()
            } else if name.ends_with(".alpha") {
                v.iter().map(|x| (2.0 + x) as f32).collect()
            } else if p.shape.len() == 1 && name.contains(".0.") {
                // LayerNorm weight and bias (`conv1.0`, `conv2.0`).
                let one = if name.ends_with("weight") { 1.0 } else { 0.0 };
                v.iter().map(|x| (one + 0.1 * x) as f32).collect()
            } else {
                let fan_in: usize = p.shape.iter().skip(1).product::<usize>().max(1);
                let s = 1.0 / (fan_in as f64).sqrt();
                v.iter().map(|x| (s * x) as f32).collect()
            };
            let t = Tensor::from_vec(v, p.shape.clone(), &Device::Cpu).unwrap();
            (p.name.clone(), t)
        })
        .collect()
}

fn max_abs(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    max_abs(&(a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap())
}

#[test]
fn fused_and_reference_f32_agree_with_f64_on_every_model() {
    let dev = Device::Cpu;
    // Odd sizes, a batch of two for the deblurring models (USRNet with a kernel per image).
    let cases = [
        (ModelKind::DnCNN, (1, 1, 23, 29)),
        (ModelKind::SRResNet, (1, 3, 11, 13)),
        (ModelKind::ConverseNet, (2, 3, 17, 21)),
        (ModelKind::USRNet, (2, 3, 19, 16)),
    ];
    for (i, (kind, shape)) in cases.into_iter().enumerate() {
        let weights = random_weights(kind, 7 + i as u32);
        let model = |dtype| Model::from_tensors(kind, weights.clone(), dtype, &dev).unwrap();
        let (m32, m64) = (model(DType::F32), model(DType::F64));
        let mut rng = LegacyRng::new(100 + i as u32);
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let x: Vec<f64> = (0..n).map(|_| rng.random_sample()).collect();
        let x64 = Tensor::from_vec(x, shape, &dev).unwrap();
        let x32 = x64.to_dtype(DType::F32).unwrap();
        let kernel = kind.info().takes_kernel.then(|| {
            let k: Vec<f64> = (0..2 * 49).map(|_| rng.random_sample() + 0.05).collect();
            let k = Tensor::from_vec(k, (2, 1, 7, 7), &dev).unwrap();
            k.broadcast_div(&k.sum_keepdim((2, 3)).unwrap()).unwrap()
        });
        let k32 = kernel.as_ref().map(|k| k.to_dtype(DType::F32).unwrap());
        let k64 = kernel.as_ref();
        let want = m64.forward(&x64, k64).unwrap();
        let fused = m32.forward(&x32, k32.as_ref()).unwrap();
        let reference = with_reference(|| m32.forward(&x32, k32.as_ref()).unwrap());
        let scale = max_abs(&want).max(1.0);
        let (ef, er) = (max_diff(&fused, &want), max_diff(&reference, &want));
        println!("{kind}: |y| <= {scale:.3}, fused {ef:.3e}, reference {er:.3e}");
        // f32 through 5 to 35 blocks with random weights: about a hundred ulps of the output's
        // scale (measured up to 2e-5; a wrong kernel is off by the scale itself).
        assert!(ef < 5e-5 * scale, "{kind}: fused off by {ef:.3e}");
        assert!(er < 5e-5 * scale, "{kind}: reference off by {er:.3e}");
        assert_eq!(fused.dims(), want.dims());
    }
}
