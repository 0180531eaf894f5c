//! Running one read batch of a client's requests: parse, dispatch each to
//! its command, then count the reply bytes against the client's output
//! limit and the batch against the metrics, and write the replies and
//! the messages the batch published ([`Session::commit`]).
//!
//! Between the socket loop ([`crate::connection`]), which decides when to
//! read and write, and the commands, which only see a [`Session`]. A batch
//! stops early when its time slice runs out, when the client owes too many
//! replies, or when a failed AUTH holds the connection back; the socket
//! loop then comes back to it without reading more.

use crate::commands;
use crate::handle::KillReason;
use crate::session::{Session, OUT_READ_PAUSE};
use bytes::BytesMut;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// How long one connection may run commands before it lets the other tasks
/// on its worker thread go: a pipeline of expensive commands (publishes
/// matched against many patterns) is served in slices, not in one go.
const PROCESS_SLICE: Duration = Duration::from_millis(1);

/// Parses and runs every complete request in `input`, then writes what it
/// can. Returns false when the connection must close at once without
/// another reply.
pub fn process(s: &mut Session, input: &mut BytesMut) -> bool {
    let start_len = s.out.len();
    let start_drained = s.drained;
    s.begin();
    let keep = run(s, input);
    if keep {
        let replies = (s.out.len() - start_len) - s.drained.wrapping_sub(start_drained);
        let policy = if s.in_pubsub_mode() {
            &s.broker.output_policy
        } else {
            &s.broker.normal_output_policy
        };
        s.handle.owe(replies as u64, policy);
    } else {
        // Closing at once: no more replies, but what the batch published
        // still goes out to its subscribers.
        s.out.clear();
    }
    s.commit().is_ok() && keep
}

fn run(s: &mut Session, input: &mut BytesMut) -> bool {
    let mut commands = 0u64;
    let started = Instant::now();
    // One clock read per command: each command's time runs from the end of
    // the previous one (its parsing included).
    let mut last = started;
    s.paused = false;
    while !s.close_after_reply {
        if commands > 0 && last.duration_since(started) >= PROCESS_SLICE {
            s.paused = true;
            break;
        }
        if s.out.len() >= OUT_READ_PAUSE {
            s.paused = true;
            break;
        }
        match s.parser.next(input) {
            Ok(Some(args)) => {
                commands += 1;
                if s.in_pubsub_mode() {
                    s.drain_pushes();
                }
                let mark = s.out.len();
                s.dispatched = None;
                s.rejected = false;
                let keep = commands::dispatch(s, &args);
                if s.reply_over {
                    // The reply would not fit the output limit: it was cut
                    // off while being written. Close, as Redis does a client
                    // past its hard limit, without sending the torn reply.
                    s.out.truncate(mark);
                    s.handle.kill(KillReason::HardLimit);
                    return false;
                }
                let now = Instant::now();
                let usec = now.duration_since(last).as_micros() as u64;
                last = now;
                let error = (s.out.get(mark) == Some(&b'-'))
                    .then(|| crate::stats::error_code(&s.out[mark + 1..]));
                s.cmd_stats.record(s.dispatched, usec, s.rejected, error);
                // CLIENT REPLY OFF / SKIP: the command ran, its reply is dropped.
                if s.reply_off || s.skip_this {
                    s.out.truncate(mark);
                }
                s.skip_this = std::mem::take(&mut s.skip_next);
                if !keep {
                    return false;
                }
                if s.hold_until.is_some() || s.blocked.is_some() {
                    s.paused = true;
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                s.broker.metrics.protocol_errors.inc();
                s.cmd_stats.note_error(b"ERR");
                tracing::debug!(client = s.handle.id, peer = %s.handle.peer, "{e}");
                s.reply().error(&format!("ERR {e}"));
                s.close_after_reply = true;
            }
        }
    }
    let queued = input.len() + s.parser.pending_bytes();
    if queued as u64 > s.broker.config.limits.query_buffer_limit.bytes() {
        s.broker.metrics.query_buffer_disconnects.inc();
        tracing::warn!(client = s.handle.id, peer = %s.handle.peer, bytes = queued, "closing client that reached the query buffer limit");
        return false;
    }
    if !s.cmd_stats.is_empty() {
        let errors = s.broker.command_stats.merge(&mut s.cmd_stats);
        s.broker.metrics.error_replies.inc_by(errors);
    }
    if commands > 0 {
        let m = &s.broker.metrics;
        m.commands.inc_by(commands);
        let stats = std::mem::take(&mut s.stats);
        if stats.published > 0 {
            m.published.inc_by(stats.published);
            m.delivered.inc_by(stats.delivered);
            m.delivered_bytes.inc_by(stats.delivered_bytes);
        }
        s.handle.info.lock().last_cmd = s.last_cmd;
        s.handle
            .last_active_ms
            .store(s.handle.connected.elapsed().as_millis() as u64, Relaxed);
    }
    true
}

#[cfg(test)]
mod tests;
