//! RFC 6455 framing for the server side, as a pure codec: bytes in,
//! messages out, and frame headers for what the node writes. No I/O here
//! ([`crate::wire`] owns the socket), so it is fuzzed on its own
//! (`fuzz/fuzz_targets/node_ws.rs`).
//!
//! Why not tungstenite: its `WebSocket` owns a read buffer (4 KiB at the
//! smallest setting) and a write buffer for its whole life, which was most
//! of what an idle client cost. This [`Decoder`] holds no buffer between
//! messages: it consumes whatever slice it is given, keeps at most a
//! partial frame header (14 bytes, inline), and allocates only for the
//! message being received, sized to it.
//!
//! What it checks, as tungstenite did, each a [`WsError`] that maps to a
//! close code: client frames are masked, reserved bits are zero (no
//! extensions are negotiated), opcodes are known, control frames are
//! final and at most 125 bytes, continuation frames continue something,
//! text is UTF-8 once whole (1007), close frames carry a valid code and a
//! UTF-8 reason, and nothing is over the hard size limit (1009). Between
//! the soft limit (`max_message_bytes`) and the hard one a message is
//! skipped without being stored and reported as [`Event::TooLarge`], so a
//! client gets `message_too_large` and the node never holds its bytes.

use thiserror::Error;

/// Why a connection must be closed; each maps to a close code.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WsError {
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    #[error("text is not UTF-8")]
    Utf8,
    #[error("frame or message over {0} bytes")]
    TooBig(usize),
}

impl WsError {
    /// The close code this error is reported with.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::Protocol(_) => 1002,
            WsError::Utf8 => 1007,
            WsError::TooBig(_) => 1009,
        }
    }
}

/// A whole message (or a control frame) from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Text(String),
    Binary(Vec<u8>),
    /// Over the soft limit: skipped, not stored. `binary` says which kind.
    TooLarge {
        binary: bool,
    },
    Ping(Vec<u8>),
    Pong,
    /// The client's close frame: its code (none when the frame was empty).
    Close(Option<u16>),
}

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = OpCode::Text as u8;
const BINARY: u8 = OpCode::Binary as u8;
const CLOSE: u8 = OpCode::Close as u8;
const PING: u8 = OpCode::Ping as u8;
const PONG: u8 = OpCode::Pong as u8;

/// The frame whose payload is being read.
#[derive(Debug)]
struct InFrame {
    opcode: u8,
    fin: bool,
    remaining: u64,
    mask: [u8; 4],
    /// Bytes of this frame's payload unmasked so far (the mask's phase).
    done: u64,
}

/// A data message being assembled from its frames.
#[derive(Debug)]
struct Assembly {
    binary: bool,
    /// The bytes so far; `None` once it passed the soft limit (skipped).
    data: Option<Vec<u8>>,
    len: u64,
}

/// Turns client bytes into [`Event`]s; see the module doc.
#[derive(Debug)]
pub struct Decoder {
    soft: usize,
    hard: usize,
    header: [u8; 14],
    header_len: usize,
    frame: Option<InFrame>,
    message: Option<Assembly>,
    /// The payload of the control frame being read (at most 125 bytes).
    control: Vec<u8>,
}

/// Bytes a frame header needs, from its first two bytes.
fn header_size(b0_b1: [u8; 2]) -> usize {
    let len = b0_b1[1] & 0x7f;
    let ext = match len {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if b0_b1[1] & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

/// Whether a client may send this close code (RFC 6455 7.4).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

impl Decoder {
    /// `soft`: larger messages become [`Event::TooLarge`]; `hard`: larger
    /// frames or messages are a [`WsError::TooBig`].
    pub fn new(soft: usize, hard: usize) -> Decoder {
        Decoder {
            soft,
            hard: hard.max(soft),
            header: [0; 14],
            header_len: 0,
            frame: None,
            message: None,
            control: Vec::new(),
        }
    }

    /// Whether a message or frame is half received (its bytes are held).
    pub fn mid_message(&self) -> bool {
        self.header_len > 0 || self.frame.is_some() || self.message.is_some()
    }

    /// Consumes bytes from `input` until one event is complete or the
    /// input runs out; returns how many bytes it used and the event, if
    /// one completed. After an error the connection must be closed.
    pub fn feed(&mut self, input: &[u8]) -> (usize, Result<Option<Event>, WsError>) {
        let mut used = 0;
        loop {
            if self.frame.is_none() {
                // Gather the header: the first two bytes say how long it is.
                let need = if self.header_len < 2 {
                    2
                } else {
                    header_size([self.header[0], self.header[1]])
                };
                if self.header_len < need {
                    let take = (need - self.header_len).min(input.len() - used);
                    self.header[self.header_len..self.header_len + take]
                        .copy_from_slice(&input[used..used + take]);
                    self.header_len += take;
                    used += take;
                    if self.header_len < need {
                        return (used, Ok(None));
                    }
                    if need == 2 {
                        continue;
                    }
                }
                if let Err(e) = self.start_frame() {
                    return (used, Err(e));
                }
            }
            let Some(frame) = self.frame.as_mut() else {
                continue;
            };
            let take = (frame.remaining.min((input.len() - used) as u64)) as usize;
            let chunk = &input[used..used + take];
            used += take;
            let phase = frame.done;
            frame.remaining -= take as u64;
            frame.done += take as u64;
            let mask = frame.mask;
            let unmask = |out: &mut Vec<u8>| {
                out.extend(
                    chunk
                        .iter()
                        .enumerate()
                        .map(|(i, b)| b ^ mask[((phase + i as u64) % 4) as usize]),
                );
            };
            if frame.opcode >= CLOSE {
                unmask(&mut self.control);
            } else if let Some(data) = self.message.as_mut().and_then(|m| m.data.as_mut()) {
                unmask(data);
            }
            if frame.remaining > 0 {
                return (used, Ok(None));
            }
            let Some(frame) = self.frame.take() else {
                continue;
            };
            match self.end_frame(frame) {
                Ok(Some(event)) => return (used, Ok(Some(event))),
                Ok(None) => {
                    if used == input.len() {
                        return (used, Ok(None));
                    }
                }
                Err(e) => return (used, Err(e)),
            }
        }
    }

    /// Checks a complete header and starts reading its payload.
    fn start_frame(&mut self) -> Result<(), WsError> {
        let h = &self.header[..self.header_len];
        let (b0, b1) = (h[0], h[1]);
        self.header_len = 0;
        if b0 & 0x70 != 0 {
            return Err(WsError::Protocol("reserved bits set"));
        }
        if b1 & 0x80 == 0 {
            return Err(WsError::Protocol("client frames must be masked"));
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        let (len, rest) = match b1 & 0x7f {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), &h[4..]),
            127 => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&h[2..10]);
                (u64::from_be_bytes(be), &h[10..])
            }
            n => (u64::from(n), &h[2..]),
        };
        let mask = [rest[0], rest[1], rest[2], rest[3]];
        match opcode {
            CLOSE | PING | PONG => {
                if !fin {
                    return Err(WsError::Protocol("fragmented control frame"));
                }
                if len > 125 {
                    return Err(WsError::Protocol("control frame over 125 bytes"));
                }
                self.control = Vec::with_capacity(len as usize);
            }
            TEXT | BINARY | CONTINUATION => {
                if len > self.hard as u64 {
                    return Err(WsError::TooBig(self.hard));
                }
                match (opcode, &mut self.message) {
                    (CONTINUATION, None) => {
                        return Err(WsError::Protocol("continuation of nothing"))
                    }
                    (CONTINUATION, Some(_)) => {}
                    (_, Some(_)) => {
                        return Err(WsError::Protocol("new message inside a fragmented one"))
                    }
                    (_, None) => {
                        self.message = Some(Assembly {
                            binary: opcode == BINARY,
                            data: Some(Vec::new()),
                            len: 0,
                        })
                    }
                }
                if let Some(m) = self.message.as_mut() {
                    m.len += len;
                    if m.len > self.hard as u64 {
                        return Err(WsError::TooBig(self.hard));
                    }
                    if m.len > self.soft as u64 {
                        // Skipped from here on: the node never holds it.
                        m.data = None;
                    } else if let Some(data) = m.data.as_mut() {
                        data.reserve_exact(len as usize);
                    }
                }
            }
            _ => return Err(WsError::Protocol("unknown opcode")),
        }
        self.frame = Some(InFrame {
            opcode,
            fin,
            remaining: len,
            mask,
            done: 0,
        });
        Ok(())
    }

    /// A frame's payload is complete: the event it finishes, if any.
    fn end_frame(&mut self, frame: InFrame) -> Result<Option<Event>, WsError> {
        match frame.opcode {
            PING => Ok(Some(Event::Ping(std::mem::take(&mut self.control)))),
            PONG => {
                self.control = Vec::new();
                Ok(Some(Event::Pong))
            }
            CLOSE => {
                let body = std::mem::take(&mut self.control);
                match body.len() {
                    0 => Ok(Some(Event::Close(None))),
                    1 => Err(WsError::Protocol("close frame of one byte")),
                    _ => {
                        let code = u16::from_be_bytes([body[0], body[1]]);
                        if !valid_close_code(code) {
                            return Err(WsError::Protocol("invalid close code"));
                        }
                        if std::str::from_utf8(&body[2..]).is_err() {
                            return Err(WsError::Utf8);
                        }
                        Ok(Some(Event::Close(Some(code))))
                    }
                }
            }
            _ if !frame.fin => Ok(None),
            _ => {
                let Some(m) = self.message.take() else {
                    return Err(WsError::Protocol("continuation of nothing"));
                };
                match (m.data, m.binary) {
                    (None, binary) => Ok(Some(Event::TooLarge { binary })),
                    (Some(data), true) => Ok(Some(Event::Binary(data))),
                    (Some(data), false) => String::from_utf8(data)
                        .map(|t| Some(Event::Text(t)))
                        .map_err(|_| WsError::Utf8),
                }
            }
        }
    }
}

/// Opcodes of data and control frames (RFC 6455 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

/// Appends a final, unmasked frame header for a payload of `len` bytes.
pub fn put_header(out: &mut Vec<u8>, op: OpCode, len: usize) {
    out.push(0x80 | op as u8);
    if len < 126 {
        out.push(len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Appends a whole close frame: `code`, then `reason` cut to fit the
/// 125-byte control frame limit (at a character boundary).
pub fn put_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    put_header(out, OpCode::Close, 2 + end);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&reason.as_bytes()[..end]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut out = vec![b0];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xffff {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// Every event in `bytes`, fed `step` bytes at a time.
    fn decode(bytes: &[u8], step: usize) -> Result<Vec<Event>, WsError> {
        let mut d = Decoder::new(100, 1000);
        let mut events = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        for chunk in bytes.chunks(step) {
            pending.extend_from_slice(chunk);
            loop {
                let (used, r) = d.feed(&pending);
                pending.drain(..used);
                match r? {
                    Some(e) => events.push(e),
                    None => break,
                }
            }
        }
        Ok(events)
    }

    #[test]
    fn messages_come_whole_however_the_bytes_are_split() {
        let mut bytes = frame(0x81, b"hello");
        bytes.extend(frame(0x02, b"ab"));
        bytes.extend(frame(0x89, b"p"));
        bytes.extend(frame(0x80, b"cd"));
        bytes.extend(frame(0x88, &[0x03, 0xe8, b'o', b'k']));
        let want = vec![
            Event::Text("hello".into()),
            Event::Ping(b"p".to_vec()),
            Event::Binary(b"abcd".to_vec()),
            Event::Close(Some(1000)),
        ];
        for step in [1, 2, 3, 7, bytes.len()] {
            assert_eq!(decode(&bytes, step), Ok(want.clone()), "step {step}");
        }
        let long = "x".repeat(90);
        assert_eq!(
            decode(&frame(0x81, long.as_bytes()), 5),
            Ok(vec![Event::Text(long)])
        );
    }

    #[test]
    fn a_message_over_the_soft_limit_is_skipped_and_over_the_hard_one_refused() {
        let big = vec![b'a'; 300];
        let mut bytes = frame(0x81, &big);
        bytes.extend(frame(0x81, b"next"));
        assert_eq!(
            decode(&bytes, 64),
            Ok(vec![
                Event::TooLarge { binary: false },
                Event::Text("next".into())
            ])
        );
        // Over the hard limit from the header alone, before any payload.
        assert_eq!(
            decode(&frame(0x82, &[0; 1001])[..14], 14),
            Err(WsError::TooBig(1000))
        );
        // Fragments adding up past it.
        let mut frags = frame(0x02, &[0; 600]);
        frags.extend(frame(0x80, &[0; 600]));
        assert_eq!(decode(&frags, 4096), Err(WsError::TooBig(1000)));
    }

    #[test]
    fn violations_are_errors_with_their_close_codes() {
        let err = |bytes: &[u8]| decode(bytes, 3).map_err(|e| e.close_code());
        assert_eq!(err(&[0xC1, 0x80, 1, 2, 3, 4]), Err(1002), "reserved bit");
        assert_eq!(err(&[0x81, 0x00]), Err(1002), "unmasked");
        assert_eq!(err(&frame(0x83, b"")), Err(1002), "unknown opcode");
        assert_eq!(err(&frame(0x09, b"")), Err(1002), "fragmented ping");
        assert_eq!(err(&frame(0x89, &[0; 126])), Err(1002), "long ping");
        assert_eq!(err(&frame(0x80, b"x")), Err(1002), "lone continuation");
        let mut two = frame(0x01, b"a");
        two.extend(frame(0x81, b"b"));
        assert_eq!(err(&two), Err(1002), "new message mid-fragments");
        assert_eq!(err(&frame(0x81, &[0xff, 0xfe])), Err(1007), "not UTF-8");
        assert_eq!(err(&frame(0x88, &[3])), Err(1002), "one-byte close");
        assert_eq!(err(&frame(0x88, &[0x03, 0xed])), Err(1002), "1005 sent");
        assert_eq!(err(&frame(0x88, &[0x03, 0xe8, 0xff])), Err(1007));
        // A UTF-8 character split across fragments is fine.
        let mut split = frame(0x01, &[0xc3]);
        split.extend(frame(0x80, &[0xa9]));
        assert_eq!(decode(&split, 1), Ok(vec![Event::Text("é".into())]));
    }

    #[test]
    fn headers_use_the_shortest_length() {
        for (len, size) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let mut out = Vec::new();
            put_header(&mut out, OpCode::Binary, len);
            assert_eq!((out.len(), out[0]), (size, 0x82), "len {len}");
        }
        let mut out = Vec::new();
        put_close(&mut out, 4002, &"é".repeat(100));
        assert_eq!(out.len(), 2 + 2 + 122, "cut to 125 at a char boundary");
        assert_eq!(&out[..4], &[0x88, 124, 0x0f, 0xa2]);
    }
}
