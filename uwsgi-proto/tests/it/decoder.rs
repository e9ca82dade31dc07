//! The incremental decoder's behaviour on streams: limits, errors, bodies, persistence.

use bytes::BytesMut;
use uwsgi_proto::{
    Error, Limits, Modifier1, Modifier2, PacketHeader, RequestDecoder, encode_array_packet,
    encode_packet,
};

fn request(vars: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    encode_packet(Modifier1::WSGI, Modifier2::ZERO, vars, 65535, &mut wire).unwrap();
    wire.extend_from_slice(body);
    wire
}

#[test]
fn oversized_block_is_refused_from_the_header_alone() {
    let mut dec = RequestDecoder::new(Limits::new().max_block_size(4096));
    // Only the 4 header bytes are in: the decoder already knows.
    let mut buf = BytesMut::from(&[0u8, 0x88, 0x13, 0][..]); // datasize 5000
    assert_eq!(
        dec.decode_head(&mut buf),
        Err(Error::BlockTooLarge {
            size: 5000,
            limit: 4096
        })
    );
}

#[test]
fn body_limit_is_checked_before_the_body_arrives() {
    let wire = request(&[("CONTENT_LENGTH", "1048577")], b"");
    let mut dec = RequestDecoder::new(Limits::new().max_body(Some(1 << 20)));
    let mut buf = BytesMut::from(&wire[..]);
    assert_eq!(
        dec.decode_head(&mut buf),
        Err(Error::BodyTooLarge {
            length: 1_048_577,
            limit: 1 << 20
        })
    );
}

#[test]
fn garbage_content_length_is_an_error() {
    let wire = request(&[("CONTENT_LENGTH", "12abc")], b"");
    let mut buf = BytesMut::from(&wire[..]);
    assert_eq!(
        RequestDecoder::default().decode_head(&mut buf),
        Err(Error::InvalidContentLength)
    );
}

#[test]
fn never_hands_out_bytes_past_content_length() {
    let wire = request(&[("CONTENT_LENGTH", "5")], b"helloEXTRA BYTES");
    let mut dec = RequestDecoder::default();
    let mut buf = BytesMut::from(&wire[..]);
    let head = dec.decode_head(&mut buf).unwrap().unwrap();
    assert_eq!(head.content_length(), 5);
    assert_eq!(dec.body_remaining(), 5);
    assert_eq!(dec.decode_body(&mut buf).as_deref(), Some(&b"hello"[..]));
    assert_eq!(dec.decode_body(&mut buf), None);
    assert!(dec.is_done());
    assert_eq!(&buf[..], b"EXTRA BYTES");
}

#[test]
fn body_arrives_in_pieces() {
    let wire = request(&[("CONTENT_LENGTH", "10")], b"0123456789");
    let mut dec = RequestDecoder::default();
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut head = None;
    for piece in wire.chunks(3) {
        buf.extend_from_slice(piece);
        if head.is_none() {
            head = dec.decode_head(&mut buf).unwrap();
            if head.is_none() {
                assert_eq!(dec.body_remaining(), 0);
                continue;
            }
        }
        while let Some(c) = dec.decode_body(&mut buf) {
            body.extend_from_slice(&c);
        }
    }
    assert_eq!(body, b"0123456789");
    assert!(dec.is_done());
}

#[test]
fn ping_is_a_head_without_vars_check_or_body() {
    // `uwsgi --ping` sends {100, 0, 0}.
    let mut dec = RequestDecoder::default();
    let mut buf = BytesMut::from(&[100u8, 0, 0, 0][..]);
    let head = dec.decode_head(&mut buf).unwrap().unwrap();
    assert_eq!(
        head.header(),
        PacketHeader::new(Modifier1::PING, 0, Modifier2::PING_REQUEST)
    );
    assert!(head.vars().is_none());
    assert!(dec.is_done());
}

#[test]
fn unknown_modifier_is_kept_and_its_payload_is_opaque() {
    let mut wire = Vec::new();
    let items: [&[u8]; 2] = [b"myfunc", b"arg"];
    encode_array_packet(Modifier1(42), Modifier2(9), &items, &mut wire).unwrap();
    let mut dec = RequestDecoder::default();
    let mut buf = BytesMut::from(&wire[..]);
    let head = dec.decode_head(&mut buf).unwrap().unwrap();
    assert_eq!(head.header().modifier1, Modifier1(42));
    assert_eq!(head.header().modifier2, Modifier2(9));
    assert_eq!(head.payload(), &wire[4..]);
    assert!(head.vars().is_none());
    assert_eq!(head.into_raw(), &wire[..]);
}

#[test]
fn errors_are_found_as_soon_as_the_bytes_show_them() {
    // A key that claims more than the block: reported before the key bytes arrive.
    let mut dec = RequestDecoder::default();
    let mut buf = BytesMut::from(&[0u8, 10, 0, 0, 20, 0][..]);
    assert_eq!(
        dec.decode_head(&mut buf),
        Err(Error::KeyPastEnd { offset: 0, len: 20 })
    );
}

#[test]
fn persistent_connections_reset_between_packets() {
    let mut wire = request(&[("A", "1")], b"");
    wire.extend(request(&[("B", "2"), ("CONTENT_LENGTH", "1")], b"x"));
    let mut dec = RequestDecoder::default();
    let mut buf = BytesMut::from(&wire[..]);
    let first = dec.decode_head(&mut buf).unwrap().unwrap();
    assert_eq!(first.vars().unwrap().get(b"A"), Some(&b"1"[..]));
    assert!(dec.is_done());
    assert_eq!(dec.decode_head(&mut buf).unwrap(), None, "done until reset");
    dec.reset();
    let second = dec.decode_head(&mut buf).unwrap().unwrap();
    assert_eq!(second.vars().unwrap().get(b"B"), Some(&b"2"[..]));
    assert_eq!(dec.decode_body(&mut buf).as_deref(), Some(&b"x"[..]));
}

#[test]
fn var_count_limit() {
    let wire = request(&[("A", ""), ("B", ""), ("C", "")], b"");
    let mut buf = BytesMut::from(&wire[..]);
    assert_eq!(
        RequestDecoder::new(Limits::new().max_vars(2)).decode_head(&mut buf),
        Err(Error::TooManyVars { limit: 2 })
    );
}
