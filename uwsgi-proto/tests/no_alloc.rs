//! Parsing a packet must not allocate: a counting global allocator proves it for the
//! captured nginx packet (one test in this binary, so no other thread allocates).

#[global_allocator]
static GLOBAL: testkit::CountingAlloc = testkit::CountingAlloc::new();

#[test]
fn parse_iterate_and_look_up_without_allocating() {
    let wire = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/nginx_get.bin"
    ))
    .unwrap();
    let limits = uwsgi_proto::Limits::new();
    let before = GLOBAL.count();
    let (packet, _) = uwsgi_proto::parse_packet(&wire, &limits).unwrap().unwrap();
    let vars = packet.vars_with(&limits).unwrap();
    let mut total = 0;
    for (k, v) in vars {
        total += k.len() + v.len();
    }
    let path = vars.get(b"PATH_INFO");
    let length = vars.content_length().unwrap();
    let after = GLOBAL.count();
    assert_eq!(after - before, 0, "allocations during parse");
    assert!(total > 0 && path.is_some() && length == 0);
}
