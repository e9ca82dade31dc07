//! Decoding FastCGI params and the SCGI header must not allocate: a counting global
//! allocator proves it on the packets captured from nginx (one test in this binary).

#[global_allocator]
static GLOBAL: testkit::CountingAlloc = testkit::CountingAlloc::new();

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
    let before = GLOBAL.count();
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
    let after = GLOBAL.count();
    assert_eq!(after - before, 0, "allocations during decode");
    assert!(n > 15 && host.is_some() && m > 10 && uri.is_some());
}
