//! The listening sockets passed from an old proxy process to a new one
//! during a binary upgrade (`upgrade`), over a Unix socket with
//! SCM_RIGHTS, as pingora and Envoy do.
//!
//! The old process sends one message: every listening socket as
//! ancillary data and, as its bytes, one line per socket in the same
//! order — `<kind> <configured bind> <local address>` — then `end`. The
//! configured bind is there for listeners bound to port 0, whose local
//! address no config names. The new process answers one line: `ready
//! <pid>` once it serves, or `error <reason>`.
//!
//! The new process matches sockets to its own config by address, never
//! by position: a `[[listen]]` or `[admin]` whose `bind` equals a
//! received socket's local address (or its configured bind, for port 0)
//! takes that socket; an address no longer in the config is closed; a
//! new one is bound fresh. Both processes share the socket (the same
//! kernel object, one accept queue), so connections waiting in it when
//! the old one stops accepting are taken by the new one, none refused.
//!
//! `rustix` gives `sendmsg`/`recvmsg` with SCM_RIGHTS and `SO_PEERCRED`
//! behind a safe API (received descriptors arrive as `OwnedFd`); the
//! workspace forbids `unsafe`, and std has neither.

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::UnixStream;

/// Linux's `SCM_MAX_FD`: descriptors one message may carry.
pub const MAX_SOCKETS: usize = 253;

/// The handover message's text part is small; a longer one is not ours.
const MAX_TEXT: usize = 64 * 1024;

/// Why the sockets could not be handed over or taken.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0} listening sockets, more than one message carries ({MAX_SOCKETS})")]
    TooMany(usize),
    #[error("malformed handover message: {0}")]
    Malformed(String),
}

/// What a listening socket serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A `[[listen]]` for clients.
    Listen,
    /// The `[admin]` listener.
    Admin,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Listen => "listen",
            Kind::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        match s {
            "listen" => Some(Kind::Listen),
            "admin" => Some(Kind::Admin),
            _ => None,
        }
    }
}

/// One listening socket, as sent or received.
#[derive(Debug)]
pub struct Socket {
    pub kind: Kind,
    /// The `bind` of its config entry (may have port 0).
    pub configured: SocketAddr,
    /// Where it listens.
    pub local: SocketAddr,
    pub fd: OwnedFd,
}

impl Socket {
    /// A copy of a listener's descriptor `fd`, listening on `local`, kept
    /// to hand over later (the listener itself moves into its accept
    /// loop).
    pub fn of(
        kind: Kind,
        configured: SocketAddr,
        local: SocketAddr,
        fd: BorrowedFd<'_>,
    ) -> io::Result<Socket> {
        Ok(Socket {
            kind,
            configured,
            local,
            fd: fd.try_clone_to_owned()?,
        })
    }
}

/// Sends `sockets` on `stream`: the descriptors and their lines.
pub async fn send(stream: &mut UnixStream, sockets: &[Socket]) -> Result<(), HandoverError> {
    if sockets.len() > MAX_SOCKETS {
        return Err(HandoverError::TooMany(sockets.len()));
    }
    let mut text = String::new();
    for s in sockets {
        text.push_str(&format!(
            "{} {} {}\n",
            s.kind.as_str(),
            s.configured,
            s.local
        ));
    }
    text.push_str("end\n");
    let fds: Vec<_> = sockets.iter().map(|s| s.fd.as_fd()).collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    // The descriptors travel with the first bytes sent; the rest of the
    // text (if the kernel took only part of it) follows as plain bytes.
    let sent = stream
        .async_io(Interest::WRITABLE, || {
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
                return Err(io::Error::other("ancillary buffer too small"));
            }
            let iov = [IoSlice::new(text.as_bytes())];
            sendmsg(&*stream, &iov, &mut control, SendFlags::NOSIGNAL).map_err(io::Error::from)
        })
        .await?;
    stream.write_all(&text.as_bytes()[sent..]).await?;
    Ok(())
}

/// Receives the sockets an old process sends on `stream`.
pub async fn receive(stream: &mut UnixStream) -> Result<Vec<Socket>, HandoverError> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut text: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 4096];
    while !text.ends_with(b"end\n") {
        if text.len() > MAX_TEXT {
            return Err(HandoverError::Malformed("text too long".into()));
        }
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = stream
            .async_io(Interest::READABLE, || {
                let mut iov = [IoSliceMut::new(&mut chunk)];
                // CLOEXEC: a later upgrade's child must not inherit them.
                recvmsg(&*stream, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
                    .map_err(io::Error::from)
            })
            .await?;
        if got.flags.contains(ReturnFlags::CTRUNC) {
            return Err(HandoverError::TooMany(MAX_SOCKETS + 1));
        }
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if got.bytes == 0 {
            return Err(HandoverError::Malformed("closed before `end`".into()));
        }
        text.extend_from_slice(&chunk[..got.bytes]);
    }
    let text = String::from_utf8(text).map_err(|_| HandoverError::Malformed("not UTF-8".into()))?;
    let lines: Vec<&str> = text.lines().filter(|l| *l != "end").collect();
    if lines.len() != fds.len() {
        return Err(HandoverError::Malformed(format!(
            "{} lines for {} sockets",
            lines.len(),
            fds.len()
        )));
    }
    lines
        .into_iter()
        .zip(fds)
        .map(|(l, fd)| parse_line(l, fd))
        .collect()
}

fn parse_line(line: &str, fd: OwnedFd) -> Result<Socket, HandoverError> {
    let bad = || HandoverError::Malformed(format!("line `{line}`"));
    let mut words = line.split(' ');
    let kind = words.next().and_then(Kind::parse).ok_or_else(bad)?;
    let configured = words.next().and_then(|w| w.parse().ok()).ok_or_else(bad)?;
    let local = words.next().and_then(|w| w.parse().ok()).ok_or_else(bad)?;
    // Trust the socket over the text: it must listen where the line says.
    let actual = std::net::TcpListener::from(fd.try_clone()?).local_addr()?;
    if actual != local || words.next().is_some() {
        return Err(bad());
    }
    Ok(Socket {
        kind,
        configured,
        local,
        fd,
    })
}

/// Reads the new process's one-line answer: `Ok(pid)` for `ready <pid>`,
/// `Err(reason)` for `error <reason>` or anything else.
pub async fn read_answer(stream: &mut UnixStream) -> Result<Result<u32, String>, io::Error> {
    let mut line = String::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(stream, MAX_TEXT as u64));
    reader.read_line(&mut line).await?;
    let line = line.trim_end();
    Ok(match line.split_once(' ') {
        Some(("ready", pid)) => pid
            .parse()
            .map_err(|_| format!("unreadable answer `{line}`")),
        Some(("error", reason)) => Err(reason.to_string()),
        _ if line.is_empty() => Err("closed the handover socket without an answer".into()),
        _ => Err(format!("unreadable answer `{line}`")),
    })
}

/// The sockets a new process received, until its config has taken them.
pub struct Inherited {
    sockets: Vec<Socket>,
    stream: UnixStream,
}

impl Inherited {
    pub async fn connect(path: &std::path::Path) -> Result<Inherited, HandoverError> {
        let mut stream = UnixStream::connect(path).await?;
        let sockets = receive(&mut stream).await?;
        Ok(Inherited { sockets, stream })
    }

    /// The received socket listening on `bind`; for a `bind` with port 0,
    /// the first one of `kind` the old config bound the same way.
    pub fn take(&mut self, kind: Kind, bind: SocketAddr) -> Option<std::net::TcpListener> {
        let i = self
            .sockets
            .iter()
            .position(|s| s.local == bind)
            .or_else(|| {
                self.sockets
                    .iter()
                    .position(|s| s.kind == kind && s.configured == bind)
            })?;
        let socket = self.sockets.remove(i);
        tracing::info!(addr = %socket.local, kind = socket.kind.as_str(), "took over a listening socket from the old process");
        Some(std::net::TcpListener::from(socket.fd))
    }

    /// Closes the sockets no config entry took, then tells the old process
    /// this one serves.
    pub async fn ready(mut self) -> io::Result<()> {
        for s in self.sockets.drain(..) {
            tracing::info!(addr = %s.local, kind = s.kind.as_str(), "listener no longer in the config: closed");
        }
        let line = format!("ready {}\n", std::process::id());
        self.stream.write_all(line.as_bytes()).await
    }

    /// Tells the old process why this one gives up.
    pub async fn fail(mut self, reason: &str) {
        let line = format!("error {}\n", reason.replace('\n', " "));
        let _ = self.stream.write_all(line.as_bytes()).await;
    }
}

/// `inherited`'s socket for `bind`, else a fresh one bound there.
pub async fn take_or_bind(
    inherited: Option<&mut Inherited>,
    kind: Kind,
    bind: SocketAddr,
) -> io::Result<tokio::net::TcpListener> {
    match inherited.and_then(|i| i.take(kind, bind)) {
        Some(listener) => {
            listener.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(listener)
        }
        None => tokio::net::TcpListener::bind(bind).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn listener() -> tokio::net::TcpListener {
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()
    }

    #[tokio::test]
    async fn sockets_cross_and_are_matched_by_address() {
        let (a, b, admin) = (listener().await, listener().await, listener().await);
        let zero: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let sent = vec![
            Socket::of(Kind::Listen, zero, a.local_addr().unwrap(), a.as_fd()).unwrap(),
            Socket::of(
                Kind::Listen,
                b.local_addr().unwrap(),
                b.local_addr().unwrap(),
                b.as_fd(),
            )
            .unwrap(),
            Socket::of(
                Kind::Admin,
                "127.0.0.1:0".parse().unwrap(),
                admin.local_addr().unwrap(),
                admin.as_fd(),
            )
            .unwrap(),
        ];
        let (mut old, new) = UnixStream::pair().unwrap();
        send(&mut old, &sent).await.unwrap();
        let sockets = receive(&mut { new }).await.unwrap();
        assert_eq!(sockets.len(), 3);
        let (_, stream) = UnixStream::pair().unwrap();
        let mut inherited = Inherited { sockets, stream };
        // By actual address first, whatever the order.
        let got_b = inherited
            .take(Kind::Listen, b.local_addr().unwrap())
            .unwrap();
        assert_eq!(got_b.local_addr().unwrap(), b.local_addr().unwrap());
        // Port 0 entries by their configured bind and kind.
        let got_admin = inherited.take(Kind::Admin, zero).unwrap();
        assert_eq!(got_admin.local_addr().unwrap(), admin.local_addr().unwrap());
        let got_a = inherited.take(Kind::Listen, zero).unwrap();
        assert_eq!(got_a.local_addr().unwrap(), a.local_addr().unwrap());
        assert!(inherited.take(Kind::Listen, zero).is_none());
        assert!(inherited
            .take(Kind::Listen, "127.0.0.1:1".parse().unwrap())
            .is_none());
        // The received socket accepts what is sent to the shared address.
        let got_b = tokio::net::TcpListener::from_std({
            got_b.set_nonblocking(true).unwrap();
            got_b
        })
        .unwrap();
        drop(b);
        let _client = tokio::net::TcpStream::connect(got_b.local_addr().unwrap())
            .await
            .unwrap();
        got_b.accept().await.unwrap();
    }

    #[tokio::test]
    async fn answers_are_read_as_ready_or_a_reason() {
        let (mut old, mut new) = UnixStream::pair().unwrap();
        new.write_all(b"ready 4242\n").await.unwrap();
        assert_eq!(read_answer(&mut old).await.unwrap(), Ok(4242));
        new.write_all(b"error bad config\n").await.unwrap();
        assert_eq!(
            read_answer(&mut old).await.unwrap(),
            Err("bad config".to_string())
        );
        drop(new);
        assert!(read_answer(&mut old).await.unwrap().is_err());
    }
}
