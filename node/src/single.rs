//! One connection to a single broker (limpet-broker, or one Redis
//! server), for [`crate::link`]: the [`Sender`] writes commands and takes
//! their answers in order, the [`Reader`] reads what the broker sends.
//!
//! It is one RESP3 connection of our own, not the Redis client's:
//! publishes, subscribes and the messages pushed back share it, its reader
//! parses them in place
//! ([`crate::resp`]) and hands answers to the sending side in the order
//! the commands went out. The Redis client put a task and a channel of its
//! own on both sides of the socket (two connections, four tasks); RESP3
//! (Redis 6 and later, and limpet-broker) lets one connection carry
//! commands while it is subscribed. Answers are only taken while a command
//! waits for one: a broker that sends an answer nobody asked for, or bytes
//! that are not RESP or over [`crate::resp`]'s bounds, loses the
//! connection, which is then reconnected as after any other failure. A
//! published message over `limits.inbound_queue_bytes` (it could not be
//! queued anyway) is dropped unread and counted, and the connection kept.
//! Answers share the socket with the messages pushed to the node, so a
//! command's answer waits behind what the broker sent before it; the
//! reader only checks and queues (or sheds) each message, so that wait
//! is short beside `broker_response_timeout`.

use crate::resp::{self, Answer, Frame};
use bytes::{Buf, Bytes, BytesMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

/// Why a command or an opening attempt failed, on a single broker or a
/// cluster (the link's error; defined here, below the link, so that the
/// two modules do not import each other).
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// An error reply: the broker refused the command, the connection is fine.
    #[error("{0}")]
    Refused(String),
    /// The connection cannot be used (a refused handshake, bytes that are
    /// not the protocol, a URL this link cannot serve).
    #[error("{0}")]
    Broken(String),
    /// From the Redis client (a cluster, or a URL it could not parse).
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
}

pub(crate) type LinkResult<T> = Result<T, LinkError>;

/// What the broker pushed to the node.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// A message on a channel the node subscribes to.
    Message(String, Bytes),
    /// A message longer than the reader takes, dropped unread: its
    /// channel and size, for the node to count as it counts any message
    /// it could not queue.
    TooLarge { channel: String, bytes: u64 },
}

/// The sending side of a single broker's connection: commands are
/// written here, and their answers come back from the [`Reader`] in the
/// order they were sent.
pub(crate) struct Sender {
    write: OwnedWriteHalf,
    /// Commands being encoded; kept between calls.
    out: Vec<u8>,
    answers: mpsc::UnboundedReceiver<Answer>,
    /// Answers owed: raised before commands are written, lowered by the
    /// reader for each answer it passes on. An answer while none is owed
    /// is a protocol error, so the channel above holds at most this many.
    owed: Arc<AtomicUsize>,
}

/// The reading side of a single broker's connection.
pub(crate) struct Reader {
    read: OwnedReadHalf,
    buf: BytesMut,
    answers: mpsc::UnboundedSender<Answer>,
    owed: Arc<AtomicUsize>,
    /// The longest message read; longer ones are dropped unread.
    max_bulk: usize,
    /// Bytes of an oversized message still to drop.
    skip: u64,
}

/// What one read asks the kernel for; the buffer is one per node.
const READ_CHUNK: usize = 16 * 1024;

/// Connects, then says HELLO 3 (with AUTH when the URL has a password).
pub(crate) async fn open_standalone(url: &str, max_message: usize) -> LinkResult<(Sender, Reader)> {
    let info = redis::IntoConnectionInfo::into_connection_info(url)?;
    let redis::ConnectionAddr::Tcp(host, port) = info.addr() else {
        return Err(LinkError::Broken(
            "only redis:// over plain TCP is supported for the broker link".into(),
        ));
    };
    let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
    // Without TCP_NODELAY a pipeline's last segment can wait for a delayed
    // ACK, tens of milliseconds per batch, which caps what the node can
    // publish.
    stream.set_nodelay(true)?;
    let (read, write) = stream.into_split();
    let (tx, answers) = mpsc::unbounded_channel();
    let owed = Arc::new(AtomicUsize::new(0));
    let mut sender = Sender {
        write,
        out: Vec::new(),
        answers,
        owed: owed.clone(),
    };
    let mut reader = Reader {
        read,
        buf: BytesMut::with_capacity(READ_CHUNK),
        answers: tx,
        owed,
        max_bulk: max_message,
        skip: 0,
    };
    let settings = info.redis_settings();
    let mut hello: Vec<&[u8]> = vec![b"HELLO", b"3"];
    if let Some(password) = settings.password() {
        let user = settings.username().unwrap_or("default");
        hello.extend([&b"AUTH"[..], user.as_bytes(), password.as_bytes()]);
    }
    resp::command(&mut sender.out, &hello);
    sender.write.write_all(&sender.out).await?;
    sender.out.clear();
    // The reader is not running yet: HELLO's answer is read here, before
    // anything is owed.
    reader.hello().await?;
    Ok((sender, reader))
}

impl Sender {
    /// Encodes one command, to go out with the next [`Sender::call`].
    pub(crate) fn command(&mut self, args: &[&[u8]]) {
        resp::command(&mut self.out, args);
    }

    /// Writes the commands encoded in `out`, `n` of them, owing as many
    /// answers.
    async fn send(&mut self, n: usize) -> LinkResult<()> {
        self.owed.fetch_add(n, Ordering::AcqRel);
        let r = self.write.write_all(&self.out).await;
        self.out.clear();
        if self.out.capacity() > 512 * 1024 {
            // A pipeline with a large message: its room is not kept.
            self.out = Vec::new();
        }
        Ok(r?)
    }

    /// Sends the `n` commands encoded in `out` and waits for their answers;
    /// the first error reply, if any, once all are in.
    pub(crate) async fn call(&mut self, n: usize) -> LinkResult<()> {
        self.send(n).await?;
        let mut refused = None;
        for _ in 0..n {
            match self.answers.recv().await {
                Some(Answer::Ok) => {}
                Some(Answer::Error(e)) => {
                    refused.get_or_insert(e);
                }
                None => {
                    return Err(LinkError::Io(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "the broker connection closed",
                    )))
                }
            }
        }
        refused.map_or(Ok(()), |e| Err(LinkError::Refused(e)))
    }
}

impl Reader {
    /// The next message the broker pushed; answers are passed to the
    /// sending side on the way. `None` once the connection is gone or has
    /// sent something it may not.
    pub(crate) async fn next(&mut self) -> Option<Pushed> {
        loop {
            if self.skip > 0 {
                // The rest of an oversized message, dropped as it comes.
                let n = self
                    .buf
                    .len()
                    .min(usize::try_from(self.skip).unwrap_or(usize::MAX));
                self.buf.advance(n);
                self.skip -= n as u64;
                if self.skip > 0 {
                    if !self.fill().await {
                        return None;
                    }
                    continue;
                }
            }
            let (pushed, used) = match resp::parse(&self.buf, self.max_bulk) {
                Ok(Some((frame, used))) => {
                    let pushed = match frame {
                        Frame::Message { channel, payload } => {
                            std::str::from_utf8(channel).ok().map(|c| {
                                Pushed::Message(c.to_string(), Bytes::copy_from_slice(payload))
                            })
                        }
                        Frame::Oversized { channel, skip } => {
                            self.skip = skip;
                            Some(Pushed::TooLarge {
                                channel: String::from_utf8_lossy(channel).into_owned(),
                                bytes: skip.saturating_sub(2),
                            })
                        }
                        Frame::Answer(answer) => {
                            if !self.answered(answer) {
                                return None;
                            }
                            None
                        }
                        Frame::Ignored => None,
                    };
                    (pushed, used)
                }
                Ok(None) => {
                    // Any frame the node takes is two strings within the
                    // limit and a few lines: more than that still
                    // incomplete is an aggregate without end.
                    if self.buf.len() > 2 * (self.max_bulk + resp::MAX_LINE) {
                        tracing::warn!(
                            buffered = self.buf.len(),
                            "the broker sent a frame larger than any message the node takes; reconnecting"
                        );
                        return None;
                    }
                    if !self.fill().await {
                        return None;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!("the broker sent something that is not the Redis protocol ({e}); reconnecting");
                    return None;
                }
            };
            self.buf.advance(used);
            if used > 4 * READ_CHUNK && self.buf.len() < READ_CHUNK {
                // A large message came and went: its room is not kept
                // (`reserve` would take it back whole).
                let mut fresh = BytesMut::with_capacity(READ_CHUNK);
                fresh.extend_from_slice(&self.buf);
                self.buf = fresh;
            }
            if pushed.is_some() {
                return pushed;
            }
        }
    }

    /// Passes an answer to the sending side; false if no command was owed
    /// one (a protocol error).
    fn answered(&self, answer: Answer) -> bool {
        let owed = self
            .owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if owed.is_err() {
            tracing::warn!("the broker sent an answer to no command; reconnecting");
            return false;
        }
        // The sending side may have given up (a timeout).
        let _ = self.answers.send(answer);
        true
    }

    /// Reads more into the buffer; false once the connection is gone.
    async fn fill(&mut self) -> bool {
        self.buf.reserve(READ_CHUNK);
        match self.read.read_buf(&mut self.buf).await {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => {
                tracing::debug!("broker connection read failed: {e}");
                false
            }
        }
    }

    /// The first frame, HELLO's answer: RESP3's map, or why not.
    async fn hello(&mut self) -> LinkResult<()> {
        loop {
            match resp::parse(&self.buf, self.max_bulk) {
                Ok(Some((Frame::Answer(Answer::Error(e)), _))) => {
                    return Err(LinkError::Broken(format!(
                        "the broker refused HELLO 3: {e} (the link needs RESP3: Redis 6 or later, or limpet-broker; and the password if the broker has one)"
                    )))
                }
                Ok(Some((Frame::Answer(Answer::Ok), used))) if self.buf.first() == Some(&b'%') => {
                    self.buf.advance(used);
                    return Ok(());
                }
                Ok(Some(_)) => {
                    return Err(LinkError::Broken(
                        "the broker answered HELLO 3 without switching to RESP3".into(),
                    ))
                }
                Ok(None) => {
                    if !self.fill().await {
                        return Err(LinkError::Broken(
                            "the broker closed the connection before answering HELLO".into(),
                        ));
                    }
                }
                Err(e) => return Err(LinkError::Broken(format!("HELLO's answer: {e}"))),
            }
        }
    }
}
