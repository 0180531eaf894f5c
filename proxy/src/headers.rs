//! Request and response header rewriting, as nginx's usual WebSocket
//! config does it: hop-by-hop headers stripped (the upgrade pair kept on an
//! upgrade), `X-Forwarded-For` appended, `X-Forwarded-Proto`,
//! `X-Forwarded-Host` and `X-Real-IP` set, `Host` preserved.

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST, UPGRADE};
use std::net::IpAddr;

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

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

/// Removes hop-by-hop headers; with `upgrade`, puts back
/// `Connection: upgrade` and the original `Upgrade` value.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let upgrade_value = headers.get(UPGRADE).cloned();
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
    if upgrade {
        if let Some(v) = upgrade_value {
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(UPGRADE, v);
        }
    }
}

/// Adds the forwarding headers toward the backend.
/// `peer` is the address that connected to us; `client` is the address
/// we believe is the real client (they differ behind trusted proxies).
pub fn add_forwarded(
    headers: &mut HeaderMap,
    peer: IpAddr,
    client: IpAddr,
    proto: &str,
    peer_trusted: bool,
) {
    let xff = HeaderName::from_static("x-forwarded-for");
    // Appended whatever the peer, as nginx's $proxy_add_x_forwarded_for
    // does; X-Real-IP carries the address we actually believe.
    let prior: Vec<String> = headers
        .get_all(&xff)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect();
    let mut chain = prior.join(", ");
    if !chain.is_empty() {
        chain.push_str(", ");
    }
    chain.push_str(&peer.to_string());
    headers.remove(&xff);
    if let Ok(v) = HeaderValue::from_str(&chain) {
        headers.insert(xff, v);
    }
    if let Ok(v) = HeaderValue::from_str(&client.to_string()) {
        headers.insert(HeaderName::from_static("x-real-ip"), v);
    }
    let xfp = HeaderName::from_static("x-forwarded-proto");
    if !(peer_trusted && headers.contains_key(&xfp)) {
        headers.insert(
            xfp,
            HeaderValue::from_static(if proto == "https" { "https" } else { "http" }),
        );
    }
    let xfh = HeaderName::from_static("x-forwarded-host");
    if !(peer_trusted && headers.contains_key(&xfh)) {
        if let Some(host) = headers.get(HOST).cloned() {
            headers.insert(xfh, host);
        }
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
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert!(
            h.get("x-secret").is_none() && h.get("keep-alive").is_none() && h.get("te").is_none()
        );
        assert_eq!(h.get("sec-websocket-key").unwrap(), "abc");
        let mut h = map(&[("connection", "close"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty());
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
        // From an untrusted peer the chain is still appended to, but the
        // real IP is the peer and its claimed proto is replaced.
        let mut h = map(&[
            ("host", "example.com"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ]);
        add_forwarded(&mut h, peer, peer, "http", false);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "6.6.6.6, 10.0.0.2");
        assert_eq!(h.get("x-real-ip").unwrap(), "10.0.0.2");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
    }
}
