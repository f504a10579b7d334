//! The planar transfer functions the reference path keeps for its Converse2D layers (on the
//! device that runs them), bounded.
//!
//! A layer's transfer functions at one input size are `(1, C, s², 2, Hp, Wp/2+1)` values: for
//! Converse-DnCNN at 1024x1024 about 275 MB per layer in f32, 5.5 GB for the model. Two rules
//! bound what is kept, process-wide:
//! - a layer keeps one size: a new size replaces the one it kept, so a folder of mixed sizes (or
//!   ragged edge tiles) holds at most one size's worth per layer, never one per size seen;
//! - all layers together keep at most [`budget`] bytes ([`set_budget`]): a new entry evicts the
//!   least recently used ones until it fits, and one larger than the whole budget is built for
//!   its call and not kept.
//!
//! Building transfer functions again costs a host DFT of the taps and an upload, so eviction
//! trades time for memory, never correctness.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use candle_core::{DType, DeviceLocation, Result, Tensor};

/// What a layer's transfer functions depend on besides the layer: padded size, dtype, device.
pub(crate) type Key = (usize, usize, DType, DeviceLocation);

/// The default [`budget`]: 4 GiB.
pub const DEFAULT_BUDGET: usize = 4 << 30;

static BUDGET: AtomicUsize = AtomicUsize::new(DEFAULT_BUDGET);

/// The most bytes of transfer functions the reference path keeps, all layers together.
pub fn budget() -> usize {
    BUDGET.load(Ordering::Relaxed)
}

/// Sets [`budget`] and evicts what no longer fits.
pub fn set_budget(bytes: usize) {
    BUDGET.store(bytes, Ordering::Relaxed);
    store().evict_to(bytes);
}

/// Bytes of transfer functions kept now, all layers together.
pub fn held_bytes() -> usize {
    store().bytes
}

struct Entry {
    layer: u64,
    key: Key,
    g: Tensor,
    bytes: usize,
    used: u64,
}

#[derive(Default)]
struct Store {
    entries: Vec<Entry>,
    bytes: usize,
    clock: u64,
}

impl Store {
    fn remove(&mut self, keep: impl Fn(&Entry) -> bool) {
        self.entries.retain(|e| keep(e));
        self.bytes = self.entries.iter().map(|e| e.bytes).sum();
    }

    /// Drops the least recently used entries until at most `limit` bytes are kept.
    fn evict_to(&mut self, limit: usize) {
        while self.bytes > limit {
            let Some(oldest) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].used) else {
                break;
            };
            let e = self.entries.swap_remove(oldest);
            self.bytes -= e.bytes;
        }
    }
}

fn store() -> MutexGuard<'static, Store> {
    static STORE: Mutex<Store> = Mutex::new(Store {
        entries: Vec::new(),
        bytes: 0,
        clock: 0,
    });
    STORE.lock().unwrap_or_else(|e| e.into_inner())
}

/// One layer's handle on the process-wide store; its entries go when it is dropped.
#[derive(Debug)]
pub(crate) struct PlanarCache {
    layer: u64,
}

impl Default for PlanarCache {
    fn default() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Self {
            layer: NEXT.fetch_add(1, Ordering::Relaxed),
        }
    }
}

impl Drop for PlanarCache {
    fn drop(&mut self) {
        self.clear();
    }
}

impl PlanarCache {
    /// The layer's transfer functions for `key`: kept ones, else `make`'s, kept within the rules
    /// above (`make` runs without the store's lock).
    pub(crate) fn get_or_make(
        &self,
        key: Key,
        make: impl FnOnce() -> Result<Tensor>,
    ) -> Result<Tensor> {
        {
            let mut s = store();
            s.clock += 1;
            let now = s.clock;
            if let Some(e) = s
                .entries
                .iter_mut()
                .find(|e| e.layer == self.layer && e.key == key)
            {
                e.used = now;
                return Ok(e.g.clone());
            }
        }
        let g = make()?;
        let bytes = g.elem_count() * g.dtype().size_in_bytes();
        let mut s = store();
        s.remove(|e| e.layer != self.layer);
        let budget = budget();
        if bytes <= budget {
            s.evict_to(budget - bytes);
            s.clock += 1;
            let used = s.clock;
            s.bytes += bytes;
            s.entries.push(Entry {
                layer: self.layer,
                key,
                g: g.clone(),
                bytes,
                used,
            });
        }
        Ok(g)
    }

    /// How many entries the layer has kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        store()
            .entries
            .iter()
            .filter(|e| e.layer == self.layer)
            .count()
    }

    /// Drops the layer's entries.
    pub(crate) fn clear(&self) {
        store().remove(|e| e.layer != self.layer);
    }
}
