//! The client side of the Redis protocol, as far as the broker link needs
//! it: commands written as arrays of bulk strings, and what a RESP3 server
//! sends back read out of a byte buffer as one of three things: a message
//! published on a subscribed channel, the answer to a command (in the
//! order the commands were sent), or a push the link has no use for.
//!
//! It exists so that the standalone broker link ([`crate::link`]) reads
//! its one connection in place, with no client library task and channel
//! between the socket and the node: by `perf`, the Redis client (its
//! parser, its tasks, its allocations per reply) was about an eighth of a
//! node's CPU in the whole-stack benchmark.
//!
//! The bytes come from the broker, which is trusted as a service but is
//! still a peer: nothing here may panic on them. A published message
//! longer than the caller's limit is skipped on its length line, without
//! being buffered ([`Frame::Oversized`]); any other string that long is an
//! error. A frame holds at most [`MAX_VALUES`] values nested at most
//! [`MAX_DEPTH`] deep, and at most [`MAX_LINE`] bytes of lines (simple
//! strings, errors, lengths), so parsing an incomplete frame again after
//! each read costs a bounded amount whatever the broker sends; strings
//! are stepped over by their length, not scanned.

/// The deepest nesting of aggregates accepted (HELLO's answer is 3 deep).
pub const MAX_DEPTH: usize = 8;
/// The most bytes of lines (`+…`, `-…`, lengths and counts) one frame may
/// hold, CRLFs included. HELLO's answer, the largest the link reads, has
/// a few hundred.
pub const MAX_LINE: usize = 16 * 1024;
/// The most values one frame may hold, nested ones and attributes
/// included. HELLO's answer has a few dozen.
pub const MAX_VALUES: usize = 4096;

/// One complete value the server sent, borrowed from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A message published on a channel this connection subscribes to.
    Message {
        channel: &'a [u8],
        payload: &'a [u8],
    },
    /// A published message whose payload is over the limit: the frame's
    /// bytes so far are taken, and the next `skip` bytes (the payload and
    /// its CRLF) are to be dropped unread.
    Oversized { channel: &'a [u8], skip: u64 },
    /// The answer to the oldest command still unanswered.
    Answer(Answer),
    /// A push that answers nothing and carries no message (a pattern
    /// message, a client-tracking invalidation).
    Ignored,
}

/// What a command came to. The link needs no more than this: PUBLISH's
/// count of receivers and HELLO's server description are not used.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Ok,
    /// An error reply (`-ERR …`, or a RESP3 blob error), as text.
    Error(String),
}

/// Bytes that are not the Redis protocol, or over a limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    #[error("unexpected byte {0:#04x} where a RESP type was expected")]
    Type(u8),
    #[error("a malformed length or number line")]
    Number,
    #[error("a bulk string of {len} bytes, over the limit of {limit}")]
    TooLong { len: u64, limit: usize },
    #[error("aggregates nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("more than {MAX_LINE} bytes of lines in one frame")]
    LineTooLong,
    #[error("a bulk string not followed by CRLF")]
    Terminator,
    #[error("a frame of more than {MAX_VALUES} values")]
    TooMany,
}

/// Appends one command, `args` as bulk strings.
pub fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    header(out, b'*', args.len());
    for arg in args {
        header(out, b'$', arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

fn header(out: &mut Vec<u8>, kind: u8, n: usize) {
    use std::io::Write;
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{}{n}\r\n", kind as char);
}

/// The first complete frame in `buf` and the bytes it took, `None` while
/// it is incomplete. A bulk string may be up to `max_bulk` bytes.
pub fn parse(buf: &[u8], max_bulk: usize) -> Result<Option<(Frame<'_>, usize)>, RespError> {
    let p = Parser {
        buf,
        max_bulk,
        values: std::cell::Cell::new(0),
        lines: std::cell::Cell::new(0),
    };
    let Some((pos, kind)) = p.skip_attributes(0, 0)? else {
        return Ok(None);
    };
    match kind {
        b'>' => p.push(pos),
        b'-' => Ok(p.line(pos + 1)?.map(|(text, end)| (error(text), end))),
        b'!' => Ok(p
            .bulk(pos)?
            .map(|(text, end)| (error(text.unwrap_or_default()), end))),
        _ => Ok(p.value(pos, 0)?.map(|end| (Frame::Answer(Answer::Ok), end))),
    }
}

fn error(text: &[u8]) -> Frame<'static> {
    Frame::Answer(Answer::Error(String::from_utf8_lossy(text).into_owned()))
}

/// A string step: its bytes (`None` for a null or a non-string) and where
/// the next value begins, or `None` while incomplete.
type StrStep<'a> = Result<Option<(Option<&'a [u8]>, usize)>, RespError>;

struct Parser<'a> {
    buf: &'a [u8],
    max_bulk: usize,
    /// Values seen so far in this frame.
    values: std::cell::Cell<usize>,
    /// Bytes of lines scanned so far in this frame.
    lines: std::cell::Cell<usize>,
}

/// `Some` of a step's result, or return `Ok(None)`: the frame is incomplete.
macro_rules! more {
    ($e:expr) => {
        match $e? {
            Some(v) => v,
            None => return Ok(None),
        }
    };
}

impl<'a> Parser<'a> {
    /// Skips RESP3 attribute maps (`|`), which may precede any value; the
    /// position and type byte of the value itself.
    fn skip_attributes(
        &self,
        mut pos: usize,
        depth: usize,
    ) -> Result<Option<(usize, u8)>, RespError> {
        loop {
            let Some(&kind) = self.buf.get(pos) else {
                return Ok(None);
            };
            if kind != b'|' {
                return Ok(Some((pos, kind)));
            }
            self.counted()?;
            let (n, mut at) = more!(self.count(pos + 1));
            for _ in 0..n.saturating_mul(2) {
                at = more!(self.value(at, depth + 1));
            }
            pos = at;
        }
    }

    /// A push: a message, the confirmation of a (un)subscribe (which is
    /// the answer to that command), or something to ignore.
    fn push(&self, pos: usize) -> Result<Option<(Frame<'a>, usize)>, RespError> {
        let (n, mut at) = more!(self.count(pos + 1));
        let mut first = [&[][..]; 3];
        for i in 0..n {
            let payload = i == 2 && n == 3 && first[0] == b"message";
            let (element, end) = if payload && self.buf.get(at) == Some(&b'$') {
                // A message's payload, its last element: one over the
                // limit is skipped, not an error.
                self.counted()?;
                let (len, start) = more!(self.number(at + 1));
                if u64::try_from(len).is_ok_and(|len| len > self.max_bulk as u64) {
                    let skip = (len as u64).saturating_add(2);
                    let channel = first[1];
                    return Ok(Some((Frame::Oversized { channel, skip }, start)));
                }
                more!(self.bulk_body(len, start))
            } else {
                more!(self.element(at))
            };
            if let (Some(slot), Some(text)) = (first.get_mut(i as usize), element) {
                *slot = text;
            }
            at = end;
        }
        let frame = match first[0] {
            b"message" if n == 3 => Frame::Message {
                channel: first[1],
                payload: first[2],
            },
            b"subscribe" | b"unsubscribe" | b"ssubscribe" | b"sunsubscribe" | b"psubscribe"
            | b"punsubscribe" => Frame::Answer(Answer::Ok),
            _ => Frame::Ignored,
        };
        Ok(Some((frame, at)))
    }

    /// One element of a push: its bytes if it is a string, and its end.
    fn element(&self, pos: usize) -> StrStep<'a> {
        self.counted()?;
        let (pos, kind) = more!(self.skip_attributes(pos, 1));
        match kind {
            b'$' => self.bulk(pos),
            b'+' => Ok(self.line(pos + 1)?.map(|(t, end)| (Some(t), end))),
            _ => Ok(self.value(pos, 1)?.map(|end| (None, end))),
        }
    }

    /// Counts one more value in the frame.
    fn counted(&self) -> Result<(), RespError> {
        let n = self.values.get() + 1;
        self.values.set(n);
        if n > MAX_VALUES {
            return Err(RespError::TooMany);
        }
        Ok(())
    }

    /// Where the value at `pos` ends.
    fn value(&self, pos: usize, depth: usize) -> Result<Option<usize>, RespError> {
        if depth > MAX_DEPTH {
            return Err(RespError::TooDeep);
        }
        self.counted()?;
        let (pos, kind) = more!(self.skip_attributes(pos, depth));
        match kind {
            b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => {
                Ok(self.line(pos + 1)?.map(|(_, end)| end))
            }
            b'$' | b'!' | b'=' => Ok(self.bulk(pos)?.map(|(_, end)| end)),
            b'*' | b'>' | b'~' | b'%' => {
                let (n, mut at) = more!(self.count(pos + 1));
                let n = if kind == b'%' { n.saturating_mul(2) } else { n };
                for _ in 0..n {
                    at = more!(self.value(at, depth + 1));
                }
                Ok(Some(at))
            }
            other => Err(RespError::Type(other)),
        }
    }

    /// A bulk-like string (`$`, `!`, `=`) at `pos`: its bytes (`None` for
    /// RESP2's null bulk) and its end.
    fn bulk(&self, pos: usize) -> StrStep<'a> {
        let (len, start) = more!(self.number(pos + 1));
        self.bulk_body(len, start)
    }

    /// A bulk string's bytes from `start`, `len` declared on its length
    /// line.
    fn bulk_body(&self, len: i64, start: usize) -> StrStep<'a> {
        if len < 0 {
            return Ok(Some((None, start)));
        }
        let len = len as u64;
        let too_long = || RespError::TooLong {
            len,
            limit: self.max_bulk,
        };
        // Checked, so that no declared length wraps the end on any target.
        let end = (len <= self.max_bulk as u64)
            .then(|| start.checked_add(len as usize))
            .flatten()
            .filter(|end| end.checked_add(2).is_some())
            .ok_or_else(too_long)?;
        if self.buf.len() < end + 2 {
            return Ok(None);
        }
        if &self.buf[end..end + 2] != b"\r\n" {
            return Err(RespError::Terminator);
        }
        Ok(Some((Some(&self.buf[start..end]), end + 2)))
    }

    /// An aggregate's element count (a null aggregate counts none).
    fn count(&self, pos: usize) -> Result<Option<(u64, usize)>, RespError> {
        Ok(self
            .number(pos)?
            .map(|(n, end)| (u64::try_from(n).unwrap_or(0), end)))
    }

    fn number(&self, pos: usize) -> Result<Option<(i64, usize)>, RespError> {
        let (text, end) = more!(self.line(pos));
        let n = std::str::from_utf8(text)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or(RespError::Number)?;
        Ok(Some((n, end)))
    }

    /// The line starting at `pos` (without its CRLF) and where the next
    /// begins.
    fn line(&self, pos: usize) -> Result<Option<(&'a [u8], usize)>, RespError> {
        let rest = self.buf.get(pos..).unwrap_or_default();
        let budget = MAX_LINE - self.lines.get();
        let window = &rest[..rest.len().min(budget)];
        match window.windows(2).position(|w| w == b"\r\n") {
            Some(i) => {
                self.lines.set(self.lines.get() + i + 2);
                Ok(Some((&rest[..i], pos + i + 2)))
            }
            None if window.len() == budget => Err(RespError::LineTooLong),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: &[u8]) -> Result<Option<(Frame<'_>, usize)>, RespError> {
        parse(bytes, 1024)
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        command(&mut out, &[b"PUBLISH", b"room:a", b""]);
        assert_eq!(
            out,
            b"*3\r\n$7\r\nPUBLISH\r\n$6\r\nroom:a\r\n$0\r\n\r\n".to_vec()
        );
    }

    #[test]
    fn a_message_push_gives_its_channel_and_payload() {
        let bytes = b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhe\r\no\r\n:1\r\n";
        let (frame, used) = one(bytes).unwrap().unwrap();
        assert_eq!(
            frame,
            Frame::Message {
                channel: b"ch",
                payload: b"he\r\no"
            }
        );
        assert_eq!(&bytes[used..], b":1\r\n");
        // Each shorter prefix is incomplete, never an error.
        for cut in 0..used {
            assert_eq!(one(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
    }

    fn ok(bytes: &[u8]) -> Frame<'_> {
        one(bytes).unwrap().unwrap().0
    }

    #[test]
    fn answers_in_every_shape_are_told_apart_from_pushes() {
        assert_eq!(ok(b":3\r\n"), Frame::Answer(Answer::Ok));
        assert_eq!(ok(b"+OK\r\n"), Frame::Answer(Answer::Ok));
        assert_eq!(ok(b"$-1\r\n"), Frame::Answer(Answer::Ok));
        assert_eq!(
            ok(b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nmodules\r\n*0\r\n"),
            Frame::Answer(Answer::Ok)
        );
        assert_eq!(
            ok(b"-ERR too many channels\r\n"),
            Frame::Answer(Answer::Error("ERR too many channels".into()))
        );
        assert_eq!(
            ok(b"!7\r\nERR bad\r\n"),
            Frame::Answer(Answer::Error("ERR bad".into()))
        );
        // A (un)subscribe's confirmation is that command's answer.
        assert_eq!(
            ok(b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"),
            Frame::Answer(Answer::Ok)
        );
        assert_eq!(
            ok(b">3\r\n$11\r\nunsubscribe\r\n$2\r\nch\r\n:0\r\n"),
            Frame::Answer(Answer::Ok)
        );
        assert_eq!(
            ok(b">4\r\n$8\r\npmessage\r\n$1\r\n*\r\n$2\r\nch\r\n$1\r\nx\r\n"),
            Frame::Ignored
        );
        // An attribute before a reply is skipped.
        assert_eq!(ok(b"|1\r\n+key\r\n:1\r\n:5\r\n"), Frame::Answer(Answer::Ok));
    }

    #[test]
    fn limits_are_errors_before_anything_is_buffered() {
        assert_eq!(
            one(b"$1025\r\n"),
            Err(RespError::TooLong {
                len: 1025,
                limit: 1024
            })
        );
        // A message over the limit is skipped on its length line; its
        // channel over the limit is an error.
        assert_eq!(
            one(b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$99999999\r\n"),
            Ok(Some((
                Frame::Oversized {
                    channel: b"ch",
                    skip: 100_000_001
                },
                36
            )))
        );
        assert_eq!(
            one(b">3\r\n$7\r\nmessage\r\n$9999\r\n"),
            Err(RespError::TooLong {
                len: 9999,
                limit: 1024
            })
        );
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2);
        assert_eq!(one(deep.as_bytes()), Err(RespError::TooDeep));
        let long = vec![b'+'; MAX_LINE + 3];
        assert_eq!(one(&long), Err(RespError::LineTooLong));
        // The line budget is the frame's, not each line's: many long
        // lines, each well under it, are refused together.
        let line = format!("+{}\r\n", "x".repeat(1000));
        let lines = format!("*100\r\n{}", line.repeat(100));
        assert_eq!(one(lines.as_bytes()), Err(RespError::LineTooLong));
        // A line of exactly the budget, cut after its CR, is incomplete.
        let exact = format!("+{}\r\n", "x".repeat(MAX_LINE - 3));
        assert_eq!(exact.len(), MAX_LINE);
        assert_eq!(one(&exact.as_bytes()[..MAX_LINE - 1]), Ok(None));
        assert!(matches!(one(exact.as_bytes()), Ok(Some((_, MAX_LINE)))));
        // Empty attribute maps count as values.
        let attrs = "|0\r\n".repeat(MAX_VALUES + 1);
        assert_eq!(one(attrs.as_bytes()), Err(RespError::TooMany));
        assert_eq!(one(b"?x\r\n"), Err(RespError::Type(b'?')));
        assert_eq!(one(b"$2\r\nabXY"), Err(RespError::Terminator));
        assert_eq!(one(b"*x\r\n"), Err(RespError::Number));

        let many = format!("*{}\r\n{}", MAX_VALUES + 1, ":1\r\n".repeat(MAX_VALUES + 1));
        assert_eq!(one(many.as_bytes()), Err(RespError::TooMany));
        let under = format!("*{}\r\n{}", MAX_VALUES - 1, ":1\r\n".repeat(MAX_VALUES - 1));
        assert!(matches!(
            one(under.as_bytes()),
            Ok(Some((Frame::Answer(Answer::Ok), _)))
        ));
    }
}
