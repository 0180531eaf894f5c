//! Session affinity: sealed cookies, client addresses, consistent hashing.
//!
//! * Cookie: the value is the backend id sealed with XChaCha20-Poly1305
//!   under a key derived from the configured secret, so it names no
//!   address, cannot be forged or edited, and any proxy instance holding
//!   the same secret can read it (rust-rpxy does the same).
//! * Hashing (`ip_hash`, `header`, `query`): weighted rendezvous hashing
//!   with a fixed seed. Every instance computes the same winner for the
//!   same key, and adding or removing one of N backends moves only the
//!   keys that backend wins or loses, about 1/N of them. The hash is a
//!   fixed, documented function (FNV-1a then a splitmix64 finalizer), not
//!   the std hasher, whose output may change between Rust releases.

use base64::Engine;
use chacha20poly1305::aead::{Aead, Generate, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use limpet_config::{Cidr, CookieConfig, SameSite};
use sha2::Digest;
use std::net::{IpAddr, SocketAddr};

const NONCE_LEN: usize = 24;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Seals and opens cookie values.
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl Sealer {
    pub fn new(secret: &[u8]) -> Sealer {
        let mut hasher = sha2::Sha256::new();
        hasher.update(b"limpet-proxy cookie v1\0");
        hasher.update(secret);
        let key = hasher.finalize();
        let cipher =
            XChaCha20Poly1305::new_from_slice(&key).expect("SHA-256 output is a 32-byte key");
        Sealer { cipher }
    }

    /// A random key, for a pool configured without a secret.
    pub fn random() -> Sealer {
        let mut secret = [0u8; 32];
        // Without an OS RNG nothing secure can be done; refuse loudly.
        getrandom::fill(&mut secret).expect("the OS random number generator works");
        Sealer::new(&secret)
    }

    pub fn seal(&self, backend_id: &str) -> String {
        let nonce = XNonce::generate();
        let sealed = self
            .cipher
            .encrypt(&nonce, backend_id.as_bytes())
            .expect("encrypting a short id cannot fail");
        let mut raw = Vec::with_capacity(NONCE_LEN + sealed.len());
        raw.extend_from_slice(nonce.as_slice());
        raw.extend_from_slice(&sealed);
        B64.encode(raw)
    }

    /// The backend id inside a cookie value, if the value is genuine.
    pub fn open(&self, value: &str) -> Option<String> {
        let raw = B64.decode(value.trim()).ok()?;
        if raw.len() <= NONCE_LEN {
            return None;
        }
        let nonce = XNonce::try_from(&raw[..NONCE_LEN]).ok()?;
        let plain = self.cipher.decrypt(&nonce, &raw[NONCE_LEN..]).ok()?;
        String::from_utf8(plain).ok()
    }
}

/// The value of cookie `name` among the request's `Cookie` headers.
pub fn find_cookie<'a>(headers: impl Iterator<Item = &'a str>, name: &str) -> Option<&'a str> {
    headers
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// The `Set-Cookie` header value pinning a client to `sealed`.
pub fn set_cookie(cfg: &CookieConfig, sealed: &str) -> String {
    let mut out = format!("{}={}; Path={}", cfg.name, sealed, cfg.path);
    if let Some(domain) = &cfg.domain {
        out.push_str("; Domain=");
        out.push_str(domain);
    }
    if let Some(age) = cfg.max_age {
        out.push_str(&format!("; Max-Age={}", age.get().as_secs()));
    }
    if cfg.secure {
        out.push_str("; Secure");
    }
    if cfg.http_only {
        out.push_str("; HttpOnly");
    }
    out.push_str(match cfg.same_site {
        SameSite::Strict => "; SameSite=Strict",
        SameSite::Lax => "; SameSite=Lax",
        SameSite::None => "; SameSite=None",
    });
    out
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

/// FNV-1a over `parts`, finished with splitmix64 so nearby keys spread.
pub fn stable_hash(seed: u64, parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator, so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Weighted rendezvous hashing: the candidate with the highest
/// `-weight / ln(u)` for `u` uniform in (0,1) derived from (seed, id, key).
pub fn rendezvous<'a>(
    seed: u64,
    key: &[u8],
    candidates: impl Iterator<Item = (usize, &'a str, u32)>,
) -> Option<usize> {
    let mut best: Option<(f64, usize)> = None;
    for (index, id, weight) in candidates {
        let h = stable_hash(seed, &[id.as_bytes(), key]);
        // 53 random bits in (0, 1).
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = -f64::from(weight) / u.ln();
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, index));
        }
    }
    best.map(|(_, i)| i)
}

/// The value of query parameter `name` in a URI query string.
pub fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_cookies_round_trip_and_resist_tampering() {
        let sealer = Sealer::new(b"a shared secret of some length");
        let value = sealer.seal("node-a");
        assert!(!value.contains("node-a"), "the id is not readable");
        assert_eq!(sealer.open(&value).as_deref(), Some("node-a"));
        assert_ne!(sealer.seal("node-a"), value, "a fresh nonce each time");
        // Another instance with the same secret reads it; a different secret does not.
        assert_eq!(
            Sealer::new(b"a shared secret of some length")
                .open(&value)
                .as_deref(),
            Some("node-a")
        );
        assert_eq!(
            Sealer::new(b"another secret entirely......").open(&value),
            None
        );
        // Flip one character anywhere: rejected.
        for i in 0..value.len() {
            let mut bytes = value.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let forged = String::from_utf8(bytes).unwrap();
            if forged != value {
                assert_eq!(sealer.open(&forged), None, "tampered at {i}");
            }
        }
        for junk in ["", "node-a", "!!!", "AAAA"] {
            assert_eq!(sealer.open(junk), None);
        }
    }

    #[test]
    fn cookie_lookup_and_header() {
        let headers = ["a=1; limpet_sticky=xyz", "b=2"];
        assert_eq!(
            find_cookie(headers.iter().copied(), "limpet_sticky"),
            Some("xyz")
        );
        assert_eq!(find_cookie(headers.iter().copied(), "b"), Some("2"));
        assert_eq!(find_cookie(headers.iter().copied(), "c"), None);
        let cfg = CookieConfig {
            max_age: Some(limpet_config::Duration::secs(60)),
            domain: Some("example.com".into()),
            secure: true,
            ..CookieConfig::default()
        };
        assert_eq!(
            set_cookie(&cfg, "V"),
            "limpet_sticky=V; Path=/; Domain=example.com; Max-Age=60; Secure; HttpOnly; SameSite=Lax"
        );
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

    fn owners(ids: &[&str], keys: usize) -> Vec<String> {
        (0..keys)
            .map(|k| {
                let key = format!("198.18.{}.{}", k / 256, k % 256);
                let i = rendezvous(
                    7,
                    key.as_bytes(),
                    ids.iter().enumerate().map(|(i, id)| (i, *id, 1)),
                )
                .unwrap();
                ids[i].to_string()
            })
            .collect()
    }

    #[test]
    fn rendezvous_moves_about_one_in_n_keys() {
        let three = owners(&["a", "b", "c"], 1000);
        let four = owners(&["a", "b", "c", "d"], 1000);
        let moved = three.iter().zip(&four).filter(|(x, y)| x != y).count();
        // Only keys that the new backend wins move: about a quarter.
        assert!((180..=320).contains(&moved), "moved {moved}");
        assert!(three.iter().zip(&four).all(|(x, y)| x == y || y == "d"));
        // Even spread over three.
        for id in ["a", "b", "c"] {
            let n = three.iter().filter(|o| *o == id).count();
            assert!((270..=400).contains(&n), "{id} owns {n}");
        }
        // Removing one moves only its keys.
        let two = owners(&["a", "c"], 1000);
        assert!(three.iter().zip(&two).all(|(x, y)| x == y || x == "b"));
    }

    #[test]
    fn weights_skew_rendezvous() {
        let heavy = (0..3000)
            .filter(|k| {
                let key = k.to_string();
                rendezvous(1, key.as_bytes(), [(0, "a", 3), (1, "b", 1)].into_iter()) == Some(0)
            })
            .count();
        assert!(
            (2050..=2450).contains(&heavy),
            "weight 3 of 4 should own ~75%: {heavy}"
        );
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param(Some("a=1&room=x&b"), "room"), Some("x"));
        assert_eq!(query_param(Some("room="), "room"), None);
        assert_eq!(query_param(None, "room"), None);
    }
}
