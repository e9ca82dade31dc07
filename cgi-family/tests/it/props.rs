//! proptest properties for every codec: round trips, arbitrary bytes never panic, and any
//! split of the input decodes the same.

use bytes::{Bytes, BytesMut};
use cgi_family::fastcgi::{self, Event, Params, RecordType};
use cgi_family::fuzzing::{
    fastcgi_events, fuzz_cgi_head, fuzz_fastcgi_params, fuzz_fastcgi_stream, fuzz_scgi,
};
use cgi_family::scgi::{self, ScgiDecoder, ScgiLimits};
use cgi_family::{Env, HeadOptions, parse_response_head};
use proptest::collection::vec;
use proptest::prelude::*;

fn env_pairs() -> impl Strategy<Value = Vec<(Vec<u8>, Vec<u8>)>> {
    // Long values cross the 127-byte boundary of FastCGI's 1- vs 4-byte lengths.
    vec(
        (
            vec(any::<u8>(), 1..20),
            prop_oneof![vec(any::<u8>(), 0..40), vec(any::<u8>(), 120..400)],
        ),
        0..16,
    )
}

fn to_env(pairs: &[(Vec<u8>, Vec<u8>)]) -> Env {
    pairs
        .iter()
        .map(|(k, v)| (Bytes::from(k.clone()), Bytes::from(v.clone())))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn fastcgi_params_round_trip(pairs in env_pairs()) {
        let env = to_env(&pairs);
        let mut stream = Vec::new();
        fastcgi::encode_params(&env, &mut stream).unwrap();
        prop_assert_eq!(fastcgi::decode_params(&Bytes::from(stream)).unwrap(), env);
    }

    #[test]
    fn fastcgi_request_any_split_and_any_record_size(
        pairs in env_pairs(), body in vec(any::<u8>(), 0..300),
        pieces in vec(1usize..50, 1..6), record in 1usize..40,
    ) {
        let env = to_env(&pairs);
        // PARAMS cut into tiny records, so pairs straddle record boundaries.
        let mut stream = Vec::new();
        fastcgi::encode_params(&env, &mut stream).unwrap();
        let mut wire = BytesMut::new();
        fastcgi::encode_begin_request(7, fastcgi::Role::RESPONDER, false, &mut wire);
        for chunk in stream.chunks(record) {
            fastcgi::encode_record(RecordType::PARAMS, 7, chunk, &mut wire).unwrap();
        }
        fastcgi::encode_record(RecordType::PARAMS, 7, &[], &mut wire).unwrap();
        fastcgi::encode_stream(RecordType::STDIN, 7, &body, &mut wire).unwrap();
        fastcgi::encode_record(RecordType::STDIN, 7, &[], &mut wire).unwrap();
        let events = fastcgi_events(&wire, &pieces).unwrap();
        let mut expect = vec![Event::Request { id: 7, role: fastcgi::Role::RESPONDER, keep_conn: false, env }];
        if !body.is_empty() {
            expect.push(Event::Stdin { id: 7, data: Bytes::from(body) });
        }
        expect.push(Event::StdinEnd { id: 7 });
        prop_assert_eq!(events, expect);
    }

    #[test]
    fn scgi_round_trip_any_split(pairs in vec((vec(1u8..=255, 1..12), vec(1u8..=255, 0..30)), 0..12),
                                 body_len in 0usize..100, pieces in vec(1usize..30, 1..5)) {
        let mut env = Env::new();
        env.push("CONTENT_LENGTH", body_len.to_string());
        env.push("SCGI", "1");
        for (k, v) in pairs {
            if env.get(&k).is_none() {
                env.push(k, v);
            }
        }
        let mut wire = Vec::new();
        scgi::encode_request(&env, &mut wire).unwrap();
        let head_len = wire.len();
        wire.extend(std::iter::repeat_n(b'b', body_len));
        wire.extend_from_slice(b"trailing");
        let shared = Bytes::copy_from_slice(&wire);
        let (h, used) = scgi::parse_header(&shared, &ScgiLimits::default()).unwrap().unwrap();
        prop_assert_eq!(used, head_len);
        prop_assert_eq!(h.to_env(&shared), env.clone());
        let mut dec = ScgiDecoder::new(ScgiLimits::default());
        let mut buf = BytesMut::new();
        let (mut got, mut body) = (None, Vec::new());
        let mut at = 0;
        for n in pieces.iter().cycle() {
            if at >= wire.len() { break; }
            let end = (at + n).min(wire.len());
            buf.extend_from_slice(&wire[at..end]);
            at = end;
            if got.is_none() {
                got = dec.decode_head(&mut buf).unwrap();
            }
            while let Some(b) = dec.decode_body(&mut buf) {
                body.extend_from_slice(&b);
            }
        }
        prop_assert_eq!(got.unwrap().into_env(), env);
        prop_assert_eq!(body.len(), body_len);
    }

    #[test]
    fn cgi_head_round_trip(headers in vec(("[A-Za-z][A-Za-z0-9-]{0,12}", "[ -~]{1,30}"), 1..8),
                           status in 100u16..600, crlf in any::<bool>()) {
        let nl = if crlf { "\r\n" } else { "\n" };
        let headers: Vec<(String, String)> = headers.into_iter()
            .filter(|(k, _)| !["status", "location", "content-type"].contains(&k.to_ascii_lowercase().as_str()))
            .map(|(k, v)| (k, v.trim().to_owned()))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        let mut text = format!("Status: {status} Some Reason{nl}");
        for (k, v) in &headers {
            text.push_str(&format!("{k}: {v}{nl}"));
        }
        text.push_str(nl);
        text.push_str("body");
        let (r, used) = parse_response_head(text.as_bytes(), &HeadOptions::default()).unwrap().unwrap();
        prop_assert_eq!(r.status, status);
        prop_assert_eq!(&text[used..], "body");
        let got: Vec<(String, String)> = r.headers.iter()
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        prop_assert_eq!(got, headers);
    }

    /// The head taken out of a buffer (names and values sharing it) is the head parsed
    /// from a slice, however the bytes arrive; the rest stays in the buffer.
    #[test]
    fn decode_split_agrees_with_decode(data in vec(any::<u8>(), 0..200), head in "([A-Za-z-]{1,8}: [ -~]{0,12}\r?\n){0,5}\r?\n", cut in any::<prop::sample::Index>()) {
        for input in [data.clone(), [head.as_bytes(), &data].concat()] {
            let opts = HeadOptions::default();
            let mut whole = cgi_family::ResponseHeadDecoder::new(opts);
            let expected = whole.decode(&input);
            let mut split = cgi_family::ResponseHeadDecoder::new(opts);
            let mut buf = BytesMut::new();
            let at = cut.index(input.len() + 1);
            let mut got = None;
            let mut received = 0;
            for piece in [&input[..at], &input[at..]] {
                buf.extend_from_slice(piece);
                received += piece.len();
                match split.decode_split(&mut buf) {
                    Ok(None) => {}
                    r => {
                        got = Some(r);
                        break;
                    }
                }
            }
            match (expected, got) {
                (Ok(None), None) => prop_assert_eq!(&buf[..], &input[..]),
                (Ok(Some((r, used))), Some(Ok(Some(g)))) => {
                    prop_assert_eq!(g, r);
                    prop_assert_eq!(&buf[..], &input[used..received]);
                }
                (Err(e), Some(Err(g))) => prop_assert_eq!(g, e),
                (e, g) => prop_assert!(false, "decode {:?}, decode_split {:?}", e, g),
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in vec(any::<u8>(), 0..400)) {
        for sel in [0u8, 1, 2, 3, 4, 5, 16, 33, 40] {
            let mut input = vec![sel];
            input.extend_from_slice(&data);
            fuzz_fastcgi_stream(&input);
            fuzz_scgi(&input);
            fuzz_cgi_head(&input);
        }
        fuzz_fastcgi_params(&data);
        let _ = Params::parse(&data);
    }

    #[test]
    fn structured_garbage_never_panics(kind in 0u8..12, id in 0u16..4, content in vec(any::<u8>(), 0..64), sel in any::<u8>()) {
        // Valid record framing around garbage content reaches the deeper states.
        let mut wire = vec![sel];
        let mut body = BytesMut::new();
        fastcgi::encode_begin_request(1, fastcgi::Role::RESPONDER, true, &mut body);
        fastcgi::encode_record(RecordType(kind), id, &content, &mut body).unwrap();
        fastcgi::encode_record(RecordType::PARAMS, 1, &content, &mut body).unwrap();
        fastcgi::encode_record(RecordType::PARAMS, 1, &[], &mut body).unwrap();
        wire.extend_from_slice(&body);
        fuzz_fastcgi_stream(&wire);
    }
}

/// A request with headers from a small set of names (so that some repeat, in other case or
/// with `_` for `-`) for the env writer's properties.
#[cfg(feature = "http")]
fn request_parts() -> impl Strategy<Value = http::request::Parts> {
    let names = prop::sample::select(vec![
        "Host",
        "host",
        "Cookie",
        "X-A",
        "x-a",
        "X_A",
        "Content-Type",
        "Content-Length",
        "Accept",
        "Authorization",
        "Proxy",
    ]);
    (
        prop::sample::select(vec!["GET", "POST", "HEAD", "PROPFIND"]),
        "/[a-z]{1,3}(/[a-zA-Z0-9._~-]{0,5}|/%41|/\\.\\.|//){0,3}(\\?[a-z=&]{0,8})?",
        vec((names, "[!-~]{0,10}"), 0..10),
    )
        .prop_map(|(method, target, headers)| {
            let mut req = http::Request::builder().method(method).uri(target);
            for (n, v) in headers {
                req = req.header(n, v);
            }
            req.body(()).unwrap().into_parts().0
        })
}

#[cfg(feature = "http")]
proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// One env, three ways: collected from the request parts in place, from a copied
    /// `RequestHead`, and written straight into a uwsgi packet: the same vars in the same
    /// order (or the same path error).
    #[test]
    fn env_from_parts_head_and_packet_agree(
        parts in request_parts(),
        flavor in prop::sample::select(vec![
            cgi_family::Flavor::Uwsgi, cgi_family::Flavor::FastCgi, cgi_family::Flavor::Scgi,
            cgi_family::Flavor::Cgi, cgi_family::Flavor::Wsgi,
        ]),
        params in vec((prop::sample::select(vec![
            "HTTP_X_A", "HTTP_PROXY", "SERVER_NAME", "HTTPS", "X_EXTRA", "DOCUMENT_ROOT",
            "HTTP_HOST", "SCRIPT_NAME",
        ]), "[a-z]{0,3}"), 0..5),
        builder_param in proptest::option::of("[a-z]{0,3}"),
        underscores in any::<bool>(),
        https in any::<bool>(),
        mount in proptest::option::of(prop::sample::select(vec!["/a", "/A/"])),
        length in proptest::option::of(0u64..100_000),
    ) {
        let mut b = cgi_family::EnvBuilder::new(flavor)
            .underscores_in_headers(underscores)
            .https(https)
            .content_length(length)
            .peer("10.1.2.3:4567".parse().unwrap())
            .server_name("example.org");
        if let Some(m) = mount {
            b = b.mount(m);
        }
        if let Some(v) = builder_param {
            b = b.param("HTTP_ACCEPT", v);
        }
        let params: Vec<(Bytes, Bytes)> = params
            .into_iter()
            .map(|(k, v)| (Bytes::from(k), Bytes::from(v)))
            .collect();
        let in_place = b.build_with(&parts, &params);
        let copied = b.build_with(&cgi_family::RequestHead::from_http(&parts), &params);
        prop_assert_eq!(&in_place, &copied);
        let mut packet = Vec::new();
        let mut p = uwsgi_proto::PacketBuilder::new(&mut packet);
        let written = b.write(&parts, &params, &mut p);
        match in_place {
            Ok(env) => {
                prop_assert!(written.is_ok());
                let size = p.finish();
                let mut expected = Vec::new();
                env.encode_uwsgi(
                    uwsgi_proto::Modifier1::WSGI,
                    uwsgi_proto::Modifier2::ZERO,
                    65535,
                    &mut expected,
                )
                .unwrap();
                prop_assert_eq!(&packet[..size], &expected[..]);
                // Repeated names never reach the wire: one var per header name.
                let http_vars: Vec<&[u8]> =
                    env.iter().map(|(k, _)| k).filter(|k| k.starts_with(b"HTTP_")).collect();
                let mut distinct = http_vars.clone();
                distinct.sort();
                distinct.dedup();
                prop_assert_eq!(distinct.len(), http_vars.len());
            }
            Err(e) => prop_assert_eq!(written, Err(cgi_family::WriteError::Path(e))),
        }
    }
}
