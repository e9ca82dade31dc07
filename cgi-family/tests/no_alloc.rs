//! Decoding FastCGI params and the SCGI header must not allocate: a counting global
//! allocator proves it on the packets captured from nginx (one test in this binary).

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

fn data(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn params_and_scgi_header_decode_without_allocating() {
    use cgi_family::fastcgi::{Params, RecordType, parse_record};
    let fcgi = data("nginx_fastcgi_get.bin");
    let scgi = data("nginx_scgi_post.bin");
    let limits = cgi_family::scgi::ScgiLimits {
        duplicates: cgi_family::scgi::Duplicates::Reject,
        ..Default::default()
    };
    let before = ALLOCS.load(Ordering::SeqCst);
    // BEGIN_REQUEST, then the PARAMS record nginx sends.
    let (_, used) = parse_record(&fcgi).unwrap().unwrap();
    let (params, _) = parse_record(&fcgi[used..]).unwrap().unwrap();
    assert_eq!(params.header.record_type, RecordType::PARAMS);
    let p = Params::parse(params.content).unwrap();
    let n = p.iter().count();
    let host = p.get(b"HTTP_HOST");
    let (h, _) = cgi_family::scgi::parse_header(&scgi, &limits)
        .unwrap()
        .unwrap();
    let m = h.iter().count();
    let uri = h.get(b"REQUEST_URI");
    let after = ALLOCS.load(Ordering::SeqCst);
    assert_eq!(after - before, 0, "allocations during decode");
    assert!(n > 15 && host.is_some() && m > 10 && uri.is_some());
}
