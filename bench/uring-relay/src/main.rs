//! A bare TCP relay, one thread, one connection to the backend per client
//! connection and a 4 KiB buffer per direction: on io_uring
//! (`tokio-uring`: a read and a write submitted per chunk) or on epoll
//! (tokio's current-thread runtime). Nothing else (no HTTP, no
//! timers, no metrics), so the two differ only in how bytes move.
//!
//! `uring-relay uring|epoll <listen> <backend>`; `compare.sh` runs both
//! and limpet-proxy under the same echo load.

use std::net::SocketAddr;
use std::rc::Rc;
use tokio_uring::buf::BoundedBuf;

const CHUNK: usize = 4096;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, mode, listen, backend] = &args[..] else {
        return Err("usage: uring-relay uring|epoll <listen> <backend>".into());
    };
    let (listen, backend): (SocketAddr, SocketAddr) = (listen.parse()?, backend.parse()?);
    match mode.as_str() {
        "uring" => tokio_uring::start(uring(listen, backend)),
        "epoll" => tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?
            .block_on(epoll(listen, backend)),
        other => Err(format!("unknown mode {other}").into()),
    }
}

async fn uring(listen: SocketAddr, backend: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio_uring::net::TcpListener::bind(listen)?;
    loop {
        let (client, _) = listener.accept().await?;
        let Ok(upstream) = tokio_uring::net::TcpStream::connect(backend).await else {
            continue;
        };
        let _ = (client.set_nodelay(true), upstream.set_nodelay(true));
        let (client, upstream) = (Rc::new(client), Rc::new(upstream));
        tokio_uring::spawn(uring_pipe(client.clone(), upstream.clone()));
        tokio_uring::spawn(uring_pipe(upstream, client));
    }
}

async fn uring_pipe(from: Rc<tokio_uring::net::TcpStream>, to: Rc<tokio_uring::net::TcpStream>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let (read, back) = from.read(buf).await;
        buf = back;
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let (written, back) = to.write_all(buf.slice(..n)).await;
        buf = back.into_inner();
        if written.is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

async fn epoll(listen: SocketAddr, backend: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    loop {
        let (client, _) = listener.accept().await?;
        let Ok(upstream) = tokio::net::TcpStream::connect(backend).await else {
            continue;
        };
        let _ = (client.set_nodelay(true), upstream.set_nodelay(true));
        let (client_in, client_out) = client.into_split();
        let (upstream_in, upstream_out) = upstream.into_split();
        tokio::spawn(epoll_pipe(client_in, upstream_out));
        tokio::spawn(epoll_pipe(upstream_in, client_out));
    }
}

async fn epoll_pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
