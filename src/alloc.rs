//! The process allocator: the system one, with large blocks marked for transparent huge pages.
//!
//! The models' feature maps are tens to thousands of MiB, each freshly mapped by the allocator
//! and faulted in page by page: at 4 KiB pages that is a quarter of a million faults per GiB,
//! a sixth of an SR run's time. Marked with `MADV_HUGEPAGE` (Linux, where transparent huge
//! pages are enabled or set to `madvise`), they fault in 2 MiB at a time. Nothing changes
//! elsewhere, or where the kernel declines. The `converse` binary uses it; a program of
//! your own can too: `#[global_allocator] static A: converse::alloc::Allocator = converse::alloc::Allocator;`.

use std::alloc::{GlobalAlloc, Layout, System};

/// [`System`], with blocks of [`LARGE`] bytes or more advised for huge pages.
#[derive(Debug, Default, Clone, Copy)]
pub struct Allocator;

/// Blocks from this size on are advised.
pub const LARGE: usize = 8 << 20;

const HUGE_PAGE: usize = 2 << 20;

/// Advises the whole huge pages inside `len` bytes at `p`.
fn advise(p: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    if !p.is_null() && len >= LARGE {
        let start = (p as usize).next_multiple_of(HUGE_PAGE);
        let end = (p as usize + len) / HUGE_PAGE * HUGE_PAGE;
        if end > start {
            // SAFETY: the range lies inside a block the allocator just handed out; the advice
            // changes how its pages are backed, never their contents.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (p, len);
}

// SAFETY: every call is passed to `System` unchanged; `advise` only adds a hint on the block.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        advise(p, layout.size());
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        advise(p, layout.size());
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        System.dealloc(p, layout)
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        let q = System.realloc(p, layout, size);
        advise(q, size);
        q
    }
}

/// Keeps freed blocks of up to 32 MiB in the process for reuse (glibc: `M_MMAP_THRESHOLD` at its
/// 32 MiB ceiling, `M_TRIM_THRESHOLD` off), for loops that free and allocate the same blocks
/// over and over, as training steps do: glibc otherwise maps them afresh and hands them back,
/// and the kernel zeroes every page again on its first touch. Returns whether the allocator
/// took the settings (false off glibc). `converse finetune` calls it.
pub fn keep_freed_blocks() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes glibc's thresholds; both values are in their ranges.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `VmFlags` of the mapping holding `p`, from `/proc/self/smaps`.
    #[cfg(target_os = "linux")]
    fn vm_flags(p: usize) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let range = line
                .split_whitespace()
                .next()
                .and_then(|r| r.split_once('-'));
            if let Some((a, b)) = range.filter(|_| !line.starts_with("VmFlags")) {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = (a..b).contains(&p);
                    continue;
                }
            }
            if inside {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    return Some(flags.trim().to_owned());
                }
            }
        }
        None
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_takes_the_settings() {
        assert!(keep_freed_blocks());
    }

    #[test]
    fn large_blocks_are_advised_and_keep_their_contents() {
        let a = Allocator;
        let layout = Layout::from_size_align(3 * LARGE, 64).unwrap();
        // SAFETY: the layout has a non-zero size; every block is freed with its own layout.
        unsafe {
            let p = a.alloc_zeroed(layout);
            assert!(!p.is_null());
            let block = std::slice::from_raw_parts_mut(p, layout.size());
            assert!(block.iter().all(|&b| b == 0));
            block.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
            // Where the kernel has transparent huge pages at all.
            #[cfg(target_os = "linux")]
            if std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists() {
                let inside = (p as usize).next_multiple_of(HUGE_PAGE) + HUGE_PAGE;
                let flags = vm_flags(inside).expect("the block's mapping in smaps");
                assert!(flags.split(' ').any(|f| f == "hg"), "not advised: {flags}");
            }
            let q = a.realloc(p, layout, 4 * LARGE);
            let block = std::slice::from_raw_parts(q, layout.size());
            assert!(block.iter().enumerate().all(|(i, &b)| b == i as u8));
            a.dealloc(q, Layout::from_size_align(4 * LARGE, 64).unwrap());
            // Small blocks are passed through untouched.
            let small = Layout::from_size_align(100, 8).unwrap();
            let p = a.alloc(small);
            assert!(!p.is_null());
            a.dealloc(p, small);
        }
    }
}
