//! One WebSocket client: reads requests, writes queued frames, pings.
//!
//! The writer drains the socket's bounded queue; everything addressed to
//! the client goes through that queue, so a client that stops reading
//! fills only its own queue and is then closed (code 4002) without slowing
//! anyone. The reader enforces the message size, a token-bucket rate
//! limit and an error budget; a client past the budget is closed (4003).
//! A client that misses a pong by the next ping is closed (4001).
//! A client whose token's `exp` passes without a `refresh` is closed (4004).

use crate::addresses::Admission;
use crate::auth::Identity;
use crate::bucket::Bucket;
use crate::node::Node;
use crate::protocol::{self, BinaryOp, Code, Failure, Op};
use crate::shed;
use crate::sockets::{close, Frame, Outgoing};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Most frames the writer sends with one flush.
const WRITE_BATCH: usize = 64;

/// Hands `frames` to the sink one by one, then flushes. A frame leaves
/// `frames` only once the sink has taken it, so when this is cancelled
/// (the connection is closing) nothing is lost in between.
async fn write_all<S>(sink: &mut S, frames: &mut VecDeque<Message>) -> Result<(), S::Error>
where
    S: futures_util::Sink<Message> + Unpin,
{
    while !frames.is_empty() {
        std::future::poll_fn(|cx| sink.poll_ready_unpin(cx)).await?;
        if let Some(msg) = frames.pop_front() {
            sink.start_send_unpin(msg)?;
        }
    }
    sink.flush().await
}

/// Errors allowed per minute before the client counts as misbehaving.
struct ErrorBudget {
    count: u32,
    window: Instant,
    max: u32,
}

impl ErrorBudget {
    fn spend(&mut self) -> bool {
        if self.window.elapsed() > Duration::from_secs(60) {
            self.window = Instant::now();
            self.count = 0;
        }
        self.count += 1;
        self.count <= self.max
    }
}

/// Who the client is, and until when.
struct Session {
    identity: Option<Identity>,
    /// When the token expires; the socket is closed then (4004) unless a
    /// `refresh` moved it.
    expires: Option<tokio::time::Instant>,
}

impl Session {
    fn new(identity: Option<Identity>) -> Session {
        let expires = identity
            .as_ref()
            .map(|i| tokio::time::Instant::now() + i.expires_in());
        Session { identity, expires }
    }

    fn user(&self) -> Option<&str> {
        self.identity.as_ref().map(|i| i.user.as_str())
    }

    fn may_join(&self, room: &str) -> Result<(), Failure> {
        match &self.identity {
            Some(i) if !i.may_join(room) => Err(Failure::new(
                Code::Forbidden,
                format!("your token does not allow joining `{room}`"),
            )),
            _ => Ok(()),
        }
    }

    fn may_publish(&self, room: &str) -> Result<(), Failure> {
        match &self.identity {
            Some(i) if !i.may_publish(room) => Err(Failure::new(
                Code::Forbidden,
                format!("your token does not allow emitting to `{room}`"),
            )),
            _ => Ok(()),
        }
    }
}

/// Serves one client until it leaves. `admission` is its place in its
/// address's limits, given back when this returns; `identity` is who its
/// token names, if it has one.
pub async fn serve(
    node: Arc<Node>,
    ws: WebSocketStream<TokioIo<Upgraded>>,
    client: String,
    admission: Admission,
    identity: Option<Identity>,
) {
    let id = node.next_socket_id();
    let mut session = Session::new(identity);
    let limits = node.config.limits.clone();
    let (tx, mut rx) = mpsc::channel::<Outgoing>(limits.outbound_queue);
    let queued = Arc::new(AtomicUsize::new(0));
    let (closer, mut close_rx) = watch::channel::<Option<u16>>(None);
    node.add_socket(&id, tx, queued.clone(), closer.clone());
    if let Some(user) = session.user() {
        node.set_user(&id, user);
    }
    let user = session.user().unwrap_or("-").to_string();
    tracing::info!(node = %node.id, socket = %id, %client, %user, "client connected");
    let ping_every = node.config.heartbeat.ping_interval.get();
    node.reply(
        &id,
        protocol::welcome(&id, &node.id, ping_every.as_millis() as u64),
    );

    let (mut sink, mut stream) = ws.split();
    let mut writer_close = close_rx.clone();
    let metrics = node.metrics.clone();
    let max_age = node.max_age;
    let writer = tokio::spawn(async move {
        // Frames leave the byte count once written (or dropped), never
        // when merely dequeued: until then their bytes are still held.
        let written = |len: usize| {
            queued.fetch_sub(len, Relaxed);
            metrics.outbound_bytes.sub(len as i64);
        };
        let mut failed = false;
        // Frames of the batch being written not yet handed to the sink: a
        // close that interrupts the batch still owes them to the client.
        let mut unsent: VecDeque<Message> = VecDeque::new();
        loop {
            tokio::select! {
                biased;
                _ = writer_close.changed() => break,
                out = rx.recv() => {
                    let Some(first) = out else { break };
                    // What is already queued goes out with it in one write:
                    // under load that is one syscall for many frames.
                    let mut batch = vec![first];
                    while batch.len() < WRITE_BATCH {
                        match rx.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    let mut held = 0;
                    for Outgoing { msg, since } in batch {
                        held += msg.len();
                        // A room message that waited too long (the node or
                        // this client is behind) is dropped, not delivered late.
                        if since.is_some_and(|t| max_age.expired(t)) {
                            shed::count(&metrics.backplane.shed, shed::Path::NodeToClient, shed::Reason::TooOld);
                            continue;
                        }
                        unsent.push_back(msg);
                    }
                    let send = write_all(&mut sink, &mut unsent);
                    tokio::select! {
                        r = send => {
                            written(held);
                            if r.is_err() { failed = true; break }
                        }
                        // A client that stopped reading blocks this send: give up on it.
                        _ = writer_close.changed() => { written(held); break }
                    }
                }
            }
        }
        let code = writer_close.borrow().unwrap_or(close::GOING_AWAY);
        // Acks and errors queued before a close the client caused (or a
        // drain) are still owed to it, and it is reading: send them first,
        // within a bounded time. A slow or silent client gets nothing more.
        if !failed && close::flushes_queue(code) {
            let deadline = tokio::time::Instant::now() + close::FLUSH_BEFORE_CLOSE;
            let rest = tokio::time::timeout_at(deadline, write_all(&mut sink, &mut unsent)).await;
            failed = !matches!(rest, Ok(Ok(())));
            while let Ok(Outgoing { msg, .. }) = rx.try_recv() {
                if failed {
                    written(msg.len());
                    continue;
                }
                let len = msg.len();
                let sent = tokio::time::timeout_at(deadline, sink.send(msg)).await;
                written(len);
                if !matches!(sent, Ok(Ok(()))) {
                    failed = true;
                    break;
                }
            }
        }
        // Whatever is still queued is dropped here; later deliveries see a
        // closed queue and are not counted.
        rx.close();
        while let Ok(out) = rx.try_recv() {
            written(out.msg.len());
        }
        if failed {
            return;
        }
        let reason = match code {
            close::SLOW_CONSUMER => "slow consumer: outbound queue full",
            close::HEARTBEAT => "no pong to the last ping",
            close::MISBEHAVING => "too many errors",
            close::MESSAGE_TOO_BIG => "message too big",
            close::PROTOCOL_ERROR => "protocol violation",
            close::INVALID_PAYLOAD => "text frame is not UTF-8",
            close::TOKEN_EXPIRED => "token expired",
            _ => "server going away",
        };
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            sink.send(Message::Close(Some(frame))),
        )
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    });

    let mut bucket = Bucket::new(limits.rate_per_second, limits.rate_burst);
    let mut budget = ErrorBudget {
        count: 0,
        window: Instant::now(),
        max: limits.max_errors_per_minute,
    };
    let max_bytes = limits.max_message_bytes.bytes() as usize;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut awaiting_pong = false;
    let started = Instant::now();
    // One timer for the token's expiry, moved when a refresh moves it.
    let mut armed = session.expires;
    let far = tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let expiry = tokio::time::sleep_until(armed.unwrap_or(far));
    tokio::pin!(expiry);
    let end = loop {
        if session.expires != armed {
            armed = session.expires;
            expiry.as_mut().reset(armed.unwrap_or(far));
        }
        tokio::select! {
            _ = close_rx.changed() => break "closed by the server",
            _ = &mut expiry, if armed.is_some() => {
                node.metrics.closes.with_label_values(&["token_expired"]).inc();
                let _ = closer.send(Some(close::TOKEN_EXPIRED));
                break "token expired";
            }
            _ = ping.tick() => {
                if awaiting_pong {
                    node.metrics.closes.with_label_values(&["heartbeat"]).inc();
                    let _ = closer.send(Some(close::HEARTBEAT));
                    break "missed pong";
                }
                awaiting_pong = true;
                node.reply_message(&id, Message::Ping(Vec::new().into()));
            }
            frame = stream.next() => {
                let msg = match frame {
                    None => break "client closed",
                    Some(Err(e)) => {
                        tracing::debug!(socket = %id, "websocket error: {e}");
                        if matches!(e, tokio_tungstenite::tungstenite::Error::Capacity(_)) {
                            // Far over the size limit: refused by the WebSocket layer.
                            let _ = closer.send(Some(close::MESSAGE_TOO_BIG));
                            break "message too big";
                        }
                        let code = match e {
                            tokio_tungstenite::tungstenite::Error::Protocol(_) => close::PROTOCOL_ERROR,
                            tokio_tungstenite::tungstenite::Error::Utf8(_) => close::INVALID_PAYLOAD,
                            // I/O errors: the peer is gone, no close frame can reach it.
                            _ => break "connection error",
                        };
                        node.metrics.closes.with_label_values(&["protocol_error"]).inc();
                        let _ = closer.send(Some(code));
                        break "protocol error";
                    }
                    Some(Ok(msg)) => msg,
                };
                let failure = match msg {
                    Message::Pong(_) => { awaiting_pong = false; None }
                    Message::Ping(_) | Message::Frame(_) => None,
                    Message::Close(_) => break "client closed",
                    Message::Text(text) => {
                        node.metrics.messages_in.inc();
                        if text.len() > max_bytes {
                            Some((None, Failure::new(Code::MessageTooLarge, format!("messages are at most {max_bytes} bytes"))))
                        } else if let Some(f) = rate_limited(&node, &mut bucket, &admission) {
                            Some((None, f))
                        } else {
                            handle_text(&node, &id, text.as_str(), &mut session).await
                        }
                    }
                    Message::Binary(bytes) => {
                        node.metrics.messages_in.inc();
                        if bytes.len() > max_bytes {
                            Some((None, Failure::new(Code::MessageTooLarge, format!("messages are at most {max_bytes} bytes"))))
                        } else if let Some(f) = rate_limited(&node, &mut bucket, &admission) {
                            Some((None, f))
                        } else {
                            handle_binary(&node, &id, &bytes, &session)
                        }
                    }
                };
                if let Some((ack_id, failure)) = failure {
                    if failure.code == Code::Overloaded {
                        // Shed because the node is behind, not because of
                        // anything the client did: no error budget spent,
                        // and a reply only to a sender that asked for an ack.
                        if ack_id.is_some() {
                            node.reply(&id, protocol::error(ack_id.as_ref(), &failure));
                        }
                        continue;
                    }
                    node.metrics.errors.with_label_values(&[failure.code.as_str()]).inc();
                    node.reply(&id, protocol::error(ack_id.as_ref(), &failure));
                    if !budget.spend() {
                        node.metrics.closes.with_label_values(&["misbehaving"]).inc();
                        let _ = closer.send(Some(close::MISBEHAVING));
                        break "too many errors";
                    }
                }
            }
        }
    };
    if *closer.borrow() == Some(close::SLOW_CONSUMER) {
        node.metrics
            .closes
            .with_label_values(&["slow_consumer"])
            .inc();
    }
    node.remove_socket(&id);
    // Let the writer send the close frame (or give up on a stuck client).
    // (Never hold a borrow of the watch while sending on it: that deadlocks.)
    closer.send_modify(|code| {
        code.get_or_insert(close::GOING_AWAY);
    });
    let _ = tokio::time::timeout(Duration::from_secs(3), writer).await;
    tracing::info!(node = %node.id, socket = %id, %client, %user, seconds = started.elapsed().as_secs(), reason = end, "client disconnected");
}

/// The socket's own rate limit, then its address's (shared by all the
/// address's sockets); `Some` when the message is refused.
fn rate_limited(node: &Node, bucket: &mut Bucket, admission: &Admission) -> Option<Failure> {
    let limits = &node.config.limits;
    if !bucket.take() {
        return Some(Failure::new(
            Code::RateLimited,
            format!("at most {} messages per second", limits.rate_per_second),
        ));
    }
    if !admission.take() {
        node.metrics.address_rate_limited.inc();
        return Some(Failure::new(
            Code::RateLimited,
            format!(
                "at most {} messages per second from one address",
                limits.address_rate_per_second
            ),
        ));
    }
    None
}

type Outcome = Option<(Option<serde_json::Value>, Failure)>;

async fn handle_text(node: &Arc<Node>, id: &str, text: &str, session: &mut Session) -> Outcome {
    let req = match protocol::parse(text) {
        Ok(r) => r,
        Err(f) => return Some((None, f)),
    };
    let ack_id = req.id.clone();
    let result = match req.op(node.config.limits.max_room_name_bytes) {
        Ok(op) => run(node, id, op, session).await,
        Err(f) => Err(f),
    };
    match result {
        Ok(result) => {
            if let Some(ack_id) = &ack_id {
                node.reply(id, protocol::ack(ack_id, result));
            }
            None
        }
        Err(f) => Some((ack_id, f)),
    }
}

/// Refuses a new room or direct message while the node is overloaded
/// (see [`crate::shed`]), counting it as shed.
fn admit_event(node: &Node) -> Result<(), Failure> {
    if !node.overloaded() {
        return Ok(());
    }
    shed::count(
        &node.metrics.backplane.shed,
        shed::Path::ClientToNode,
        shed::Reason::Overloaded,
    );
    Err(Failure::new(
        Code::Overloaded,
        "the node is overloaded: message dropped, send it again later",
    ))
}

async fn run(
    node: &Arc<Node>,
    id: &str,
    op: Op<'_>,
    session: &mut Session,
) -> Result<serde_json::Value, Failure> {
    if matches!(op, Op::Emit { .. } | Op::Send { .. }) {
        admit_event(node)?;
    }
    match op {
        Op::Join { room, since } => {
            session.may_join(&room)?;
            match (since, &node.history) {
                (Some(since), Some(history)) => {
                    crate::recovery::rejoin(node, id, &room, &since, history).await
                }
                (None, Some(history)) => crate::recovery::join_at(node, id, &room, history).await,
                (since, None) => {
                    let members = node.join(id, &room)?;
                    let mut ack = json!({"room": room, "members": members_json(&members)});
                    if since.is_some() {
                        // No history on this node: nothing can be recovered.
                        ack["recovered"] = json!(false);
                    }
                    Ok(ack)
                }
            }
        }
        Op::Refresh { token } => {
            let Some(verifier) = &node.auth else {
                return Err(Failure::new(
                    Code::BadRequest,
                    "this node does not check tokens",
                ));
            };
            let fresh = verifier
                .verify(token)
                .and_then(|fresh| match session.user() {
                    Some(user) if user != fresh.user => Err(crate::auth::AuthError::OtherUser),
                    _ => Ok(fresh),
                });
            match fresh {
                Ok(fresh) => {
                    if session.identity.is_none() {
                        node.set_user(id, &fresh.user);
                    }
                    let exp = fresh.exp;
                    *session = Session::new(Some(fresh));
                    Ok(json!({"exp": exp}))
                }
                Err(e) => {
                    node.metrics
                        .auth_failures
                        .with_label_values(&[e.reason()])
                        .inc();
                    Err(Failure::new(Code::Unauthorized, e.to_string()))
                }
            }
        }
        Op::Leave { room } => {
            node.leave(id, &room, "leave")?;
            Ok(json!({"room": room}))
        }
        Op::Emit {
            room,
            event,
            data,
            include_self,
        } => {
            session.may_publish(&room)?;
            let frame = Node::event_frame(&room, event, id, session.user(), data);
            node.emit(Some(id), &room, frame, include_self)?;
            Ok(json!({"room": room}))
        }
        Op::Send { to, event, data } => {
            node.send_to(
                to,
                Frame::text(protocol::direct(event, id, session.user(), data)),
            )?;
            Ok(json!({"to": to}))
        }
        Op::Presence { room } => {
            let (members, complete) = node.presence(&room).await;
            let members: Vec<serde_json::Value> = members
                .iter()
                .map(|(s, n, u)| match u {
                    Some(u) => json!({"socket": s, "node": n, "user": u}),
                    None => json!({"socket": s, "node": n}),
                })
                .collect();
            Ok(json!({"room": room, "members": members, "complete": complete}))
        }
        Op::Ping => Ok(json!({"pong": true})),
    }
}

pub(crate) fn members_json(members: &[(String, String)]) -> serde_json::Value {
    members
        .iter()
        .map(|(s, n)| json!({"socket": s, "node": n}))
        .collect()
}

/// A binary frame is `<JSON request>\n<payload>`; `emit` and `send` only.
/// Recipients get `<JSON event header>\n<payload>` as a binary frame.
fn handle_binary(node: &Arc<Node>, id: &str, bytes: &[u8], session: &Session) -> Outcome {
    let (req, payload) = match protocol::split_binary(bytes) {
        Ok(split) => split,
        Err(f) => return Some((None, f)),
    };
    let result = req
        .binary_op(node.config.limits.max_room_name_bytes)
        .and_then(|op| admit_event(node).map(|()| op))
        .and_then(|op| match op {
            BinaryOp::Emit {
                room,
                event,
                include_self,
            } => {
                session.may_publish(&room)?;
                let mut out = protocol::event(&room, event, id, session.user(), None).into_bytes();
                out.push(b'\n');
                out.extend_from_slice(payload);
                node.emit(Some(id), &room, Frame::Binary(out.into()), include_self)
            }
            BinaryOp::Send { to, event } => {
                let mut out = protocol::direct(event, id, session.user(), None).into_bytes();
                out.push(b'\n');
                out.extend_from_slice(payload);
                node.send_to(to, Frame::Binary(out.into()))
            }
        });
    match result {
        Ok(()) => {
            if let Some(ack_id) = &req.id {
                node.reply(id, protocol::ack(ack_id, json!({"bytes": payload.len()})));
            }
            None
        }
        Err(f) => Some((req.id.clone(), f)),
    }
}
