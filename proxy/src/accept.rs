//! Accepting a client connection for another thread's event loop.
//!
//! The accept loops run on the main runtime and deal each connection to a
//! connection thread ([`crate::cores`]), whose own event loop registers
//! it. tokio's `TcpListener::accept` would first register the socket with
//! the main runtime's epoll, only for the hand-over to take it out again:
//! two `epoll_ctl` calls per connection for nothing. So the listener is
//! watched for readiness here, and `accept4` hands back a plain
//! non-blocking socket, registered once, by the thread that serves it.
//!
//! `TCP_NODELAY` is set once, on the listening socket: Linux copies it to
//! every socket accepted from it, which saves a `setsockopt` per
//! connection (nginx sets it per connection).
//!
//! Counted with `strace -c` over 1,000 WebSocket connections opened and
//! closed: 2 `epoll_ctl` and 1 `setsockopt` fewer per connection than
//! with tokio's accept (see "Syscalls per message and per connection" in
//! the README).

use rustix::net::{acceptfrom_with, sockopt, SocketFlags};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A listening socket whose accepted connections are not registered with
/// the runtime that accepts them.
pub struct Acceptor {
    listener: AsyncFd<TcpListener>,
}

impl Acceptor {
    /// Takes over `listener` (it must be non-blocking, as tokio's are) and
    /// turns `TCP_NODELAY` on for every connection it will accept.
    pub fn new(listener: tokio::net::TcpListener) -> io::Result<Acceptor> {
        let listener = listener.into_std()?;
        sockopt::set_tcp_nodelay(&listener, true)?;
        // tokio deprecated its safe constructors because a `T` that does
        // not own its descriptor could close it while registered; the
        // replacement is `unsafe`, which this workspace forbids. A
        // `TcpListener` owns its descriptor, and `AsyncFd` deregisters it
        // before dropping it, so the safe one is sound here.
        #[allow(deprecated)]
        let listener = AsyncFd::with_interest(listener, Interest::READABLE)?;
        Ok(Acceptor { listener })
    }

    /// The next connection: a non-blocking socket, registered with no
    /// event loop yet, and its peer's address.
    ///
    /// A connection its client gave up on before it was accepted, or a
    /// signal during the call, is no error of the listener: the next one
    /// is taken at once.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        loop {
            let mut ready = self.listener.readable().await?;
            // `try_io` clears the readiness on EAGAIN, so the next wait
            // goes to epoll.
            match ready.try_io(|l| accept_one(l.get_ref())) {
                Ok(Err(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                    ) => {}
                Ok(accepted) => return accepted,
                Err(_would_block) => {}
            }
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.get_ref().local_addr()
    }
}

impl AsFd for Acceptor {
    /// The listening socket, for a binary upgrade to copy and hand over.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.get_ref().as_fd()
    }
}

/// One `accept4`, non-blocking and close-on-exec in the same call (std's
/// `accept` would need an `ioctl` after it for the first).
fn accept_one(listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
    let (fd, peer) = acceptfrom_with(listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)?;
    let peer = peer
        .and_then(|a| SocketAddr::try_from(a).ok())
        .ok_or_else(|| io::Error::other("accepted a connection without an IP peer address"))?;
    Ok((TcpStream::from(fd), peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_are_non_blocking_with_nodelay_and_the_peer_address() {
        let acceptor =
            Acceptor::new(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap();
        let addr = acceptor.local_addr().unwrap();
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), acceptor.accept());
        let client = client.unwrap();
        let (tcp, peer) = accepted.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        assert!(
            tcp.nodelay().unwrap(),
            "TCP_NODELAY comes from the listener"
        );
        // Non-blocking: a read with nothing sent returns at once.
        let mut buf = [0u8; 1];
        let err = std::io::Read::read(&mut &tcp, &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        // Registered nowhere yet: a runtime can take it.
        let tcp = tokio::net::TcpStream::from_std(tcp).unwrap();
        drop(client);
        let mut buf = [0u8; 1];
        let n = tokio::io::AsyncReadExt::read(&mut { tcp }, &mut buf)
            .await
            .unwrap();
        assert_eq!(n, 0, "the client's close reaches the accepted socket");
    }
}
