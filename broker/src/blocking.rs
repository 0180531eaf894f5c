//! A client blocked in `XREAD BLOCK`: what it waits for, how it waits, and
//! how it is let go.
//!
//! Waiting costs no CPU: the XREAD that found nothing registers one
//! [`Notify`] on each of its keys in the keyspace (under the keyspace lock,
//! so an XADD cannot slip in between the check and the registration), and
//! the connection task parks on it. An XADD to one of the keys wakes it
//! ([`crate::keyspace::Db::wake`]); it then serves the first of its streams
//! with new entries, as Redis serves the key that was signalled, or parks
//! again if another client's XDEL took them first.
//!
//! Bounds: the keys one XREAD waits on are bounded by the request size
//! limits (`limits.max_multibulk_len`), the blocked clients by
//! `maxclients`; they are counted in `limpet_broker_blocked_clients` and
//! INFO's `blocked_clients`. While blocked, the connection still reads
//! (to notice a client that goes away) into its query buffer, bounded by
//! `limits.query_buffer_limit`; it runs nothing more until it is let go.

use crate::commands::serve_read;
use crate::handle::ClientHandle;
use crate::keyspace::stream::StreamId;
use crate::session::Session;
use bytes::{Bytes, BytesMut};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

pub struct Blocked {
    notify: Arc<Notify>,
    keys: Vec<Bytes>,
    /// Entries after these ids (`$` already resolved) are wanted.
    ids: Vec<StreamId>,
    count: usize,
    /// `None`: BLOCK 0, wait forever.
    deadline: Option<Instant>,
    /// The XREAD's reply is dropped (CLIENT REPLY OFF / SKIP).
    pub(crate) silent: bool,
}

impl Blocked {
    /// `ms` is XREAD's BLOCK argument (0 = forever).
    pub fn new(
        notify: Arc<Notify>,
        keys: Vec<Bytes>,
        ids: Vec<StreamId>,
        count: usize,
        ms: u64,
    ) -> Blocked {
        Blocked {
            notify,
            keys,
            ids,
            count,
            deadline: (ms > 0).then(|| Instant::now() + Duration::from_millis(ms)),
            silent: false,
        }
    }
}

/// Lets a blocked client go: its waiters leave the keyspace.
pub fn unblock(s: &mut Session) {
    if let Some(b) = s.blocked.take() {
        let id = s.handle.id;
        s.broker.keyspace.with(|db| {
            for key in &b.keys {
                db.remove_waiter(key, id);
            }
        });
        s.broker.metrics.blocked_clients.dec();
    }
}

/// Tries to serve the blocked XREAD; true (and the client let go) if it
/// did. `Err` when writing the reply failed.
fn try_serve(s: &mut Session, handle: &Arc<ClientHandle>) -> io::Result<bool> {
    let Some(b) = s.blocked.as_ref() else {
        return Ok(true);
    };
    let (keys, ids, count) = (b.keys.clone(), b.ids.clone(), b.count);
    s.begin();
    let before = s.out.len();
    let broker = s.broker.clone();
    let (served, events) = {
        let mut r = s.reply();
        broker
            .keyspace
            .with(|db| serve_read(db, &mut r, &keys, &ids, count, true))
    };
    // Reading may expire a key on the way (lazy expiry): its `expired`
    // event goes out like any other command's.
    broker.publish_events(events, &mut s.fanout);
    if served {
        owe(s, handle, before);
        unblock(s);
    }
    s.commit()?;
    Ok(served)
}

/// Counts the reply bytes written since `before` as owed by the client,
/// or drops them if the XREAD was under CLIENT REPLY OFF / SKIP.
fn owe(s: &mut Session, handle: &Arc<ClientHandle>, before: usize) {
    if s.blocked.as_ref().is_some_and(|b| b.silent) {
        s.out.truncate(before);
        return;
    }
    let n = s.out.len().saturating_sub(before) as u64;
    handle.owe(n, &s.broker.normal_output_policy);
}

/// Waits until the blocked XREAD is served or times out. `Err` names why
/// the connection must close instead (killed, shutdown, gone, flooding).
pub async fn wait(
    s: &mut Session,
    stream: &TcpStream,
    input: &mut BytesMut,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), &'static str> {
    let handle = s.handle.clone();
    let limit = s.broker.config.limits.query_buffer_limit.bytes() as usize;
    loop {
        let Some(b) = s.blocked.as_ref() else {
            return Ok(());
        };
        let notify = b.notify.clone();
        let deadline = b.deadline;
        let timeout = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = handle.killed() => return Err("killed"),
            _ = shutdown.changed() => return Err("shutdown"),
            _ = notify.notified() => {
                if try_serve(s, &handle).is_err() {
                    return Err("write error");
                }
            }
            _ = timeout => {
                s.begin();
                let before = s.out.len();
                s.reply().null_array();
                owe(s, &handle, before);
                unblock(s);
                if s.commit().is_err() {
                    return Err("write error");
                }
            }
            // Replies made before the XREAD, and a RESP3 client's pushes
            // (written by their publishers, as in Redis), go out while it
            // waits; this writes what the socket did not take at once.
            _ = handle.write_wanted(), if !s.writing => s.writing = true,
            r = stream.writable(), if s.writing => {
                if r.is_err() || s.flush().is_err() {
                    return Err("write error");
                }
            }
            r = stream.readable() => {
                if r.is_err() {
                    return Err("read error");
                }
                crate::buffers::take(input);
                match stream.try_read_buf(input) {
                    Ok(0) => return Err("closed"),
                    Ok(n) => {
                        s.broker.metrics.net_input_bytes.inc_by(n as u64);
                        if input.len() > limit {
                            s.broker.metrics.query_buffer_disconnects.inc();
                            return Err("query buffer limit while blocked");
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Err("read error"),
                }
            }
        }
    }
}
