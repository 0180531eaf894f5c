//! PROXY protocol v1 (text) and v2 (binary) headers, as sent by L4 load
//! balancers (AWS NLB, HAProxy `send-proxy`) in front of the proxy, so the
//! original client address survives the extra hop.
//!
//! Read byte by byte only as far as the header goes, so nothing of the
//! HTTP request behind it is consumed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::io::{AsyncRead, AsyncReadExt};

const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// v1 lines are at most 107 bytes including CRLF.
const V1_MAX: usize = 107;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("malformed PROXY v1 header")]
    BadV1,
    #[error("malformed PROXY v2 header")]
    BadV2,
    #[error("connection closed inside the PROXY header")]
    Truncated,
}

impl HeaderError {
    pub fn label(&self) -> &'static str {
        match self {
            HeaderError::Missing => "missing",
            HeaderError::BadV1 => "bad_v1",
            HeaderError::BadV2 => "bad_v2",
            HeaderError::Truncated => "truncated",
        }
    }
}

/// Reads a header; `Ok(None)` for v2 LOCAL / v1 UNKNOWN (health checks of
/// the balancer itself): the peer address stands.
pub async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<SocketAddr>, HeaderError> {
    let mut first = [0u8; 12];
    read_exact(r, &mut first[..5]).await?;
    if &first[..5] == b"PROXY" {
        let mut line = first[..5].to_vec();
        loop {
            if line.len() >= V1_MAX {
                return Err(HeaderError::BadV1);
            }
            let mut b = [0u8; 1];
            read_exact(r, &mut b).await?;
            line.push(b[0]);
            if line.ends_with(b"\r\n") {
                return parse_v1(&line);
            }
        }
    }
    if first[..5] != V2_SIGNATURE[..5] {
        return Err(HeaderError::Missing);
    }
    read_exact(r, &mut first[5..]).await?;
    if first != V2_SIGNATURE {
        return Err(HeaderError::Missing);
    }
    let mut head = [0u8; 4];
    read_exact(r, &mut head).await?;
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let mut body = vec![0u8; len];
    read_exact(r, &mut body).await?;
    parse_v2(head[0], head[1], &body)
}

async fn read_exact<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<(), HeaderError> {
    r.read_exact(buf)
        .await
        .map(|_| ())
        .map_err(|_| HeaderError::Truncated)
}

fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, HeaderError> {
    let text = std::str::from_utf8(&line[..line.len() - 2]).map_err(|_| HeaderError::BadV1)?;
    let parts: Vec<&str> = text.split(' ').collect();
    match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(None),
        ["PROXY", proto @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
            let ip: IpAddr = src.parse().map_err(|_| HeaderError::BadV1)?;
            if (*proto == "TCP4") != ip.is_ipv4() {
                return Err(HeaderError::BadV1);
            }
            let port: u16 = sport.parse().map_err(|_| HeaderError::BadV1)?;
            Ok(Some(SocketAddr::new(ip, port)))
        }
        _ => Err(HeaderError::BadV1),
    }
}

fn parse_v2(ver_cmd: u8, family: u8, body: &[u8]) -> Result<Option<SocketAddr>, HeaderError> {
    if ver_cmd >> 4 != 2 {
        return Err(HeaderError::BadV2);
    }
    match ver_cmd & 0x0F {
        0 => return Ok(None), // LOCAL
        1 => {}               // PROXY
        _ => return Err(HeaderError::BadV2),
    }
    match family {
        // TCP over IPv4: src(4) dst(4) sport(2) dport(2)
        0x11 | 0x12 if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let port = u16::from_be_bytes([body[8], body[9]]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port)))
        }
        // TCP over IPv6: src(16) dst(16) sport(2) dport(2)
        0x21 | 0x22 if body.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            let port = u16::from_be_bytes([body[32], body[33]]);
            Ok(Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                port,
            )))
        }
        // UNSPEC or unix sockets: keep the peer address.
        0x00 | 0x31 | 0x32 => Ok(None),
        _ => Err(HeaderError::BadV2),
    }
}

/// A v2 header for `src` → `dst` (used by tests and tools).
pub fn encode_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21);
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V6(v) => v.octets(),
                IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s));
            out.extend_from_slice(&v6(d));
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> (Result<Option<SocketAddr>, HeaderError>, Vec<u8>) {
        let mut r = bytes;
        let result = read_header(&mut r).await;
        (result, r.to_vec())
    }

    #[tokio::test]
    async fn v1_headers() {
        let (r, rest) =
            parse(b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\nGET / HTTP/1.1\r\n").await;
        assert_eq!(r, Ok(Some("203.0.113.7:51000".parse().unwrap())));
        assert_eq!(
            rest, b"GET / HTTP/1.1\r\n",
            "nothing past the header is consumed"
        );
        let (r, _) = parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n").await;
        assert_eq!(r, Ok(Some("[2001:db8::7]:51000".parse().unwrap())));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").await.0, Ok(None));
        assert_eq!(
            parse(b"PROXY TCP4 2001:db8::7 1.1.1.1 1 2\r\n").await.0,
            Err(HeaderError::BadV1)
        );
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4\r\n").await.0,
            Err(HeaderError::BadV1)
        );
        let long = [b"PROXY ".as_slice(), &[b'x'; 200]].concat();
        assert_eq!(parse(&long).await.0, Err(HeaderError::BadV1));
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n").await.0,
            Err(HeaderError::Missing)
        );
        assert_eq!(parse(b"PRO").await.0, Err(HeaderError::Truncated));
    }

    #[tokio::test]
    async fn v2_headers() {
        let src: SocketAddr = "198.51.100.9:40000".parse().unwrap();
        let dst: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let mut bytes = encode_v2(src, dst);
        bytes.extend_from_slice(b"GET /");
        let (r, rest) = parse(&bytes).await;
        assert_eq!(r, Ok(Some(src)));
        assert_eq!(rest, b"GET /");
        let src6: SocketAddr = "[2001:db8::9]:40000".parse().unwrap();
        assert_eq!(
            parse(&encode_v2(src6, "[::1]:80".parse().unwrap())).await.0,
            Ok(Some(src6))
        );
        // LOCAL command: keep the peer.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(parse(&local).await.0, Ok(None));
        // Wrong version, truncated body.
        let mut bad = encode_v2(src, dst);
        bad[12] = 0x11;
        assert_eq!(parse(&bad).await.0, Err(HeaderError::BadV2));
        let cut = &encode_v2(src, dst)[..20];
        assert_eq!(parse(cut).await.0, Err(HeaderError::Truncated));
    }
}
