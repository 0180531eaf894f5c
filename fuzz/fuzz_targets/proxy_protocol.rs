//! The proxy's PROXY protocol v1/v2 reader: on any bytes it never panics
//! or blocks, never reads past the header (the HTTP request behind it
//! must stay intact), and a header it wrote itself or a well-formed v1 line
//! reads back as the address it carries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use limpet_proxy::proxy_protocol::{encode_v2, read_header, HeaderError};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::task::{Context, Poll, Waker};

const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// Runs a future over an in-memory reader, which is always ready.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("reading a byte slice never waits"),
    }
}

/// The header at the front of `bytes`, and what was left unread.
fn read(bytes: &[u8]) -> (Result<Option<SocketAddr>, HeaderError>, &[u8]) {
    let mut rest = bytes;
    let result = ready(read_header(&mut rest));
    (result, rest)
}

fn addr(b: &[u8], v6: bool) -> SocketAddr {
    let port = u16::from_be_bytes([b[16], b[17]]);
    if v6 {
        let mut o = [0u8; 16];
        o.copy_from_slice(&b[..16]);
        SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port)
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])), port)
    }
}

fuzz_target!(|data: &[u8]| {
    let (result, rest) = read(data);
    let used = data.len() - rest.len();
    match &result {
        Err(HeaderError::Truncated) => assert!(rest.is_empty(), "truncated but bytes left"),
        Err(HeaderError::Missing) => assert!(used <= V2_SIGNATURE.len()),
        Err(HeaderError::BadV1) => assert!(used <= 107),
        Err(HeaderError::BadV2) | Ok(_) => {}
    }
    if result.is_ok() {
        if data.starts_with(b"PROXY") {
            let crlf = data
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("a v1 line ends");
            assert_eq!(used, crlf + 2, "v1: exactly the line is read");
            assert!(used <= 107);
        } else {
            assert!(data.starts_with(V2_SIGNATURE));
            let len = usize::from(u16::from_be_bytes([data[14], data[15]]));
            assert_eq!(used, 16 + len, "v2: exactly the header is read");
        }
    }

    // Round trips, with whatever follows kept unread.
    if data.len() >= 36 {
        let (head, tail) = data.split_at(36);
        let v6 = head[35] & 1 == 1;
        let src = addr(&head[..18], v6);
        let dst = addr(&head[18..36], v6);
        let mut bytes = encode_v2(src, dst);
        bytes.extend_from_slice(tail);
        assert_eq!(read(&bytes), (Ok(Some(src)), tail), "v2 round trip");

        let family = if v6 { "TCP6" } else { "TCP4" };
        let line = format!(
            "PROXY {family} {} {} {} {}\r\n",
            src.ip(),
            dst.ip(),
            src.port(),
            dst.port()
        );
        let mut bytes = line.into_bytes();
        bytes.extend_from_slice(tail);
        assert_eq!(read(&bytes), (Ok(Some(src)), tail), "v1 round trip");
    }
});
