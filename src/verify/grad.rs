//! Gradient cases (`grad_*`): the loss `L = sum(y * g)` with the case's cotangent `g`, its
//! gradients by candle's autograd against the official code's float64 ones, tensor by tensor.
//!
//! An operator case (layer metadata, as for `y64`) holds `x`, `weight`, `bias`, `g` and the
//! answers `y64`, `dx64`, `dweight64`, `dbias64`; a model case (`grad_<model>_*`) holds `x`, `g`,
//! `y64`, `dx64` and `grad64.<name>` for every parameter, named as in the state dict. Each
//! answer `t` has metadata `err.<t>`, how far the official float32 run is from it. The bound per
//! tensor is `max(2 x err, 1e-5)` in float32 and `1e-8 x max(1, max |t|)` in float64; the case
//! reports its worst tensor (the largest share of its bound).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail};
use candle_core::{DType, Module, Tensor, Var};

use super::{layer_config, max_abs_diff, model_of, number, tensor, CaseReport, Verifier};
use crate::ops::Converse2d;

/// The file-name prefix of gradient cases.
pub(super) const PREFIX: &str = "grad_";

impl Verifier {
    /// Runs the gradient case at `path`, `name` its file name without [`PREFIX`].
    pub(super) fn run_grad(
        &mut self,
        name: &str,
        path: &Path,
        tensors: &HashMap<String, Tensor>,
        meta: &HashMap<String, String>,
    ) -> anyhow::Result<CaseReport> {
        let get = |k: &str| tensor(path, tensors, k);
        let dtype = self.dtype;
        let x = Var::from_tensor(&get("x")?.to_dtype(dtype)?)?;
        let g = get("g")?.to_dtype(dtype)?;
        // (answer's name, ours)
        let mut ours: Vec<(String, Tensor)> = vec![];
        let what = if let Some(cfg) = layer_config(path, meta)? {
            let weight = Var::from_tensor(&get("weight")?.to_dtype(dtype)?)?;
            let bias = Var::from_tensor(&get("bias")?.to_dtype(dtype)?)?;
            let layer = Converse2d::from_tensors(
                weight.as_tensor().clone(),
                bias.as_tensor().clone(),
                cfg,
            )?;
            let y = layer.forward(&x)?;
            let grads = (&y * &g)?.sum_all()?.backward()?;
            ours.push(("y64".into(), y));
            for (k, v) in [("dx64", &x), ("dweight64", &weight), ("dbias64", &bias)] {
                let d = grads
                    .get(v)
                    .ok_or_else(|| anyhow!("no gradient reached `{k}`"))?;
                ours.push((k.into(), d.clone()));
            }
            "converse2d".to_owned()
        } else {
            let kind = model_of(path, name)?;
            if !self.trainable.contains_key(&kind) {
                let m = self.locator.load_trainable(kind, dtype, &self.device)?;
                self.trainable.insert(kind, m);
            }
            let (model, vars) = &self.trainable[&kind];
            let kernel = match kind.info().takes_kernel {
                true => Some(get("kernel")?),
                false => None,
            };
            let y = model.forward(&x, kernel)?;
            let grads = (&y * &g)?.sum_all()?.backward()?;
            ours.push(("y64".into(), y));
            let dx = grads
                .get(&x)
                .ok_or_else(|| anyhow!("no gradient reached `x`"))?;
            ours.push(("dx64".into(), dx.clone()));
            let vars = vars.data().lock().unwrap_or_else(|e| e.into_inner());
            let mut params = 0;
            for k in tensors.keys() {
                let Some(param) = k.strip_prefix("grad64.") else {
                    continue;
                };
                let v = vars
                    .get(param)
                    .ok_or_else(|| anyhow!("{kind} has no parameter `{param}`"))?;
                let d = grads
                    .get(v)
                    .ok_or_else(|| anyhow!("no gradient reached `{param}`"))?;
                ours.push((k.clone(), d.clone()));
                params += 1;
            }
            if params != vars.len() {
                bail!(
                    "'{}' holds gradients for {params} of {kind}'s {} parameters",
                    path.display(),
                    vars.len()
                )
            }
            kind.id().to_owned()
        };
        // The worst tensor: (share of its bound, error, official error, bound, name).
        let mut worst: Option<(f64, f64, f64, f64, String)> = None;
        for (k, t) in &ours {
            let want = get(k)?;
            let err = max_abs_diff(t, want)?;
            let official = number(path, meta, &format!("err.{k}"))?;
            let bound = if dtype == DType::F64 {
                let top = want
                    .abs()?
                    .max_all()?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?;
                1e-8 * top.max(1.0)
            } else {
                (2.0 * official).max(1e-5)
            };
            let share = if err.is_finite() {
                err / bound
            } else {
                f64::INFINITY
            };
            if worst.as_ref().is_none_or(|w| share > w.0) {
                worst = Some((share, err, official, bound, k.clone()));
            }
        }
        let (_, err, official, bound, k) = worst.expect("every case checks y64");
        Ok(CaseReport {
            name: format!("{PREFIX}{name}"),
            what: format!("{what} {k}"),
            max_abs_err: err,
            official,
            limit: (dtype == DType::F64).then_some(bound),
            output: None,
        })
    }
}
