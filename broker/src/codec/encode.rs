//! Reply encoding: RESP2/RESP3 replies and pushed messages.
//!
//! Replies are written straight into the connection's output buffer. The
//! same call produces RESP2 or RESP3 depending on what the client chose with
//! `HELLO`; types RESP2 lacks (maps, nulls, pushes, verbatim strings) fall
//! back to what Redis itself sends to a RESP2 client. Pushed messages are
//! encoded once per dialect into shared bytes (see [`encode_message`]).

use bytes::{BufMut, Bytes, BytesMut};

/// Which reply dialect a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Resp2,
    Resp3,
}

/// Reply writer over a connection's output buffer.
///
/// One request can ask for far more than it sends (`MGET` of one large
/// key a million times): past `cap` bytes in `buf` no more bulk payloads
/// are written and `over` is set, so the caller closes the client (as
/// Redis does past its output hard limit) instead of the allocation
/// taking the process down.
pub struct Reply<'a> {
    pub buf: &'a mut BytesMut,
    pub proto: Proto,
    pub cap: usize,
    pub over: &'a mut bool,
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
        if self.past_cap(b.len()) {
            return;
        }
        put_bulk(self.buf, b);
    }

    /// Whether writing `len` more bytes would pass the cap (and from then
    /// on, everything would).
    fn past_cap(&mut self, len: usize) -> bool {
        if self.buf.len().saturating_add(len) > self.cap {
            *self.over = true;
        }
        *self.over
    }

    pub fn null(&mut self) {
        match self.proto {
            Proto::Resp2 => self.buf.put_slice(b"$-1\r\n"),
            Proto::Resp3 => self.buf.put_slice(b"_\r\n"),
        }
    }

    /// Redis's null array (`*-1`), a plain null under RESP3.
    pub fn null_array(&mut self) {
        match self.proto {
            Proto::Resp2 => self.buf.put_slice(b"*-1\r\n"),
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
                if self.past_cap(text.len()) {
                    return;
                }
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
