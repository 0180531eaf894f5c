//! Test harness: an in-process broker on a free loopback port, and a raw
//! TCP client that reads whole RESP frames so tests can compare exact bytes.
#![allow(dead_code, unused_imports)]

use limpet_broker::server::{Broker, Server};
use limpet_config::BrokerConfig;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

pub use limpet_testkit::DEADLINE;

pub struct TestBroker {
    pub addr: SocketAddr,
    pub broker: Arc<Broker>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

pub fn loopback_config() -> BrokerConfig {
    BrokerConfig {
        bind: vec!["127.0.0.1:0".parse().unwrap()],
        ..BrokerConfig::default()
    }
}

impl TestBroker {
    pub async fn start(config: BrokerConfig) -> TestBroker {
        let broker = Arc::new(Broker::new(config, None));
        let server = Server::bind(broker.clone())
            .await
            .expect("bind a free port");
        let addr = server.local_addrs()[0];
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(server.run(rx));
        TestBroker {
            addr,
            broker,
            stop,
            task,
        }
    }

    pub async fn default() -> TestBroker {
        Self::start(loopback_config()).await
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("broker stops within the deadline")
            .expect("server task does not panic");
    }
}

pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = tokio::time::timeout(DEADLINE, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write to broker");
    }

    /// Sends a command as a multibulk request.
    pub async fn cmd(&mut self, args: &[&str]) {
        let bytes = encode(args);
        self.send(&bytes).await;
    }

    /// Subscribes to every channel in `names`, a thousand a request, and
    /// reads all the confirmations.
    pub async fn subscribe_all(&mut self, names: &[String]) {
        for chunk in names.chunks(1000) {
            let mut args = vec!["SUBSCRIBE"];
            args.extend(chunk.iter().map(String::as_str));
            self.cmd(&args).await;
        }
        self.frames(names.len()).await;
    }

    /// Reads exactly `n` complete frames and returns their raw bytes.
    pub async fn frames(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.extend(self.frame().await);
        }
        out
    }

    pub async fn frame(&mut self) -> Vec<u8> {
        tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(len) = frame_len(&self.buf, 0) {
                    return self.buf.drain(..len).collect();
                }
                self.buf.reserve(16 * 1024);
                let n = self
                    .stream
                    .read_buf(&mut self.buf)
                    .await
                    .expect("read from broker");
                assert!(
                    n > 0,
                    "broker closed the connection; unread: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            }
        })
        .await
        .expect("a reply frame within the deadline")
    }

    /// Sends `args` and returns the reply as text, for readable assertions.
    pub async fn call(&mut self, args: &[&str]) -> String {
        self.cmd(args).await;
        String::from_utf8_lossy(&self.frame().await).into_owned()
    }

    /// The first frame, or whatever arrived before the broker closed.
    pub async fn read_to_close_or_frame(&mut self) -> Vec<u8> {
        tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(len) = frame_len(&self.buf, 0) {
                    return self.buf.drain(..len).collect();
                }
                self.buf.reserve(16 * 1024);
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return std::mem::take(&mut self.buf),
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("a frame or a close within the deadline")
    }

    /// Waits for the broker to close the connection; returns what came first.
    pub async fn read_to_close(&mut self) -> Vec<u8> {
        tokio::time::timeout(DEADLINE, async {
            loop {
                self.buf.reserve(16 * 1024);
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return std::mem::take(&mut self.buf),
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("broker closes the connection within the deadline")
    }
}

pub fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n", a.len()).into_bytes());
        out.extend(a.as_bytes());
        out.extend(b"\r\n");
    }
    out
}

/// Length of the complete RESP2/RESP3 frame starting at `at`, if it is all there.
pub fn frame_len(buf: &[u8], at: usize) -> Option<usize> {
    let line_end = at + buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
    let head = buf[at];
    let header = std::str::from_utf8(&buf[at + 1..line_end]).ok()?;
    let after = line_end + 2;
    match head {
        b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => Some(after - at),
        b'$' | b'=' | b'!' => {
            let n: i64 = header.parse().ok()?;
            if n < 0 {
                return Some(after - at);
            }
            let end = after + n as usize + 2;
            (buf.len() >= end).then_some(end - at)
        }
        b'*' | b'>' | b'~' | b'%' | b'|' => {
            let n: i64 = header.parse().ok()?;
            let items = if head == b'%' || head == b'|' {
                n * 2
            } else {
                n
            };
            let mut pos = after;
            for _ in 0..items.max(0) {
                pos += frame_len(buf, pos)?;
            }
            Some(pos - at)
        }
        _ => panic!(
            "not a RESP frame: {:?}",
            String::from_utf8_lossy(&buf[at..])
        ),
    }
}

pub use limpet_testkit::{free_port, RedisServer};

/// The real `limpet-broker` binary, started with a config file; its log
/// tells the ports it bound (port 0 in the config).
pub struct BrokerProcess {
    pub proc: limpet_testkit::Logged,
    pub addr: SocketAddr,
    pub metrics: Option<SocketAddr>,
}

pub fn write_temp(name: &str, text: &str) -> std::path::PathBuf {
    limpet_testkit::write_temp("limpet-broker-test", name, text)
}

impl BrokerProcess {
    pub fn start(config_text: &str) -> BrokerProcess {
        let path = write_temp(&format!("broker-{}.toml", free_port()), config_text);
        let mut proc = limpet_testkit::Logged::spawn(
            "limpet-broker",
            std::process::Command::new(env!("CARGO_BIN_EXE_limpet-broker"))
                .arg("--config")
                .arg(&path)
                .env("RUST_LOG", "info"),
        );
        let metrics_wanted = !config_text.contains("enabled = false");
        let mut markers = vec!["listening for Redis-protocol clients"];
        if metrics_wanted {
            markers.push("serving Prometheus metrics");
        }
        let addrs = proc.wait_addrs(&markers);
        BrokerProcess {
            addr: addrs[0],
            metrics: addrs.get(1).copied(),
            proc,
        }
    }

    pub fn signal(&self, sig: &str) {
        self.proc.signal(sig);
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait(&mut self) -> Option<i32> {
        self.proc.wait_exit()
    }

    pub fn log_text(&self) -> String {
        self.proc.text()
    }
}

/// A plain HTTP/1.1 GET over a raw socket; returns (status line, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr)
        .await
        .expect("connect to HTTP port");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// Config text for the real binary on free ports.
pub const PORT_ZERO: &str = "bind = [\"127.0.0.1:0\"]\n[metrics]\nbind = \"127.0.0.1:0\"\n";

/// How long an honest client may wait during an attack. Far above a
/// loaded machine's normal answer time, far below what the attacks cost
/// before they were bounded (tens of seconds and more).
pub const HONEST_WITHIN: Duration = Duration::from_secs(10);

/// An honest client's whole round trip, all within `within`: connect,
/// PING, and a message published and received. Hostile-client tests call
/// it while the attack is under way.
pub async fn honest_client_served(addr: SocketAddr, within: Duration) {
    honest_client_served_auth(addr, None, within).await
}

/// [`honest_client_served`] on a broker with `requirepass`.
pub async fn honest_client_served_auth(addr: SocketAddr, password: Option<&str>, within: Duration) {
    let connect = |addr| async move {
        let mut c = Client::connect(addr).await;
        if let Some(pass) = password {
            assert_eq!(c.call(&["AUTH", pass]).await, "+OK\r\n");
        }
        c
    };
    let round_trip = async {
        let mut sub = connect(addr).await;
        assert_eq!(
            sub.call(&["SUBSCRIBE", "honest"]).await,
            "*3\r\n$9\r\nsubscribe\r\n$6\r\nhonest\r\n:1\r\n"
        );
        let mut p = connect(addr).await;
        assert_eq!(p.call(&["PING"]).await, "+PONG\r\n");
        assert_eq!(p.call(&["PUBLISH", "honest", "hi"]).await, ":1\r\n");
        assert_eq!(
            sub.frame().await,
            b"*3\r\n$7\r\nmessage\r\n$6\r\nhonest\r\n$2\r\nhi\r\n"
        );
    };
    let started = std::time::Instant::now();
    tokio::time::timeout(within, round_trip)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "an honest client was not served within {within:?} (gave up after {:?})",
                started.elapsed()
            )
        });
}

/// The value of one Prometheus sample (`name` with its labels, exactly as
/// printed), or 0 when it is not there yet.
pub async fn metric(metrics: SocketAddr, sample: &str) -> u64 {
    let (_, body) = http_get(metrics, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}
