//! Parsing a packet must not allocate: a counting global allocator proves it for the
//! captured nginx packet (one test in this binary, so no other thread allocates).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` unchanged; the counter has no effect on
// the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn parse_iterate_and_look_up_without_allocating() {
    let wire = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/nginx_get.bin"
    ))
    .unwrap();
    let limits = uwsgi_proto::Limits::new();
    let before = ALLOCS.load(Ordering::SeqCst);
    let (packet, _) = uwsgi_proto::parse_packet(&wire, &limits).unwrap().unwrap();
    let vars = packet.vars_with(&limits).unwrap();
    let mut total = 0;
    for (k, v) in vars {
        total += k.len() + v.len();
    }
    let path = vars.get(b"PATH_INFO");
    let length = vars.content_length().unwrap();
    let after = ALLOCS.load(Ordering::SeqCst);
    assert_eq!(after - before, 0, "allocations during parse");
    assert!(total > 0 && path.is_some() && length == 0);
}
