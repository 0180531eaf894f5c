//! What the proxy itself does with a request head once hyper has parsed
//! it (hyper is fuzzed upstream): hop-by-hop hygiene, forwarding headers,
//! the client address behind trusted proxies, the affinity cookie and query
//! key, and the Host used for routing. The input is a request target line
//! and header lines; every header hyper could accept goes in.
#![no_main]

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, COOKIE, HOST, UPGRADE};
use http::{Uri, Version};
use libfuzzer_sys::fuzz_target;
use limpet_config::Cidr;
use limpet_proxy::headers;
use limpet_proxy::router::host_only;
use limpet_proxy::select::{cookie, hash};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;

/// Headers `Connection` cannot remove (see `headers::PROTECTED`).
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

fn trim(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t' | b'\r', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t' | b'\r'] = b {
        b = rest;
    }
    b
}

fn strs(map: &HeaderMap, name: HeaderName) -> Vec<String> {
    map.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 18 {
        return;
    }
    let (head, text) = data.split_at(18);
    let flags = head[0];
    let peer_ip = if flags & 1 == 0 {
        IpAddr::V4(Ipv4Addr::new(head[1], head[2], head[3], head[4]))
    } else {
        let mut o = [0u8; 16];
        o.copy_from_slice(&head[2..18]);
        IpAddr::V6(Ipv6Addr::from(o))
    };
    let peer = SocketAddr::new(peer_ip, 40000);
    let trusted: Vec<Cidr> = match (flags >> 1) & 3 {
        0 => vec![],
        1 => vec![Cidr::parse("10.0.0.0/8").unwrap()],
        _ => vec![
            Cidr::parse("0.0.0.0/0").unwrap(),
            Cidr::parse("::/0").unwrap(),
        ],
    };
    let peer_trusted = trusted
        .iter()
        .any(|c| c.contains(headers::canonical(peer_ip)));
    let scheme = if flags & 8 == 0 { "http" } else { "https" };
    let version = if flags & 16 == 0 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };

    let mut lines = text.split(|&b| b == b'\n');
    let uri = lines
        .next()
        .and_then(|l| Uri::try_from(trim(l)).ok())
        .unwrap_or_else(|| Uri::from_static("/"));
    let mut map = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(trim(&line[..colon])),
            HeaderValue::from_bytes(trim(&line[colon + 1..])),
        ) else {
            continue;
        };
        map.append(name, value);
    }

    // Host checks: a request that fails them is answered 400 and goes
    // no further.
    let hosts = map.get_all(HOST).iter().count();
    let problem = headers::host_problem(version, &map);
    assert_eq!(
        problem.is_none(),
        hosts == 1 || (hosts == 0 && version == Version::HTTP_10)
    );

    // Hop-by-hop hygiene.
    let upgrade = headers::is_upgrade(&map);
    assert!(!upgrade || map.contains_key(UPGRADE));
    let allowed = ["websocket".to_string(), "foo/2".to_string()];
    let upgrade_to = headers::allowed_upgrade(&map, &allowed);
    if let Some(v) = &upgrade_to {
        assert!(upgrade);
        for p in v.to_str().unwrap().split(',') {
            let p = p.trim().to_ascii_lowercase();
            let name = p.split('/').next().unwrap();
            assert!(
                allowed.iter().any(|a| *a == p || a == name),
                "{p} was not allowed"
            );
        }
    }
    let listed: Vec<HeaderName> = strs(&map, CONNECTION)
        .iter()
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let mut plain = map.clone();
    headers::strip_hop_by_hop(&mut plain, None);
    for name in HOP_BY_HOP {
        assert!(!plain.contains_key(*name), "{name} survived");
    }
    for name in &listed {
        let protected = PROTECTED.contains(&name.as_str());
        assert_eq!(
            plain.contains_key(name),
            protected && map.contains_key(name),
            "{name}"
        );
    }
    for name in PROTECTED {
        let before: Vec<_> = map.get_all(*name).iter().collect();
        let after: Vec<_> = plain.get_all(*name).iter().collect();
        assert_eq!(before, after, "{name} is protected");
    }
    if problem.is_some() {
        return;
    }
    let mut up = map.clone();
    headers::strip_hop_by_hop(&mut up, upgrade_to.clone());
    if let Some(v) = &upgrade_to {
        assert_eq!(up.get_all(CONNECTION).iter().count(), 1);
        assert_eq!(up.get(CONNECTION).unwrap(), "upgrade");
        assert_eq!(up.get(UPGRADE), Some(v));
    }

    // The client address: the peer unless the peer is trusted.
    let xff = strs(&map, HeaderName::from_static("x-forwarded-for"));
    let client = headers::client_ip(peer, xff.iter().map(String::as_str), &trusted);
    if !peer_trusted {
        assert_eq!(client, headers::canonical(peer_ip));
    }
    assert_eq!(
        client,
        headers::canonical(client),
        "client addresses are canonical"
    );

    // Forwarding headers.
    let peer_c = headers::canonical(peer_ip);
    headers::add_forwarded(&mut up, peer_c, client, scheme, peer_trusted);
    let chain = up
        .get("x-forwarded-for")
        .expect("X-Forwarded-For is always set");
    assert_eq!(up.get_all("x-forwarded-for").iter().count(), 1);
    assert!(chain.to_str().unwrap().ends_with(&peer_c.to_string()));
    assert_eq!(up.get("x-real-ip").unwrap(), client.to_string().as_str());
    let proto = up.get("x-forwarded-proto").unwrap();
    let forwarded = up.get("forwarded").expect("Forwarded is always set");
    assert_eq!(up.get_all("forwarded").iter().count(), 1);
    if !peer_trusted {
        assert_eq!(proto, scheme);
        let forwarded = forwarded.to_str().unwrap();
        assert!(forwarded.starts_with("for="), "{forwarded}");
        assert!(
            forwarded.contains(&format!(";proto={scheme}")),
            "{forwarded}"
        );
    }
    if !peer_trusted || !map.contains_key("x-forwarded-host") {
        assert_eq!(up.get("x-forwarded-host"), up.get(HOST));
    }

    // The affinity cookie: found where it is, and never forged.
    let cookies = strs(&map, COOKIE);
    if let Some(value) = cookie::find_cookie(cookies.iter().map(String::as_str), "limpet_sticky") {
        assert!(!value.contains(';'));
        assert!(cookies.iter().any(|c| c.contains(value)));
        static SEALER: OnceLock<cookie::Sealer> = OnceLock::new();
        let sealer = SEALER.get_or_init(cookie::Sealer::random);
        assert_eq!(sealer.open(value), None, "a cookie was forged");
    }

    // The query affinity key.
    if let Some(v) = hash::query_param(uri.query(), "room") {
        assert!(!v.is_empty() && !v.contains('&'));
        assert!(uri.query().unwrap().contains(&format!("room={v}")));
    }

    // The Host used for routing.
    for host in strs(&map, HOST)
        .iter()
        .map(String::as_str)
        .chain(uri.host())
    {
        assert!(host.starts_with(host_only(host)));
    }
});
