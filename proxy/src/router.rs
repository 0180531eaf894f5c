//! Routes: which pool serves a request, by path prefix and optional Host,
//! like nginx `location` blocks. The longest matching prefix wins; a route
//! with a Host beats one without at the same length.

use limpet_config::RouteConfig;

/// What a matched route says about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub pool: usize,
    /// `Upgrade` protocols tunnelled here, lowercase.
    pub upgrades: Vec<String>,
}

pub struct Router {
    /// (host, prefix, route), most specific first.
    routes: Vec<(Option<String>, String, Route)>,
}

impl Router {
    pub fn new(routes: &[RouteConfig], pool_index: impl Fn(&str) -> Option<usize>) -> Router {
        let mut list: Vec<_> = routes
            .iter()
            .filter_map(|r| {
                Some((
                    r.host.as_ref().map(|h| h.to_ascii_lowercase()),
                    r.path_prefix.clone(),
                    Route {
                        pool: pool_index(&r.pool)?,
                        upgrades: r
                            .upgrade_protocols
                            .iter()
                            .map(|p| p.to_ascii_lowercase())
                            .collect(),
                    },
                ))
            })
            .collect();
        list.sort_by(|a, b| {
            b.1.len()
                .cmp(&a.1.len())
                .then(b.0.is_some().cmp(&a.0.is_some()))
        });
        Router { routes: list }
    }

    /// The pool index for a request; `host` is the Host header without port.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<usize> {
        self.route(host, path).map(|r| r.pool)
    }

    /// The matching route; `host` is the Host header without port.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|(h, prefix, _)| {
                path.starts_with(prefix.as_str())
                    && h.as_deref()
                        .is_none_or(|h| host.is_some_and(|x| x.eq_ignore_ascii_case(h)))
            })
            .map(|(_, _, route)| route)
    }
}

/// The host part of a Host header (`example.com:8080` → `example.com`).
pub fn host_only(host: &str) -> &str {
    if host.starts_with('[') {
        // No closing bracket: not an IPv6 literal, so no port to cut.
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_and_host() {
        let route = |prefix: &str, host: Option<&str>, pool: &str| RouteConfig {
            path_prefix: prefix.into(),
            host: host.map(String::from),
            pool: pool.into(),
            upgrade_protocols: vec!["WebSocket".into()],
        };
        let routes = [
            route("/", None, "web"),
            route("/socket.io/", None, "io"),
            route("/", Some("api.example.com"), "api"),
        ];
        let names = ["web", "io", "api"];
        let r = Router::new(&routes, |n| names.iter().position(|x| *x == n));
        assert_eq!(r.find(Some("example.com"), "/index.html"), Some(0));
        assert_eq!(r.find(Some("example.com"), "/socket.io/?EIO=4"), Some(1));
        assert_eq!(r.find(Some("API.example.com"), "/x"), Some(2));
        assert_eq!(r.find(None, "/x"), Some(0));
        assert_eq!(r.route(None, "/x").unwrap().upgrades, vec!["websocket"]);
        let only_io = Router::new(&routes[1..2], |n| names.iter().position(|x| *x == n));
        assert_eq!(only_io.find(None, "/other"), None);
        assert_eq!(host_only("example.com:8080"), "example.com");
        assert_eq!(host_only("[::1]:8080"), "[::1]");
        assert_eq!(host_only("example.com"), "example.com");
    }

    /// Found by the fuzz target `proxy_head` (its input's Host is the
    /// first case): a Host starting with `[` and no closing bracket sliced
    /// past its end and panicked the task serving the request.
    #[test]
    fn host_with_an_unclosed_bracket_does_not_panic() {
        assert_eq!(host_only("[:yyyy&y 1"), "[:yyyy&y 1");
        assert_eq!(host_only("["), "[");
        assert_eq!(host_only("[::1"), "[::1");
        assert_eq!(host_only("[::1]"), "[::1]");
        assert_eq!(host_only("[]:80"), "[]");
    }
}
