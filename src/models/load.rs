//! Strict loading of a model's weights: every tensor used, with its exact shape; and the
//! parameter list read off the model code itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

/// A `VarBuilder` over `store`.
pub(super) fn var_builder(
    store: &Arc<ParamStore>,
    dtype: DType,
    dev: &Device,
) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(Shared(store.clone())), dtype, dev.clone())
}

/// Serves tensors to a `VarBuilder`, checking shapes and remembering what was asked for; with no
/// tensors it records the requests and hands out zeros.
#[derive(Debug)]
pub(super) struct ParamStore {
    pub(super) tensors: Option<HashMap<String, Tensor>>,
    pub(super) seen: Mutex<Vec<(String, Shape)>>,
}

impl ParamStore {
    pub(super) fn recording() -> Self {
        Self {
            tensors: None,
            seen: Mutex::default(),
        }
    }

    pub(super) fn unused(&self) -> Vec<String> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut unused: Vec<String> = self
            .tensors
            .iter()
            .flat_map(|t| t.keys())
            .filter(|k| !seen.iter().any(|(n, _)| n == *k))
            .cloned()
            .collect();
        unused.sort();
        unused
    }
}

struct Shared(Arc<ParamStore>);

impl SimpleBackend for Shared {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let store = &self.0;
        store
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.to_owned(), s.clone()));
        let Some(tensors) = &store.tensors else {
            return Tensor::zeros(s, dtype, dev);
        };
        let t = tensors.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "missing tensor `{name}` (expected shape {:?})",
                s.dims()
            ))
        })?;
        if t.shape() != &s {
            candle_core::bail!(
                "tensor `{name}` has shape {:?}, the model expects {:?}",
                t.dims(),
                s.dims()
            )
        }
        t.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("tensor `{name}` requested without a shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0
            .tensors
            .as_ref()
            .is_some_and(|t| t.contains_key(name))
    }
}
