//! proptest properties: encode/decode round trips, arbitrary bytes never panic, and the
//! incremental decoder equals the one-shot parser for every split of the input.

use proptest::collection::vec;
use proptest::prelude::*;
use uwsgi_proto::fuzzing::{check_incremental, fuzz_decoder, fuzz_parse};
use uwsgi_proto::{
    Limits, Modifier1, Modifier2, PacketBuilder, PacketHeader, encode_packet, parse_packet,
};

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn pairs() -> impl Strategy<Value = Pairs> {
    // Keys are never empty; values may be; any byte, UTF-8 or not.
    vec((vec(any::<u8>(), 1..24), vec(any::<u8>(), 0..48)), 0..24)
}

fn encode(m1: u8, m2: u8, vars: &Pairs) -> Vec<u8> {
    let mut wire = Vec::new();
    encode_packet(Modifier1(m1), Modifier2(m2), vars, 65535, &mut wire).unwrap();
    wire
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encode_then_decode_gives_the_packet_back(m1 in any::<u8>(), m2 in any::<u8>(), vars in pairs()) {
        let wire = encode(m1, m2, &vars);
        let (packet, used) = parse_packet(&wire, &Limits::new()).unwrap().unwrap();
        prop_assert_eq!(used, wire.len());
        prop_assert_eq!(packet.header, PacketHeader::new(Modifier1(m1), (wire.len() - 4) as u16, Modifier2(m2)));
        let back: Pairs = packet.vars().unwrap().iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        prop_assert_eq!(back, vars);
    }

    #[test]
    fn pairs_around_the_encoders_block_size_round_trip(
        vars in vec((vec(any::<u8>(), 1..40), vec(any::<u8>(), 900..2200)), 1..5)
    ) {
        // Values near and past the 1 KiB block the encoder gathers small pieces in.
        let wire = encode(1, 0, &vars);
        let (packet, _) = parse_packet(&wire, &Limits::new()).unwrap().unwrap();
        let back: Pairs = packet.vars().unwrap().iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        prop_assert_eq!(back, vars);
    }

    #[test]
    fn builder_and_encoder_write_the_same_bytes(m1 in any::<u8>(), vars in pairs()) {
        let mut built = Vec::new();
        let mut b = PacketBuilder::new(&mut built);
        b.modifiers(Modifier1(m1), Modifier2::ZERO);
        for (k, v) in &vars {
            b.var(k, v).unwrap();
        }
        let n = b.finish();
        prop_assert_eq!(n, built.len());
        prop_assert_eq!(built, encode(m1, 0, &vars));
    }

    #[test]
    fn the_65535_edge_round_trips(klen in 1usize..8, vlen in 65_520usize..65_535) {
        let vars = vec![(vec![b'K'; klen], vec![0xe9; vlen])];
        let mut wire = Vec::new();
        let result = encode_packet(Modifier1::WSGI, Modifier2::ZERO, &vars, 65535, &mut wire);
        if 4 + klen + vlen <= 65535 {
            prop_assert_eq!(result.unwrap(), wire.len());
            let (p, _) = parse_packet(&wire, &Limits::new()).unwrap().unwrap();
            prop_assert_eq!(p.vars().unwrap().get(&vars[0].0).unwrap(), &vars[0].1[..]);
        } else {
            prop_assert!(result.is_err());
            prop_assert!(wire.is_empty());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in vec(any::<u8>(), 0..512)) {
        fuzz_parse(&data);
        for sel in 0..12u8 {
            let mut input = vec![sel];
            input.extend_from_slice(&data);
            fuzz_decoder(&input);
        }
    }

    #[test]
    fn arbitrary_packets_with_a_real_header_never_panic(
        m1 in any::<u8>(), body in vec(any::<u8>(), 0..300), cut in 0usize..320
    ) {
        // A header whose datasize matches the garbage that follows, so the vars parser
        // sees the garbage (random headers mostly announce more than is there).
        let mut input = PacketHeader::new(Modifier1(m1), body.len() as u16, Modifier2::ZERO).to_bytes().to_vec();
        input.extend_from_slice(&body);
        input.truncate(cut.min(input.len()).max(1));
        check_incremental(&input, &[1], &Limits::new());
        check_incremental(&input, &[3, 1, 4], &Limits::new());
    }

    #[test]
    fn any_split_decodes_the_same(
        vars in pairs(), body in vec(any::<u8>(), 0..64), trailing in vec(any::<u8>(), 0..8),
        pieces in vec(1usize..40, 1..8)
    ) {
        let mut vars = vars;
        vars.push((b"CONTENT_LENGTH".to_vec(), body.len().to_string().into_bytes()));
        let mut input = encode(0, 0, &vars);
        input.extend_from_slice(&body);
        input.extend_from_slice(&trailing); // bytes past the body are never handed out
        check_incremental(&input, &pieces, &Limits::new());
    }
}

#[test]
fn every_two_piece_split_of_a_request_decodes_the_same() {
    let vars = vec![
        (b"REQUEST_METHOD".to_vec(), b"POST".to_vec()),
        (b"CONTENT_LENGTH".to_vec(), b"11".to_vec()),
        (b"HTTP_COOKIE".to_vec(), vec![0xff, 0x00, b';']),
        (b"EMPTY".to_vec(), Vec::new()),
    ];
    let mut input = encode(0, 0, &vars);
    input.extend_from_slice(b"hello world");
    for cut in 0..=input.len() {
        check_incremental(&input, &[cut.max(1), usize::MAX], &Limits::new());
    }
    check_incremental(&input, &[1], &Limits::new());
}
