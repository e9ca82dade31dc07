//! criterion benches for uwsgi-proto: parse, iterate, look up, encode, stream-decode a
//! realistic nginx packet. Throughput is reported in bytes/s of wire data.

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use uwsgi_proto::{
    Limits, Modifier1, Modifier2, PacketBuilder, RequestDecoder, Vars, encode_packet, parse_packet,
};

fn packet() -> Vec<u8> {
    let mut wire = Vec::new();
    encode_packet(
        Modifier1::WSGI,
        Modifier2::ZERO,
        &benches::nginx_browser_vars(),
        65535,
        &mut wire,
    )
    .expect("encodes");
    wire
}

fn bench(c: &mut Criterion) {
    let wire = packet();
    let vars = benches::nginx_browser_vars();
    let limits = Limits::new();
    let mut g = c.benchmark_group("uwsgi_proto");
    g.throughput(Throughput::Bytes(wire.len() as u64));

    g.bench_function("parse_packet+vars (validate, lookup-ready)", |b| {
        b.iter(|| {
            let (p, _) = parse_packet(black_box(&wire), &limits).unwrap().unwrap();
            black_box(p.vars_with(&limits).unwrap())
        })
    });
    g.bench_function("parse+get PATH_INFO,HTTP_HOST,CONTENT_LENGTH", |b| {
        b.iter(|| {
            let (p, _) = parse_packet(black_box(&wire), &limits).unwrap().unwrap();
            let v = p.vars_with(&limits).unwrap();
            black_box((v.get(b"PATH_INFO"), v.get(b"HTTP_HOST"), v.content_length()))
        })
    });
    let parsed = Vars::parse(&wire[4..]).unwrap();
    g.bench_function("iterate vars", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for (k, v) in black_box(parsed) {
                n += k.len() + v.len();
            }
            black_box(n)
        })
    });
    g.bench_function("incremental decoder (one buffer)", |b| {
        let mut dec = RequestDecoder::new(limits);
        b.iter(|| {
            dec.reset();
            let mut buf = BytesMut::from(black_box(&wire[..]));
            black_box(dec.decode_head(&mut buf).unwrap().unwrap())
        })
    });
    let mut out = Vec::with_capacity(2048);
    g.bench_function("encode_packet (slice of pairs)", |b| {
        b.iter(|| {
            out.clear();
            black_box(
                encode_packet(
                    Modifier1::WSGI,
                    Modifier2::ZERO,
                    black_box(&vars),
                    65535,
                    &mut out,
                )
                .unwrap(),
            )
        })
    });
    g.bench_function("PacketBuilder (one var at a time)", |b| {
        b.iter(|| {
            out.clear();
            let mut p = PacketBuilder::new(&mut out);
            for (k, v) in black_box(&vars) {
                p.var(k.as_bytes(), v.as_bytes()).unwrap();
            }
            black_box(p.finish())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
