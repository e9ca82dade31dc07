//! Self-checking entry points for the fuzz targets in `fuzz/` and the tests that replay
//! their corpus: each feeds arbitrary bytes to a parser and panics only when an invariant
//! breaks.

use bytes::BytesMut;

use crate::fastcgi::{self, Event, Params, ServerConfig, ServerConnection};
use crate::scgi::{self, ScgiDecoder, ScgiLimits};
use crate::{HeadOptions, ResponseHeadDecoder, StatusLine, parse_response_head};

/// The pieces `data` is fed in: its first byte picks a pattern.
fn pieces(sel: u8) -> &'static [usize] {
    match sel % 4 {
        0 => &[1],
        1 => &[2, 3, 5, 7],
        2 => &[64, 1, 13],
        _ => &[usize::MAX],
    }
}

fn feed(input: &[u8], pieces: &[usize], mut step: impl FnMut(&mut BytesMut) -> bool) {
    let mut buf = BytesMut::new();
    let mut at = 0;
    let mut i = 0;
    while at < input.len() {
        let n = pieces[i % pieces.len()].max(1);
        let end = at.saturating_add(n).min(input.len());
        buf.extend_from_slice(&input[at..end]);
        at = end;
        i += 1;
        if !step(&mut buf) {
            return;
        }
    }
}

/// Runs a FastCGI application-side connection over `input` fed in `pieces`; returns the
/// events (or the first error), with every STDIN/DATA piece joined per request.
pub fn fastcgi_events(input: &[u8], pieces: &[usize]) -> Result<Vec<Event>, fastcgi::Error> {
    let mut conn = ServerConnection::new(ServerConfig::default());
    let mut events: Vec<Event> = Vec::new();
    let mut err = None;
    feed(input, pieces, |buf| {
        loop {
            match conn.poll_event(buf) {
                Ok(Some(ev)) => {
                    // Join body pieces so that splits do not change the result.
                    if let (
                        Event::Stdin { id, data },
                        Some(Event::Stdin {
                            id: last,
                            data: prev,
                        }),
                    ) = (&ev, events.last_mut())
                        && id == last
                    {
                        *prev = [&prev[..], &data[..]].concat().into();
                        continue;
                    }
                    events.push(ev);
                }
                Ok(None) => return true,
                Err(e) => {
                    err = Some(e);
                    return false;
                }
            }
        }
    });
    let _ = conn.take_output();
    err.map_or(Ok(events), Err)
}

/// Fuzz entry for the FastCGI record stream: the application side fed in several split
/// patterns must give the same events or the same error for every split.
pub fn fuzz_fastcgi_stream(data: &[u8]) {
    let Some((&sel, input)) = data.split_first() else {
        return;
    };
    let whole = fastcgi_events(input, &[usize::MAX]);
    let split = fastcgi_events(input, pieces(sel));
    // STDIN pieces are joined per run of records; with a split they may arrive as more
    // events, which the join above folds back together.
    assert_eq!(whole, split, "split pattern {sel}");
}

/// Fuzz entry for name-value pairs: whatever validates iterates to its whole length.
pub fn fuzz_fastcgi_params(data: &[u8]) {
    if let Ok(p) = Params::parse(data) {
        assert_eq!(p.iter().count(), p.len());
        let mut out = Vec::new();
        for (k, v) in p {
            fastcgi::encode_pair(k, v, &mut out).expect("re-encodes");
        }
        let again = Params::parse(&out).expect("re-encoded pairs parse");
        assert!(p.iter().eq(again.iter()));
    }
}

/// Fuzz entry for the SCGI header: one-shot and incremental agree.
pub fn fuzz_scgi(data: &[u8]) {
    let Some((&sel, input)) = data.split_first() else {
        return;
    };
    let limits = ScgiLimits {
        duplicates: if sel & 4 == 0 {
            scgi::Duplicates::Reject
        } else {
            scgi::Duplicates::Join
        },
        ..ScgiLimits::default()
    };
    let one_shot =
        scgi::parse_header(input, &limits).map(|o| o.map(|(h, used)| (h.content_length(), used)));
    let mut dec = ScgiDecoder::new(limits);
    let mut got = Ok(None);
    let mut consumed = 0;
    feed(input, pieces(sel), |buf| {
        let before = buf.len();
        match dec.decode_head(buf) {
            Ok(Some(head)) => {
                consumed += before - buf.len();
                got = Ok(Some((head.content_length(), consumed)));
                false
            }
            Ok(None) => true,
            Err(e) => {
                got = Err(e);
                false
            }
        }
    });
    assert_eq!(got, one_shot);
}

/// Fuzz entry for the CGI response head: incremental equals one-shot, in every
/// status-line mode.
pub fn fuzz_cgi_head(data: &[u8]) {
    let Some((&sel, input)) = data.split_first() else {
        return;
    };
    let opts = HeadOptions {
        max_size: if sel & 8 == 0 { 64 * 1024 } else { 64 },
        status_line: match sel / 16 % 3 {
            0 => StatusLine::Accept,
            1 => StatusLine::Ignore,
            _ => StatusLine::Reject,
        },
    };
    let whole = parse_response_head(input, &opts);
    let mut dec = ResponseHeadDecoder::new(opts);
    let mut got = Ok(None);
    let mut seen = 0;
    feed(input, pieces(sel), |buf| {
        seen = buf.len();
        got = dec.decode(buf);
        matches!(got, Ok(None))
    });
    if seen == input.len() || got.is_err() || matches!(got, Ok(Some(_))) {
        match (&whole, &got) {
            // A prefix may already be over the size limit where the whole has its end
            // just past it; both are errors then.
            (Err(_), Err(_)) => {}
            _ => assert_eq!(got, whole),
        }
    }
}
