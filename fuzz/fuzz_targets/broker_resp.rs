//! The broker's RESP request parser (multibulk and inline) and the inline
//! argument splitter: whatever bytes a client sends, the parser never
//! panics, gives the same requests however the bytes are split across
//! reads, keeps every argument within its limits, and every request it
//! returns survives a round trip through both wire forms. Pushed messages
//! (RESP2 arrays of bulks) parse back to what was encoded.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use limpet_broker::codec::{
    encode_message, split_args, Limits, Proto, ProtocolError, RequestParser,
};

/// Small limits, so the fuzzer reaches every "too big" branch.
const LIMITS: Limits = Limits {
    max_bulk_len: 256,
    max_multibulk_len: 16,
    max_inline_len: 512,
};

/// Every request in `chunks` fed as successive reads, and the error that
/// ended parsing, if any.
fn parse_reads(limits: Limits, chunks: &[&[u8]]) -> (Vec<Vec<Bytes>>, Option<ProtocolError>) {
    let mut parser = RequestParser::new(limits);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match parser.next(&mut buf) {
                Ok(Some(request)) => out.push(request),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

fn multibulk(args: &[Bytes]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// One inline line with every byte of every argument written as `\xHH`
/// inside double quotes, the form that can carry any byte.
fn inline(args: &[Bytes]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.push(b'"');
        for &b in a.iter() {
            out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        }
        out.push(b'"');
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (cuts, input) = data.split_at(2);
    let a = usize::from(cuts[0]) * input.len() / 256;
    let b = a.max(usize::from(cuts[1]) * input.len() / 256);

    let whole = parse_reads(LIMITS, &[input]);
    let split = parse_reads(LIMITS, &[&input[..a], &input[a..b], &input[b..]]);
    assert_eq!(whole, split, "read boundaries changed the outcome");

    let (requests, _) = whole;
    let biggest = LIMITS.max_bulk_len.max(LIMITS.max_inline_len as u64);
    for request in &requests {
        assert!(
            !request.is_empty(),
            "an empty request is skipped, never returned"
        );
        for arg in request {
            assert!(arg.len() as u64 <= biggest, "argument over every limit");
        }
        let again = parse_reads(Limits::default(), &[&multibulk(request)]);
        assert_eq!(again, (vec![request.clone()], None), "multibulk round trip");
        let mut line = inline(request);
        line.extend_from_slice(b"\r\n");
        let again = parse_reads(Limits::default(), &[&line]);
        assert_eq!(again, (vec![request.clone()], None), "inline round trip");
    }

    // The splitter alone, on a line of any length and content.
    if let Some(args) = split_args(input) {
        if !args.is_empty() {
            assert_eq!(split_args(&inline(&args)), Some(args.clone()));
        }
    }

    // A pushed message is an array of bulks: it parses back as a request.
    if let Some(request) = requests.first() {
        let at = |i: usize| request.get(i).map_or(&b""[..], |b| &b[..]);
        let pattern = (request.len() > 3).then(|| at(3));
        let encoded = encode_message(Proto::Resp2, at(0), pattern, at(1), at(2));
        let (parsed, err) = parse_reads(Limits::default(), &[&encoded]);
        assert_eq!(err, None);
        let mut want = vec![Bytes::copy_from_slice(at(0))];
        if let Some(p) = pattern {
            want.push(Bytes::copy_from_slice(p));
        }
        want.push(Bytes::copy_from_slice(at(1)));
        want.push(Bytes::copy_from_slice(at(2)));
        assert_eq!(parsed, vec![want]);
    }
});
