//! Request parsing: multibulk and inline requests into argument lists.
//!
//! Requests come in two shapes, exactly as Redis accepts them: multibulk
//! (`*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n`, what every client library sends) and
//! inline (`ECHO hi\r\n`, what a person types into telnet). The parser keeps
//! its state between reads, so a command split at any byte boundary costs
//! no rescanning, and it enforces the configured size limits *before*
//! buffering, so a declared 10 GB bulk is refused on its header line.
//! Everything here takes untrusted bytes: nothing may panic on them.

use bytes::{Buf, Bytes, BytesMut};

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
/// error reply, as Redis does, because the stream position is lost. The
/// texts are Redis's own, which clients and tests compare against.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("Protocol error: too big inline request")]
    TooBigInline,
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    #[error("Protocol error: too big mbulk count string")]
    TooBigMultibulkCount,
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    #[error("Protocol error: too big bulk count string")]
    TooBigBulkCount,
    #[error("Protocol error: expected '$', got '{}'", char::from(*.0))]
    ExpectedDollar(u8),
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
}

/// A copy of `arg` for keeping past its request. Parsed arguments are
/// slices of the connection's read buffer ([`RequestParser::next`]); one
/// kept as is (a channel or client name) would keep that whole buffer
/// allocated for as long as it lives.
pub fn keep(arg: &[u8]) -> Bytes {
    Bytes::copy_from_slice(arg)
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
