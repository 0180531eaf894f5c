//! Sticky cookies: the backend id sealed with XChaCha20-Poly1305 under a
//! key derived from the configured secret, so the cookie names no address,
//! cannot be forged or edited, and any proxy instance holding the same
//! secret can read it (rust-rpxy does the same). A valid cookie naming a
//! backend that can take it wins; anything else is re-pinned by the
//! balancer with a fresh cookie (see [`super::select`]).

use base64::Engine;
use chacha20poly1305::aead::{Aead, Generate, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use limpet_config::{CookieConfig, SameSite};
use sha2::Digest;

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
}
