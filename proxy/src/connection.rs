//! One client connection once its handshakes are done: HTTP/1.1 (with
//! upgrades) whose every request goes to `forward`, or, on a listener with
//! `redirect_https`, a 301 to the same place over https for every request.
//!
//! hyper enforces the head limits here (`header_read` timeout,
//! `max_header_bytes`); a shutdown lets the request in flight finish and
//! then closes the connection. A connection accepted just before the
//! shutdown gets its first request served too (see `drive`). An idle
//! plain connection is parked without hyper's buffers (see `park`).

use crate::error::plain;
use crate::forward;
use crate::head_timer::HeadTimer;
use crate::limits::SharedSlot;
use crate::live::Proxy;
use crate::metrics::GaugeHeld;
use crate::park::{Activity, Parkable, Quiet, Tracked, BUSY_LOOK, PARK_AFTER};
use crate::router::host_only;
use crate::signal::Rarely;
use crate::upstream::Body;
use futures_util::FutureExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{service_fn, HttpService};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// Serves HTTP/1.1 (with upgrades) on one TLS client connection.
pub async fn serve_http<IO>(
    proxy: &Arc<Proxy>,
    io: IO,
    client: SocketAddr,
    scheme: &'static str,
    hsts: Option<String>,
    mut shutdown: watch::Receiver<bool>,
    slot: SharedSlot,
) where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let routing = proxy.routing();
    let cfg = &routing.config;
    let hsts = hsts.and_then(|v| hyper::header::HeaderValue::from_str(&v).ok());
    let (started_tx, mut started) = watch::channel(false);
    let service = service(proxy, client, scheme, hsts, slot, Some(started_tx), None);
    let mut conn = builder(cfg, false)
        .serve_connection(io, service)
        .with_upgrades();
    let header_read = cfg.timeouts.header_read.get();
    drive(
        &mut conn,
        client,
        &mut shutdown,
        Some(&mut started),
        header_read,
        None,
    )
    .await;
}

/// Serves HTTP/1.1 (with upgrades) on one plain client connection, parked
/// without hyper's buffers whenever it is idle (see `park`).
pub fn serve_plain(
    proxy: &Arc<Proxy>,
    tcp: TcpStream,
    client: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
    slot: SharedSlot,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    // A plain function returning its future, so that the future holds
    // each piece once (an `async fn` keeps its arguments beside them):
    // what it holds is what a parked connection costs.
    let proxy = proxy.clone();
    let activity = Arc::new(Activity::default());
    let mut service = service(
        &proxy,
        client,
        "http",
        None,
        slot,
        None,
        Some(activity.clone()),
    );
    let mut io = TokioIo::new(Parkable::new(tcp, activity.clone()));
    // Until a woken connection starts a request: when it fell idle plus
    // `header_read`, as hyper bounds an idle connection.
    let mut deadline: Option<Instant> = None;
    async move {
        loop {
            let routing = proxy.routing();
            let header_read = routing.config.timeouts.header_read.get();
            // Boxed, the connection and its driving both: while parked
            // the task then holds neither.
            let mut conn = Box::new(
                builder(&routing.config, true)
                    .serve_connection(io, service)
                    .with_upgrades(),
            );
            drop(routing);
            let driven = Box::pin(drive(
                &mut conn,
                client,
                &mut shutdown,
                None,
                header_read,
                Some((&activity, deadline)),
            ))
            .await;
            if driven == Driven::Ended {
                return;
            }
            // Quiet for `PARK_AFTER` at least: hyper's part ends at once,
            // the socket stays open, until hyper would have closed it.
            // From the last request's end, or two looks ago if later: an
            // upload that went on after its answer kept hyper busy.
            let now = Instant::now();
            let quiet_since = now.checked_sub(2 * PARK_AFTER).unwrap_or(now);
            let idle_until = activity.idle_since().max(quiet_since) + header_read;
            if idle_until <= Instant::now() {
                return;
            }
            activity.set_parking(true);
            Pin::new(&mut *conn).graceful_shutdown();
            let stopped = match (&mut *conn).now_or_never() {
                Some(stopped) => stopped,
                None => {
                    // Busy after all: keep-alive is off now, so let it
                    // finish and close for real.
                    activity.set_parking(false);
                    let _ = (&mut *conn).await;
                    return;
                }
            };
            activity.set_parking(false);
            let Some((parkable, back)) = stopped.ok().and_then(|()| take_back(*conn)) else {
                return;
            };
            service = back;
            if !parkable.has_unread() {
                let counted = GaugeHeld::new(&proxy.metrics.parked_connections);
                let woke = tokio::select! {
                    // Bytes that came with a shutdown are served first.
                    biased;
                    r = tokio::time::timeout_at(idle_until, parkable.tcp().readable()) => matches!(r, Ok(Ok(()))),
                    _ = shutdown.changed() => false,
                };
                drop(counted);
                if !woke {
                    return;
                }
            }
            deadline = Some(idle_until);
            io = TokioIo::new(parkable);
        }
    }
}

/// The socket and the service back from a hyper connection that ended
/// without shutting the socket down, with what hyper had read and not
/// used put back into the socket's reads.
fn take_back<S>(conn: http1::UpgradeableConnection<TokioIo<Parkable>, S>) -> Option<(Parkable, S)>
where
    S: HttpService<Incoming, ResBody = Tracked<Body>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let parts = conn.into_parts()?;
    let mut parkable = parts.io.into_inner();
    parkable.unread(parts.read_buf);
    Some((parkable, parts.service))
}

/// The requests of one client connection, each to `forward`. With
/// `activity`, each request is counted in flight until hyper drops its
/// response body; with `started_tx`, the first request is told (for the
/// grace a shutdown gives a connection that has sent none yet).
fn service(
    proxy: &Arc<Proxy>,
    client: SocketAddr,
    scheme: &'static str,
    hsts: Option<hyper::header::HeaderValue>,
    slot: SharedSlot,
    started_tx: Option<watch::Sender<bool>>,
    activity: Option<Arc<Activity>>,
) -> impl HttpService<Incoming, ResBody = Tracked<Body>, Error = Infallible, Future: Send> + Send + Unpin
{
    let proxy = proxy.clone();
    service_fn(move |mut req: hyper::Request<Incoming>| {
        // Only the first request changes it: a send that changes
        // nothing would still wake (and lock) the watch's waiter
        // lists on every keep-alive request.
        if let Some(tx) = &started_tx {
            tx.send_if_modified(|started| !std::mem::replace(started, true));
        }
        let in_flight = activity.as_ref().map(Activity::start);
        let proxy = proxy.clone();
        let hsts = hsts.clone();
        // An upgrade takes the slot into its tunnel (see SharedSlot).
        // Only a request asking to upgrade can become one, and an
        // extension costs a map allocated per request.
        if crate::headers::is_upgrade(req.headers()) {
            req.extensions_mut().insert(slot.clone());
        }
        // Routed now: what hyper stores per request is the wait alone.
        let answer = forward::handle(proxy, req, client, scheme);
        async move {
            let mut resp = answer.await;
            if let Some(v) = hsts {
                resp.headers_mut()
                    .insert(hyper::header::STRICT_TRANSPORT_SECURITY, v);
            }
            Ok::<_, Infallible>(resp.map(|body| Tracked::new(body, in_flight)))
        }
    })
}

/// hyper's server settings. A plain connection's header-read deadline
/// needs no timer of its own: `drive` wakes it often enough (see
/// `head_timer`).
///
/// A plain connection also writes each answer with one `send`, its body
/// copied behind the head, instead of a `writev` of the pieces: a shorter
/// path through the kernel (sys time per request -3.5 %, with the
/// backend side below). hyper keeps that copy buffer at its largest size
/// until the connection ends; a plain connection's ends when it parks,
/// after one to two quiet seconds, but a TLS one is never parked, so it
/// keeps hyper's vectored writes.
fn builder(cfg: &limpet_config::ProxyConfig, plain: bool) -> http1::Builder {
    let mut b = http1::Builder::new();
    if plain {
        b.timer(HeadTimer).writev(false);
    } else {
        b.timer(TokioTimer::new());
    }
    b.header_read_timeout(cfg.timeouts.header_read.get())
        .max_buf_size(cfg.limits.max_header_bytes.bytes() as usize)
        .keep_alive(true);
    b
}

/// Resolves when the connection has started a request: told by
/// `started`, or (parking) counted by `activity` past `before`.
async fn first_request(
    started: Option<&mut watch::Receiver<bool>>,
    activity: Option<&Activity>,
    before: u64,
) {
    match (started, activity) {
        (Some(started), _) => {
            let _ = started.wait_for(|s| *s).await;
        }
        // Only during a shutdown, bounded by the caller: a short poll.
        (None, Some(a)) => {
            while a.requests() == before {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        (None, None) => {}
    }
}

/// Resolves when `activity`'s last request in flight has ended.
async fn became_idle(activity: Option<&Activity>) {
    match activity {
        Some(a) => a.became_idle().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_or_never(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How [`drive`] left a connection.
#[derive(Debug, PartialEq, Eq)]
enum Driven {
    /// Closed, upgraded, or drained.
    Ended,
    /// Quiet for a [`PARK_AFTER`] period with nothing in flight.
    Idle,
}

/// Runs a hyper connection until it ends, the proxy shuts down, or (with
/// `park`) it has answered a request and been idle long enough to park,
/// or reached the deadline before starting one.
async fn drive<I, S>(
    conn: &mut http1::UpgradeableConnection<I, S>,
    client: SocketAddr,
    shutdown: &mut watch::Receiver<bool>,
    started: Option<&mut watch::Receiver<bool>>,
    header_read: Duration,
    park: Option<(&Activity, Option<Instant>)>,
) -> Driven
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = Tracked<Body>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    http1::UpgradeableConnection<I, S>: Unpin,
{
    let activity = park.map(|(a, _)| a);
    let requests_before = activity.map_or(0, Activity::requests);
    let mut until = park.and_then(|(_, d)| d);
    let mut look = tokio::time::interval_at(Instant::now() + PARK_AFTER, PARK_AFTER);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut quiet = activity.map(Quiet::new);
    let mut waiting_idle = false;
    // Every connection waits on the one shutdown channel: polled as is,
    // each wake of each connection would take its lock.
    let probe = shutdown.clone();
    let stop = Rarely::new(shutdown.changed(), || probe.has_changed().unwrap_or(true));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            r = &mut *conn => {
                if let Err(e) = r {
                    tracing::debug!(%client, "client connection ended: {e}");
                }
                return Driven::Ended;
            }
            _ = look.tick(), if activity.is_some() => {
                if let (Some(q), Some(a)) = (quiet.as_mut(), activity) {
                    let answered = a.requests() > requests_before;
                    if q.check(a) && answered {
                        return Driven::Idle;
                    }
                    if a.busy() {
                        look.reset_after(BUSY_LOOK);
                        waiting_idle = true;
                    }
                }
            }
            _ = became_idle(activity), if waiting_idle => {
                // Back to a look a period from now.
                look.reset();
                waiting_idle = false;
            }
            _ = sleep_until_or_never(until), if until.is_some() => {
                if activity.is_some_and(|a| a.requests() == requests_before) {
                    // Woken from parking, and still no request by the time
                    // hyper would have closed it.
                    return Driven::Ended;
                }
                until = None;
            }
            _ = &mut stop => break,
        }
    }
    // hyper closes a connection with no request in flight at once, a
    // fresh one too: its client, which did nothing wrong, would see its
    // first request fail (during a binary upgrade, a connection the old
    // process accepted last). Give it the head-read time to send one.
    let first = tokio::time::timeout(
        header_read,
        first_request(started, activity, requests_before),
    );
    tokio::select! {
        _ = &mut *conn => return Driven::Ended,
        _ = first => {}
    }
    // Finish the request in flight (an upgrade hands off to its tunnel,
    // which follows the drain deadline), then close. The look goes on
    // for hyper's header-read deadline (see `head_timer`).
    Pin::new(&mut *conn).graceful_shutdown();
    loop {
        tokio::select! {
            _ = &mut *conn => return Driven::Ended,
            _ = look.tick(), if activity.is_some() => {}
        }
    }
}

/// Answers every request with a 301 to the same host and path over https.
pub async fn serve_redirect<IO>(proxy: &Arc<Proxy>, io: IO, https_port: Option<u16>)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let header_read = proxy.routing().config.timeouts.header_read.get();
    let service = service_fn(
        move |req: hyper::Request<hyper::body::Incoming>| async move {
            let host = req
                .headers()
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(host_only)
                .unwrap_or("localhost")
                .to_string();
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let port = https_port.map(|p| format!(":{p}")).unwrap_or_default();
            let location = format!("https://{host}{port}{path}");
            let mut resp = plain(
                hyper::StatusCode::MOVED_PERMANENTLY,
                &format!("moved to {location}"),
            );
            if let Ok(v) = hyper::header::HeaderValue::from_str(&location) {
                resp.headers_mut().insert(hyper::header::LOCATION, v);
            }
            Ok::<_, Infallible>(resp)
        },
    );
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read)
        .serve_connection(io, service)
        .await;
}
