//! Request and response header rewriting, as nginx's usual WebSocket
//! config does it: hop-by-hop headers stripped (the upgrade pair kept on an
//! upgrade the route allows), `X-Forwarded-For` appended, `Forwarded`
//! (RFC 7239) appended to when the peer is trusted and replaced otherwise,
//! `X-Forwarded-Proto`, `X-Forwarded-Host` and `X-Real-IP` set, `Host`
//! preserved. Also the RFC 9112 `Host` checks a request must pass, and
//! who the client is: the peer, or behind trusted proxies the address
//! their `X-Forwarded-For` names (rust-rpxy trusts CIDRs the same way).

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST, UPGRADE};
use http::Version;
use limpet_config::Cidr;
use std::net::{IpAddr, SocketAddr};

/// Headers a client cannot remove by naming them in `Connection`: the
/// proxy routes on them, or they carry forwarding information a backend
/// trusts. (Naming `Host` there used to send requests with no Host.)
const PROTECTED: &[&str] = &[
    "host",
    "content-length",
    "cookie",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
];

/// Why a request's `Host` is unacceptable (RFC 9112 §3.2: 400 for an
/// HTTP/1.1 request without one, or with more than one), as a metric label.
pub fn host_problem(version: Version, headers: &HeaderMap) -> Option<&'static str> {
    match headers.get_all(HOST).iter().count() {
        0 if version == Version::HTTP_11 => Some("missing_host"),
        0 | 1 => None,
        _ => Some("duplicate_host"),
    }
}

/// As names, not strings: a lookup by `&str` parses the name each time.
const HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    UPGRADE,
];

// Names made at compile time: `from_static` outside a constant parses
// and checks its string on every call, that is on every request.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_LIMPET_BACKEND: HeaderName = HeaderName::from_static("x-limpet-backend");

/// True when the request asks to switch protocols (WebSocket and friends).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The request's `Upgrade` value cut down to the protocols in `allowed`
/// (lowercase, `name` or `name/version`); `None` when it asks for no
/// upgrade or for none of those. A protocol the proxy does not tunnel
/// (h2c, ...) must not reach the backend as an upgrade: the backend could
/// switch protocols on a connection the proxy still parses as HTTP/1.1.
pub fn allowed_upgrade(headers: &HeaderMap, allowed: &[String]) -> Option<HeaderValue> {
    if !is_upgrade(headers) {
        return None;
    }
    let kept: Vec<&str> = headers
        .get_all(UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| {
            let p = p.to_ascii_lowercase();
            let name = p.split('/').next().unwrap_or_default();
            allowed.iter().any(|a| *a == p || a == name)
        })
        .collect();
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_str(&kept.join(", ")).ok()
}

/// Removes hop-by-hop headers, and those the `Connection` header names
/// unless protected; with `upgrade`, puts back `Connection: upgrade` and
/// that `Upgrade` value.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: Option<HeaderValue>) {
    // Most requests and answers carry none of them (the headers that
    // `Connection` names count only when there is a `Connection`): one
    // pass over the names instead of nine lookups.
    if headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        strip_present(headers);
    }
    if let Some(v) = upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, v);
    }
}

fn strip_present(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|name| !PROTECTED.contains(&name.as_str()))
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Adds the forwarding headers toward the backend.
/// `peer` is the address that connected to us; `client` is the address
/// we believe is the real client (they differ behind trusted proxies).
///
/// The three values made here (`X-Forwarded-For`, `X-Real-IP`,
/// `Forwarded`) are written into one buffer and handed out as slices of
/// it: one allocation instead of a string and a copy each, and slices
/// that clone without allocating when the request is copied to be sent
/// again.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    peer: IpAddr,
    client: IpAddr,
    proto: &str,
    peer_trusted: bool,
) {
    // Room for the five added at once: a map sized for the client's few
    // headers would otherwise grow (and rehash) two or three times.
    headers.reserve(5);
    let proto = if proto == "https" { "https" } else { "http" };
    let mut buf: Vec<u8> = Vec::with_capacity(128);
    // Appended whatever the peer, as nginx's $proxy_add_x_forwarded_for
    // does; X-Real-IP carries the address we actually believe.
    for (i, prior) in headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .enumerate()
    {
        if i > 0 {
            buf.extend_from_slice(b", ");
        }
        buf.extend_from_slice(prior.as_bytes());
    }
    if !buf.is_empty() {
        buf.extend_from_slice(b", ");
    }
    let peer_at = buf.len();
    push_ip(&mut buf, peer);
    let peer_text = peer_at..buf.len();
    let chain = 0..buf.len();
    let real_at = buf.len();
    if client == peer {
        buf.extend_from_within(peer_text.clone());
    } else {
        push_ip(&mut buf, client);
    }
    let real_ip = real_at..buf.len();
    // RFC 7239 `for=...;proto=...;host="..."`: a chain from a trusted
    // proxy is extended, anyone else's claim is replaced by what we saw.
    let element_at = buf.len();
    if peer_trusted {
        for prior in headers
            .get_all(FORWARDED)
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            buf.extend_from_slice(prior.as_bytes());
            buf.extend_from_slice(b", ");
        }
    }
    buf.extend_from_slice(b"for=");
    if peer.is_ipv6() {
        buf.extend_from_slice(b"\"[");
        buf.extend_from_within(peer_text);
        buf.extend_from_slice(b"]\"");
    } else {
        buf.extend_from_within(peer_text);
    }
    buf.extend_from_slice(b";proto=");
    buf.extend_from_slice(proto.as_bytes());
    let host = headers.get(HOST).cloned();
    if let Some(host) = host.as_ref().and_then(|h| h.to_str().ok()) {
        buf.extend_from_slice(b";host=\"");
        for &b in host.as_bytes() {
            if matches!(b, b'"' | b'\\') {
                buf.push(b'\\');
            }
            buf.push(b);
        }
        buf.push(b'"');
    }
    let element = element_at..buf.len();
    let buf = Bytes::from(buf);
    let value = |range| HeaderValue::from_maybe_shared(buf.slice(range)).ok();
    replace(headers, X_FORWARDED_FOR, value(chain));
    replace(headers, X_REAL_IP, value(real_ip));
    replace(headers, FORWARDED, value(element));
    if !(peer_trusted && headers.contains_key(X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !(peer_trusted && headers.contains_key(X_FORWARDED_HOST)) {
        // An HTTP/1.0 request may have no Host to put in its place; the
        // untrusted claim goes all the same.
        replace(headers, X_FORWARDED_HOST, host);
    }
}

/// Sets `name` to `value` alone, or removes it without one. `insert`
/// drops every earlier value of its name itself: a `remove` first would
/// look the name up twice.
fn replace(headers: &mut HeaderMap, name: HeaderName, value: Option<HeaderValue>) {
    match value {
        Some(v) => {
            headers.insert(name, v);
        }
        None => {
            headers.remove(name);
        }
    }
}

/// Writes an address as `Display` does. An IPv4 one by hand: the
/// formatting machinery costs more than the rest of the header rewrite.
fn push_ip(buf: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf.push(b'.');
                }
                if octet >= 100 {
                    buf.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    buf.push(b'0' + octet / 10 % 10);
                }
                buf.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            // Writing to a Vec cannot fail.
            let _ = write!(buf, "{v6}");
        }
    }
}

/// The client's address: the peer, or, when the peer is a trusted proxy,
/// the rightmost `X-Forwarded-For` hop that is not itself trusted.
pub fn client_ip<'a>(
    peer: SocketAddr,
    forwarded_for: impl Iterator<Item = &'a str>,
    trusted: &[Cidr],
) -> IpAddr {
    let peer_ip = canonical(peer.ip());
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer_ip) {
        return peer_ip;
    }
    let hops: Vec<&str> = forwarded_for.flat_map(|h| h.split(',')).collect();
    let mut client = peer_ip;
    for hop in hops.iter().rev() {
        match parse_hop(hop) {
            Some(ip) => {
                client = ip;
                if !is_trusted(ip) {
                    break;
                }
            }
            // Garbage in the chain: stop at the last address we could trust.
            None => break,
        }
    }
    client
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    // Some proxies append a port: "1.2.3.4:5678" or "[::1]:5678".
    hop.parse::<SocketAddr>().ok().map(|s| canonical(s.ip()))
}

/// IPv4 clients seen through a dual-stack socket are still IPv4 clients.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn upgrade_detection() {
        assert!(is_upgrade(&map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket")
        ])));
        assert!(!is_upgrade(&map(&[
            ("connection", "keep-alive"),
            ("upgrade", "websocket")
        ])));
        assert!(!is_upgrade(&map(&[("connection", "upgrade")])));
    }

    #[test]
    fn hop_by_hop_headers_go_except_the_upgrade_pair() {
        let mut h = map(&[
            ("connection", "Upgrade, X-Secret"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("sec-websocket-key", "abc"),
        ]);
        let upgrade = allowed_upgrade(&h, &["websocket".into()]);
        strip_hop_by_hop(&mut h, upgrade);
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert!(
            h.get("x-secret").is_none() && h.get("keep-alive").is_none() && h.get("te").is_none()
        );
        assert_eq!(h.get("sec-websocket-key").unwrap(), "abc");
        let mut h = map(&[("connection", "close"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut h, None);
        assert!(h.is_empty());
        // Naming Host (or a forwarding header) in Connection strips nothing.
        let mut h = map(&[("connection", "host, x-real-ip"), ("host", "a.example")]);
        strip_hop_by_hop(&mut h, None);
        assert_eq!(h.get("host").unwrap(), "a.example");
    }

    #[test]
    fn only_allowed_upgrades() {
        let ws = ["websocket".to_string()];
        let h2c = map(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
        ]);
        assert_eq!(allowed_upgrade(&h2c, &ws), None);
        let mixed = map(&[("connection", "upgrade"), ("upgrade", "h2c, WebSocket")]);
        assert_eq!(allowed_upgrade(&mixed, &ws).unwrap(), "WebSocket");
        assert_eq!(allowed_upgrade(&mixed, &[]), None);
    }

    #[test]
    fn host_rules() {
        let one = map(&[("host", "a")]);
        let two = map(&[("host", "a"), ("host", "b")]);
        assert_eq!(host_problem(Version::HTTP_11, &one), None);
        assert_eq!(host_problem(Version::HTTP_11, &two), Some("duplicate_host"));
        assert_eq!(host_problem(Version::HTTP_10, &two), Some("duplicate_host"));
        assert_eq!(
            host_problem(Version::HTTP_11, &HeaderMap::new()),
            Some("missing_host")
        );
        assert_eq!(host_problem(Version::HTTP_10, &HeaderMap::new()), None);
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for text in [
            "0.0.0.0",
            "9.10.99.100",
            "127.0.0.1",
            "203.0.113.255",
            "255.255.255.255",
            "::1",
            "2001:db8::1",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            let mut buf = Vec::new();
            push_ip(&mut buf, ip);
            assert_eq!(buf, ip.to_string().into_bytes());
        }
    }

    #[test]
    fn forwarded_headers() {
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let client: IpAddr = "203.0.113.9".parse().unwrap();
        let mut h = map(&[("host", "example.com"), ("x-forwarded-for", "203.0.113.9")]);
        add_forwarded(&mut h, peer, client, "http", true);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "203.0.113.9, 10.0.0.2");
        assert_eq!(h.get("x-real-ip").unwrap(), "203.0.113.9");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "example.com");
        assert_eq!(
            h.get("forwarded").unwrap(),
            "for=10.0.0.2;proto=http;host=\"example.com\""
        );
        let mut h = map(&[("host", "h"), ("forwarded", "for=192.0.2.1")]);
        add_forwarded(&mut h, "::1".parse().unwrap(), client, "https", true);
        assert_eq!(
            h.get("forwarded").unwrap(),
            "for=192.0.2.1, for=\"[::1]\";proto=https;host=\"h\""
        );
        // From an untrusted peer the chain is still appended to, but the
        // real IP is the peer and its claimed proto is replaced.
        let mut h = map(&[
            ("host", "example.com"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ]);
        h.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        add_forwarded(&mut h, peer, peer, "http", false);
        assert_eq!(
            h.get("forwarded").unwrap(),
            "for=10.0.0.2;proto=http;host=\"example.com\""
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "6.6.6.6, 10.0.0.2");
        assert_eq!(h.get("x-real-ip").unwrap(), "10.0.0.2");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        // Repeated headers become one each, the client's own claims gone.
        let mut h = map(&[
            ("host", "example.com"),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-host", "evil.example"),
        ]);
        h.append("x-forwarded-for", HeaderValue::from_static("2.2.2.2"));
        h.append("x-real-ip", HeaderValue::from_static("7.7.7.7"));
        h.append(
            "x-forwarded-host",
            HeaderValue::from_static("evil2.example"),
        );
        add_forwarded(&mut h, peer, peer, "http", false);
        let all = |name: &str| -> Vec<_> { h.get_all(name).iter().cloned().collect() };
        assert_eq!(all("x-forwarded-for"), ["1.1.1.1, 2.2.2.2, 10.0.0.2"]);
        assert_eq!(all("x-real-ip"), ["10.0.0.2"]);
        assert_eq!(all("x-forwarded-host"), ["example.com"]);
    }

    /// Found by the fuzz target `proxy_head`: an HTTP/1.0 request (no
    /// Host) from an untrusted client kept its own X-Forwarded-Host on
    /// the way to the backend.
    #[test]
    fn untrusted_x_forwarded_host_goes_without_a_host() {
        let peer: IpAddr = "198.51.100.7".parse().unwrap();
        let mut h = map(&[("x-forwarded-host", "evil.example")]);
        add_forwarded(&mut h, peer, peer, "http", false);
        assert_eq!(h.get("x-forwarded-host"), None);
        let mut h = map(&[("x-forwarded-host", "lb.example")]);
        add_forwarded(&mut h, peer, peer, "http", true);
        assert_eq!(h.get("x-forwarded-host").unwrap(), "lb.example");
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let peer: SocketAddr = "10.0.0.5:1234".parse().unwrap();
        let xff = ["203.0.113.7, 10.0.0.9"];
        assert_eq!(
            client_ip(peer, xff.iter().copied(), &trusted),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        // A spoofed leftmost entry does not win over the rightmost untrusted hop.
        let xff = ["1.1.1.1, 203.0.113.7"];
        assert_eq!(
            client_ip(peer, xff.iter().copied(), &trusted),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        let stranger: SocketAddr = "198.51.100.1:1".parse().unwrap();
        assert_eq!(
            client_ip(stranger, xff.iter().copied(), &trusted),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        let v6: SocketAddr = "[::ffff:10.0.0.5]:1".parse().unwrap();
        let xff = ["[2001:db8::1]:443"];
        assert_eq!(
            client_ip(v6, xff.iter().copied(), &trusted),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        // All hops trusted: the leftmost one is the best we know.
        let xff = ["10.1.1.1"];
        assert_eq!(
            client_ip(peer, xff.iter().copied(), &trusted),
            "10.1.1.1".parse::<IpAddr>().unwrap()
        );
    }
}
