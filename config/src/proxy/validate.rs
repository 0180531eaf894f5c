//! Semantic checks on `limpet-proxy` settings, run after parsing: what
//! serde cannot say (pairs of fields, references between pools and routes,
//! header-name and host:port syntax). Kept apart from the types so the
//! shape of the config reads on its own in `mod.rs`.

use super::*;
use crate::{FieldError, Validate};

/// `host:port` with a non-empty host and a numeric port.
/// `host:port` where host is a DNS name, an IPv4 address or a bracketed
/// IPv6 address. A URL (`http://10.0.0.1:8080`, an nginx `proxy_pass`
/// habit) used to pass here and fail at run time as a name to look up.
fn valid_host_port(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        }
    };
    host_ok && port.parse::<u16>().is_ok_and(|p| p != 0)
}

/// The message for an address that is not host:port.
fn not_host_port(address: &str) -> String {
    match address.split_once("://") {
        Some((_, rest)) => format!(
            "`{address}` is not host:port: write it without the scheme, as `{}`",
            rest.trim_end_matches('/')
        ),
        None => format!("`{address}` is not host:port"),
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An `Upgrade` protocol: `name` or `name/version`, both tokens.
fn is_protocol(s: &str) -> bool {
    match s.split_once('/') {
        Some((name, version)) => is_token(name) && is_token(version),
        None => is_token(s),
    }
}

impl Validate for ProxyConfig {
    fn validate(&self) -> Result<(), FieldError> {
        if self.listen.is_empty() {
            return Err(FieldError::new(
                "listen",
                "at least one [[listen]] is required",
            ));
        }
        for (i, l) in self.listen.iter().enumerate() {
            if self.listen[..i].iter().any(|o| o.bind == l.bind) && l.bind.port() != 0 {
                return Err(FieldError::new(
                    format!("listen.{i}.bind"),
                    format!("{} is listed twice", l.bind),
                ));
            }
        }
        for (i, l) in self.listen.iter().enumerate() {
            if let Some(tls) = &l.tls {
                if tls.certs.is_empty() {
                    return Err(FieldError::new(
                        format!("listen.{i}.tls"),
                        "needs at least one [[listen.tls.cert]]",
                    ));
                }
                if tls.certs.iter().filter(|c| c.default).count() > 1 {
                    return Err(FieldError::new(
                        format!("listen.{i}.tls"),
                        "only one certificate can be the default",
                    ));
                }
                for (j, c) in tls.certs.iter().enumerate() {
                    for name in &c.names {
                        let bare = name.strip_prefix("*.").unwrap_or(name);
                        if bare.is_empty() || bare.contains('*') || bare.contains(' ') {
                            return Err(FieldError::new(
                                format!("listen.{i}.tls.cert.{j}.names"),
                                format!("`{name}` is not a host name or *.wildcard"),
                            ));
                        }
                    }
                }
                if l.redirect_https {
                    return Err(FieldError::new(
                        format!("listen.{i}.redirect_https"),
                        "a TLS listener cannot redirect to itself",
                    ));
                }
            }
        }
        let t = &self.timeouts;
        for (name, d) in [
            ("connect", t.connect),
            ("header_read", t.header_read),
            ("response", t.response),
            ("client_body", t.client_body),
        ] {
            if d.is_zero() {
                return Err(FieldError::new(
                    format!("timeouts.{name}"),
                    "must be above 0",
                ));
            }
        }
        let k = &self.upstream_keepalive;
        if !k.idle.is_zero() {
            // The kernel's limits: seconds up to 32767, at most 127 probes;
            // below a second it rounds down to 0 and refuses.
            let secs = |d: crate::Duration| (1..=32767).contains(&d.get().as_secs());
            if !secs(k.idle) {
                return Err(FieldError::new(
                    "upstream_keepalive.idle",
                    "must be 0 (off) or between 1s and 32767s",
                ));
            }
            if !secs(k.interval) {
                return Err(FieldError::new(
                    "upstream_keepalive.interval",
                    "must be between 1s and 32767s",
                ));
            }
            if !(1..=127).contains(&k.count) {
                return Err(FieldError::new(
                    "upstream_keepalive.count",
                    "must be between 1 and 127",
                ));
            }
        }
        let h2 = &self.http2;
        if h2.max_concurrent_streams == 0 {
            return Err(FieldError::new(
                "http2.max_concurrent_streams",
                "must be at least 1",
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&h2.max_header_list_size.bytes()) {
            return Err(FieldError::new(
                "http2.max_header_list_size",
                "must be between 1kb and 16mb",
            ));
        }
        for (name, n) in [
            ("max_pending_reset_streams", h2.max_pending_reset_streams),
            ("max_error_reset_streams", h2.max_error_reset_streams),
        ] {
            if n == 0 {
                return Err(FieldError::new(
                    format!("http2.{name}"),
                    "must be at least 1 (it guards against reset floods)",
                ));
            }
        }
        if self.admin.request_timeout.is_zero() {
            return Err(FieldError::new("admin.request_timeout", "must be above 0"));
        }
        if self.admin.token.as_ref().is_some_and(|t| t.len() < 8) {
            return Err(FieldError::new(
                "admin.token",
                "must be at least 8 characters",
            ));
        }
        if self.limits.max_header_bytes.bytes() < 8192 {
            return Err(FieldError::new(
                "limits.max_header_bytes",
                "must be at least 8kb",
            ));
        }
        for (i, pool) in self.pools.iter().enumerate() {
            let at = |f: &str| format!("pool.{i}.{f}");
            if pool.name.is_empty() {
                return Err(FieldError::new(at("name"), "must not be empty"));
            }
            if self.pools[..i].iter().any(|p| p.name == pool.name) {
                return Err(FieldError::new(
                    at("name"),
                    format!("pool `{}` is defined twice", pool.name),
                ));
            }
            if pool.backends.is_empty() {
                return Err(FieldError::new(
                    at("name"),
                    format!("pool `{}` has no [[pool.backend]]", pool.name),
                ));
            }
            if matches!(pool.affinity, Affinity::Header | Affinity::Query)
                && pool.affinity_key.as_deref().is_none_or(str::is_empty)
            {
                return Err(FieldError::new(
                    at("affinity"),
                    "header and query affinity need affinity_key",
                ));
            }
            if pool.socketio.max_sessions == 0 {
                return Err(FieldError::new(
                    at("socketio.max_sessions"),
                    "must be at least 1",
                ));
            }
            if pool.socketio.session_idle.is_zero() {
                return Err(FieldError::new(
                    at("socketio.session_idle"),
                    "must be above 0",
                ));
            }
            for (j, b) in pool.backends.iter().enumerate() {
                let at = |f: &str| format!("pool.{i}.backend.{j}.{f}");
                if b.id.is_empty() || !b.id.bytes().all(|c| c.is_ascii_graphic()) {
                    return Err(FieldError::new(
                        at("id"),
                        "must be printable ASCII without spaces",
                    ));
                }
                if pool.backends[..j].iter().any(|o| o.id == b.id) {
                    return Err(FieldError::new(
                        at("id"),
                        format!(
                            "backend id `{}` is used twice in pool `{}`",
                            b.id, pool.name
                        ),
                    ));
                }
                if !valid_host_port(&b.address) {
                    return Err(FieldError::new(at("address"), not_host_port(&b.address)));
                }
                if b.weight == 0 || b.weight > 1000 {
                    return Err(FieldError::new(at("weight"), "must be between 1 and 1000"));
                }
            }
            let c = &pool.cookie;
            if !is_token(&c.name) {
                return Err(FieldError::new(
                    at("cookie.name"),
                    format!("`{}` is not a valid cookie name", c.name),
                ));
            }
            if !c.path.starts_with('/') {
                return Err(FieldError::new(at("cookie.path"), "must start with /"));
            }
            if c.secret.as_ref().is_some_and(|s| s.len() < 16) {
                return Err(FieldError::new(
                    at("cookie.secret"),
                    "must be at least 16 characters",
                ));
            }
            if c.same_site == SameSite::None && !c.secure {
                return Err(FieldError::new(
                    at("cookie.same_site"),
                    "browsers drop SameSite=None cookies without secure = true",
                ));
            }
            let h = &pool.health;
            if let Some(path) = &h.path {
                if !path.starts_with('/') {
                    return Err(FieldError::new(at("health.path"), "must start with /"));
                }
                if h.interval.is_zero() || h.timeout.is_zero() {
                    return Err(FieldError::new(
                        at("health.interval"),
                        "interval and timeout must be above 0",
                    ));
                }
                if h.rise == 0 || h.fall == 0 {
                    return Err(FieldError::new(
                        at("health.rise"),
                        "rise and fall must be at least 1",
                    ));
                }
            }
            if pool.passive.max_fails > 0 && pool.passive.fail_timeout.is_zero() {
                return Err(FieldError::new(
                    at("passive.fail_timeout"),
                    "must be above 0 when max_fails is set",
                ));
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            if !r.path_prefix.starts_with('/') {
                return Err(FieldError::new(
                    format!("route.{i}.path_prefix"),
                    "must start with /",
                ));
            }
            if let Some(bad) = r.upgrade_protocols.iter().find(|p| !is_protocol(p)) {
                return Err(FieldError::new(
                    format!("route.{i}.upgrade_protocols"),
                    format!("`{bad}` is not a protocol name (token, optionally /version)"),
                ));
            }
            if !self.pools.iter().any(|p| p.name == r.pool) {
                return Err(FieldError::new(
                    format!("route.{i}.pool"),
                    format!("no pool named `{}`", r.pool),
                ));
            }
        }
        Ok(())
    }
}
