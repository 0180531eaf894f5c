//! How a broker URL is shown in logs: with its password replaced by `***`.
//!
//! The broker URL carries the broker's password (`redis://:PASS@host/`),
//! and the node logs the URL whenever it connects, reconnects or cannot
//! reach the broker. Logs are read by more people (and shipped to more
//! places) than the config file, so every place that shows a broker URL
//! goes through [`broker_url`]. It follows the URL rules the Redis client
//! uses (userinfo ends at the last `@` of the authority), and when the URL
//! is too odd to split it hides everything before its last `@` rather than
//! risk printing a secret.

/// `url` with the password (and `pass`/`password` query values) hidden:
/// `redis://user:secret@h:6379/` → `redis://user:***@h:6379/`.
pub fn broker_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not a URL at all: it may be nothing but a secret.
        return if url.contains('@') || url.contains(':') {
            "***".to_string()
        } else {
            url.to_string()
        };
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = (&authority[..at], &authority[at + 1..]);
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***@{host}"),
                None => authority.to_string(),
            }
        }
        // An `@` past the authority: a password holding `/`, `?` or `#`
        // unescaped. Hide all of it.
        None if tail.contains('@') => {
            let at = rest.rfind('@').unwrap_or(0);
            return format!("{scheme}://***@{}", hide_query(&rest[at + 1..]));
        }
        None => authority.to_string(),
    };
    format!("{scheme}://{authority}{}", hide_query(tail))
}

/// Several URLs (a Redis Cluster's seeds), comma-separated, each redacted.
pub fn broker_urls(urls: &[String]) -> String {
    urls.iter()
        .map(|u| broker_url(u))
        .collect::<Vec<_>>()
        .join(",")
}

/// Hides the values of `pass=` and `password=` in a path-and-query.
fn hide_query(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_string();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _))
                if key.eq_ignore_ascii_case("pass") || key.eq_ignore_ascii_case("password") =>
            {
                format!("{key}=***")
            }
            _ => pair.to_string(),
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let cases = [
            (
                "redis://:SECRET@127.0.0.1:6379/",
                "redis://:***@127.0.0.1:6379/",
            ),
            (
                "rediss://alice:SECRET@broker.example:6380/0",
                "rediss://alice:***@broker.example:6380/0",
            ),
            // A password holding `@` or `:`: the last `@` ends it.
            ("redis://:SE@C:RET@h:1/", "redis://:***@h:1/"),
            // Unescaped `/` or `?` in the password: everything before the
            // last `@` is hidden.
            ("redis://:SE/CRET@h:1/", "redis://***@h:1/"),
            ("redis://:SE?CRET@h:1/", "redis://***@h:1/"),
            (
                "redis://h:1/?pass=SECRET&db=2",
                "redis://h:1/?pass=***&db=2",
            ),
            ("redis://h:1/?PASSWORD=SECRET", "redis://h:1/?PASSWORD=***"),
            ("SECRET@h:1", "***"),
        ];
        for (url, shown) in cases {
            assert_eq!(broker_url(url), shown, "{url}");
            assert!(!broker_url(url).contains("SECRET"), "{url}");
        }
    }

    #[test]
    fn urls_without_a_password_are_unchanged() {
        for url in [
            "redis://127.0.0.1:6379/",
            "redis://alice@h:1/",
            "rediss://h/0",
            "redis://[::1]:6379/",
        ] {
            assert_eq!(broker_url(url), url);
        }
        assert_eq!(
            broker_urls(&["redis://:a@h:1/".into(), "redis://h:2/".into()]),
            "redis://:***@h:1/,redis://h:2/"
        );
    }
}
