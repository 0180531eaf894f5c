//! Connections to backends: connect with a deadline, keep-alive pooling,
//! and sending a request without losing it to a stale pooled connection.
//!
//! Plain requests reuse idle HTTP/1.1 connections. A pooled connection the
//! backend has just closed is the classic proxy failure; hyper's
//! `try_send_request` hands the request back when it was never written,
//! and the request path (`forward`) resends it on a fresh connection or
//! another backend. Upgrade requests always get a fresh connection, which
//! then becomes the tunnel.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// Most idle connections kept per backend and connection thread.
const MAX_IDLE: usize = 128;

/// hyper's read and write buffer bound on a backend connection. Requests
/// go out with one `send`, their body copied behind the head, not a
/// `writev` of the pieces: a shorter path through the kernel (sys time per
/// plain request -3.5 % with the client side, `connection::builder`).
/// hyper keeps that buffer at its largest size while the connection is
/// pooled, so it is bounded here: an upload leaves at most this plus one
/// chunk of the client's body (itself bounded by `max_header_bytes`) on a
/// pooled connection, against hyper's default of about 400 KiB. It also
/// caps one read of a response body, and a response head (nginx's
/// `proxy_buffer_size` is 4 or 8 KiB).
const UPSTREAM_BUF: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(String),
    #[error("connect to {0}: {1}")]
    Io(String, std::io::Error),
    #[error("HTTP handshake with {0}: {1}")]
    Handshake(String, hyper::Error),
    #[error("TLS to {0}: {1}")]
    Tls(String, String),
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("no response head within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Hyper(#[from] hyper::Error),
    /// Health checks marked the backend down while the request waited
    /// (`on_marked_down = "shutdown-tunnels"`): a black-holed backend would
    /// otherwise hold it for the whole `timeouts.response`.
    #[error("backend marked down by health checks before it answered")]
    MarkedDown,
}

/// Idle keep-alive connections to one backend, a list per connection
/// thread ([`crate::cores`]): a connection's task runs on the thread that
/// opened it, and a request on another thread would wake it across threads.
#[derive(Default)]
pub struct IdleConns {
    lists: Mutex<Vec<IdleList>>,
}

/// One thread's idle connections, each with when it was checked in.
type IdleList = Vec<(SendRequest<Body>, Instant)>;

impl IdleConns {
    fn checkout(&self, max_idle: Duration) -> Option<SendRequest<Body>> {
        let mut lists = self.lists.lock();
        let list = lists.get_mut(crate::cores::current())?;
        while let Some((sender, since)) = list.pop() {
            if !sender.is_closed() && sender.is_ready() && since.elapsed() < max_idle {
                return Some(sender);
            }
        }
        None
    }

    /// Returns a connection whose response has been fully read.
    pub fn checkin(&self, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut lists = self.lists.lock();
        let thread = crate::cores::current();
        if lists.len() <= thread {
            lists.resize_with(thread + 1, Vec::new);
        }
        let list = &mut lists[thread];
        if list.len() >= MAX_IDLE {
            list.remove(0);
        }
        list.push((sender, Instant::now()));
    }

    /// Drops every idle connection (their backend was marked down: a
    /// connection to a host that vanished looks open and ready, and a
    /// request on it would wait for `timeouts.response`).
    pub fn clear(&self) -> usize {
        let lists = std::mem::take(&mut *self.lists.lock());
        lists.iter().map(Vec::len).sum()
    }

    pub fn len(&self) -> usize {
        self.lists.lock().iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// TCP keepalive on a socket to a backend (`upstream_keepalive`): a host
/// that vanished without a RST is noticed by the kernel after `idle +
/// interval × count` of silence, so a quiet tunnel or pooled connection
/// to it ends instead of staying open until `tunnel_idle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
}

impl Keepalive {
    /// The configured keepalive, `None` when `upstream_keepalive.idle = 0`.
    pub fn of(cfg: &limpet_config::ProxyConfig) -> Option<Keepalive> {
        let k = &cfg.upstream_keepalive;
        (!k.idle.is_zero()).then(|| Keepalive {
            idle: k.idle.get(),
            interval: k.interval.get(),
            count: k.count,
        })
    }

    /// Sets it on `tcp`. tokio only switches `SO_KEEPALIVE` on and off;
    /// the timings need `socket2` (the same crate tokio uses underneath).
    fn apply(self, tcp: &TcpStream) -> std::io::Result<()> {
        let params = socket2::TcpKeepalive::new()
            .with_time(self.idle)
            .with_interval(self.interval)
            .with_retries(self.count);
        socket2::SockRef::from(tcp).set_tcp_keepalive(&params)
    }
}

/// Where and how to connect to one backend.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub address: &'a str,
    /// TLS toward `https`/`wss` backends.
    pub tls: Option<&'a crate::tls::UpstreamConnector>,
    pub connect_timeout: Duration,
    pub keepalive: Option<Keepalive>,
}

/// Opens a TCP connection (TLS on top for `https` pools) and an HTTP/1.1
/// client over it.
pub async fn connect(target: Target<'_>) -> Result<SendRequest<Body>, ConnectError> {
    let Target {
        address,
        tls,
        connect_timeout: timeout,
        keepalive,
    } = target;
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Err(_) => return Err(ConnectError::Timeout(address.to_string())),
        Ok(Err(e)) => return Err(ConnectError::Io(address.to_string(), e)),
        Ok(Ok(tcp)) => tcp,
    };
    let _ = tcp.set_nodelay(true);
    if let Some(k) = keepalive {
        if let Err(e) = k.apply(&tcp) {
            // Not worth failing the request for: health checks and
            // `on_marked_down` still close what goes to a dead host.
            tracing::debug!(backend = %address, "TCP keepalive not set: {e}");
        }
    }
    match tls {
        None => handshake(address, TokioIo::new(tcp)).await,
        Some(tls) => {
            let name = tls
                .name_for(address)
                .map_err(|e| ConnectError::Tls(address.to_string(), e.to_string()))?;
            let stream = tokio::time::timeout(timeout, tls.connector.connect(name, tcp))
                .await
                .map_err(|_| ConnectError::Timeout(address.to_string()))?
                .map_err(|e| ConnectError::Tls(address.to_string(), e.to_string()))?;
            handshake(address, TokioIo::new(stream)).await
        }
    }
}

async fn handshake<IO>(address: &str, io: IO) -> Result<SendRequest<Body>, ConnectError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .writev(false)
        .max_buf_size(UPSTREAM_BUF)
        .handshake(io)
        .await
        .map_err(|e| ConnectError::Handshake(address.to_string(), e))?;
    let address = address.to_string();
    tokio::spawn(async move {
        // `with_upgrades` lets a 101 response hand the socket to the tunnel.
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(backend = %address, "upstream connection ended: {e}");
        }
    });
    Ok(sender)
}

/// A connection ready to carry one request.
pub struct Conn {
    sender: SendRequest<Body>,
    /// Taken from the idle list: it may have been closed by the backend
    /// just as we picked it (the keep-alive race), so a failure on it is
    /// retried on a fresh connection before anyone is blamed.
    pub pooled: bool,
}

/// A pooled connection when one is idle and `fresh` is false, else a new
/// one. Upgrades always ask for a fresh one: it becomes the tunnel.
pub async fn obtain(
    idle: &IdleConns,
    target: Target<'_>,
    fresh: bool,
    max_idle: Duration,
) -> Result<Conn, ConnectError> {
    if !fresh {
        if let Some(sender) = idle.checkout(max_idle) {
            return Ok(Conn {
                sender,
                pooled: true,
            });
        }
    }
    // Boxed: a connect (TLS included) is a large future, and holding room
    // for it inline would make every pooled request's future that large,
    // copied whole each time it moves.
    let sender = Box::pin(connect(target)).await?;
    Ok(Conn {
        sender,
        pooled: false,
    })
}

/// A send that got no response head.
pub struct Failed {
    pub error: SendError,
    /// The request, when hyper never wrote any of it: it can go to
    /// another connection or backend as is, body included.
    pub unsent: Option<Request<Body>>,
}

/// Sends `req` and waits for the response head, at most `response_timeout`
/// counted from the moment the client's body was fully read (`body_done`
/// resolves): time spent uploading belongs to the client, not the backend.
/// Gives up when `marked_down` resolves (the backend's health checks
/// failed meanwhile). Returns the connection for reuse once the body has
/// been read.
pub async fn send(
    conn: Conn,
    req: Request<Body>,
    response_timeout: Duration,
    body_done: impl std::future::Future<Output = ()>,
    marked_down: impl std::future::Future<Output = ()>,
) -> Result<(Response<hyper::body::Incoming>, SendRequest<Body>), Failed> {
    let Conn { mut sender, .. } = conn;
    let head = sender.try_send_request(req);
    let deadline = async {
        body_done.await;
        tokio::time::sleep(response_timeout).await;
    };
    tokio::select! {
        sent = head => match sent {
            Ok(resp) => Ok((resp, sender)),
            Err(mut e) => {
                let unsent = e.take_message();
                Err(Failed { error: SendError::Hyper(e.into_error()), unsent })
            }
        },
        _ = deadline => Err(Failed { error: SendError::Timeout(response_timeout), unsent: None }),
        _ = marked_down => Err(Failed { error: SendError::MarkedDown, unsent: None }),
    }
}
