//! systemd's readiness protocol (`sd_notify`), spoken without libsystemd:
//! one datagram of `KEY=value` lines to the Unix socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket), as a
//! `Type=notify` unit expects.
//!
//! What the proxy says:
//!
//! * `READY=1` once its listeners serve;
//! * in a binary upgrade (`upgrade`), the new process says
//!   `MAINPID=<its pid>` and `READY=1` once it serves, before it tells
//!   the old process to drain, and the old one, still the service's main
//!   process then, repeats `MAINPID=<new pid>` (accepted even under
//!   `NotifyAccess=main`); systemd follows the new process and the old one
//!   exits as an ordinary member of the unit;
//! * `STOPPING=1` when SIGTERM or SIGINT stops it (not when it drains
//!   after a handover: the service goes on in the new process).
//!
//! Without `$NOTIFY_SOCKET` (not under systemd, or `Type=simple`) nothing
//! is sent. A datagram that cannot be sent is logged and otherwise
//! ignored: the proxy serves either way. The variable stays set, so the
//! process a binary upgrade starts inherits it.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;

/// The environment variable systemd sets for a `Type=notify` service.
pub const ENV: &str = "NOTIFY_SOCKET";

/// Whether this process was given a notify socket.
pub fn enabled() -> bool {
    std::env::var_os(ENV).is_some_and(|v| !v.is_empty())
}

/// Sends `state` (newline-separated `KEY=value` lines) to
/// `$NOTIFY_SOCKET`, if set.
pub fn send(state: &str) {
    let Some(target) = std::env::var_os(ENV).filter(|v| !v.is_empty()) else {
        return;
    };
    let result = address(target.as_encoded_bytes()).and_then(|addr| {
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(state.as_bytes(), &addr)
    });
    match result {
        Ok(_) => tracing::debug!(state, "sd_notify sent"),
        Err(e) => tracing::warn!(
            socket = %target.to_string_lossy(),
            "sd_notify: cannot tell systemd `{}`: {e}",
            state.replace('\n', " ")
        ),
    }
}

/// `READY=1`, or, in the new process of a binary upgrade, `MAINPID` too.
pub fn ready(upgraded: bool) {
    match upgraded {
        true => send(&format!("MAINPID={}\nREADY=1", std::process::id())),
        false => send("READY=1"),
    }
}

/// The address `$NOTIFY_SOCKET` names: `@name` is abstract, else a path.
fn address(target: &[u8]) -> std::io::Result<SocketAddr> {
    match target.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)
        }
        None => {
            use std::os::unix::ffi::OsStrExt;
            SocketAddr::from_pathname(Path::new(std::ffi::OsStr::from_bytes(target)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::linux::net::SocketAddrExt;

    #[test]
    fn paths_and_abstract_names() {
        let abs = address(b"@/org/freedesktop/systemd1/notify/42").unwrap();
        assert_eq!(
            abs.as_abstract_name(),
            Some(&b"/org/freedesktop/systemd1/notify/42"[..])
        );
        assert_eq!(abs.as_pathname(), None);
        let path = address(b"/run/systemd/notify").unwrap();
        assert_eq!(path.as_pathname(), Some(Path::new("/run/systemd/notify")));
    }

    #[test]
    fn a_datagram_reaches_an_abstract_socket() {
        let name = format!("limpet-proxy-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&addr).unwrap();
        let sender = UnixDatagram::unbound().unwrap();
        let target = address(format!("@{name}").as_bytes()).unwrap();
        sender.send_to_addr(b"READY=1", &target).unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
