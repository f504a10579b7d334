//! The process's pool of grid-sized buffers for the fused solve.

use std::sync::Mutex;

use crate::ops::cpu::simd::V;

/// Reusable vector buffers for the groups in flight, shared by every fused solve of the
/// process, so that grid-sized buffers are not freshly allocated and faulted in on every call.
/// Each op first [`fit`](Self::fit)s it to its own sizes, so it holds no more than the widest op
/// of the current size had in flight.
#[derive(Default)]
pub(crate) struct Pool(Mutex<Vec<Vec<V>>>);

impl Pool {
    /// A buffer of `len` vectors (contents unspecified): a pooled one at most a quarter larger,
    /// else a new one.
    pub(crate) fn take(&self, len: usize) -> Vec<V> {
        if len == 0 {
            return Vec::new();
        }
        let mut bufs = lock(&self.0);
        let best = bufs
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len && b.capacity() <= len + len / 4)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        let mut v = match best {
            Some(i) => bufs.swap_remove(i),
            None => {
                drop(bufs);
                // Zeroed by the system, page by page as it is written.
                return vec![V::default(); len];
            }
        };
        v.resize(len, V::default());
        v.truncate(len);
        v
    }

    /// Drops the buffers an op taking buffers of `sizes` (vectors; 0 for none) would not use,
    /// those [`take`](Self::take) would not give for any of them, and hands the memory back to
    /// the system, unless the process keeps its freed blocks
    /// ([`crate::alloc::keep_freed_blocks`]: a training loop, whose steps take the same
    /// buffers over and over).
    pub(crate) fn fit(&self, sizes: &[usize]) {
        let fits = |b: &Vec<V>| {
            let c = b.capacity();
            sizes
                .iter()
                .any(|&len| len > 0 && c >= len && c <= len + len / 4)
        };
        let mut bufs = lock(&self.0);
        let before = bufs.len();
        bufs.retain(fits);
        if bufs.len() < before && !crate::alloc::keeps_freed_blocks() {
            drop(bufs);
            release_freed_memory();
        }
    }

    pub(crate) fn give(&self, v: Vec<V>) {
        if v.capacity() > 0 {
            lock(&self.0).push(v);
        }
    }
}

/// Hands memory the allocator keeps after frees back to the system (glibc keeps freed blocks of
/// up to 32 MiB in its arenas, which a solve of another size would not use).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The process's buffer pool.
pub(crate) fn pool() -> &'static Pool {
    static POOL: std::sync::OnceLock<Pool> = std::sync::OnceLock::new();
    POOL.get_or_init(Pool::default)
}
