//! One WebSocket client: reads requests, writes queued frames, pings,
//! all from one task that holds no buffer while the client is idle (the
//! socket side is [`crate::wire`], the framing [`crate::ws`]).
//!
//! Everything addressed to the client goes through its bounded queue
//! ([`Outbox`]), written whenever the socket takes it, so a client that
//! stops reading fills only its own queue and is then closed (code 4002)
//! without slowing anyone. The reader enforces the message size, a token-bucket rate
//! limit and an error budget; a client past the budget is closed (4003).
//! A client that misses a pong by the next ping is closed (4001).
//! A client whose token's `exp` passes without a `refresh` is closed (4004).

use crate::addresses::Admission;
use crate::auth::Identity;
use crate::bucket::Bucket;
use crate::node::Node;
use crate::protocol::{self, BinaryOp, Code, Failure, Op};
use crate::shed;
use crate::sockets::{close, Frame, Outbox};
use crate::wire::{Wire, WireError};
use crate::ws::{Decoder, Event, OpCode, WsError};
use bytes::Bytes;
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};

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

/// Who the client is, and until when. The identity is boxed: most
/// clients have none, and every client's task carries a `Session`.
struct Session {
    identity: Option<Box<Identity>>,
    /// When the token expires; the socket is closed then (4004) unless a
    /// `refresh` moved it.
    expires: Option<tokio::time::Instant>,
}

impl Session {
    fn new(identity: Option<Identity>) -> Session {
        let expires = identity
            .as_ref()
            .map(|i| tokio::time::Instant::now() + i.expires_in());
        Session {
            identity: identity.map(Box::new),
            expires,
        }
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

/// Why a client's session ended, for the log.
fn end_reason(code: u16) -> &'static str {
    match code {
        close::SLOW_CONSUMER => "slow consumer: outbound queue full",
        close::HEARTBEAT => "no pong to the last ping",
        close::MISBEHAVING => "too many errors",
        close::MESSAGE_TOO_BIG => "message too big",
        close::PROTOCOL_ERROR => "protocol violation",
        close::INVALID_PAYLOAD => "text frame is not UTF-8",
        close::TOKEN_EXPIRED => "token expired",
        close::GOING_AWAY => "server going away",
        // The client's own code, echoed.
        _ => "",
    }
}

/// Serves one client until it leaves. `io` is the upgraded connection
/// and `early` what the client sent right after its upgrade request;
/// `admission` is its place in its address's limits, given back when the
/// returned future ends (or is dropped); `identity` is who its token
/// names, if it has one.
///
/// The client is registered and welcomed here, before the returned future
/// runs. An idle client costs mostly this future's task, so its state is
/// built first and moved into the future once: an `async fn` would keep
/// its arguments beside what is built from them, for the client's whole
/// life.
pub fn serve<S>(
    node: Arc<Node>,
    io: S,
    early: Vec<u8>,
    client: String,
    admission: Admission,
    identity: Option<Identity>,
) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let id = node.next_socket_id();
    let mut session = Session::new(identity);
    let limits = &node.config.limits;
    let outbox = Outbox::new(limits.outbound_queue);
    node.add_socket(&id, outbox.clone());
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

    let max_bytes = limits.max_message_bytes.bytes() as usize;
    // Messages over our limit get an error; far over it the connection
    // is closed (1009).
    let hard = max_bytes.saturating_mul(4).max(1 << 20);
    let mut wire = Wire::new(io, Decoder::new(max_bytes, hard), early);
    let mut bucket = Bucket::new(limits.rate_per_second, limits.rate_burst);
    let mut budget = ErrorBudget {
        count: 0,
        window: Instant::now(),
        max: limits.max_errors_per_minute,
    };
    let started = Instant::now();
    // One timer for both the next ping and the token's expiry, whichever
    // comes first, moved when a refresh moves the expiry.
    let mut next_ping = tokio::time::Instant::now() + ping_every;
    let mut awaiting_pong = false;
    async move {
        let timer = tokio::time::sleep_until(next_ping);
        tokio::pin!(timer);
        let (end, failed) = loop {
            let due = session.expires.map_or(next_ping, |e| e.min(next_ping));
            if timer.deadline() != due {
                timer.as_mut().reset(due);
            }
            let event = tokio::select! {
                _ = &mut timer => {
                    let now = tokio::time::Instant::now();
                    if session.expires.is_some_and(|e| e <= now) {
                        node.metrics.closes.with_label_values(&["token_expired"]).inc();
                        outbox.close(close::TOKEN_EXPIRED);
                        break ("token expired", false);
                    }
                    if now >= next_ping {
                        if awaiting_pong {
                            node.metrics.closes.with_label_values(&["heartbeat"]).inc();
                            outbox.close(close::HEARTBEAT);
                            break ("missed pong", false);
                        }
                        awaiting_pong = true;
                        next_ping = now + ping_every;
                        node.reply_control(&id, OpCode::Ping, Bytes::new());
                    }
                    continue;
                }
                event = std::future::poll_fn(|cx| {
                    if outbox.close_code().is_some() {
                        return Poll::Ready(None);
                    }
                    wire.poll_io(cx, &outbox, node.max_age, &node.metrics).map(Some)
                }) => event,
            };
            // A text request that must wait (on the broker, on other
            // nodes) is awaited after the block below, where the message it
            // came from ends: what the client's task holds across that
            // wait is the boxed request, not the message and its parts.
            let mut request = None;
            let failure = {
                let msg = match event {
                    None => break ("closed by the server", false),
                    Some(Ok(msg)) => msg,
                    Some(Err(WireError::Eof)) => break ("client closed", false),
                    Some(Err(WireError::Io(e))) => {
                        // The peer is gone: no close frame can reach it.
                        tracing::debug!(socket = %id, "socket error: {e}");
                        break ("connection error", true);
                    }
                    Some(Err(WireError::Ws(e))) => {
                        tracing::debug!(socket = %id, "websocket error: {e}");
                        if let WsError::TooBig(_) = e {
                            outbox.close(close::MESSAGE_TOO_BIG);
                            break ("message too big", false);
                        }
                        node.metrics
                            .closes
                            .with_label_values(&["protocol_error"])
                            .inc();
                        outbox.close(e.close_code());
                        break ("protocol error", false);
                    }
                };
                let too_large = || {
                    Some((
                        None,
                        Failure::new(
                            Code::MessageTooLarge,
                            format!("messages are at most {max_bytes} bytes"),
                        ),
                    ))
                };
                match msg {
                    Event::Pong => {
                        awaiting_pong = false;
                        None
                    }
                    Event::Ping(payload) => {
                        node.reply_control(&id, OpCode::Pong, payload.into());
                        None
                    }
                    Event::Close(code) => {
                        // Echo the client's code, as RFC 6455 asks, but for codes
                        // in the application range (the node's own 4001-4004 say
                        // something else): those get a plain 1000.
                        outbox.close(code.filter(|c| *c < 4000).unwrap_or(1000));
                        break ("client closed", false);
                    }
                    Event::TooLarge { .. } => {
                        node.metrics.messages_in.inc();
                        too_large()
                    }
                    Event::Text(text) => {
                        node.metrics.messages_in.inc();
                        if let Some(f) = rate_limited(&node, &mut bucket, &admission) {
                            Some((crate::peek::id(&text), f))
                        } else {
                            // Boxed: a request's future (a rejoin, a presence
                            // query) is large and lives only while it runs, so an
                            // idle client's task does not carry its size.
                            let (node, id, session) = (&node, &id, &mut session);
                            request = Some(Box::pin(async move {
                                handle_text(node, id, &text, session).await
                            }));
                            None
                        }
                    }
                    Event::Binary(bytes) => {
                        node.metrics.messages_in.inc();
                        if let Some(f) = rate_limited(&node, &mut bucket, &admission) {
                            Some((crate::peek::binary_id(&bytes), f))
                        } else {
                            handle_binary(&node, &id, &bytes, &session)
                        }
                    }
                }
            };
            let failure = match request.take() {
                // While it waits, the client's queue keeps being written.
                Some(mut request) => {
                    // Dropped, not left to the end of the scope, so the
                    // placeholder is not kept across the wait.
                    drop(failure);
                    std::future::poll_fn(|cx| {
                        if let Poll::Ready(outcome) = request.as_mut().poll(cx) {
                            return Poll::Ready(outcome);
                        }
                        outbox.register(cx.waker());
                        // A write error shows again at the next read.
                        let _ = wire.poll_write(cx, &outbox, node.max_age, &node.metrics);
                        Poll::Pending
                    })
                    .await
                }
                None => failure,
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
                node.metrics
                    .errors
                    .with_label_values(&[failure.code.as_str()])
                    .inc();
                node.reply(&id, protocol::error(ack_id.as_ref(), &failure));
                if !budget.spend() {
                    node.metrics
                        .closes
                        .with_label_values(&["misbehaving"])
                        .inc();
                    outbox.close(close::MISBEHAVING);
                    break ("too many errors", false);
                }
            }
        };
        if outbox.close_code() == Some(close::SLOW_CONSUMER) {
            node.metrics
                .closes
                .with_label_values(&["slow_consumer"])
                .inc();
        }
        node.remove_socket(&id);
        outbox.close(close::GOING_AWAY);
        // Boxed: the closing steps' timers and writes live only while the
        // client is closing, not in every idle client's task.
        Box::pin(finish(&node, &mut wire, &outbox, failed)).await;
        tracing::info!(node = %node.id, socket = %id, %client, %user, seconds = started.elapsed().as_secs(), reason = end, "client disconnected");
    }
}

/// Sends what is owed to a closing client, then the close frame.
async fn finish<S>(node: &Node, wire: &mut Wire<S>, outbox: &Outbox, mut failed: bool)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let code = outbox.close_code().unwrap_or(close::GOING_AWAY);
    let metrics = &node.metrics;
    // Acks and errors queued before a close the client caused (or a
    // drain) are still owed to it, and it is reading: send them first,
    // within a bounded time. A slow or silent client gets nothing more.
    if !failed && close::flushes_queue(code) {
        let flush = std::future::poll_fn(|cx| wire.poll_write(cx, outbox, node.max_age, metrics));
        failed = !matches!(
            tokio::time::timeout(close::FLUSH_BEFORE_CLOSE, flush).await,
            Ok(Ok(()))
        );
    }
    wire.discard(outbox, metrics);
    if !failed {
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            wire.send_close(code, end_reason(code)),
        )
        .await;
    }
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
                    node.subscriptions_live().await;
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
