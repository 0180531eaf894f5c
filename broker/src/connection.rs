//! The socket loop of one connection: read requests, write what is owed,
//! wait while an XREAD is blocked ([`crate::blocking`]), and close on EOF, errors, `CLIENT KILL`, an output limit, the idle
//! timeout, the auth timeout (with `requirepass`, not authenticated within
//! `auth_timeout`) or shutdown.
//!
//! It decides only *when* to read and write: running the requests is
//! [`crate::requests`], the connection's state is [`Session`]. Reading
//! stops while the client owes more than `OUT_READ_PAUSE` bytes (TCP
//! backpressure instead of memory). Pushed messages are written by their
//! publishers ([`crate::handle::Fanout`]); this task writes only what a
//! socket would not take at once, when a publisher or its own batch left
//! some ([`crate::outbox::Outbox`]), so a subscriber that keeps up is
//! never woken for a message.

use crate::handle::{ClientHandle, KillReason};
use crate::session::{Session, OUT_READ_PAUSE};
use crate::state::Broker;
use crate::{blocking, requests};
use bytes::BytesMut;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Serves one connection until it closes, is killed, or the broker stops.
pub async fn run(
    broker: Arc<Broker>,
    handle: Arc<ClientHandle>,
    stream: TcpStream,
    mut shutdown: watch::Receiver<bool>,
) {
    let stream = Arc::new(stream);
    handle.attach(stream.clone());
    let mut s = Session::new(broker, handle.clone());
    let timeout = s.broker.config.timeout;
    // Holds memory only while it holds bytes ([`crate::buffers`]).
    let mut input = BytesMut::new();
    let mut reading = true;
    // The peer half-closed: close once everything it sent is answered.
    let mut eof = false;
    // Whether the client owes so many replies that nothing of its runs.
    let mut backpressured = false;
    let idle = tokio::time::sleep(Duration::from_secs(timeout.max(1)));
    tokio::pin!(idle);
    // Armed whenever the client is not authenticated (only possible with
    // requirepass), from connect or from the RESET that dropped its
    // authentication: a silent client must not keep a maxclients slot.
    let auth_timeout = s.broker.config.auth_timeout.get();
    let auth_deadline = tokio::time::sleep(auth_timeout);
    tokio::pin!(auth_deadline);
    let mut was_authenticated = s.authenticated;
    let reason = loop {
        if let Some(until) = s.hold_until.take() {
            tokio::select! {
                biased;
                _ = handle.killed() => break "killed",
                _ = shutdown.changed() => break "shutdown",
                _ = tokio::time::sleep_until(until) => {}
            }
            // The replies held back go out now.
            if s.commit().is_err() {
                break "write error";
            }
        }
        if s.blocked.is_some() {
            // XREAD BLOCK: park until served, timed out or gone; then go
            // on with what the client sent meanwhile.
            if let Err(reason) = blocking::wait(&mut s, &stream, &mut input, &mut shutdown).await {
                break reason;
            }
            s.paused = true;
            continue;
        }
        if eof && !s.paused {
            s.close_after_reply = true;
        }
        if s.close_after_reply {
            reading = false;
            if handle.unsent_bytes() > 0 {
                // Write it ourselves: a publisher that queued it may
                // write it all and never tell this task, which would then
                // wait for nothing.
                s.writing = true;
            } else if !s.writing {
                break "closed";
            }
        }
        // Everything read was run: waiting holds no read buffer.
        crate::buffers::give(&mut input);
        let full = handle.unsent_bytes() >= OUT_READ_PAUSE;
        if s.paused && !full {
            tokio::task::yield_now().await;
            if handle.kill_reason() != KillReason::None {
                break "killed";
            }
            if *shutdown.borrow() {
                break "shutdown";
            }
            if !requests::process(&mut s, &mut input) {
                break "closed";
            }
            continue;
        }
        if full && !backpressured {
            s.broker.metrics.output_backpressure.inc();
        }
        backpressured = full;
        let may_read = reading && !s.paused && !full;
        let idle_applies = timeout > 0 && !s.in_pubsub_mode();
        if was_authenticated && !s.authenticated {
            auth_deadline
                .as_mut()
                .reset(tokio::time::Instant::now() + auth_timeout);
        }
        was_authenticated = s.authenticated;
        tokio::select! {
            biased;
            _ = handle.killed() => break "killed",
            _ = shutdown.changed() => break "shutdown",
            _ = handle.write_wanted(), if !s.writing => s.writing = true,
            r = stream.writable(), if s.writing => {
                if r.is_err() || s.flush().is_err() {
                    break "write error";
                }
            }
            r = stream.readable(), if may_read => {
                if r.is_err() {
                    break "read error";
                }
                crate::buffers::take(&mut input);
                match stream.try_read_buf(&mut input) {
                    Ok(0) => {
                        // Half-close: answer what was sent, then close.
                        if !requests::process(&mut s, &mut input) {
                            break "closed";
                        }
                        reading = false;
                        eof = true;
                    }
                    Ok(n) => {
                        s.broker.metrics.net_input_bytes.inc_by(n as u64);
                        if timeout > 0 {
                            idle.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(timeout));
                        }
                        if !requests::process(&mut s, &mut input) {
                            break "closed";
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => break "read error",
                }
            }
            _ = &mut idle, if idle_applies => break "idle timeout",
            _ = &mut auth_deadline, if !s.authenticated => {
                s.broker.metrics.auth_timeouts.inc();
                break "auth timeout";
            }
        }
    };
    finish(s, reason);
}

fn finish(mut s: Session, reason: &str) {
    let handle = s.handle.clone();
    match handle.kill_reason() {
        KillReason::HardLimit | KillReason::SoftLimit => {
            let which = if handle.kill_reason() == KillReason::HardLimit {
                "hard"
            } else {
                "soft"
            };
            let m = &s.broker.metrics;
            if handle.is_pubsub() {
                m.slow_client_disconnects.with_label_values(&[which]).inc();
                tracing::warn!(
                    client = handle.id,
                    peer = %handle.peer,
                    unsent_bytes = handle.output_bytes(),
                    "disconnecting slow subscriber: output {which} limit exceeded"
                );
            } else {
                m.reply_limit_disconnects.with_label_values(&[which]).inc();
                tracing::warn!(
                    client = handle.id,
                    peer = %handle.peer,
                    unsent_bytes = handle.output_bytes(),
                    "disconnecting client that does not read its replies: output_limit_normal {which} limit exceeded"
                );
            }
        }
        KillReason::Killed => {
            tracing::info!(client = handle.id, peer = %handle.peer, "client killed")
        }
        KillReason::None => {
            tracing::debug!(client = handle.id, peer = %handle.peer, reason, "client disconnected")
        }
    }
    blocking::unblock(&mut s);
    crate::commands::unwatch_all(&mut s);
    s.drop_subscriptions();
    // Last, after no publisher can find the client any more.
    handle.detach();
    s.broker.unregister(handle.id);
}
