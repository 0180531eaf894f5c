//! Unit tests for the codec: parsing at every read boundary, Redis's error
//! texts and limits, and both reply dialects.

use super::*;
use bytes::{Bytes, BytesMut};

fn parse_all(input: &[u8]) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
    let mut p = RequestParser::new(Limits::default());
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    while let Some(cmd) = p.next(&mut buf)? {
        out.push(cmd);
    }
    Ok(out)
}

/// Feeds `input` one byte at a time and at every split point in two halves.
fn parse_split(input: &[u8]) -> Vec<Vec<Vec<Bytes>>> {
    let mut results = Vec::new();
    for split in 0..=input.len() {
        let mut p = RequestParser::new(Limits::default());
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in [&input[..split], &input[split..]] {
            buf.extend_from_slice(chunk);
            while let Some(cmd) = p.next(&mut buf).unwrap() {
                out.push(cmd);
            }
        }
        results.push(out);
    }
    let mut p = RequestParser::new(Limits::default());
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for &b in input {
        buf.extend_from_slice(&[b]);
        while let Some(cmd) = p.next(&mut buf).unwrap() {
            out.push(cmd);
        }
    }
    results.push(out);
    results
}

fn args(list: &[&str]) -> Vec<Bytes> {
    list.iter()
        .map(|s| Bytes::copy_from_slice(s.as_bytes()))
        .collect()
}

#[test]
fn multibulk_and_inline_split_at_every_byte() {
    let input = b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$0\r\n\r\nPING\r\n*-1\r\n*0\r\n\r\nECHO \"a b\\x41\\n\" 'c\\'d'\n*1\r\n$4\r\nPING\r\n";
    let want = vec![
        args(&["PUBLISH", "ch", ""]),
        args(&["PING"]),
        args(&["ECHO", "a bA\n", "c'd"]),
        args(&["PING"]),
    ];
    for got in parse_split(input) {
        assert_eq!(got, want);
    }
}

#[test]
fn inline_stops_at_nul_like_redis() {
    assert_eq!(split_args(b"PING\0junk"), Some(args(&["PING"])));
    assert_eq!(split_args(b"\0\x01\xfe"), Some(vec![]));
    assert_eq!(
        split_args(b"\x01\xfe a"),
        Some(vec![
            Bytes::from_static(b"\x01\xfe"),
            Bytes::from_static(b"a")
        ])
    );
    assert_eq!(split_args(b" \t\x0b\x0c "), Some(vec![]));
}

#[test]
fn binary_payloads_survive() {
    let payload: Vec<u8> = (0..=255u8).collect();
    let mut input = b"*2\r\n$4\r\nECHO\r\n$256\r\n".to_vec();
    input.extend_from_slice(&payload);
    input.extend_from_slice(b"\r\n");
    for got in parse_split(&input) {
        assert_eq!(
            got,
            vec![vec![
                Bytes::from_static(b"ECHO"),
                Bytes::from(payload.clone())
            ]]
        );
    }
}

#[test]
fn protocol_errors_match_redis_texts() {
    let cases: &[(&[u8], &str)] = &[
        (b"*abc\r\n", "Protocol error: invalid multibulk length"),
        (b"*1\r\nx\r\n", "Protocol error: expected '$', got 'x'"),
        (b"*1\r\n$-1\r\n", "Protocol error: invalid bulk length"),
        (b"*1\r\n$abc\r\n", "Protocol error: invalid bulk length"),
        (b"*1\r\n$+1\r\n", "Protocol error: invalid bulk length"),
        (
            b"*99999999999\r\n",
            "Protocol error: invalid multibulk length",
        ),
        (
            b"*1\r\n$999999999999\r\n",
            "Protocol error: invalid bulk length",
        ),
        (
            b"\"unbalanced\r\n",
            "Protocol error: unbalanced quotes in request",
        ),
        (b"'a'b\r\n", "Protocol error: unbalanced quotes in request"),
    ];
    for (input, want) in cases {
        assert_eq!(
            parse_all(input).unwrap_err().to_string(),
            *want,
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn oversized_lines_are_refused_before_buffering() {
    let limits = Limits {
        max_inline_len: 100,
        ..Limits::default()
    };
    let mut p = RequestParser::new(limits);
    let mut buf = BytesMut::from(&[b'a'; 101][..]);
    assert_eq!(p.next(&mut buf), Err(ProtocolError::TooBigInline));
    let mut p = RequestParser::new(limits);
    let mut buf = BytesMut::from(&b"*1111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111"[..]);
    assert_eq!(p.next(&mut buf), Err(ProtocolError::TooBigMultibulkCount));
    let mut p = RequestParser::new(limits);
    let mut buf = BytesMut::from(&b"*1\r\n$"[..]);
    buf.extend_from_slice(&[b'1'; 101]);
    assert_eq!(p.next(&mut buf), Err(ProtocolError::TooBigBulkCount));
}

#[test]
fn pending_empty_arguments_count_their_handles() {
    let mut p = RequestParser::new(Limits::default());
    let mut buf = BytesMut::from(&b"*1001\r\n"[..]);
    buf.extend_from_slice(&b"$0\r\n\r\n".repeat(1000));
    assert_eq!(p.next(&mut buf), Ok(None));
    assert!(buf.is_empty());
    assert!(p.pending_bytes() >= 1000 * std::mem::size_of::<Bytes>());
}

#[test]
fn unauthenticated_limits_are_tighter() {
    let mut p = RequestParser::new(Limits::default());
    p.set_unauthenticated(true, Limits::default());
    let mut buf = BytesMut::from(&b"*11\r\n"[..]);
    assert_eq!(p.next(&mut buf), Err(ProtocolError::InvalidMultibulkLength));
    let mut buf = BytesMut::from(&b"*1\r\n$16385\r\n"[..]);
    let mut p = RequestParser::new(Limits::default());
    p.set_unauthenticated(true, Limits::default());
    assert_eq!(p.next(&mut buf), Err(ProtocolError::InvalidBulkLength));
}

#[test]
fn integers_parse_like_string2ll() {
    assert_eq!(parse_i64(b"0"), Some(0));
    assert_eq!(parse_i64(b"-12"), Some(-12));
    assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
    assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
    for bad in [
        &b""[..],
        b"-",
        b"+1",
        b"01",
        b"-0",
        b"1 ",
        b"9223372036854775808",
        b"1a",
    ] {
        assert_eq!(parse_i64(bad), None, "{:?}", bad);
    }
}

#[test]
fn replies_in_both_dialects() {
    let mut buf = BytesMut::new();
    let mut over = false;
    let mut r = Reply {
        buf: &mut buf,
        proto: Proto::Resp2,
        cap: usize::MAX,
        over: &mut over,
    };
    r.map(1);
    r.bulk(b"k");
    r.null();
    r.verbatim(b"x");
    r.error("ERR a\r\nb");
    assert_eq!(
        &buf[..],
        b"*2\r\n$1\r\nk\r\n$-1\r\n$1\r\nx\r\n-ERR a  b\r\n"
    );
    let mut buf = BytesMut::new();
    let mut over = false;
    let mut r = Reply {
        buf: &mut buf,
        proto: Proto::Resp3,
        cap: usize::MAX,
        over: &mut over,
    };
    r.map(1);
    r.bulk(b"k");
    r.null();
    r.verbatim(b"x");
    r.set(0);
    r.push(0);
    assert_eq!(
        &buf[..],
        b"%1\r\n$1\r\nk\r\n_\r\n=5\r\ntxt:x\r\n~0\r\n>0\r\n"
    );
}

#[test]
fn message_encoding() {
    assert_eq!(
        &encode_message(Proto::Resp2, b"message", None, b"ch", b"hi")[..],
        b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"
    );
    assert_eq!(
        &encode_message(Proto::Resp3, b"pmessage", Some(b"c*"), b"ch", b"")[..],
        b">4\r\n$8\r\npmessage\r\n$2\r\nc*\r\n$2\r\nch\r\n$0\r\n\r\n"
    );
}

#[test]
fn a_reply_past_its_cap_stops_growing_and_says_so() {
    let mut buf = BytesMut::new();
    let mut over = false;
    let mut r = Reply {
        buf: &mut buf,
        proto: Proto::Resp2,
        cap: 100,
        over: &mut over,
    };
    r.array(3);
    r.bulk(&[b'x'; 60]);
    r.bulk(&[b'y'; 60]);
    r.bulk(b"z");
    assert!(over);
    assert!(buf.len() <= 100, "{} bytes", buf.len());
    assert!(!buf.contains(&b'y') && !buf.contains(&b'z'));
}
