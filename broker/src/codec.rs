//! RESP wire format: request parsing and reply encoding.
//!
//! Requests come in two shapes, exactly as Redis accepts them: multibulk
//! (`*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n`, what every client library sends) and
//! inline (`ECHO hi\r\n`, what a person types into telnet). The parser keeps
//! its state between reads, so a command split at any byte boundary costs
//! no rescanning, and it enforces the configured size limits *before*
//! buffering, so a declared 10 GB bulk is refused on its header line.
//!
//! Replies are written straight into the connection's output buffer. The
//! same call produces RESP2 or RESP3 depending on what the client chose with
//! `HELLO`; types RESP2 lacks (maps, nulls, pushes, verbatim strings) fall
//! back to what Redis itself sends to a RESP2 client.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::fmt;

/// The limits a request must stay within.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bulk_len: u64,
    pub max_multibulk_len: u64,
    pub max_inline_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_len: 512 * 1024 * 1024,
            max_multibulk_len: 1024 * 1024,
            max_inline_len: 64 * 1024,
        }
    }
}

/// A request the broker cannot parse. The connection is closed after the
/// error reply, as Redis does, because the stream position is lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    TooBigInline,
    UnbalancedQuotes,
    TooBigMultibulkCount,
    InvalidMultibulkLength,
    TooBigBulkCount,
    ExpectedDollar(u8),
    InvalidBulkLength,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Protocol error: ")?;
        match self {
            ProtocolError::TooBigInline => f.write_str("too big inline request"),
            ProtocolError::UnbalancedQuotes => f.write_str("unbalanced quotes in request"),
            ProtocolError::TooBigMultibulkCount => f.write_str("too big mbulk count string"),
            ProtocolError::InvalidMultibulkLength => f.write_str("invalid multibulk length"),
            ProtocolError::TooBigBulkCount => f.write_str("too big bulk count string"),
            ProtocolError::ExpectedDollar(got) => {
                write!(f, "expected '$', got '{}'", char::from(*got))
            }
            ProtocolError::InvalidBulkLength => f.write_str("invalid bulk length"),
        }
    }
}

/// Incremental request parser; one per connection.
#[derive(Debug, Default)]
pub struct RequestParser {
    limits: Limits,
    /// Arguments of the multibulk request being read.
    args: Vec<Bytes>,
    /// Arguments still to come in the current multibulk (0: between requests).
    remaining: usize,
    /// Length of the bulk whose header has been read but whose body has not.
    bulk_len: Option<usize>,
}

impl RequestParser {
    pub fn new(limits: Limits) -> Self {
        RequestParser {
            limits,
            ..Default::default()
        }
    }

    /// Stricter limits for a client that has not authenticated yet, so that
    /// a stranger cannot make the broker buffer a huge request (Redis 7.2
    /// does the same: 10 arguments, 16 KiB each).
    pub fn set_unauthenticated(&mut self, on: bool, configured: Limits) {
        self.limits = if on {
            Limits {
                max_bulk_len: configured.max_bulk_len.min(16 * 1024),
                max_multibulk_len: configured.max_multibulk_len.min(10),
                max_inline_len: configured.max_inline_len,
            }
        } else {
            configured
        };
    }

    /// Memory held by a partly read request: its arguments' bytes plus a
    /// handle for each slot of the argument list. The handles count
    /// because an empty argument is 6 bytes on the wire and 32 here: a
    /// request of empty arguments would otherwise cost five times what
    /// `query_buffer_limit` sees.
    pub fn pending_bytes(&self) -> usize {
        self.args.capacity() * std::mem::size_of::<Bytes>()
            + self.args.iter().map(Bytes::len).sum::<usize>()
    }

    /// Takes the next complete request out of `buf`. `Ok(None)` means more
    /// bytes are needed. An empty request (blank inline line, `*0`) is
    /// skipped, as Redis skips it.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        loop {
            if self.remaining == 0 {
                let Some(&first) = buf.first() else {
                    return Ok(None);
                };
                let request = if first == b'*' {
                    self.start_multibulk(buf)?
                } else {
                    self.inline(buf)?
                };
                match request {
                    Step::Incomplete => return Ok(None),
                    Step::Empty => continue,
                    Step::Done(args) => return Ok(Some(args)),
                    Step::Started => {}
                }
            }
            // Inside a multibulk: read bulk headers and bodies.
            while self.remaining > 0 {
                let len = match self.bulk_len {
                    Some(len) => len,
                    None => match self.bulk_header(buf)? {
                        Some(len) => len,
                        None => return Ok(None),
                    },
                };
                if buf.len() < len + 2 {
                    self.bulk_len = Some(len);
                    // Grow toward the declared size as bytes arrive, not up
                    // front: a declared length costs nothing until it is sent.
                    buf.reserve((len + 2 - buf.len()).min(1 << 20));
                    return Ok(None);
                }
                self.bulk_len = None;
                self.args.push(buf.split_to(len).freeze());
                // Redis skips the two bytes after a bulk without looking at them.
                buf.advance(2);
                self.remaining -= 1;
            }
            return Ok(Some(std::mem::take(&mut self.args)));
        }
    }

    fn start_multibulk(&mut self, buf: &mut BytesMut) -> Result<Step, ProtocolError> {
        let Some(cr) = memchr::memchr(b'\r', buf) else {
            if buf.len() > self.limits.max_inline_len {
                return Err(ProtocolError::TooBigMultibulkCount);
            }
            return Ok(Step::Incomplete);
        };
        if cr > self.limits.max_inline_len {
            return Err(ProtocolError::TooBigMultibulkCount);
        }
        if buf.len() < cr + 2 {
            return Ok(Step::Incomplete);
        }
        let count = parse_i64(&buf[1..cr]).ok_or(ProtocolError::InvalidMultibulkLength)?;
        if count > self.limits.max_multibulk_len as i64 {
            return Err(ProtocolError::InvalidMultibulkLength);
        }
        buf.advance(cr + 2);
        if count <= 0 {
            return Ok(Step::Empty);
        }
        let count = count as usize;
        self.remaining = count;
        self.args = Vec::with_capacity(count.min(1024));
        Ok(Step::Started)
    }

    fn bulk_header(&mut self, buf: &mut BytesMut) -> Result<Option<usize>, ProtocolError> {
        let Some(cr) = memchr::memchr(b'\r', buf) else {
            if buf.len() > self.limits.max_inline_len {
                return Err(ProtocolError::TooBigBulkCount);
            }
            return Ok(None);
        };
        if cr > self.limits.max_inline_len {
            return Err(ProtocolError::TooBigBulkCount);
        }
        if buf.len() < cr + 2 {
            return Ok(None);
        }
        if buf[0] != b'$' {
            return Err(ProtocolError::ExpectedDollar(buf[0]));
        }
        let len = parse_i64(&buf[1..cr]).ok_or(ProtocolError::InvalidBulkLength)?;
        if len < 0 || len as u64 > self.limits.max_bulk_len {
            return Err(ProtocolError::InvalidBulkLength);
        }
        buf.advance(cr + 2);
        Ok(Some(len as usize))
    }

    fn inline(&mut self, buf: &mut BytesMut) -> Result<Step, ProtocolError> {
        let Some(nl) = memchr::memchr(b'\n', buf) else {
            if buf.len() > self.limits.max_inline_len {
                return Err(ProtocolError::TooBigInline);
            }
            return Ok(Step::Incomplete);
        };
        if nl > self.limits.max_inline_len {
            return Err(ProtocolError::TooBigInline);
        }
        let line = buf.split_to(nl + 1);
        let mut line = &line[..nl];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        let args = split_args(line).ok_or(ProtocolError::UnbalancedQuotes)?;
        if args.is_empty() {
            return Ok(Step::Empty);
        }
        Ok(Step::Done(args))
    }
}

enum Step {
    Incomplete,
    Empty,
    Started,
    Done(Vec<Bytes>),
}

/// Strict decimal integer as Redis's `string2ll` reads it: optional `-`,
/// no `+`, no spaces, no leading zeros except `0` itself.
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 20 || (digits[0] == b'0' && (digits.len() > 1 || neg)) {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let d = i64::from(d - b'0');
        v = if neg {
            v.checked_mul(10)?.checked_sub(d)?
        } else {
            v.checked_mul(10)?.checked_add(d)?
        };
    }
    Some(v)
}

/// Splits an inline command line the way Redis's `sdssplitargs` does:
/// whitespace separates arguments; "double quotes" understand `\n \r \t \b
/// \a \\ \"` and `\xHH`; 'single quotes' understand only `\'`. A closing
/// quote must be followed by whitespace or the end. `None` on unbalanced
/// quotes.
pub fn split_args(line: &[u8]) -> Option<Vec<Bytes>> {
    // Redis works on a C string here: a NUL byte ends the line.
    let line = &line[..memchr::memchr(0, line).unwrap_or(line.len())];
    let mut args = Vec::new();
    let mut i = 0;
    let n = line.len();
    loop {
        while i < n && is_space(line[i]) {
            i += 1;
        }
        if i >= n {
            return Some(args);
        }
        let mut cur = Vec::new();
        let mut in_dq = false;
        let mut in_sq = false;
        loop {
            if in_dq {
                if i >= n {
                    return None;
                }
                let c = line[i];
                if c == b'\\' && i + 3 < n && line[i + 1] == b'x' {
                    if let (Some(h), Some(l)) = (hex(line[i + 2]), hex(line[i + 3])) {
                        cur.push(h * 16 + l);
                        i += 4;
                        continue;
                    }
                }
                if c == b'\\' && i + 1 < n {
                    cur.push(match line[i + 1] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => other,
                    });
                    i += 2;
                } else if c == b'"' {
                    if i + 1 < n && !is_space(line[i + 1]) {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                    i += 1;
                }
            } else if in_sq {
                if i >= n {
                    return None;
                }
                let c = line[i];
                if c == b'\\' && i + 1 < n && line[i + 1] == b'\'' {
                    cur.push(b'\'');
                    i += 2;
                } else if c == b'\'' {
                    if i + 1 < n && !is_space(line[i + 1]) {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                    i += 1;
                }
            } else {
                if i >= n {
                    break;
                }
                match line[i] {
                    b' ' | b'\n' | b'\r' | b'\t' => break,
                    b'"' => in_dq = true,
                    b'\'' => in_sq = true,
                    c => cur.push(c),
                }
                i += 1;
            }
        }
        args.push(Bytes::from(cur));
    }
}

/// C's `isspace`, which Redis uses between arguments (Rust's ASCII
/// whitespace lacks the vertical tab).
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Which reply dialect a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Resp2,
    Resp3,
}

/// Reply writer over a connection's output buffer.
pub struct Reply<'a> {
    pub buf: &'a mut BytesMut,
    pub proto: Proto,
}

impl Reply<'_> {
    pub fn simple(&mut self, s: &str) {
        self.line(b'+', s.as_bytes());
    }

    /// `msg` must start with the error code (`ERR`, `NOAUTH`, ...).
    pub fn error(&mut self, msg: &str) {
        // A reply line must not break the framing; Redis replaces newlines too.
        let clean: String = msg
            .chars()
            .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
            .collect();
        self.line(b'-', clean.as_bytes());
    }

    pub fn int(&mut self, v: i64) {
        self.buf.put_u8(b':');
        self.buf.put_slice(itoa::Buffer::new().format(v).as_bytes());
        self.buf.put_slice(b"\r\n");
    }

    pub fn bulk(&mut self, b: &[u8]) {
        put_bulk(self.buf, b);
    }

    pub fn null(&mut self) {
        match self.proto {
            Proto::Resp2 => self.buf.put_slice(b"$-1\r\n"),
            Proto::Resp3 => self.buf.put_slice(b"_\r\n"),
        }
    }

    pub fn array(&mut self, len: usize) {
        self.header(b'*', len);
    }

    /// A map of `len` pairs; a flat array of `2 * len` items under RESP2.
    pub fn map(&mut self, len: usize) {
        match self.proto {
            Proto::Resp2 => self.header(b'*', len * 2),
            Proto::Resp3 => self.header(b'%', len),
        }
    }

    /// A set; an array under RESP2.
    pub fn set(&mut self, len: usize) {
        match self.proto {
            Proto::Resp2 => self.header(b'*', len),
            Proto::Resp3 => self.header(b'~', len),
        }
    }

    /// Long text (INFO, CLIENT LIST): verbatim under RESP3, bulk under RESP2.
    pub fn verbatim(&mut self, text: &[u8]) {
        match self.proto {
            Proto::Resp2 => self.bulk(text),
            Proto::Resp3 => {
                self.header(b'=', text.len() + 4);
                self.buf.put_slice(b"txt:");
                self.buf.put_slice(text);
                self.buf.put_slice(b"\r\n");
            }
        }
    }

    /// Out-of-band data (pub/sub messages and subscription replies):
    /// a `>` push under RESP3, an array under RESP2.
    pub fn push(&mut self, len: usize) {
        put_push_header(self.buf, self.proto, len);
    }

    fn header(&mut self, kind: u8, len: usize) {
        put_header(self.buf, kind, len);
    }

    fn line(&mut self, kind: u8, s: &[u8]) {
        self.buf.reserve(s.len() + 3);
        self.buf.put_u8(kind);
        self.buf.put_slice(s);
        self.buf.put_slice(b"\r\n");
    }
}

fn put_header(buf: &mut BytesMut, kind: u8, len: usize) {
    buf.put_u8(kind);
    buf.put_slice(itoa::Buffer::new().format(len).as_bytes());
    buf.put_slice(b"\r\n");
}

fn put_push_header(buf: &mut BytesMut, proto: Proto, len: usize) {
    let kind = match proto {
        Proto::Resp2 => b'*',
        Proto::Resp3 => b'>',
    };
    put_header(buf, kind, len);
}

fn put_bulk(buf: &mut BytesMut, b: &[u8]) {
    buf.reserve(b.len() + 16);
    put_header(buf, b'$', b.len());
    buf.put_slice(b);
    buf.put_slice(b"\r\n");
}

/// Encodes one pushed message, `[kind, extra?, channel, payload]`, once, so
/// the same bytes can be queued to every subscriber of that dialect.
pub fn encode_message(
    proto: Proto,
    kind: &[u8],
    pattern: Option<&[u8]>,
    channel: &[u8],
    payload: &[u8],
) -> Bytes {
    let mut buf = BytesMut::with_capacity(
        48 + kind.len() + pattern.map_or(0, <[u8]>::len) + channel.len() + payload.len(),
    );
    put_push_header(&mut buf, proto, if pattern.is_some() { 4 } else { 3 });
    put_bulk(&mut buf, kind);
    if let Some(p) = pattern {
        put_bulk(&mut buf, p);
    }
    put_bulk(&mut buf, channel);
    put_bulk(&mut buf, payload);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut r = Reply {
            buf: &mut buf,
            proto: Proto::Resp2,
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
        let mut r = Reply {
            buf: &mut buf,
            proto: Proto::Resp3,
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
}
