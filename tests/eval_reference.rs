//! `converse eval` against the official code's numbers (`../shared/reference/official.json`):
//! every per-image PSNR within 0.01 dB, every mean within 0.005 dB.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use converse::eval::protocol::Degradation;
use converse::eval::run::{evaluate, EvalRun, EvalSpec};
use converse::models::Task;
use converse::weights::WeightsLocator;
use serde_json::Value;

fn reference(shared: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(shared.join("reference/official.json")).unwrap();
    serde_json::from_str::<Vec<Value>>(&text).unwrap()
}

fn check(reference: &Value, ours: &EvalRun) {
    let key = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64);
    let label = format!(
        "{} {} {}",
        ours.task,
        ours.dataset,
        ours.kernel.clone().unwrap_or_default()
    );
    let images = reference["images"].as_array().unwrap();
    assert_eq!(images.len(), ours.images.len(), "{label}");
    for (r, o) in images.iter().zip(&ours.images) {
        assert_eq!(r["name"].as_str().unwrap(), o.name, "{label}");
        let d = o.psnr - key(r, "psnr").unwrap();
        println!("{label} {:<14} psnr {:.4} diff {d:+.2e}", o.name, o.psnr);
        assert!(d.abs() <= 0.01, "{label} {}: psnr off by {d}", o.name);
        if let (Some(rp), Some(op)) = (key(r, "psnr_y"), o.psnr_y) {
            assert!(
                (op - rp).abs() <= 0.01,
                "{label} {}: psnr_y {op} vs {rp}",
                o.name
            );
        }
        if let Some(rs) = key(r, "ssim_y").or(key(r, "ssim")) {
            let os = o.ssim_y.unwrap_or(o.ssim);
            assert!(
                (os - rs).abs() <= 1e-3,
                "{label} {}: ssim {os} vs {rs}",
                o.name
            );
        }
    }
    let d = ours.mean_psnr - key(reference, "mean_psnr").unwrap();
    println!("{label} mean psnr {:.4} diff {d:+.2e}", ours.mean_psnr);
    assert!(d.abs() <= 0.005, "{label}: mean psnr off by {d}");
    if let (Some(r), Some(o)) = (key(reference, "mean_psnr_y"), ours.mean_psnr_y) {
        assert!((o - r).abs() <= 0.005, "{label}: mean psnr_y {o} vs {r}");
    }
}

fn run(shared: &Path, task: &str, with_kernel: Option<bool>) {
    let cache = tempfile::tempdir().unwrap();
    let locator = WeightsLocator {
        dirs: vec![(shared.join("weights"), "--weights".into())],
        cache: Some(cache.path().to_owned()),
        download: false,
        progress: None,
    };
    let runs: Vec<Value> = reference(shared)
        .into_iter()
        .filter(|r| {
            r["task"] == task && r.get("with_kernel").and_then(Value::as_bool) == with_kernel
        })
        .collect();
    assert!(!runs.is_empty());
    let kind = Task::ALL
        .into_iter()
        .find(|t| t.name() == task)
        .unwrap()
        .model(with_kernel == Some(true));
    let model = locator.load(kind, DType::F32, &Device::Cpu).unwrap();
    for r in &runs {
        let dataset = shared.join("testsets").join(r["dataset"].as_str().unwrap());
        let kernel = r["kernel"].as_str().map(|k| {
            converse::kernel::load(shared.join("kernels").join(k).to_str().unwrap()).unwrap()
        });
        let degradation = match task {
            "denoise" => Degradation::Denoise {
                sigma: r["sigma"].as_f64().unwrap(),
            },
            "sr" => Degradation::Sr,
            _ => Degradation::Deblur {
                kernel: kernel.clone().unwrap(),
                sigma: 2.55,
            },
        };
        let model_kernel = match (with_kernel, &kernel) {
            (Some(true), Some(k)) => {
                let k = k.for_model().unwrap();
                let v: Vec<f32> = k.data.iter().map(|v| *v as f32).collect();
                Some(Tensor::from_vec(v, (1, 1, 7, 7), &Device::Cpu).unwrap())
            }
            _ => None,
        };
        let images = converse::eval::protocol::list_images(&dataset).unwrap();
        let spec = EvalSpec {
            task,
            dataset: &dataset,
            images: &images,
            degradation,
            kernel_name: r["kernel"].as_str().map(str::to_owned),
            model_kernel,
            rescale: None,
            seed: 0,
            device: Device::Cpu,
            save: None,
            existing: converse::files::Existing::Keep,
        };
        let ours = evaluate(&model, &spec, |_| {}).unwrap();
        check(r, &ours);
    }
}

#[test]
fn denoise_set12_matches_the_official_numbers() {
    let Some(shared) = common::shared() else {
        return;
    };
    run(&shared, "denoise", None);
}

#[test]
fn sr_set5_set14_match_the_official_numbers() {
    let Some(shared) = common::shared() else {
        return;
    };
    run(&shared, "sr", None);
}

#[test]
fn blind_deblur_matches_the_official_numbers() {
    let Some(shared) = common::shared() else {
        return;
    };
    run(&shared, "deblur", Some(false));
}

#[test]
fn kernel_deblur_matches_the_official_numbers() {
    let Some(shared) = common::shared() else {
        return;
    };
    run(&shared, "deblur", Some(true));
}
