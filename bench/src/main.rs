//! `limpet-bench`: the load generator and the side-by-side benchmark runner.
//!
//! * `limpet-bench echo-server --addr 127.0.0.1:9901` — the backend.
//! * `limpet-bench echo --target 127.0.0.1:8080 --conns 1000 --seconds 5`
//! * `limpet-bench run [--quick] [--out bench/results]` — every scenario,
//!   every contender, one after another on this machine; writes
//!   `latest.md` and `latest.svg`.
//! * `limpet-bench broker [--quick] [--out bench/results/broker-fanout.md]`
//!   — scenario 4 alone: limpet-broker vs redis-server, PUBLISH and
//!   fan-out in two shapes with the server's CPU per delivery.
//! * `limpet-bench tls [--quick] [--rounds 3] [--out bench/results/tls-edge.md]`
//!   — scenario 6 alone: limpet-proxy, nginx and HAProxy terminating TLS
//!   1.3 with one certificate; wss echo, full and resumed handshakes/s, CPU
//!   per message and per handshake.
//! * `limpet-bench overload [--clients 400] [--seconds 5]` — scenario 5 at
//!   twice each stack's saturation rate (limpet with and without load
//!   shedding, and socket.io); prints p99, delivered/s and counted drops.
//! * `limpet-bench stack [--quick] [--clients 5000]` — scenario 5 alone:
//!   the whole limpet stack and the socket.io stack at a realistic size.
//! * `limpet-bench room-worker ...` — one share of scenario 5's clients,
//!   driven by the runner over stdin and stdout (see `rooms`).

mod echo_server;
mod load;
mod overload;
mod rooms;
mod scenarios;
mod tls_load;

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "limpet-bench",
    version,
    about = "Load generator and benchmarks for Limpet"
)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a WebSocket echo / HTTP 200 backend.
    EchoServer {
        #[arg(long)]
        addr: SocketAddr,
    },
    /// WebSocket echo round trips against one or more targets.
    Echo {
        #[arg(long, required = true)]
        target: Vec<SocketAddr>,
        #[arg(long, default_value_t = 1)]
        conns: usize,
        #[arg(long, default_value_t = 100)]
        size: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Redis-protocol fan-out against a broker.
    Fanout {
        #[arg(long)]
        broker: SocketAddr,
        #[arg(long, default_value_t = 1)]
        channels: usize,
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        #[arg(long, default_value_t = 10000)]
        messages: usize,
    },
    /// Every scenario against every contender; writes the report.
    Run {
        /// A small version (about a minute).
        #[arg(long)]
        quick: bool,
        /// Where latest.md and latest.svg go.
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// Folder with the release binaries of limpet.
        #[arg(long, default_value = "target/release")]
        bin: PathBuf,
    },
    /// Scenario 4 alone (limpet-broker vs redis-server: PUBLISH and
    /// fan-out in two shapes, with server CPU per delivery); writes `out`.
    Broker {
        /// A small version (a few seconds).
        #[arg(long)]
        quick: bool,
        #[arg(long, default_value = "bench/results/broker-fanout.md")]
        out: PathBuf,
        /// Folder with the release binaries of limpet.
        #[arg(long, default_value = "target/release")]
        bin: PathBuf,
        /// Rounds per measurement (medians are reported); default 3, 1 with --quick.
        #[arg(long)]
        rounds: Option<usize>,
    },
    /// Scenario 6 alone (the TLS edge: wss echo, full and resumed TLS 1.3
    /// handshakes, CPU per message and per handshake); writes `out`.
    Tls {
        /// A small version (well under a minute).
        #[arg(long)]
        quick: bool,
        #[arg(long, default_value = "bench/results/tls-edge.md")]
        out: PathBuf,
        /// Folder with the release binary of limpet-proxy.
        #[arg(long, default_value = "target/release")]
        bin: PathBuf,
        /// Rounds (contenders take turns; medians are reported); default 3, 1 with --quick.
        #[arg(long)]
        rounds: Option<usize>,
    },
    /// Scenario 5 alone (the whole stack at a realistic size: 5,000
    /// clients in rooms of 4, one in five sending, the rest idle); writes `out`.
    Stack {
        /// A small version (200 clients, well under a minute).
        #[arg(long)]
        quick: bool,
        /// Clients (default 5,000; 200 with --quick).
        #[arg(long)]
        clients: Option<usize>,
        /// Only these rates (messages/s per active client, comma-separated;
        /// 0 is the all-idle step) instead of doubling until saturation.
        #[arg(long, value_delimiter = ',')]
        rates: Vec<f64>,
        /// Only limpet's stack, no socket.io (to compare two limpet builds).
        #[arg(long)]
        limpet_only: bool,
        #[arg(long, default_value = "bench/results/whole-stack.md")]
        out: PathBuf,
        /// Folder with the release binaries of limpet.
        #[arg(long, default_value = "target/release")]
        bin: PathBuf,
    },
    /// One share of a room load's clients (scenario 5 starts several, as
    /// a process may hold 20,000 sockets here); reads `step` lines on stdin.
    RoomWorker {
        #[arg(long, value_parser = rooms::proto_arg)]
        proto: rooms::RoomProto,
        #[arg(long)]
        target: SocketAddr,
        /// Index of the first client (a multiple of --room-size).
        #[arg(long, default_value_t = 0)]
        first: usize,
        #[arg(long)]
        clients: usize,
        #[arg(long, default_value_t = 4)]
        room_size: usize,
        /// Every n-th client sends; the others listen.
        #[arg(long, default_value_t = 5)]
        active_every: usize,
    },
    /// Scenario 5 (whole stack, rooms of 4) at twice each stack's
    /// saturation rate; prints a table (markdown) of p99 and drops.
    Overload {
        #[arg(long, default_value_t = 400)]
        clients: usize,
        /// Seconds per rate step.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Only these stacks: on (limpet, shedding on), off (limpet,
        /// shedding off), socketio. Default: all three.
        #[arg(long)]
        stack: Vec<String>,
        /// Skip the saturation search: run at this rate per client only.
        #[arg(long)]
        rate: Option<f64>,
        /// Folder with the release binaries of limpet.
        #[arg(long, default_value = "target/release")]
        bin: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    load::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match args.cmd {
            Cmd::EchoServer { addr } => {
                let listener = tokio::net::TcpListener::bind(addr).await?;
                echo_server::serve(listener).await;
                Ok(())
            }
            Cmd::Echo {
                target,
                conns,
                size,
                seconds,
            } => {
                let r = load::echo(&target, conns, size, Duration::from_secs(seconds)).await;
                println!("{r:?}");
                Ok(())
            }
            Cmd::Fanout {
                broker,
                channels,
                subscribers,
                messages,
            } => {
                let (r, _) =
                    load::fanout(broker, channels, subscribers, messages, 100, || (0, 0)).await;
                println!("{r:?}");
                Ok(())
            }
            Cmd::Stack {
                quick,
                clients,
                rates,
                limpet_only,
                out,
                bin,
            } => scenarios::stack(quick, clients, &rates, limpet_only, &out, &bin).await,
            Cmd::RoomWorker {
                proto,
                target,
                first,
                clients,
                room_size,
                active_every,
            } => {
                rooms::worker(rooms::Shape {
                    proto,
                    target,
                    first,
                    clients,
                    room_size: room_size.max(1),
                    active_every: active_every.max(1),
                })
                .await
            }
            Cmd::Run { quick, out, bin } => scenarios::run(quick, &out, &bin).await,
            Cmd::Broker {
                quick,
                out,
                bin,
                rounds,
            } => scenarios::broker(quick, rounds, &out, &bin).await,
            Cmd::Tls {
                quick,
                out,
                bin,
                rounds,
            } => scenarios::tls(quick, rounds, &out, &bin).await,
            Cmd::Overload {
                clients,
                seconds,
                bin,
                stack,
                rate,
            } => overload::run(&bin, clients, seconds, &stack, rate).await,
        }
    })
}

#[cfg(test)]
mod smoke {
    //! The harness itself must keep working: a tiny run on every `make test`.
    //! It checks that messages flow and are counted, never how fast.
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn echo_load_counts_round_trips() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(echo_server::serve(listener));
        let r = load::echo(&[addr], 4, 100, Duration::from_millis(300)).await;
        assert_eq!(r.errors, 0, "{r:?}");
        assert!(r.count >= 4, "every connection made round trips: {r:?}");
        assert!(
            r.p50_us > 0 && r.p50_us <= r.p99_us && r.p99_us <= r.p999_us,
            "{r:?}"
        );
        let (held, failed) = load::idle(addr, "/idle", 50).await;
        assert_eq!((held.len(), failed), (50, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fanout_load_counts_deliveries() {
        let broker = std::sync::Arc::new(limpet_broker::server::Broker::new(
            limpet_config::BrokerConfig {
                bind: vec!["127.0.0.1:0".parse().unwrap()],
                ..Default::default()
            },
            None,
        ));
        let server = limpet_broker::server::Server::bind(broker).await.unwrap();
        let addr = server.local_addrs()[0];
        let (_stop, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(server.run(rx));
        let (r, _) = load::fanout(addr, 2, 3, 200, 100, || (0, 0)).await;
        assert_eq!(r.errors, 0, "{r:?}");
        assert_eq!(r.count, 600, "200 messages over 2 channels × 3 subscribers");
    }
}
