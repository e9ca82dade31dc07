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

/// glibc's `malloc` (which Python's objects of more than 512 bytes come from) keeps up
/// to 2 MiB free at the top of each heap before giving memory back, and serves blocks
/// below 1 MiB from its heaps: the state glibc itself reaches once a block of 1 MiB has
/// been freed (its dynamic thresholds), set from the start. With its defaults (128 KiB
/// each) a Python thread answering 64 KiB POSTs gave its heap top back to the kernel
/// every few requests (`madvise`) and faulted the pages in again: about four page
/// faults per request and a third of its CPU; 64 KiB echo 10.4-13.0k -> 14.9-19.8k
/// req/s. The resident memory of hello world and Django pages did not change; that of
/// the 64 KiB echo grew by about 3.5 MB.
///
/// It also keeps glibc to one heap (`M_ARENA_MAX`): Python's threads allocate while
/// they hold the GIL, one at a time, so a heap of their own per thread (glibc's default)
/// spares them no waiting and only keeps one more free top each. The 64 KiB echo with
/// two threads: 22.5 -> 21.7 MB resident, requests/s level (alternating runs).
///
/// `MALLOC_TRIM_THRESHOLD_`, `MALLOC_MMAP_THRESHOLD_` or `MALLOC_ARENA_MAX` in the
/// environment (glibc's own knobs) leave glibc as they set it. Call it before any thread
/// exists; returns whether glibc took the settings.
pub fn tune_libc_malloc() -> bool {
    let user_set = [
        "MALLOC_TRIM_THRESHOLD_",
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_ARENA_MAX",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some());
    !user_set && set_libc_thresholds(2 << 20, 1 << 20) && set_libc_heaps(1)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_libc_thresholds(trim: i32, mmap: i32) -> bool {
    // SAFETY: `mallopt` only changes glibc's malloc parameters, under its own lock, and
    // checks the values it is given.
    unsafe {
        nix::libc::mallopt(nix::libc::M_TRIM_THRESHOLD, trim) == 1
            && nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, mmap) == 1
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_libc_heaps(most: i32) -> bool {
    // SAFETY: as above; the limit applies to heaps glibc creates from now on.
    unsafe { nix::libc::mallopt(nix::libc::M_ARENA_MAX, most) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_libc_thresholds(_trim: i32, _mmap: i32) -> bool {
    false
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_libc_heaps(_most: i32) -> bool {
    false
}

/// mimalloc's `mi_option_purge_delay` (its index in `mi_option_t`, the same in mimalloc 2
/// and 3; libmimalloc-sys names no constant for it).
const MI_OPTION_PURGE_DELAY: mi::mi_option_t = 15;

/// Has mimalloc give memory that fell free back to the kernel at once instead of after
/// its default delay (1 s in mimalloc 3, and only at a later call into it): for a process
/// that runs Python, whose resident memory is weighed against uWSGI's. The 64 KiB echo's
/// bodies and read buffers leave such memory behind every time a burst ends: about 22.9
/// -> 20.6-20.9 MB resident after a run; hello world, the 1 MiB stream and the Django
/// pages 0.3-0.6 MB less, their requests/s and CPU per request unchanged within the
/// spread of alternating runs. Not for the front (no Python): its 1 MiB static files
/// took about 10 % more CPU per request with it (freed 64 KiB blocks given back and
/// faulted in again). `MIMALLOC_PURGE_DELAY` in the environment (mimalloc's own knob)
/// leaves mimalloc as it sets it. Returns whether it set the option.
pub fn tune_mimalloc() -> bool {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return false;
    }
    set_purge_delay(0);
    true
}

fn set_purge_delay(ms: i64) {
    // SAFETY: `mi_option_set` stores a value in mimalloc's option table (atomically); it
    // takes any value for this option (negative: never purge).
    unsafe { mi::mi_option_set(MI_OPTION_PURGE_DELAY, ms as _) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Page faults of a thread that, 50 times, takes four 64 KiB blocks from glibc
    /// (writing them) and frees them, as a Python thread answering 64 KiB POSTs does.
    fn faults_of_64k_churn() -> i64 {
        std::thread::spawn(|| {
            use nix::sys::resource::{UsageWho, getrusage};
            let faults = || {
                getrusage(UsageWho::RUSAGE_THREAD)
                    .unwrap()
                    .minor_page_faults()
            };
            let before = faults();
            for _ in 0..50 {
                // SAFETY: plain malloc/free pairs; each block is written within its size.
                unsafe {
                    let blocks: Vec<*mut c_void> =
                        (0..4).map(|_| nix::libc::malloc(65536)).collect();
                    for &b in &blocks {
                        assert!(!b.is_null());
                        std::ptr::write_bytes(b.cast::<u8>(), 1, 65536);
                    }
                    for b in blocks {
                        nix::libc::free(b);
                    }
                }
            }
            faults() - before
        })
        .join()
        .unwrap()
    }

    #[test]
    fn glibc_keeps_its_heap_top_for_the_next_blocks() {
        // glibc's defaults: the 256 KiB freed at the top is given back every time.
        assert!(set_libc_thresholds(128 << 10, 128 << 10));
        let churn_default = faults_of_64k_churn();
        assert!(set_libc_thresholds(2 << 20, 1 << 20));
        let churn_tuned = faults_of_64k_churn();
        assert!(
            churn_default > 500 && churn_tuned < 200,
            "page faults: {churn_default} with glibc's defaults, {churn_tuned} tuned"
        );
    }

    /// How many heaps (arenas) glibc has, from its `malloc_info` report.
    fn libc_heaps() -> usize {
        let mut text: *mut nix::libc::c_char = std::ptr::null_mut();
        let mut len: nix::libc::size_t = 0;
        // SAFETY: `open_memstream` writes the buffer's address and length through the
        // two pointers, which outlive the stream; the buffer is read after `fclose`
        // (which finishes it, NUL-terminated) and then freed with `free`, as its manual
        // page asks.
        unsafe {
            let f = nix::libc::open_memstream(&mut text, &mut len);
            assert!(!f.is_null());
            assert_eq!(nix::libc::malloc_info(0, f), 0);
            nix::libc::fclose(f);
            let report = std::ffi::CStr::from_ptr(text)
                .to_string_lossy()
                .into_owned();
            nix::libc::free(text.cast());
            report.matches("<heap nr=").count()
        }
    }

    #[test]
    fn threads_started_after_the_tuning_share_glibcs_heaps() {
        assert!(set_libc_heaps(1));
        let before = libc_heaps();
        // Four threads allocating at the same time: with glibc's default limit (8 per
        // core) each would get a heap of its own.
        let go = std::sync::Arc::new(std::sync::Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let go = go.clone();
                std::thread::spawn(move || {
                    go.wait();
                    // SAFETY: a plain malloc/free pair, the block written within its size.
                    unsafe {
                        let b = nix::libc::malloc(4096);
                        assert!(!b.is_null());
                        std::ptr::write_bytes(b.cast::<u8>(), 1, 4096);
                        go.wait();
                        nix::libc::free(b);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(libc_heaps(), before, "new heaps for the new threads");
    }

    /// The process's resident memory in bytes (from /proc/self/statm).
    fn resident() -> i64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: i64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    /// Takes 16 MiB from mimalloc in 64 KiB blocks, writes them and frees them.
    fn churn() {
        // SAFETY: blocks from mimalloc, written within their size, freed once.
        unsafe {
            let blocks: Vec<*mut c_void> = (0..256).map(|_| mi::mi_malloc(65536)).collect();
            for &b in &blocks {
                assert!(!b.is_null());
                std::ptr::write_bytes(b.cast::<u8>(), 1, 65536);
            }
            for b in blocks {
                mi::mi_free(b);
            }
        }
    }

    #[test]
    fn mimalloc_gives_freed_memory_back_at_once() {
        let base = resident();
        set_purge_delay(-1);
        churn();
        let kept_never = resident() - base;
        set_purge_delay(0);
        churn();
        let kept_at_once = resident() - base;
        assert!(
            kept_never > 12 << 20 && kept_at_once < 4 << 20,
            "kept {kept_never} bytes without purging, {kept_at_once} with it at once"
        );
    }

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
