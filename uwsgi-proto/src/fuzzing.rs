//! Self-checking entry points for the fuzz targets in `fuzz/` and the tests that replay
//! their corpus. Each function feeds arbitrary bytes to a parser and panics only when an
//! invariant breaks (a panic inside the parser itself, or two decoders disagreeing), so a
//! fuzzer reports exactly the bugs worth fixing.

use bytes::BytesMut;

use crate::{Array, Error, Limits, PacketHeader, RequestDecoder, Vars, parse_packet};

/// What a whole input decodes to: the header, the vars (for vars-carrying packets), the
/// body length and the head's size; or the error; `None` while incomplete.
pub type Outcome =
    Result<Option<(PacketHeader, Option<Vec<(Vec<u8>, Vec<u8>)>>, u64, usize)>, Error>;

/// The one-shot reference decoding of `input`, built from [`parse_packet`] and [`Vars`].
pub fn reference(input: &[u8], limits: &Limits) -> Outcome {
    let Some((packet, used)) = parse_packet(input, limits)? else {
        return Ok(None);
    };
    let m1 = packet.header.modifier1;
    let (vars, length) = if m1.carries_vars() {
        let vars = packet.vars_with(limits)?;
        let length = if m1.is_request() {
            limits.check_body(vars.content_length()?)?
        } else {
            0
        };
        let owned = vars.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        (Some(owned), length)
    } else {
        (None, 0)
    };
    Ok(Some((packet.header, vars, length, used)))
}

/// Feeds `input` to a [`RequestDecoder`] in pieces of the given sizes (cycled; a 0 is
/// read as 1), then returns its outcome and the body bytes it handed out.
pub fn incremental(input: &[u8], pieces: &[usize], limits: &Limits) -> (Outcome, Vec<u8>) {
    let mut dec = RequestDecoder::new(*limits);
    let mut buf = BytesMut::new();
    let mut head = None;
    let mut body = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < input.len() {
        let n = pieces
            .get(i % pieces.len().max(1))
            .copied()
            .unwrap_or(1)
            .max(1);
        let end = at.saturating_add(n).min(input.len());
        buf.extend_from_slice(&input[at..end]);
        at = end;
        i += 1;
        if head.is_none() {
            match dec.decode_head(&mut buf) {
                Ok(Some(h)) => head = Some(h),
                Ok(None) => continue,
                Err(e) => return (Err(e), body),
            }
        }
        while let Some(chunk) = dec.decode_body(&mut buf) {
            body.extend_from_slice(&chunk);
        }
    }
    let outcome = Ok(head.map(|h| {
        let vars = h
            .vars()
            .map(|v| v.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect());
        (h.header(), vars, h.content_length(), h.raw().len())
    }));
    (outcome, body)
}

/// Checks that the incremental decoder, fed `input` in `pieces`, agrees with the one-shot
/// [`reference()`]: same head or same error, and exactly the body bytes that followed.
/// While the input is incomplete, the decoder may already report a vars error that the
/// one-shot parser cannot see yet (it knows `datasize`, so a length running past it is
/// wrong before the bytes arrive).
pub fn check_incremental(input: &[u8], pieces: &[usize], limits: &Limits) {
    let expected = reference(input, limits);
    let (got, body) = incremental(input, pieces, limits);
    match (&expected, &got) {
        (Ok(None), Err(e)) => assert!(
            !matches!(e, Error::BlockTooLarge { .. }),
            "early error {e:?} for an incomplete input"
        ),
        _ => assert_eq!(got, expected, "pieces {pieces:?}"),
    }
    if let Ok(Some((_, _, length, used))) = expected {
        let rest = &input[used..];
        let want = usize::try_from(length).map_or(rest.len(), |l| l.min(rest.len()));
        assert_eq!(body, &rest[..want], "body bytes");
    } else {
        assert!(body.is_empty());
    }
}

/// Fuzz entry for the one-shot parsers: arbitrary bytes as a packet, a vars block and an
/// array. Nothing may panic; whatever validates must iterate to its stated length.
pub fn fuzz_parse(data: &[u8]) {
    let limits = Limits::new();
    if let Ok(Some((packet, used))) = parse_packet(data, &limits) {
        assert_eq!(used, packet.wire_len());
        let _ = packet.array();
    }
    if let Ok(vars) = Vars::parse(data) {
        assert_eq!(vars.iter().count(), vars.len());
        let total: usize = vars.iter().map(|(k, v)| 4 + k.len() + v.len()).sum();
        assert_eq!(total, data.len());
        let _ = vars.content_length();
    }
    if let Ok(array) = Array::parse(data) {
        let total: usize = array.iter().map(|i| 2 + i.len()).sum();
        assert_eq!(total, data.len());
    }
}

/// Fuzz entry for the incremental decoder: the first byte picks a split pattern and a
/// limit, the rest is the stream.
pub fn fuzz_decoder(data: &[u8]) {
    let Some((&sel, input)) = data.split_first() else {
        return;
    };
    let pieces: &[usize] = match sel % 4 {
        0 => &[1],
        1 => &[2, 3, 5, 7],
        2 => &[64, 1, 13],
        _ => &[usize::MAX],
    };
    let limits = match sel / 4 % 3 {
        0 => Limits::new(),
        1 => Limits::new().max_block_size(64).max_vars(4),
        _ => Limits::new().max_body(Some(16)),
    };
    check_incremental(input, pieces, &limits);
}
