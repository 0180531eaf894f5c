//! Who a client is and what it may do: JSON Web Tokens checked at the
//! WebSocket handshake (`?token=...`, since browsers cannot set headers on
//! a WebSocket) and again on `refresh`.
//!
//! A token is bounded before anything is decoded (`auth.max_token_bytes`,
//! 431 past it). Its header is read first, so `alg: none` and an algorithm
//! other than the configured one get their own, clear reason instead of a
//! generic "malformed"; then `jsonwebtoken` checks the signature, `exp`
//! (with `auth.leeway`), and `iss` / `aud` when configured. Every refusal
//! has a reason, the label of `limpet_node_auth_failures_total{reason}`.
//!
//! Claims: `sub` names the user; `rooms` (names or `*`/`?` globs) limits
//! what the socket may join, `publish` what it may emit to; absent means
//! any room.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use limpet_config::NodeConfig;
use serde::Deserialize;

/// Why a token was refused; [`AuthError::reason`] is the metric label.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("a token is required (the `token` query parameter)")]
    Missing,
    #[error("the token is longer than {0} bytes")]
    TooLong(usize),
    #[error("the token is not a JWT: {0}")]
    Malformed(String),
    #[error("tokens with `alg: none` are refused")]
    AlgNone,
    #[error("the token is signed with {0}; this node accepts {1}")]
    WrongAlgorithm(String, String),
    #[error("the token's signature does not verify")]
    Forged,
    #[error("the token has expired")]
    Expired,
    #[error("the token's claims are not accepted: {0}")]
    Claims(String),
    #[error("a refreshed token must name the same user (`sub`)")]
    OtherUser,
}

impl AuthError {
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::TooLong(_) => "too_long",
            AuthError::Malformed(_) => "malformed",
            AuthError::AlgNone => "alg_none",
            AuthError::WrongAlgorithm(..) => "wrong_algorithm",
            AuthError::Forged => "forged",
            AuthError::Expired => "expired",
            AuthError::Claims(_) => "claims",
            AuthError::OtherUser => "other_user",
        }
    }
}

/// Why the key could not be set up (read at start-up).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read auth.public_key `{0}`: {1}")]
    Read(String, std::io::Error),
    #[error("auth.public_key `{0}` is not a {1} public key in PEM: {2}")]
    Parse(String, &'static str, jsonwebtoken::errors::Error),
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    exp: u64,
    #[serde(default)]
    rooms: Option<Vec<String>>,
    #[serde(default)]
    publish: Option<Vec<String>>,
}

/// A verified client: the user and what its token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// `auth.leeway`, in seconds: the socket is closed that long after
    /// `exp`, as the handshake accepts a token that long after it.
    leeway: u64,
    rooms: Option<Vec<String>>,
    publish: Option<Vec<String>>,
}

impl Identity {
    /// Whether the token lets the socket join `room`.
    pub fn may_join(&self, room: &str) -> bool {
        allowed(self.rooms.as_deref(), room)
    }

    /// Whether the token lets the socket emit to `room`: its `publish`
    /// patterns, or its `rooms` when it has none.
    pub fn may_publish(&self, room: &str) -> bool {
        match &self.publish {
            Some(p) => allowed(Some(p), room),
            None => self.may_join(room),
        }
    }

    /// How long until the token expires (zero when it has).
    pub fn expires_in(&self) -> std::time::Duration {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        std::time::Duration::from_secs(self.exp.saturating_add(self.leeway)).saturating_sub(now)
    }
}

fn allowed(patterns: Option<&[String]>, room: &str) -> bool {
    patterns.is_none_or(|ps| ps.iter().any(|p| glob(p.as_bytes(), room.as_bytes())))
}

/// `*` (any run) and `?` (one byte); everything else literal. Iterative
/// with one backtrack point, so linear-ish in pattern × name and never
/// recursive (a token's patterns come from whoever minted it, but the
/// name comes from the client).
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Checks tokens with the configured key.
pub struct Verifier {
    key: DecodingKey,
    algorithm: Algorithm,
    validation: Validation,
    /// Refuse clients without a token.
    pub required: bool,
    max_bytes: usize,
}

impl Verifier {
    /// `None` when no key is configured (tokens are not checked).
    pub fn from_config(config: &NodeConfig) -> Result<Option<Verifier>, KeyError> {
        let a = &config.auth;
        let (key, algorithm) = match (&a.hmac_secret, &a.public_key) {
            (Some(secret), _) => (
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            ),
            (None, Some(path)) => {
                let pem = std::fs::read(path).map_err(|e| KeyError::Read(path.clone(), e))?;
                if a.algorithm.as_deref() == Some("ES256") {
                    let key = DecodingKey::from_ec_pem(&pem)
                        .map_err(|e| KeyError::Parse(path.clone(), "EC (P-256)", e))?;
                    (key, Algorithm::ES256)
                } else {
                    let key = DecodingKey::from_rsa_pem(&pem)
                        .map_err(|e| KeyError::Parse(path.clone(), "RSA", e))?;
                    (key, Algorithm::RS256)
                }
            }
            (None, None) => return Ok(None),
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = a.leeway.get().as_secs();
        validation.set_required_spec_claims(&["exp", "sub"]);
        if let Some(iss) = &a.issuer {
            validation.set_issuer(&[iss]);
        }
        match &a.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Ok(Some(Verifier {
            key,
            algorithm,
            validation,
            required: a.required,
            max_bytes: a.max_token_bytes.bytes() as usize,
        }))
    }

    /// Verifies `token` and returns who it names.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.len() > self.max_bytes {
            return Err(AuthError::TooLong(self.max_bytes));
        }
        let alg = header_alg(token)?;
        let want = format!("{:?}", self.algorithm);
        if alg.eq_ignore_ascii_case("none") {
            return Err(AuthError::AlgNone);
        }
        if alg != want {
            return Err(AuthError::WrongAlgorithm(alg, want));
        }
        use jsonwebtoken::errors::ErrorKind as K;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                K::ExpiredSignature => AuthError::Expired,
                K::InvalidSignature => AuthError::Forged,
                K::InvalidAlgorithm => AuthError::WrongAlgorithm(alg.clone(), want.clone()),
                K::InvalidIssuer => AuthError::Claims("wrong issuer (`iss`)".into()),
                K::InvalidAudience => AuthError::Claims("wrong audience (`aud`)".into()),
                K::ImmatureSignature => AuthError::Claims("not valid yet (`nbf`)".into()),
                K::MissingRequiredClaim(c) => AuthError::Claims(format!("`{c}` is required")),
                other => AuthError::Malformed(format!("{other:?}")),
            },
        )?;
        let c = data.claims;
        let Some(sub) = c.sub.filter(|s| !s.is_empty() && s.len() <= 256) else {
            return Err(AuthError::Claims("`sub` must be 1 to 256 bytes".into()));
        };
        let patterns = c
            .rooms
            .iter()
            .chain(c.publish.iter())
            .map(Vec::len)
            .sum::<usize>();
        if patterns > 1000 {
            return Err(AuthError::Claims("at most 1000 room patterns".into()));
        }
        Ok(Identity {
            user: sub,
            exp: c.exp,
            leeway: self.validation.leeway,
            rooms: c.rooms,
            publish: c.publish,
        })
    }
}

/// The `alg` of a token's header, read before the signature is checked.
fn header_alg(token: &str) -> Result<String, AuthError> {
    use base64_header::decode;
    let head = token
        .split('.')
        .next()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| AuthError::Malformed("no header".into()))?;
    let bytes =
        decode(head).ok_or_else(|| AuthError::Malformed("header is not base64url".into()))?;
    #[derive(Deserialize)]
    struct Header {
        alg: String,
    }
    let h: Header = serde_json::from_slice(&bytes)
        .map_err(|_| AuthError::Malformed("header is not JSON with an `alg`".into()))?;
    Ok(h.alg)
}

/// Unpadded base64url, as JWT segments are (a few lines rather than a
/// direct dependency on a base64 crate).
mod base64_header {
    pub fn decode(s: &str) -> Option<Vec<u8>> {
        let val = |c: u8| -> Option<u32> {
            Some(match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'-' => 62,
                b'_' => 63,
                _ => return None,
            } as u32)
        };
        let bytes = s.trim_end_matches('=').as_bytes();
        let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
        for chunk in bytes.chunks(4) {
            let mut n = 0u32;
            for (i, &c) in chunk.iter().enumerate() {
                n |= val(c)? << (18 - 6 * i);
            }
            match chunk.len() {
                4 => out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]),
                3 => out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8]),
                2 => out.push((n >> 16) as u8),
                _ => return None,
            }
        }
        Some(out)
    }
}

/// The `token` query parameter of a request URI, percent-decoded.
pub fn token_param(query: Option<&str>) -> Option<String> {
    let q = query?;
    let raw = q.split('&').find_map(|kv| kv.strip_prefix("token="))?;
    let mut out = Vec::with_capacity(raw.len());
    let b = raw.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn verifier() -> Verifier {
        let mut c = NodeConfig::default();
        c.auth.hmac_secret = Some(SECRET.into());
        Verifier::from_config(&c).unwrap().unwrap()
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn tokens_are_checked_with_a_reason_for_each_refusal() {
        let v = verifier();
        let ok = token(
            json!({"sub": "ann", "exp": now() + 60, "rooms": ["team-*"]}),
            SECRET,
        );
        let id = v.verify(&ok).unwrap();
        assert_eq!(id.user, "ann");
        assert!(id.may_join("team-a") && !id.may_join("other"));
        assert!(id.may_publish("team-b") && !id.may_publish("x"));
        let forged = token(
            json!({"sub": "ann", "exp": now() + 60}),
            "another secret, 32 bytes long!!",
        );
        assert_eq!(v.verify(&forged), Err(AuthError::Forged));
        let expired = token(json!({"sub": "ann", "exp": now() - 100}), SECRET);
        assert_eq!(v.verify(&expired), Err(AuthError::Expired));
        // {"alg":"none"}
        let none = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbm4iLCJleHAiOjk5OTk5OTk5OTl9.";
        assert_eq!(v.verify(none), Err(AuthError::AlgNone));
        // {"alg":"RS256","typ":"JWT"}
        let rs = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbm4ifQ.c2ln";
        assert!(matches!(v.verify(rs), Err(AuthError::WrongAlgorithm(..))));
        assert!(matches!(v.verify("garbage"), Err(AuthError::Malformed(_))));
        assert_eq!(v.verify(&"a".repeat(9000)), Err(AuthError::TooLong(8192)));
        let no_sub = token(json!({"exp": now() + 60}), SECRET);
        assert!(matches!(v.verify(&no_sub), Err(AuthError::Claims(_))));
    }

    /// A throwaway P-256 key pair, for this test only.
    const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgq2mOH1/kJI7gH0JF
e91pMOWb2h+7XDj8Ov2UAuiDKFmhRANCAATwHLkpGfgAa+GxGN8750JboU0QHMBF
CsyXBP7j4bZvRU7RPZ1BnOiUo/EvO8xMaVQKv9n9aBK4exN/BRfn9Pqc
-----END PRIVATE KEY-----
";
    const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE8By5KRn4AGvhsRjfO+dCW6FNEBzA
RQrMlwT+4+G2b0VO0T2dQZzolKPxLzvMTGlUCr/Z/WgSuHsTfwUX5/T6nA==
-----END PUBLIC KEY-----
";

    #[test]
    fn es256_with_a_public_key_file_and_no_hs256_downgrade() {
        let path = std::env::temp_dir().join(format!("limpet-es256-{}.pem", std::process::id()));
        std::fs::write(&path, EC_PUBLIC).unwrap();
        let mut c = NodeConfig::default();
        c.auth.public_key = Some(path.display().to_string());
        c.auth.algorithm = Some("ES256".into());
        c.auth.issuer = Some("https://auth.example".into());
        let v = Verifier::from_config(&c).unwrap().unwrap();
        let _ = std::fs::remove_file(&path);
        let key = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
        let claims = json!({"sub": "ann", "exp": now() + 60, "iss": "https://auth.example"});
        let es = encode(&Header::new(Algorithm::ES256), &claims, &key).unwrap();
        assert_eq!(v.verify(&es).unwrap().user, "ann");
        let wrong_iss = json!({"sub": "ann", "exp": now() + 60, "iss": "https://evil"});
        let es = encode(&Header::new(Algorithm::ES256), &wrong_iss, &key).unwrap();
        assert!(matches!(v.verify(&es), Err(AuthError::Claims(_))));
        // The classic downgrade: an HS256 token "signed" with the public key.
        let hs = encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(EC_PUBLIC.as_bytes()),
        )
        .unwrap();
        assert!(matches!(v.verify(&hs), Err(AuthError::WrongAlgorithm(..))));
        // A missing key file is a start-up error naming the file.
        c.auth.public_key = Some("/nonexistent/jwt.pem".into());
        let err = Verifier::from_config(&c).err().unwrap().to_string();
        assert!(err.contains("/nonexistent/jwt.pem"), "{err}");
    }

    #[test]
    fn globs() {
        assert!(glob(b"team-*", b"team-"));
        assert!(glob(b"team-*", b"team-red"));
        assert!(!glob(b"team-*", b"tea"));
        assert!(glob(b"a?c", b"abc"));
        assert!(glob(b"*x*y", b"aaxbby"));
        assert!(!glob(b"*x*y", b"aaxbb"));
        assert!(glob(b"lobby", b"lobby") && !glob(b"lobby", b"lobby2"));
    }

    #[test]
    fn the_token_parameter() {
        assert_eq!(token_param(Some("a=1&token=x%2Ey")), Some("x.y".into()));
        assert_eq!(token_param(Some("a=1")), None);
        assert_eq!(token_param(None), None);
        assert_eq!(token_param(Some("token=%zz")), None);
    }
}
