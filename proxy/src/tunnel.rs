//! Byte copying for upgraded (WebSocket) connections.
//!
//! After `101 Switching Protocols` the proxy stops parsing and copies bytes
//! both ways. A half-close (FIN) on one side is passed on to the other
//! while the other direction keeps flowing. The tunnel ends when both
//! directions have finished, when either side errors, or when no byte has
//! moved for the idle timeout (nginx's `proxy_read_timeout`, but counting
//! both directions, so a server that only pushes keeps the tunnel alive).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

const BUF: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Closed,
    Error,
    IdleTimeout,
    /// Closed by the proxy's shutdown drain deadline.
    Deadline,
}

#[derive(Debug)]
pub struct Outcome {
    pub end: End,
    pub to_upstream: u64,
    pub to_client: u64,
}

/// Copies until done; `on_bytes(to_upstream, n)` reports progress for metrics.
pub async fn run<C, U>(
    client: C,
    upstream: U,
    idle: Duration,
    on_bytes: impl Fn(bool, u64) + Sync,
) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let last = AtomicU64::new(0);
    let up_bytes = AtomicU64::new(0);
    let down_bytes = AtomicU64::new(0);
    let (cr, cw) = tokio::io::split(client);
    let (ur, uw) = tokio::io::split(upstream);
    let touch = || last.store(started.elapsed().as_millis() as u64, Relaxed);
    let copy = async {
        tokio::try_join!(
            pump(cr, uw, &up_bytes, &touch, |n| on_bytes(true, n)),
            pump(ur, cw, &down_bytes, &touch, |n| on_bytes(false, n)),
        )
    };
    let watchdog = async {
        if idle.is_zero() {
            return std::future::pending::<()>().await;
        }
        loop {
            let quiet_since = Duration::from_millis(last.load(Relaxed));
            let deadline = quiet_since + idle;
            let now = started.elapsed();
            if now >= deadline {
                return;
            }
            tokio::time::sleep(deadline - now).await;
        }
    };
    let end = tokio::select! {
        r = copy => if r.is_ok() { End::Closed } else { End::Error },
        _ = watchdog => End::IdleTimeout,
    };
    Outcome {
        end,
        to_upstream: up_bytes.load(Relaxed),
        to_client: down_bytes.load(Relaxed),
    }
}

async fn pump<R, W>(
    mut r: R,
    mut w: W,
    total: &AtomicU64,
    touch: &impl Fn(),
    report: impl Fn(u64),
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            // Pass the half-close on; the other direction may still be talking.
            let _ = w.shutdown().await;
            return Ok(());
        }
        w.write_all(&buf[..n]).await?;
        touch();
        total.fetch_add(n as u64, Relaxed);
        report(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn copies_both_ways_and_passes_half_close() {
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (upstream, mut upstream_peer) = tokio::io::duplex(1024);
        let task = tokio::spawn(run(client, upstream, Duration::from_secs(5), |_, _| {}));
        client_peer.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        upstream_peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        // Client half-closes; upstream sees EOF but can still answer.
        client_peer.shutdown().await.unwrap();
        assert_eq!(upstream_peer.read(&mut buf).await.unwrap(), 0);
        upstream_peer.write_all(b"bye").await.unwrap();
        let mut got = [0u8; 3];
        client_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"bye");
        drop(upstream_peer);
        let out = task.await.unwrap();
        assert_eq!(out.end, End::Closed);
        assert_eq!((out.to_upstream, out.to_client), (5, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_tunnels_are_closed() {
        let (client, _cp) = tokio::io::duplex(1024);
        let (upstream, _up) = tokio::io::duplex(1024);
        let out = run(client, upstream, Duration::from_secs(30), |_, _| {}).await;
        assert_eq!(out.end, End::IdleTimeout);
    }
}
