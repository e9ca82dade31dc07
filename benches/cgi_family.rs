//! criterion benches for cgi-family: decoding and encoding a realistic FastCGI request
//! (nginx's fastcgi_params plus ten browser headers) and SCGI header, and building the
//! env from an HTTP head. Throughput is in bytes/s of wire data.

use bytes::{Bytes, BytesMut};
use cgi_family::fastcgi::{self, Params, ServerConfig, ServerConnection};
use cgi_family::scgi::{self, ScgiLimits};
use cgi_family::{Flavor, HeadOptions, parse_response_head};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let fenv = benches::browser_env(Flavor::FastCgi);
    let mut stream = Vec::new();
    fastcgi::encode_params(&fenv, &mut stream).unwrap();
    let mut request = BytesMut::new();
    fastcgi::encode_request(1, true, &fenv, b"", &mut request).unwrap();
    let request = request.freeze();

    let mut g = c.benchmark_group("fastcgi");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("params: validate (no allocation)", |b| {
        b.iter(|| black_box(Params::parse(black_box(&stream)).unwrap()))
    });
    g.bench_function("params: validate + 3 lookups", |b| {
        b.iter(|| {
            let p = Params::parse(black_box(&stream)).unwrap();
            black_box((
                p.get(b"SCRIPT_NAME"),
                p.get(b"HTTP_HOST"),
                p.get(b"CONTENT_LENGTH"),
            ))
        })
    });
    let mut out = Vec::with_capacity(4096);
    g.bench_function("params: encode", |b| {
        b.iter(|| {
            out.clear();
            black_box(fastcgi::encode_params(black_box(&fenv), &mut out).unwrap())
        })
    });
    g.throughput(Throughput::Bytes(request.len() as u64));
    g.bench_function(
        "request: application side to Env (records, shared bytes)",
        |b| {
            b.iter(|| {
                let mut conn = ServerConnection::new(ServerConfig::default());
                let mut src = BytesMut::from(&request[..]);
                black_box(conn.poll_event(&mut src).unwrap())
            })
        },
    );
    let mut out = BytesMut::with_capacity(4096);
    g.bench_function("request: encode (web-server side)", |b| {
        b.iter(|| {
            out.clear();
            fastcgi::encode_request(1, true, black_box(&fenv), b"", &mut out).unwrap();
            black_box(out.len())
        })
    });
    g.finish();

    let senv = benches::browser_env(Flavor::Scgi);
    let mut wire = Vec::new();
    scgi::encode_request(&senv, &mut wire).unwrap();
    let limits = ScgiLimits::default();
    let mut g = c.benchmark_group("scgi");
    g.throughput(Throughput::Bytes(wire.len() as u64));
    g.bench_function("header: validate (no allocation)", |b| {
        b.iter(|| black_box(scgi::parse_header(black_box(&wire), &limits).unwrap()))
    });
    let shared = Bytes::from(wire.clone());
    g.bench_function("header: decode to Env (shared bytes)", |b| {
        b.iter(|| {
            let (h, _) = scgi::parse_header(black_box(&shared), &limits)
                .unwrap()
                .unwrap();
            black_box(h.to_env(&shared))
        })
    });
    let mut out = Vec::with_capacity(4096);
    g.bench_function("header: encode", |b| {
        b.iter(|| {
            out.clear();
            black_box(scgi::encode_request(black_box(&senv), &mut out).unwrap())
        })
    });
    g.finish();

    let mut g = c.benchmark_group("cgi");
    let head = benches::browser_head();
    g.bench_function("EnvBuilder: uwsgi_params env from an HTTP head", |b| {
        let builder = cgi_family::EnvBuilder::new(Flavor::Uwsgi)
            .peer("203.0.113.7:52814".parse().unwrap())
            .local("192.0.2.1:80".parse().unwrap())
            .server_name("example.com");
        b.iter(|| black_box(builder.build(black_box(&head)).unwrap()))
    });
    // What the front sends per request: the env as a uwsgi packet, made two ways.
    let builder = cgi_family::EnvBuilder::new(Flavor::Uwsgi)
        .peer("203.0.113.7:52814".parse().unwrap())
        .local("192.0.2.1:80".parse().unwrap())
        .server_name("example.com");
    let mut packet = Vec::with_capacity(4096);
    g.bench_function("uwsgi packet: build an Env, then encode it", |b| {
        b.iter(|| {
            packet.clear();
            let env = builder.build(black_box(&head)).unwrap();
            let modifiers = (uwsgi_proto::Modifier1::WSGI, uwsgi_proto::Modifier2::ZERO);
            black_box(
                env.encode_uwsgi(modifiers.0, modifiers.1, 65535, &mut packet)
                    .unwrap(),
            )
        })
    });
    g.bench_function(
        "uwsgi packet: write the env straight in (EnvBuilder::write)",
        |b| {
            b.iter(|| {
                packet.clear();
                let mut p = uwsgi_proto::PacketBuilder::new(&mut packet);
                builder.write(black_box(&head), &[], &mut p).unwrap();
                black_box(p.finish())
            })
        },
    );
    let resp =
        b"Status: 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nX-Frame-Options: DENY\r\n\
                 Vary: Cookie\r\nContent-Length: 1234\r\nSet-Cookie: csrftoken=abc; Path=/\r\n\r\n";
    g.throughput(Throughput::Bytes(resp.len() as u64));
    g.bench_function("response head: parse", |b| {
        b.iter(|| black_box(parse_response_head(black_box(resp), &HeadOptions::default()).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
