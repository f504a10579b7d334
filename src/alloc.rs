//! The process allocator: the system one, with large blocks marked for transparent huge pages.
//!
//! The models' feature maps are tens to thousands of MiB, each freshly mapped by the allocator
//! and faulted in page by page: at 4 KiB pages that is a quarter of a million faults per GiB,
//! a sixth of an SR run's time. Marked with `MADV_HUGEPAGE` (Linux, where transparent huge
//! pages are enabled or set to `madvise`), they fault in 2 MiB at a time. Large zeroed blocks
//! are mapped afresh, 2 MiB-aligned, rather than cleared: until written, their pages are the
//! kernel's shared zero page, so a zero tensor that is only read (as every gradient starts in
//! candle's autograd: zeros, then an add) costs a few faults, not a pass over memory. Nothing
//! changes elsewhere, or where the kernel declines. The `converse` binary uses it; a program of
//! your own can too: `#[global_allocator] static A: converse::alloc::Allocator = converse::alloc::Allocator;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

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

/// Zeroed blocks this large and larger are mapped afresh (Linux).
pub const ZERO_MAPPED_FROM: usize = LARGE;

/// At most this many are mapped at once; more take the system allocator's `calloc`.
const ZERO_MAPPED: usize = 64;

/// The zeroed blocks mapped afresh now, by address (0: a free slot).
static MAPPED: Mutex<[usize; ZERO_MAPPED]> = Mutex::new([0; ZERO_MAPPED]);

/// A fresh anonymous mapping of `layout`, 2 MiB-aligned (its pages read as zero until written),
/// registered in [`MAPPED`]; `None` where the layout is small, the registry full or the kernel
/// declines.
#[cfg(target_os = "linux")]
fn map_zeroed(layout: Layout) -> Option<*mut u8> {
    if layout.size() < ZERO_MAPPED_FROM || layout.align() > HUGE_PAGE {
        return None;
    }
    let mut mapped = MAPPED.lock().unwrap_or_else(|e| e.into_inner());
    let slot = mapped.iter().position(|&a| a == 0)?;
    let len = layout.size().next_multiple_of(HUGE_PAGE);
    // SAFETY: a new private anonymous mapping; only its unaligned ends are unmapped again.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len + HUGE_PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return None;
        }
        let start = (p as usize).next_multiple_of(HUGE_PAGE);
        let head = start - p as usize;
        if head > 0 {
            libc::munmap(p, head);
        }
        // The tail: the rest of the extra huge page (all of it when the head is empty).
        libc::munmap((start + len) as *mut libc::c_void, HUGE_PAGE - head);
        mapped[slot] = start;
        advise(start as *mut u8, len);
        Some(start as *mut u8)
    }
}

#[cfg(not(target_os = "linux"))]
fn map_zeroed(_: Layout) -> Option<*mut u8> {
    None
}

/// Unmaps `p` if [`map_zeroed`] made it; returns whether it did.
fn unmap_zeroed(p: *mut u8, layout: Layout) -> bool {
    if layout.size() < ZERO_MAPPED_FROM {
        return false;
    }
    let mut mapped = MAPPED.lock().unwrap_or_else(|e| e.into_inner());
    let Some(slot) = mapped.iter().position(|&a| a == p as usize) else {
        return false;
    };
    mapped[slot] = 0;
    #[cfg(target_os = "linux")]
    // SAFETY: `map_zeroed` mapped exactly this range, and its block is being freed.
    unsafe {
        libc::munmap(
            p as *mut libc::c_void,
            layout.size().next_multiple_of(HUGE_PAGE),
        );
    }
    true
}

/// `n` zeros for a buffer written over at once, whose freshly mapped zero pages the kernel
/// would otherwise clear again on the first write: a block of [`KEPT_FROM`] bytes or more
/// through the allocator's ordinary path (a kept block of the same size when
/// [`reuse_large_blocks`] is on, and kept again when freed) or, in a training loop
/// ([`keep_freed_blocks`]), memory the heap reuses, filled here; else zeroed memory as usual
/// (outside a training loop a smaller block from the heap could stay with glibc once freed).
pub fn zeros_to_overwrite(n: usize) -> Vec<f32> {
    if n * size_of::<f32>() < KEPT_FROM && !keeps_freed_blocks() {
        return vec![0.0; n];
    }
    let mut v = Vec::with_capacity(n);
    v.resize(n, 0.0);
    v
}

/// Blocks from this size on (glibc's largest `M_MMAP_THRESHOLD`, always mapped afresh by it)
/// are kept by [`Allocator`] itself once [`reuse_large_blocks`] (or [`keep_freed_blocks`]) is
/// called.
pub const KEPT_FROM: usize = 32 << 20;

/// At most this many freed blocks, and this many bytes, are kept; the oldest go first. A block
/// larger than that is kept alone.
const KEPT_BLOCKS: usize = 16;
const KEPT_BYTES: usize = 2 << 30;

/// Whether freed blocks of [`KEPT_FROM`] bytes or more are kept for reuse.
static KEEP: AtomicBool = AtomicBool::new(false);

/// Whether [`keep_freed_blocks`] was called.
static KEEP_ALL: AtomicBool = AtomicBool::new(false);

/// Blocks as `(address, size, align)`.
type Blocks = [(usize, usize, usize); KEPT_BLOCKS + 1];

/// Freed large blocks, oldest first: `(address, size, align)`.
struct Kept {
    blocks: [(usize, usize, usize); KEPT_BLOCKS],
    len: usize,
}

static KEPT: Mutex<Kept> = Mutex::new(Kept::EMPTY);

impl Kept {
    const EMPTY: Kept = Kept {
        blocks: [(0, 0, 0); KEPT_BLOCKS],
        len: 0,
    };

    fn bytes(&self) -> usize {
        self.blocks[..self.len].iter().map(|b| b.1).sum()
    }

    /// Takes out a kept block of exactly this layout, if there is one.
    fn take(&mut self, layout: Layout) -> Option<*mut u8> {
        let at = self.blocks[..self.len]
            .iter()
            .rposition(|&(_, size, align)| size == layout.size() && align == layout.align())?;
        let (p, _, _) = self.blocks[at];
        self.blocks.copy_within(at + 1..self.len, at);
        self.len -= 1;
        Some(p as *mut u8)
    }

    /// [`Self::take`], or when no block fits and `drain`, every kept block moved into `out` (to
    /// free); `Err` holds how many.
    fn take_or_drain(
        &mut self,
        layout: Layout,
        drain: bool,
        out: &mut Blocks,
    ) -> Result<*mut u8, usize> {
        if let Some(p) = self.take(layout) {
            return Ok(p);
        }
        let n = if drain { self.len } else { 0 };
        out[..n].copy_from_slice(&self.blocks[..n]);
        self.len -= n;
        Err(n)
    }

    /// Keeps a block; returns the blocks to free (the oldest ones that no longer fit with it)
    /// and their count.
    fn keep(&mut self, p: *mut u8, layout: Layout) -> (Blocks, usize) {
        let (mut out, mut n) = ([(0, 0, 0); KEPT_BLOCKS + 1], 0);
        let block = (p as usize, layout.size(), layout.align());
        while self.len == KEPT_BLOCKS || (self.len > 0 && self.bytes() + layout.size() > KEPT_BYTES)
        {
            out[n] = self.blocks[0];
            n += 1;
            self.blocks.copy_within(1..self.len, 0);
            self.len -= 1;
        }
        self.blocks[self.len] = block;
        self.len += 1;
        (out, n)
    }
}

/// Whether [`keep_freed_blocks`] was called: buffer pools then keep what they hold too.
pub fn keeps_freed_blocks() -> bool {
    KEEP_ALL.load(Ordering::Relaxed)
}

/// Keeps freed blocks of [`KEPT_FROM`] bytes and more (the last 16, at most 2 GiB, or the
/// last one alone if larger), each reused for the next block of exactly its size, instead of
/// handing them back to the system (a zeroed request clears it with `memset`): a network's
/// layers free and allocate feature maps of one size over and over, and a block mapped afresh
/// is zeroed by the kernel page by page on its first touch (at 12 MP a 64-channel map is 3 GiB,
/// 35 times per ConverseNet forward). A large block that no kept one fits hands them all back
/// first, so that kept blocks never sit beside a large block mapped afresh. The `converse`
/// binary calls it at start.
pub fn reuse_large_blocks() {
    KEEP.store(true, Ordering::Relaxed);
}

/// A kept block for `layout`, when blocks are kept and one fits exactly. Outside a training
/// loop a large block that none fits hands every kept block back to the system first, so that
/// kept blocks never sit beside a large block mapped afresh.
fn reuse(layout: Layout) -> Option<*mut u8> {
    if layout.size() < KEPT_FROM || !KEEP.load(Ordering::Relaxed) {
        return None;
    }
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    let mut blocks = [(0, 0, 0); KEPT_BLOCKS + 1];
    let n = match kept.take_or_drain(layout, !keeps_freed_blocks(), &mut blocks) {
        Ok(p) => return Some(p),
        Err(n) => n,
    };
    drop(kept);
    for &(q, size, align) in &blocks[..n] {
        // SAFETY: a kept block came from `System` with this layout and is no longer handed out.
        unsafe { System.dealloc(q as *mut u8, Layout::from_size_align_unchecked(size, align)) };
    }
    None
}

// SAFETY: every block comes from `System` and goes back to it with the layout it was made with,
// or from `map_zeroed` and goes back to `unmap_zeroed` (which knows it by its address): a kept
// block is handed out again only for that same layout; `advise` only adds a hint.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if let Some(p) = reuse(layout) {
            return p;
        }
        let p = System.alloc(layout);
        advise(p, layout.size());
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // Outside a training loop a kept block is cleared rather than left with the allocator
        // (where blocks freed and not taken again would add up); in one, zeroed blocks are
        // mostly gradients that start as zeros and are only read, best as fresh zero pages.
        if !keeps_freed_blocks() {
            if let Some(p) = reuse(layout) {
                std::ptr::write_bytes(p, 0, layout.size());
                return p;
            }
        }
        if let Some(p) = map_zeroed(layout) {
            return p;
        }
        if let Some(p) = reuse(layout) {
            std::ptr::write_bytes(p, 0, layout.size());
            return p;
        }
        let p = System.alloc_zeroed(layout);
        advise(p, layout.size());
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        if unmap_zeroed(p, layout) {
            return;
        }
        if layout.size() >= KEPT_FROM && KEEP.load(Ordering::Relaxed) {
            let (evicted, n) = KEPT
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keep(p, layout);
            for &(q, size, align) in &evicted[..n] {
                System.dealloc(q as *mut u8, Layout::from_size_align_unchecked(size, align));
            }
            return;
        }
        System.dealloc(p, layout)
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        if layout.size() >= ZERO_MAPPED_FROM
            && MAPPED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&(p as usize))
        {
            let new = Layout::from_size_align_unchecked(size, layout.align());
            let q = self.alloc(new);
            if !q.is_null() {
                std::ptr::copy_nonoverlapping(p, q, layout.size().min(size));
                self.dealloc(p, layout);
            }
            return q;
        }
        let q = System.realloc(p, layout, size);
        advise(q, size);
        q
    }
}

/// Keeps freed blocks in the process for reuse, for loops that free and allocate the same
/// blocks over and over, as training steps do: the allocator otherwise maps them afresh and
/// hands them back, and the kernel zeroes every page again on its first touch. Blocks of up to
/// 32 MiB stay with glibc (`M_MMAP_THRESHOLD` at its 32 MiB ceiling, `M_TRIM_THRESHOLD` off);
/// larger ones, which glibc always maps, stay with [`Allocator`] (the last 16 freed, at most
/// 2 GiB, each reused for a block of the same size). Returns whether glibc took its settings
/// (false off glibc). `converse finetune` calls it.
pub fn keep_freed_blocks() -> bool {
    KEEP.store(true, Ordering::Relaxed);
    KEEP_ALL.store(true, Ordering::Relaxed);
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

    /// The field `name` of the mapping holding `p`, from `/proc/self/smaps`.
    #[cfg(target_os = "linux")]
    fn smaps_field(p: usize, name: &str) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let range = line
                .split_whitespace()
                .next()
                .and_then(|r| r.split_once('-'));
            if let Some((a, b)) = range {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = (a..b).contains(&p);
                    continue;
                }
            }
            if inside {
                if let Some(value) = line.strip_prefix(name).and_then(|l| l.strip_prefix(':')) {
                    return Some(value.trim().to_owned());
                }
            }
        }
        None
    }

    /// The `VmFlags` of the mapping holding `p`.
    #[cfg(target_os = "linux")]
    fn vm_flags(p: usize) -> Option<String> {
        smaps_field(p, "VmFlags")
    }

    /// The pages of the mapping holding `p` backed by memory of their own, in KiB (`Rss`,
    /// which does not count the shared zero page).
    #[cfg(target_os = "linux")]
    fn rss_kib(p: usize) -> Option<usize> {
        smaps_field(p, "Rss")?
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_takes_the_settings() {
        assert!(keep_freed_blocks());
    }

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 64).unwrap()
    }

    /// The kept blocks: at most [`KEPT_BLOCKS`] and [`KEPT_BYTES`], the oldest handed back
    /// first, a block over the cap kept alone, and a block taken out only for its exact layout.
    #[test]
    fn kept_blocks_are_bounded_and_matched_exactly() {
        let mut kept = Kept::EMPTY;
        let size = KEPT_FROM + 4096;
        for i in 0..KEPT_BLOCKS {
            let (_, n) = kept.keep((0x1000 * (i + 1)) as *mut u8, layout(size));
            assert_eq!(n, 0);
        }
        let (out, n) = kept.keep(0xff000 as *mut u8, layout(size));
        assert_eq!((n, out[0].0), (1, 0x1000), "the oldest goes first");
        // Bytes: a block of half the cap hands back the oldest until it fits.
        let (_, n) = kept.keep(0xdd000 as *mut u8, layout(KEPT_BYTES / 2));
        let kept_bytes = kept.bytes();
        assert!(n > 0 && kept_bytes <= KEPT_BYTES, "{n} {kept_bytes}");
        assert_eq!(kept.take(layout(size + 1)), None);
        assert_eq!(kept.take(Layout::from_size_align(size, 8).unwrap()), None);
        assert_eq!(kept.take(layout(KEPT_BYTES / 2)), Some(0xdd000 as *mut u8));
        assert_eq!(
            kept.take(layout(size)),
            Some(0xff000 as *mut u8),
            "the newest first"
        );
        // A block over the cap hands back all the others and is kept alone.
        let before = kept.len;
        let (out, n) = kept.keep(0xee000 as *mut u8, layout(KEPT_BYTES + 1));
        assert_eq!((n, kept.len), (before, 1));
        assert!(out[..n].iter().all(|b| b.0 != 0xee000));
        assert_eq!(kept.take(layout(KEPT_BYTES + 1)), Some(0xee000 as *mut u8));
    }

    #[test]
    fn a_miss_drains_the_kept_blocks_when_asked() {
        let mut kept = Kept::EMPTY;
        kept.keep(0x1000 as *mut u8, layout(KEPT_FROM));
        kept.keep(0x2000 as *mut u8, layout(2 * KEPT_FROM));
        let miss = layout(3 * KEPT_FROM);
        let mut out = [(0, 0, 0); KEPT_BLOCKS + 1];
        assert_eq!(kept.take_or_drain(miss, false, &mut out), Err(0));
        assert_eq!(kept.len, 2, "a miss alone takes nothing out");
        assert_eq!(kept.take_or_drain(miss, true, &mut out), Err(2));
        assert_eq!(kept.len, 0);
        assert_eq!([out[0].0, out[1].0], [0x1000, 0x2000]);
        kept.keep(0x3000 as *mut u8, layout(KEPT_FROM));
        let hit = kept.take_or_drain(layout(KEPT_FROM), true, &mut out);
        assert_eq!(hit, Ok(0x3000 as *mut u8));
    }

    /// Once blocks are kept, a freed large block is handed out again for the same layout (a
    /// zeroed one is mapped afresh instead).
    #[cfg(target_os = "linux")]
    #[test]
    fn freed_large_blocks_are_reused() {
        keep_freed_blocks();
        let a = Allocator;
        // A size no other test allocates.
        let layout = Layout::from_size_align(KEPT_FROM + 3 * 4096 + 64, 64).unwrap();
        // SAFETY: every block is freed with its own layout.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            std::ptr::write_bytes(p, 7, layout.size());
            a.dealloc(p, layout);
            let q = a.alloc(layout);
            assert_eq!(q, p);
            a.dealloc(q, layout);
        }
    }

    /// A large zeroed block is a fresh mapping: it reads as zeros without taking memory, keeps
    /// what is written, survives a `realloc` and is unmapped when freed.
    #[cfg(target_os = "linux")]
    #[test]
    fn large_zeroed_blocks_are_fresh_zero_pages() {
        let a = Allocator;
        // A size no other test allocates.
        let layout = Layout::from_size_align(2 * ZERO_MAPPED_FROM + 5 * 4096 + 12, 4).unwrap();
        // SAFETY: every block is freed with its own layout.
        unsafe {
            let p = a.alloc_zeroed(layout);
            assert!(!p.is_null());
            assert_eq!(p as usize % HUGE_PAGE, 0, "2 MiB-aligned");
            assert!(MAPPED.lock().unwrap().contains(&(p as usize)));
            let block = std::slice::from_raw_parts_mut(p, layout.size());
            assert!(block.iter().all(|&b| b == 0));
            let rss = rss_kib(p as usize).expect("the block's mapping in smaps");
            assert!(rss < 4096, "reading zeros took {rss} KiB");
            block[..4096]
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = i as u8);
            *block.last_mut().unwrap() = 9;
            let bigger = layout.size() + LARGE;
            let q = a.realloc(p, layout, bigger);
            assert!(!MAPPED.lock().unwrap().contains(&(p as usize)), "unmapped");
            let block = std::slice::from_raw_parts(q, layout.size());
            assert!(block[..4096].iter().enumerate().all(|(i, &b)| b == i as u8));
            assert!(block[4096..layout.size() - 1].iter().all(|&b| b == 0));
            assert_eq!(block[layout.size() - 1], 9);
            a.dealloc(q, Layout::from_size_align(bigger, 4).unwrap());
            let p = a.alloc_zeroed(layout);
            a.dealloc(p, layout);
            assert!(!MAPPED.lock().unwrap().contains(&(p as usize)));
            assert_eq!(rss_kib(p as usize), None, "unmapped");
        }
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
