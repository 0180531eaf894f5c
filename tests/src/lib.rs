//! Shared harness for the end-to-end tests of the three binaries.
//!
//! Each binary logs `... addr=<ip:port>` when a listener is up, so tests
//! start it with port 0 in its config and read the real ports from its
//! log instead of guessing free ports. Waits poll with a deadline, never a
//! fixed sleep, so they hold on a loaded 2-core machine.

pub mod netns;

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Generous: only a hang should ever reach it.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A child process whose stderr (the log) is collected line by line.
pub struct Logged {
    pub child: Child,
    log: Arc<Mutex<String>>,
    lines: mpsc::Receiver<String>,
    label: String,
}

impl Logged {
    /// Starts `cmd` with stdout discarded and stderr collected.
    pub fn spawn(label: &str, cmd: &mut Command) -> Logged {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {label}: {e}"));
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line.clone());
                if let Ok(mut log) = sink.lock() {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        Logged {
            child,
            log,
            lines,
            label: label.to_string(),
        }
    }

    /// Waits for a log line containing each marker and returns the
    /// `addr=` of each, in order.
    pub fn wait_addrs(&mut self, markers: &[&str]) -> Vec<SocketAddr> {
        let mut found: Vec<Option<SocketAddr>> = vec![None; markers.len()];
        let deadline = Instant::now() + DEADLINE;
        while found.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                let _ = self.child.kill();
                panic!(
                    "{} did not report {markers:?}; log:\n{}",
                    self.label,
                    self.text()
                );
            };
            for (slot, marker) in found.iter_mut().zip(markers) {
                if slot.is_none() && line.contains(marker) {
                    *slot = addr_in(&line);
                }
            }
        }
        found.into_iter().flatten().collect()
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Sends a signal by name (`TERM`, `HUP`, ...).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} {}", self.label);
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for child") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.label);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- log of {} ----\n{}", self.label, self.text());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `addr=<socket address>` token of a log line.
pub fn addr_in(line: &str) -> Option<SocketAddr> {
    line.split("addr=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Writes `text` into this test process's scratch folder.
/// `target/<profile>/limpet-<name>`, the workspace's binary built next to
/// the running test (`target/<profile>/deps/<test>`). For tests outside
/// the crate that owns the binary, where `CARGO_BIN_EXE_*` is not set.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("test binary is in target/<profile>/deps");
    let bin = dir.join(format!("limpet-{name}"));
    assert!(
        bin.exists(),
        "{} missing: run the tests with `cargo test --workspace` (or `make test`), which builds it",
        bin.display()
    );
    bin
}

pub fn write_temp(prefix: &str, name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create scratch folder");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write scratch file");
    path
}

/// What `<bin> --check --config <file>` printed.
pub struct CheckOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a binary's config check (like `nginx -t`) on `config`.
pub fn run_check(bin: &str, config: &std::path::Path) -> CheckOutput {
    let out = Command::new(bin)
        .arg("--check")
        .arg("--config")
        .arg(config)
        .output()
        .unwrap_or_else(|e| panic!("run {bin} --check: {e}"));
    CheckOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Resident memory of a process in KiB (`VmRSS` from `/proc/<pid>/status`).
///
/// Hostile-client tests assert a bound on it: the attack may cost the
/// process a bounded amount of memory, never one proportional to what the
/// attacker sends.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

impl Logged {
    /// The child's resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }

    /// Panics unless the child is still running: the first thing every
    /// attack test asserts.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().expect("wait for child") {
            panic!("{} died during the attack: {status}", self.label);
        }
    }
}

/// Starts the workspace binary `name` (`limpet-` prefixed by
/// [`workspace_binary`]) with `config` as its `--config`, inside `ns` when
/// given, logging at info; returns it with the `addr=` of each log marker,
/// in order. Every start writes its config to a file of its own: two tests
/// in one process may use the same label with different configs, and one
/// must not start the other's.
pub fn start_binary(
    name: &str,
    label: &str,
    config: &str,
    ns: Option<&netns::Netns>,
    markers: &[&str],
) -> (Logged, Vec<SocketAddr>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static STARTS: AtomicUsize = AtomicUsize::new(0);
    let n = STARTS.fetch_add(1, Ordering::Relaxed);
    let path = write_temp("limpet-start", &format!("{label}-{n}.toml"), config);
    let bin = workspace_binary(name);
    let mut cmd = match ns {
        Some(ns) => ns.command(bin.as_os_str()),
        None => Command::new(bin),
    };
    cmd.arg("--config").arg(path).env("RUST_LOG", "info");
    let mut proc = Logged::spawn(label, &mut cmd);
    let addrs = proc.wait_addrs(markers);
    (proc, addrs)
}

/// `GET path` with `Connection: close`: the whole response, or "" when
/// the connection or the request failed (for polling with [`eventually`]).
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(mut s)) = tokio::time::timeout(DEADLINE, tokio::net::TcpStream::connect(addr)).await
    else {
        return String::new();
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut body = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut body)).await;
    String::from_utf8_lossy(&body).into_owned()
}

/// Polls `check` until it holds, failing the test at the deadline.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A port that was free a moment ago, for programs that need a number up
/// front (redis-server, socket.io servers) instead of binding port 0.
///
/// It is picked below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`): a port from `bind(0)` is itself
/// ephemeral, and another test's outgoing connection could take it
/// before the program binds it (seen with redis-server while a benchmark
/// opened thousands of connections). Below the range only other callers
/// of this function compete, and they start from different places.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<usize>().ok())
        .unwrap_or(32768);
    let (from, to) = (low.saturating_sub(12_000).max(1024), low);
    if to > from {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as usize)
            .unwrap_or(0);
        let start = std::process::id() as usize * 7919 + nanos;
        for _ in 0..200 {
            let i = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = (from + (start + i * 104_729) % (to - from)) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

/// Path of redis-server, which `make test` installs; a clear failure otherwise.
pub fn redis_server_path() -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = std::path::Path::new(dir).join("redis-server");
        if p.exists() {
            return p;
        }
    }
    panic!("redis-server is not installed: run `make test` (it installs it) or `apt-get install redis-server`");
}

/// A real redis-server on loopback with no persistence, killed on drop.
/// The one launcher of every test that compares with or runs on Redis.
pub struct RedisServer {
    pub addr: SocketAddr,
    child: Child,
}

impl RedisServer {
    /// Starts redis-server on a free port; `extra` are more of its options.
    pub async fn start(extra: &[&str]) -> RedisServer {
        Self::start_on(free_port(), None, extra).await
    }

    /// Starts redis-server on `port`, in `dir` (where a cluster member
    /// keeps its nodes.conf) when given, and returns once it answers PING:
    /// ready when it answers, not just when it accepts.
    pub async fn start_on(port: u16, dir: Option<&std::path::Path>, extra: &[&str]) -> RedisServer {
        let mut cmd = Command::new(redis_server_path());
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        let port_arg = port.to_string();
        let child = cmd
            .args(["--port", &port_arg, "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let server = RedisServer { addr, child };
        eventually("redis-server answers PING", || async move {
            answers_ping(addr).await
        })
        .await;
        server
    }
}

async fn answers_ping(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let mut reply = [0u8; 7];
    s.write_all(b"PING\r\n").await.is_ok()
        && s.read_exact(&mut reply).await.is_ok()
        && &reply == b"+PONG\r\n"
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_addresses_in_log_lines() {
        let line = "2026-11-28T09:00:00Z  INFO limpet_proxy::server: listening addr=127.0.0.1:4000 proxy_protocol=false";
        assert_eq!(addr_in(line), Some("127.0.0.1:4000".parse().unwrap()));
        assert_eq!(addr_in("addr=[::1]:9"), Some("[::1]:9".parse().unwrap()));
        assert_eq!(addr_in("no address here"), None);
    }

    #[test]
    fn collects_the_log_and_waits_for_markers() {
        let mut p = Logged::spawn(
            "sh",
            Command::new("sh").args([
                "-c",
                "echo 'one addr=127.0.0.1:1' >&2; echo 'two addr=127.0.0.1:2' >&2; sleep 5",
            ]),
        );
        let addrs = p.wait_addrs(&["two", "one"]);
        assert_eq!(
            addrs,
            vec![
                "127.0.0.1:2".parse().unwrap(),
                "127.0.0.1:1".parse().unwrap()
            ]
        );
        assert!(p.text().contains("one addr="));
        p.assert_alive();
        let rss = p.rss_kib();
        assert!(rss > 0 && rss < 1 << 20, "sh uses {rss} KiB");
    }
}
