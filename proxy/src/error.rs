//! Every way serving a client can fail, and the answer each one gets.
//!
//! The request path returns a [`ForwardError`] wherever it gives up, and
//! this is the one place that says which status that is and what short
//! text the client reads (`<code> <reason>: <what happened>`), so the
//! same failure always looks the same. Who is to blame decides the class:
//! the client's own mistakes are 4xx, the backends' are 5xx. Connections
//! refused at the connection limits get their answer here too.

use crate::client_body::ClientFault;
use crate::select::NoBackend;
use crate::upstream::{Body, SendError};
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};

/// Why the proxy answers a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// RFC 9112 §3.2; carries the `limpet_proxy_bad_requests_total` label.
    #[error("an HTTP/1.1 request needs exactly one Host header")]
    BadHost(&'static str),
    #[error("no route for this request")]
    NoRoute,
    /// Every candidate was tried and failed.
    #[error("no backend could be reached")]
    Unreachable,
    /// Backends are up but at `max_connections_per_backend`.
    #[error("every backend is at its connection limit")]
    AllFull,
    #[error("no backend is up")]
    NoneUp,
    /// The engine.io session's backend is gone (down, maint, removed or
    /// unreachable): the client gets engine.io's own answer for an unknown
    /// session, which makes it start a new one instead of retrying.
    #[error("Session ID unknown")]
    SessionUnknown,
    /// No response head within `timeouts.response` after the upload.
    #[error("the backend did not answer in time")]
    BackendTimeout,
    /// The connection died before a response head, with no retry left.
    #[error("the backend connection failed")]
    BackendFailed,
    /// A `101` to a request that asked for no allowed upgrade: that
    /// connection's state is unknown, so it is neither relayed nor reused.
    #[error("the backend switched protocols unasked")]
    SwitchedUnasked,
    /// A CONNECT over HTTP/2 that is not a WebSocket (RFC 8441) on a
    /// route that tunnels WebSockets: the proxy is no forward proxy.
    #[error("CONNECT is only for WebSockets (RFC 8441) on a route that tunnels them")]
    ConnectRefused,
    /// The backend answered a bridged WebSocket (HTTP/2 extended CONNECT)
    /// with something other than a `101` for the proxy's key.
    #[error("the backend's WebSocket handshake answer was invalid")]
    BadWebSocketAnswer,
    /// The client broke its own upload (see `client_body`).
    #[error("{}", client_body_text(*.0))]
    ClientBody(ClientFault),
    /// A connection past `limits.max_connections`, refused before its
    /// request is read (see [`ForwardError::refusal`]).
    #[error("too many connections")]
    TooManyConnections,
    /// A connection past `limits.max_connections_per_ip`, likewise.
    #[error("too many connections from your address")]
    TooManyFromAddress,
}

fn client_body_text(fault: ClientFault) -> &'static str {
    match fault {
        ClientFault::Timeout => "the request body stopped arriving",
        ClientFault::Aborted | ClientFault::Invalid => {
            "the request body was cut short or malformed"
        }
    }
}

impl ForwardError {
    pub fn status(self) -> StatusCode {
        match self {
            ForwardError::BadHost(_) | ForwardError::SessionUnknown => StatusCode::BAD_REQUEST,
            ForwardError::NoRoute => StatusCode::NOT_FOUND,
            ForwardError::Unreachable
            | ForwardError::BackendFailed
            | ForwardError::SwitchedUnasked
            | ForwardError::BadWebSocketAnswer => StatusCode::BAD_GATEWAY,
            ForwardError::ConnectRefused => StatusCode::NOT_IMPLEMENTED,
            ForwardError::AllFull | ForwardError::NoneUp | ForwardError::TooManyConnections => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ForwardError::TooManyFromAddress => StatusCode::TOO_MANY_REQUESTS,
            ForwardError::BackendTimeout => StatusCode::GATEWAY_TIMEOUT,
            ForwardError::ClientBody(ClientFault::Timeout) => StatusCode::REQUEST_TIMEOUT,
            ForwardError::ClientBody(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The text the client reads, e.g. `504 gateway timeout: the backend
    /// did not answer in time`.
    pub fn body(self) -> String {
        let status = self.status();
        let reason = status.canonical_reason().unwrap_or_default();
        format!(
            "{} {}: {self}",
            status.as_u16(),
            reason.to_ascii_lowercase()
        )
    }

    pub fn response(self) -> Response<Body> {
        if self == ForwardError::SessionUnknown {
            // Byte for byte what engine.io answers (its error code 1), so
            // socket.io clients treat it as their own server's verdict.
            let mut resp = Response::new(
                Full::new(Bytes::from_static(
                    br#"{"code":1,"message":"Session ID unknown"}"#,
                ))
                .map_err(|never| match never {})
                .boxed(),
            );
            *resp.status_mut() = self.status();
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            return resp;
        }
        plain(self.status(), &self.body())
    }

    /// The whole answer to a connection refused before any request was
    /// read, written straight to the socket (there is no HTTP connection
    /// yet to answer through); its body is the bare reason.
    pub fn refusal(self) -> String {
        let status = self.status();
        let body = format!("{self}\n");
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            status.as_u16(),
            status.canonical_reason().unwrap_or_default(),
            body.len()
        )
    }
}

impl From<NoBackend> for ForwardError {
    fn from(none: NoBackend) -> ForwardError {
        match none {
            NoBackend::Unreachable => ForwardError::Unreachable,
            NoBackend::AllFull => ForwardError::AllFull,
            NoBackend::NoneUp => ForwardError::NoneUp,
            NoBackend::SessionGone => ForwardError::SessionUnknown,
        }
    }
}

impl From<&SendError> for ForwardError {
    fn from(e: &SendError) -> ForwardError {
        match e {
            SendError::Timeout(_) => ForwardError::BackendTimeout,
            SendError::Hyper(_) | SendError::MarkedDown => ForwardError::BackendFailed,
        }
    }
}

impl From<ClientFault> for ForwardError {
    fn from(fault: ClientFault) -> ForwardError {
        ForwardError::ClientBody(fault)
    }
}

/// A short `text/plain` answer of the proxy's own: these errors, and the
/// https redirect.
pub fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(format!("{text}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact texts clients (and people reading curl output) saw before
    /// the errors were gathered here.
    #[test]
    fn every_failure_keeps_its_status_and_text() {
        let cases = [
            (
                ForwardError::BadHost("missing_host"),
                "400 bad request: an HTTP/1.1 request needs exactly one Host header",
            ),
            (
                ForwardError::NoRoute,
                "404 not found: no route for this request",
            ),
            (
                ForwardError::Unreachable,
                "502 bad gateway: no backend could be reached",
            ),
            (
                ForwardError::AllFull,
                "503 service unavailable: every backend is at its connection limit",
            ),
            (
                ForwardError::NoneUp,
                "503 service unavailable: no backend is up",
            ),
            (
                ForwardError::BackendTimeout,
                "504 gateway timeout: the backend did not answer in time",
            ),
            (
                ForwardError::BackendFailed,
                "502 bad gateway: the backend connection failed",
            ),
            (
                ForwardError::SwitchedUnasked,
                "502 bad gateway: the backend switched protocols unasked",
            ),
            (
                ForwardError::ConnectRefused,
                "501 not implemented: CONNECT is only for WebSockets (RFC 8441) on a route that tunnels them",
            ),
            (
                ForwardError::BadWebSocketAnswer,
                "502 bad gateway: the backend's WebSocket handshake answer was invalid",
            ),
            (
                ForwardError::ClientBody(ClientFault::Timeout),
                "408 request timeout: the request body stopped arriving",
            ),
            (
                ForwardError::ClientBody(ClientFault::Aborted),
                "400 bad request: the request body was cut short or malformed",
            ),
            (
                ForwardError::ClientBody(ClientFault::Invalid),
                "400 bad request: the request body was cut short or malformed",
            ),
        ];
        let resp = ForwardError::SessionUnknown.response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        for (error, text) in cases {
            assert_eq!(error.body(), text);
            assert_eq!(error.status().as_u16().to_string(), text[..3]);
            let resp = error.response();
            assert_eq!(resp.status(), error.status());
            assert_eq!(resp.headers()[CONTENT_TYPE], "text/plain; charset=utf-8");
        }
    }

    #[test]
    fn refused_connections_keep_their_exact_bytes() {
        assert_eq!(
            ForwardError::TooManyConnections.refusal(),
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 21\r\nconnection: close\r\n\r\ntoo many connections\n"
        );
        assert_eq!(
            ForwardError::TooManyFromAddress.refusal(),
            "HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/plain\r\ncontent-length: 39\r\nconnection: close\r\n\r\ntoo many connections from your address\n"
        );
    }
}
