//! The global allocator the `gateway` binary ships with: mimalloc, called the way its
//! fast paths expect.
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOCATOR: gateway::alloc::Allocator = gateway::alloc::Allocator;
//! ```
//!
//! mimalloc serves the many small, short-lived allocations of a request (header maps,
//! futures, buffers) in a fraction of glibc's time; Python keeps its own allocator. It is
//! built without transparent huge pages, which cost each worker about 9 MB of resident
//! memory.
//!
//! Why not the `mimalloc` crate's `MiMalloc`: it calls `mi_malloc_aligned` for every
//! allocation. When a size class has no free block left, mimalloc 3's aligned entry
//! point only reuses the normal path for power-of-two sizes; every other size (24, 40,
//! 56 bytes: most Rust values) is over-allocated from a larger class instead, so the
//! pages of its own class never get blocks again and every later allocation of that size
//! takes the slow path. Under callgrind that path was two thirds of the allocations of a
//! `return 200` request, about 1,300 instructions of its 13,000. Every mimalloc block is
//! aligned to the machine word, so an alignment up to 8 needs no aligned call at all
//! (std's `System` allocator makes the same choice for `malloc`).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// Every block mimalloc hands out, of any size class, starts on a machine word.
const WORD: usize = size_of::<usize>();

/// mimalloc as a [`GlobalAlloc`], with the plain entry points for word-aligned layouts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allocator;

// SAFETY: every method forwards to mimalloc, which is thread-safe and returns either null
// or a block of at least `layout.size()` bytes. Alignment: for `layout.align() <= WORD`
// the plain calls suffice, because each mimalloc size class is a whole number of words
// and its blocks start on a word boundary (the smallest class is one word), so any block
// is aligned to every power of two up to the word size; larger alignments go to the
// `_aligned` calls, which guarantee the alignment they are given. `dealloc` and `realloc`
// receive only pointers from these methods (the `GlobalAlloc` contract), and `mi_free` /
// `mi_realloc*` accept any mimalloc pointer whichever entry point allocated it.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl comment.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl comment.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (the caller's contract).
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout` (the caller's contract);
        // the alignment argument follows the same rule as `alloc`.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_have_the_asked_alignment_and_keep_their_bytes() {
        let a = Allocator;
        let mut live = Vec::new();
        for size in [1usize, 3, 8, 24, 40, 56, 100, 1000, 5000, 70_000] {
            for align in [1usize, 2, 4, 8, 16, 64, 4096] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero-size layout; the block is freed below with it.
                let p = unsafe { a.alloc(layout) };
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0, "size {size} align {align}");
                // SAFETY: the block holds `size` bytes.
                unsafe { p.write_bytes(0xA5, size) };
                live.push((p, layout));
            }
        }
        for (p, layout) in live {
            // SAFETY: allocated above with `layout`, grown once, freed once.
            unsafe {
                let q = a.realloc(p, layout, layout.size() * 3);
                assert!(!q.is_null());
                assert_eq!(q as usize % layout.align(), 0);
                assert!((0..layout.size()).all(|i| *q.add(i) == 0xA5));
                let grown = Layout::from_size_align(layout.size() * 3, layout.align()).unwrap();
                a.dealloc(q, grown);
            }
        }
        let layout = Layout::from_size_align(256, 32).unwrap();
        // SAFETY: as above.
        unsafe {
            let z = a.alloc_zeroed(layout);
            assert_eq!(z as usize % 32, 0);
            assert!((0..256).all(|i| *z.add(i) == 0));
            a.dealloc(z, layout);
        }
    }
}
