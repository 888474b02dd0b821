//! A global allocator for training on the CPU: large blocks come from their own anonymous
//! mappings and are kept for reuse when freed (the largest on transparent huge pages).
//!
//! Why: a training step allocates and frees hundreds of MB of activations and gradients. With
//! glibc's malloc these are mapped and unmapped, or its heap grows, and each first touch of a
//! page is a fault plus zeroing in the kernel: on this project's VMs ~8 µs per 4 KiB page,
//! 10–20% of a GPT-2 step. Reusing freed blocks of the same size removes those faults from
//! every step after the first (a GPT-2 step at 512 tokens: 75k–150k faults → ~0–200).
//! Small allocations go to the system allocator unchanged.
//!
//! Install it in a binary with
//! `#[global_allocator] static ALLOC: lm::alloc::BlockCache = lm::alloc::BlockCache;`.
//! Linux only; elsewhere every allocation goes to the system allocator.

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks of at least this many bytes are mapped and cached; smaller ones go to `System`.
const LARGE: usize = 1 << 20;
/// Blocks are rounded to this granularity (a size class)...
const GRANULE: usize = 64 << 10;
/// ...except blocks of at least this many bytes, which are rounded to and aligned on the huge
/// page size and advised to use huge pages.
const HUGE: usize = 4 << 20;
const HUGE_PAGE: usize = 2 << 20;

/// The allocator: see the module documentation.
pub struct BlockCache;

#[cfg(target_os = "linux")]
mod imp {
    use super::{GRANULE, HUGE, HUGE_PAGE};
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// Freed blocks by size (address and the tick it was freed at, oldest first), and the
    /// byte counts that bound the cache.
    pub struct Cache {
        free: BTreeMap<usize, Vec<(usize, u64)>>,
        tick: u64,
        /// Bytes in blocks handed out (by their rounded size).
        live: usize,
        /// Bytes in freed blocks kept for reuse.
        cached: usize,
        /// The most bytes that were ever live at once.
        peak_live: usize,
    }

    pub static CACHE: Mutex<Cache> =
        Mutex::new(Cache { free: BTreeMap::new(), tick: 0, live: 0, cached: 0, peak_live: 0 });

    pub fn round(size: usize) -> usize {
        let unit = if size >= HUGE { HUGE_PAGE } else { GRANULE };
        size.div_ceil(unit) * unit
    }

    /// A cached block of exactly `size` bytes (rounded), if one is free.
    pub fn take(size: usize) -> Option<*mut u8> {
        let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        let (ptr, _) = c.free.get_mut(&size)?.pop()?;
        if c.free[&size].is_empty() {
            c.free.remove(&size);
        }
        c.cached -= size;
        c.live += size;
        c.peak_live = c.peak_live.max(c.live);
        Some(ptr as *mut u8)
    }

    /// Maps a new block of `size` bytes (rounded). Before mapping, releases the longest-unused
    /// cached blocks until live + cached + size is within 5/4 of the peak live bytes (or
    /// live + size, if more): the cache never holds much more than the program has needed at
    /// once, and the blocks that each training step reuses stay.
    pub fn map(size: usize) -> *mut u8 {
        let mut release = Vec::new();
        {
            let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
            let budget = (c.peak_live + c.peak_live / 4).max(c.live + size);
            while c.live + c.cached + size > budget {
                let oldest = c.free.iter().min_by_key(|(_, list)| list[0].1).map(|(&bsize, _)| bsize);
                let Some(bsize) = oldest else { break };
                let list = c.free.get_mut(&bsize).expect("just found");
                let (p, _) = list.remove(0);
                if list.is_empty() {
                    c.free.remove(&bsize);
                }
                c.cached -= bsize;
                release.push((p, bsize));
            }
            c.live += size;
            c.peak_live = c.peak_live.max(c.live);
        }
        for (p, bsize) in release {
            // SAFETY: p was mapped by `map` with length bsize and is no longer handed out.
            unsafe { libc::munmap(p as *mut libc::c_void, bsize) };
        }
        // Huge blocks: over-map by one huge page, then trim both ends to a 2 MiB-aligned block.
        let huge = size >= HUGE;
        let len = if huge { size + HUGE_PAGE } else { size };
        // SAFETY: an anonymous private mapping; failure is checked.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
            c.live -= size;
            return std::ptr::null_mut();
        }
        if !huge {
            return raw as *mut u8;
        }
        let start = raw as usize;
        let aligned = start.div_ceil(HUGE_PAGE) * HUGE_PAGE;
        // SAFETY: both trimmed ranges lie inside the mapping just made.
        unsafe {
            if aligned > start {
                libc::munmap(raw, aligned - start);
            }
            let tail = start + len - (aligned + size);
            if tail > 0 {
                libc::munmap((aligned + size) as *mut libc::c_void, tail);
            }
            libc::madvise(aligned as *mut libc::c_void, size, libc::MADV_HUGEPAGE);
        }
        aligned as *mut u8
    }

    /// Keeps a freed block of `size` bytes (rounded) for reuse.
    pub fn give_back(ptr: *mut u8, size: usize) {
        let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        c.live -= size;
        c.cached += size;
        c.tick += 1;
        let tick = c.tick;
        c.free.entry(size).or_default().push((ptr as usize, tick));
    }
}

fn is_large(layout: &Layout) -> bool {
    // Mappings are page-aligned (4 KiB at least); larger alignments go to `System`.
    cfg!(target_os = "linux") && layout.size() >= LARGE && layout.align() <= 4096
}

// SAFETY: large blocks are distinct mappings (or cached ones no longer handed out) of at least
// the requested size, page-aligned; everything else is the system allocator's.
unsafe impl GlobalAlloc for BlockCache {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        #[cfg(target_os = "linux")]
        if is_large(&layout) {
            let size = imp::round(layout.size());
            return imp::take(size).unwrap_or_else(|| imp::map(size));
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        #[cfg(target_os = "linux")]
        if is_large(&layout) {
            let size = imp::round(layout.size());
            return match imp::take(size) {
                Some(p) => {
                    std::ptr::write_bytes(p, 0, layout.size());
                    p
                }
                // A fresh anonymous mapping reads as zeros.
                None => imp::map(size),
            };
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        #[cfg(target_os = "linux")]
        if is_large(&layout) {
            imp::give_back(ptr, imp::round(layout.size()));
            return;
        }
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        #[cfg(target_os = "linux")]
        if is_large(&layout) && is_large(&new_layout) && imp::round(layout.size()) == imp::round(new_size) {
            return ptr;
        }
        if !is_large(&layout) && !is_large(&new_layout) {
            return System.realloc(ptr, layout, new_size);
        }
        let new = self.alloc(new_layout);
        if !new.is_null() {
            std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            self.dealloc(ptr, layout);
        }
        new
    }
}

/// Keeps freed malloc memory in the process (glibc: no mmap, no trimming), so that the blocks
/// below `BlockCache`'s threshold (and, in programs without it, all blocks) that each
/// training step allocates and frees are reused instead of being returned to the kernel and
/// zero-faulted back in on the next step. Process-wide; applied once, on Linux/glibc only.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: mallopt only changes glibc's allocation policy.
        ONCE.call_once(|| unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        });
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn large_blocks_are_reused_zeroed_and_kept_on_realloc() {
        let a = BlockCache;
        let layout = Layout::from_size_align(5 << 20, 4).unwrap();
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            assert_eq!(p as usize % HUGE_PAGE, 0, "huge blocks are 2 MiB-aligned");
            std::ptr::write_bytes(p, 7, layout.size());
            a.dealloc(p, layout);
            // The same size class comes back from the cache, and zeroed when asked.
            let q = a.alloc_zeroed(layout);
            assert_eq!(q, p);
            assert!(std::slice::from_raw_parts(q, layout.size()).iter().all(|&b| b == 0));
            std::ptr::write_bytes(q, 3, layout.size());
            // Growing within the rounded size keeps the block; growing past it copies.
            let r = a.realloc(q, layout, layout.size() + 1000);
            assert_eq!(r, q);
            let grown = Layout::from_size_align(layout.size() + 1000, 4).unwrap();
            let s = a.realloc(r, grown, 9 << 20);
            assert!(std::slice::from_raw_parts(s, layout.size()).iter().all(|&b| b == 3));
            a.dealloc(s, Layout::from_size_align(9 << 20, 4).unwrap());
            // Small allocations are the system allocator's.
            let small = Layout::from_size_align(4096, 8).unwrap();
            let t = a.alloc(small);
            *t = 1;
            a.dealloc(t, small);
        }
    }
}
