//! Password checks for `AUTH` and `HELLO ... AUTH`, and what a failed
//! attempt costs: the WRONGPASS reply held back and the connection closed
//! after a few (the per-address accounting is [`crate::auth_guard`]). Once
//! an address has recent failures, a right password's `+OK` is held back
//! as long as a WRONGPASS would be, so the timing gives nothing away.

use crate::session::Session;
use bytes::Bytes;

/// Checks a user/password pair against the single `default` user.
pub(super) fn credentials_ok(s: &Session, user: &[u8], pass: &[u8]) -> bool {
    if user != b"default" {
        return false;
    }
    match &s.broker.config.requirepass {
        None => true,
        Some(want) => constant_time_eq(want.as_bytes(), pass),
    }
}

/// Compares without leaking where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, &x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

pub(super) fn auth(s: &mut Session, args: &[Bytes]) -> bool {
    if args.len() > 3 {
        s.reply().error("ERR syntax error");
        return true;
    }
    if args.len() == 2 && s.broker.config.requirepass.is_none() {
        s.reply().error("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?");
        return true;
    }
    let (user, pass) = if args.len() == 3 {
        (&args[1][..], &args[2][..])
    } else {
        (&b"default"[..], &args[1][..])
    };
    if credentials_ok(s, user, pass) {
        hold_as_if_failed(s);
        s.set_authenticated(true);
        s.reply().simple("OK");
    } else {
        auth_failed(s);
    }
    true
}

/// Holds a right password's reply as long as a failure from this address
/// would be held. Without it a guesser opens fresh connections and takes
/// "no `+OK` within one round trip" to mean wrong, never waiting out the
/// back-off. Nothing of the connection runs or is written during the hold,
/// so `+OK` costs the same time as WRONGPASS; at most `max_delay`.
pub(super) fn hold_as_if_failed(s: &mut Session) {
    let delay = s.broker.auth_guard.pending(s.handle.peer.ip());
    if !delay.is_zero() {
        s.hold(delay);
    }
}

/// WRONGPASS, held back by the address's failure count, and the
/// connection closed after `auth_failures.max_per_connection` of them
/// (see [`crate::auth_guard`]).
pub(super) fn auth_failed(s: &mut Session) {
    let broker = s.broker.clone();
    let guard = &broker.auth_guard;
    let m = &broker.metrics;
    m.auth_failures.inc();
    let delay = guard.failed(s.handle.peer.ip());
    m.auth_tracked_addresses.set(guard.tracked() as i64);
    s.auth_failures += 1;
    let closing = s.auth_failures >= guard.max_per_connection();
    if let Some(unlogged) = guard.may_log() {
        tracing::warn!(
            client = s.handle.id,
            peer = %s.handle.peer,
            delay_ms = delay.as_millis() as u64,
            closing,
            "AUTH failed ({unlogged} more failures since the last such line)"
        );
    }
    s.reply().error(WRONGPASS);
    s.hold(delay);
    if closing {
        m.auth_disconnects.inc();
        s.close_after_reply = true;
    }
}
