//! The room load of scenario 5 and `limpet-bench overload`: WebSocket
//! clients in rooms of a few, speaking limpet-node's protocol or
//! socket.io's, that stay connected while the send rate is raised step by
//! step. Every `active_every`-th client sends its room bursts of messages
//! (signalling: an offer and its candidates at once); the others only
//! listen and answer the server's heartbeats, as most clients of a real
//! deployment do.
//!
//! A population larger than one process may hold (the fd cap is 20,000
//! here) is split over worker processes (`limpet-bench room-worker`),
//! driven over their stdin and stdout by [`Workers`]. A room never spans
//! two workers, so a message's send time (microseconds since the worker
//! started) is read by the same clock that stamped it.

mod workers;

pub use workers::{worker, Workers};

use crate::echo_server::small_ws_config;
use crate::load::{connect_from, histogram, summarize, Latency};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Which room server protocol a room load speaks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RoomProto {
    /// limpet-node's JSON protocol at `/ws`.
    Limpet,
    /// socket.io 4 (Engine.IO 4) over WebSocket at `/socket.io/`.
    SocketIo,
}

impl RoomProto {
    fn name(self) -> &'static str {
        match self {
            RoomProto::Limpet => "limpet",
            RoomProto::SocketIo => "socketio",
        }
    }

    fn parse(s: &str) -> Option<RoomProto> {
        match s {
            "limpet" => Some(RoomProto::Limpet),
            "socketio" => Some(RoomProto::SocketIo),
            _ => None,
        }
    }
}

/// Who connects, and into which rooms.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub proto: RoomProto,
    pub target: SocketAddr,
    /// Index of the first client, a multiple of `room_size`: rooms and
    /// source addresses follow from the index, so workers split one
    /// population without overlapping.
    pub first: usize,
    pub clients: usize,
    pub room_size: usize,
    /// Every `active_every`-th client sends; 1 makes every client send.
    pub active_every: usize,
}

/// One rate step.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    /// Tags this step's messages, so late ones from an earlier step are
    /// not counted as this step's deliveries.
    pub id: u32,
    /// Messages per second per active client.
    pub rate: f64,
    /// Messages sent back to back each time.
    pub burst: u32,
    pub secs: f64,
}

/// What one step delivered.
pub struct StepResult {
    pub hist: Histogram<u64>,
    /// Deliveries owed: each message sent, times the others in its room.
    pub expected: u64,
    /// Deliveries of an earlier step's messages that came in this one.
    pub stale: u64,
    pub errors: u64,
    /// Clients whose connection ended since they joined (all steps so
    /// far): a lost receiver shows as missing deliveries, a lost sender
    /// stops adding to what is owed, so both are counted apart.
    pub lost: u64,
}

impl StepResult {
    fn empty() -> StepResult {
        StepResult {
            hist: histogram(),
            expected: 0,
            stale: 0,
            errors: 0,
            lost: 0,
        }
    }

    fn merge(&mut self, other: &StepResult) {
        let _ = self.hist.add(&other.hist);
        self.expected += other.expected;
        self.stale += other.stale;
        self.errors += other.errors;
        self.lost += other.lost;
    }

    pub fn latency(&self, secs: f64) -> Latency {
        summarize(&self.hist, Duration::from_secs_f64(secs), self.errors)
    }

    /// One line for a worker's stdout: counts, then the histogram as
    /// `value:count` pairs.
    fn encode(&self) -> String {
        let pairs: Vec<String> = self
            .hist
            .iter_recorded()
            .map(|v| format!("{}:{}", v.value_iterated_to(), v.count_at_value()))
            .collect();
        format!(
            "result {} {} {} {} {}",
            self.expected,
            self.stale,
            self.errors,
            self.lost,
            pairs.join(",")
        )
    }

    fn decode(line: &str) -> Option<StepResult> {
        let mut parts = line.strip_prefix("result ")?.split(' ');
        let mut r = StepResult::empty();
        r.expected = parts.next()?.parse().ok()?;
        r.stale = parts.next()?.parse().ok()?;
        r.errors = parts.next()?.parse().ok()?;
        r.lost = parts.next()?.parse().ok()?;
        for pair in parts
            .next()
            .unwrap_or("")
            .split(',')
            .filter(|p| !p.is_empty())
        {
            let (v, n) = pair.split_once(':')?;
            r.hist.record_n(v.parse().ok()?, n.parse().ok()?).ok()?;
        }
        Some(r)
    }
}

/// What the clients of one process record into.
struct Tally {
    origin: Instant,
    step: AtomicU32,
    hist: Mutex<Histogram<u64>>,
    expected: AtomicU64,
    stale: AtomicU64,
    errors: AtomicU64,
    /// Never reset: see [`StepResult::lost`].
    lost: AtomicU64,
}

/// The connected clients of one process.
pub struct Clients {
    tally: Arc<Tally>,
    steps: watch::Sender<Option<(Step, tokio::time::Instant)>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub joined: usize,
    pub failed: usize,
}

/// Handshakes in flight at once while connecting, so a listen backlog
/// never overflows.
const CONNECTING: usize = 64;

impl Clients {
    /// Connects and joins every client of `shape`.
    pub async fn connect(shape: Shape) -> Clients {
        let tally = Arc::new(Tally {
            origin: Instant::now(),
            step: AtomicU32::new(0),
            hist: Mutex::new(histogram()),
            expected: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        });
        let mut joined: Vec<Option<WebSocketStream<TcpStream>>> = Vec::new();
        let indices: Vec<usize> = (shape.first..shape.first + shape.clients).collect();
        for chunk in indices.chunks(CONNECTING) {
            let tries = chunk.iter().map(|&i| join(shape, i));
            joined.extend(futures_util::future::join_all(tries).await);
        }
        let (steps, _) = watch::channel(None);
        let failed = joined.iter().filter(|w| w.is_none()).count();
        let mut tasks = Vec::new();
        for (room_no, room) in joined.chunks_mut(shape.room_size).enumerate() {
            // Deliveries owed per message: the room mates that did join.
            let peers = room
                .iter()
                .filter(|w| w.is_some())
                .count()
                .saturating_sub(1) as u64;
            for (seat, ws) in room.iter_mut().enumerate() {
                let Some(ws) = ws.take() else { continue };
                let i = shape.first + room_no * shape.room_size + seat;
                let client = Client {
                    i,
                    shape,
                    room: format!("r{}", i / shape.room_size),
                    active: i.is_multiple_of(shape.active_every),
                    peers,
                    tally: tally.clone(),
                };
                tasks.push(tokio::spawn(client.run(ws, steps.subscribe())));
            }
        }
        Clients {
            tally,
            steps,
            tasks,
            joined: shape.clients - failed,
            failed,
        }
    }

    /// Runs one step, waits `drain` for the last messages, and hands back
    /// what arrived meanwhile.
    pub async fn step(&self, step: Step, drain: Duration) -> StepResult {
        self.tally.step.store(step.id, Relaxed);
        for counter in [&self.tally.expected, &self.tally.stale, &self.tally.errors] {
            counter.store(0, Relaxed);
        }
        if let Ok(mut h) = self.tally.hist.lock() {
            h.reset();
        }
        let start = tokio::time::Instant::now();
        let _ = self.steps.send(Some((step, start)));
        tokio::time::sleep_until(start + Duration::from_secs_f64(step.secs) + drain).await;
        StepResult {
            hist: self
                .tally
                .hist
                .lock()
                .map(|h| h.clone())
                .unwrap_or_else(|_| histogram()),
            expected: self.tally.expected.load(Relaxed),
            stale: self.tally.stale.load(Relaxed),
            errors: self.tally.errors.load(Relaxed),
            lost: self.tally.lost.load(Relaxed),
        }
    }

    /// Closes every client.
    pub async fn close(self) {
        drop(self.steps);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

/// Connects client `i` and joins its room; `None` if any of it failed.
async fn join(shape: Shape, i: usize) -> Option<WebSocketStream<TcpStream>> {
    let target = shape.target;
    let room = format!("r{}", i / shape.room_size);
    let attempt = async {
        let tcp = connect_from(i, target).await.ok()?;
        let url = match shape.proto {
            RoomProto::Limpet => format!("ws://{target}/ws"),
            RoomProto::SocketIo => format!("ws://{target}/socket.io/?EIO=4&transport=websocket"),
        };
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(url, tcp, Some(small_ws_config()))
                .await
                .ok()?;
        match shape.proto {
            RoomProto::Limpet => {
                ws.next().await?.ok()?; // welcome
                ws.send(Message::text(format!(
                    r#"{{"op":"join","room":"{room}","id":1}}"#
                )))
                .await
                .ok()?;
                loop {
                    let m = ws.next().await?.ok()?;
                    if m.to_text().ok()?.contains(r#""type":"ack""#) {
                        break;
                    }
                }
            }
            RoomProto::SocketIo => {
                ws.next().await?.ok()?; // Engine.IO open
                ws.send(Message::text("40")).await.ok()?;
                loop {
                    let m = ws.next().await?.ok()?;
                    if m.to_text().ok()?.starts_with("40") {
                        break;
                    }
                }
                ws.send(Message::text(format!(r#"42["join","{room}"]"#)))
                    .await
                    .ok()?;
            }
        }
        Some(ws)
    };
    tokio::time::timeout(Duration::from_secs(30), attempt)
        .await
        .ok()
        .flatten()
}

/// One connected client.
struct Client {
    i: usize,
    shape: Shape,
    room: String,
    active: bool,
    peers: u64,
    tally: Arc<Tally>,
}

type Sink = SplitSink<WebSocketStream<TcpStream>, Message>;

impl Client {
    /// Reads (recording deliveries, answering heartbeats) until the step
    /// channel closes; sends its bursts while a step runs.
    async fn run(
        self,
        ws: WebSocketStream<TcpStream>,
        mut steps: watch::Receiver<Option<(Step, tokio::time::Instant)>>,
    ) {
        let (mut sink, mut stream): (Sink, SplitStream<_>) = ws.split();
        // The next burst: when, and the step it belongs to.
        let mut next: Option<(tokio::time::Instant, Step, tokio::time::Instant)> = None;
        loop {
            let due = async {
                match next {
                    Some((at, _, _)) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                m = stream.next() => match m {
                    Some(Ok(m)) => {
                        let Ok(text) = m.to_text() else { continue };
                        if self.shape.proto == RoomProto::SocketIo && text == "2" {
                            if sink.send(Message::text("3")).await.is_err() {
                                self.lost();
                                return;
                            }
                            continue;
                        }
                        self.delivered(text);
                    }
                    _ => {
                        self.lost();
                        return;
                    }
                },
                changed = steps.changed() => {
                    if changed.is_err() {
                        let _ = sink.close().await;
                        return;
                    }
                    next = match *steps.borrow_and_update() {
                        Some((step, start)) if self.active && step.rate > 0.0 => {
                            let end = start + Duration::from_secs_f64(step.secs);
                            // Spread the clients' phases over one period.
                            let phase = (self.i.wrapping_mul(7919) % 1000) as f64 / 1000.0;
                            Some((start + period(&step).mul_f64(phase), step, end))
                        }
                        _ => None,
                    };
                }
                () = due => {
                    let Some((at, step, end)) = next else { continue };
                    if self.burst(&mut sink, &step).await.is_err() {
                        self.lost();
                        return;
                    }
                    let at = at + period(&step);
                    next = (at < end).then_some((at, step, end));
                }
            }
        }
    }

    async fn burst(&self, sink: &mut Sink, step: &Step) -> Result<(), ()> {
        for _ in 0..step.burst {
            let t = self.tally.origin.elapsed().as_micros();
            let (room, s) = (&self.room, step.id);
            let frame = match self.shape.proto {
                RoomProto::Limpet => format!(
                    r#"{{"op":"emit","room":"{room}","event":"m","data":{{"t":{t},"s":{s}}}}}"#
                ),
                RoomProto::SocketIo => format!(r#"42["msg","{room}",{{"t":{t},"s":{s}}}]"#),
            };
            sink.feed(Message::text(frame)).await.map_err(|_| ())?;
            self.tally.expected.fetch_add(self.peers, Relaxed);
        }
        sink.flush().await.map_err(|_| ())
    }

    /// The connection ended: an error of this step, and one client fewer.
    fn lost(&self) {
        self.tally.errors.fetch_add(1, Relaxed);
        self.tally.lost.fetch_add(1, Relaxed);
    }

    fn delivered(&self, text: &str) {
        let (Some(t), Some(s)) = (field(text, "\"t\":"), field(text, "\"s\":")) else {
            return;
        };
        if s != u64::from(self.tally.step.load(Relaxed)) {
            self.tally.stale.fetch_add(1, Relaxed);
            return;
        }
        let now = self.tally.origin.elapsed().as_micros() as u64;
        if let Ok(mut h) = self.tally.hist.lock() {
            let _ = h.record(now.saturating_sub(t).max(1));
        }
    }
}

fn period(step: &Step) -> Duration {
    Duration::from_secs_f64(f64::from(step.burst) / step.rate)
}

/// The number after `key` (such as `"t":`) in a frame.
fn field(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits = &text[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// Every client in one process sends at `rate` for `duration`, then all
/// close: the short form `limpet-bench overload` uses. Also returns the
/// deliveries owed per second.
pub async fn once(
    proto: RoomProto,
    target: SocketAddr,
    clients: usize,
    room_size: usize,
    rate: f64,
    duration: Duration,
) -> (Latency, f64) {
    let shape = Shape {
        proto,
        target,
        first: 0,
        clients,
        room_size,
        active_every: 1,
    };
    let pool = Clients::connect(shape).await;
    let secs = duration.as_secs_f64();
    let step = Step {
        id: 1,
        rate,
        burst: 1,
        secs,
    };
    let mut r = pool.step(step, Duration::from_millis(500)).await;
    r.errors += pool.failed as u64;
    pool.close().await;
    (r.latency(secs), r.expected as f64 / secs)
}

/// Parses `--proto` of `room-worker`.
pub fn proto_arg(s: &str) -> Result<RoomProto, String> {
    RoomProto::parse(s).ok_or_else(|| format!("unknown protocol {s:?} (limpet, socketio)"))
}

#[cfg(test)]
mod tests {
    use super::{field, StepResult};

    #[test]
    fn reads_the_send_time_and_step_from_either_protocol() {
        let limpet =
            r#"{"type":"event","room":"r0","event":"m","from":"n.1","data":{"t":12345,"s":2}}"#;
        assert_eq!(field(limpet, "\"t\":"), Some(12345));
        assert_eq!(field(limpet, "\"s\":"), Some(2));
        assert_eq!(field(r#"42["msg",{"t":987,"s":1}]"#, "\"t\":"), Some(987));
        assert_eq!(field(r#"{"type":"ack","id":1}"#, "\"t\":"), None);
    }

    #[test]
    fn a_worker_result_survives_its_line() {
        let mut r = StepResult::empty();
        for v in [10, 10, 250, 90_000] {
            r.hist.record(v).unwrap();
        }
        (r.expected, r.stale, r.errors, r.lost) = (9, 2, 1, 3);
        let back = StepResult::decode(&r.encode()).unwrap();
        assert_eq!(back.hist.len(), 4);
        assert_eq!(
            back.hist.value_at_quantile(0.5),
            r.hist.value_at_quantile(0.5)
        );
        assert_eq!(back.hist.max(), r.hist.max());
        assert_eq!(
            (back.expected, back.stale, back.errors, back.lost),
            (9, 2, 1, 3)
        );
        assert!(StepResult::decode("joined 1 0").is_none());
    }
}
