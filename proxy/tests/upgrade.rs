//! Binary upgrade (`SIGUSR2`, `POST /api/upgrade`) with the real binary:
//! the new process takes the listening sockets while clients keep
//! connecting, tunnels opened before run on in the old process until its
//! drain, and a config the new binary refuses leaves the old one serving.

mod common;
use common::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Kills, when dropped (also when the test fails), every process a
/// binary upgrade of `old` started: they outlive the old process and are
/// no child of the test. Found by the handover path in their environment,
/// which names the old pid.
struct Successors {
    old: u32,
}

impl Successors {
    fn pids(&self) -> Vec<u32> {
        let marker = "LIMPET_PROXY_UPGRADE=";
        let from = format!("limpet-proxy-upgrade-{}-", self.old);
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                    env.split(|&b| b == 0).any(|var| {
                        let var = String::from_utf8_lossy(var);
                        var.starts_with(marker) && var.contains(&from)
                    })
                })
            })
            .collect()
    }
}

impl Drop for Successors {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

async fn admin(proxy: &ProxyProcess, method: &str, path: &str) -> HttpReply {
    request(proxy.admin, method, path, &["Host: admin"], "").await
}

/// The pid the admin API of whichever process answers reports.
async fn answering_pid(admin_addr: SocketAddr) -> Option<u64> {
    let r = request(admin_addr, "GET", "/api/upgrade", &["Host: admin"], "").await;
    let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    v["pid"].as_u64()
}

/// New connections, to the admin API and to the proxy, are all served,
/// by `pid` alone.
async fn served_only_by(proxy: &ProxyProcess, pid: u32) {
    for _ in 0..5 {
        assert_eq!(answering_pid(proxy.admin).await, Some(u64::from(pid)));
        assert_eq!(
            http(proxy.addr, "GET", "/", &[]).await.backend(),
            Some("b1")
        );
    }
}

/// One short request on a fresh connection; any failure (refused,
/// reset, no or a bad answer) is an `Err` saying which.
async fn try_get(addr: SocketAddr) -> Result<(), String> {
    let attempt = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .await
            .map_err(|e| format!("read: {e}"))?;
        match parse_reply(&raw).status {
            200 => Ok(()),
            status => Err(format!("status {status}")),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .unwrap_or_else(|_| Err("no answer within 10 s".into()))
}

/// The `new_pid=` of the old process's handover line, once logged.
fn handed_to(log: &str) -> Option<u32> {
    log.lines()
        .find(|l| l.contains("binary upgrade: the new process serves"))?
        .split("new_pid=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usr2_hands_the_listeners_over_with_no_refused_connection() {
    let b1 = TestBackend::start("b1").await;
    let text = config(&[&b1], "[shutdown]\ndrain_deadline = \"6s\"", "");
    let mut proxy = ProxyProcess::start(&text);
    let old = proxy.proc.child.id();
    let _reaper = Successors { old };
    let (mut ws, _) = ws_connect(proxy.addr, "/ws", None).await.expect("ws");
    assert_eq!(echo(&mut ws, "before").await, "b1:before");
    // The new config adds a listener: the new process binds it fresh.
    let added: SocketAddr = format!("127.0.0.1:{}", limpet_testkit::free_port())
        .parse()
        .unwrap();
    std::fs::write(
        &proxy.config_path,
        format!("{text}[[listen]]\nbind = \"{added}\"\n"),
    )
    .unwrap();

    // Clients connect all the time, before, during and after.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let clients = {
        let (stop, served, failures, addr) =
            (stop.clone(), served.clone(), failures.clone(), proxy.addr);
        tokio::spawn(async move {
            while !stop.load(Relaxed) {
                match try_get(addr).await {
                    Ok(()) => served.fetch_add(1, Relaxed),
                    Err(e) => {
                        failures.lock().unwrap().push(e);
                        0
                    }
                };
            }
        })
    };
    let at_least = |n: usize| {
        let served = served.clone();
        move || {
            let served = served.clone();
            async move { served.load(Relaxed) >= n }
        }
    };
    eventually("the connect loop runs", at_least(20)).await;

    let signalled = Instant::now();
    proxy.signal("USR2");
    let deadline = Instant::now() + Duration::from_secs(30);
    let new = loop {
        if let Some(pid) = handed_to(&proxy.log_text()) {
            break pid;
        }
        assert!(Instant::now() < deadline, "no handover logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let to_serving = signalled.elapsed();
    assert_ne!(new, old);
    assert!(
        proxy.log_text().contains(&format!("pid={new}")),
        "the new process logs into the same stream"
    );

    // The tunnel opened before runs on in the draining old process.
    assert_eq!(echo(&mut ws, "after").await, "b1:after");
    // The new process answers on the added listener.
    let r = http(added, "GET", "/", &[]).await;
    assert_eq!(r.backend(), Some("b1"), "{}", r.body);

    // The old process drains (the tunnel holds it until the deadline)
    // and exits 0, as on SIGTERM; the loop keeps going across its exit.
    let code = tokio::task::block_in_place(|| proxy.proc.wait_exit());
    assert_eq!(code, Some(0), "the old process exits cleanly");
    let after_exit = served.load(Relaxed) + 20;
    eventually(
        "requests after the old process exited",
        at_least(after_exit),
    )
    .await;
    stop.store(true, Relaxed);
    clients.await.unwrap();

    let failures = failures.lock().unwrap().clone();
    let total = served.load(Relaxed) + failures.len();
    eprintln!(
        "binary upgrade: {total} requests, {} failed, USR2 to the new process serving {to_serving:?}",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    // Only the new process holds the listeners now.
    served_only_by(&proxy, new).await;
    let log = proxy.log_text();
    assert!(
        log.contains("listening sockets handed over")
            && log.contains("took over a listening socket from the old process"),
        "{log}"
    );

    // The new process upgrades in turn, through the admin API, which
    // answers once the next one serves.
    let _reaper_of_new = Successors { old: new };
    let r = admin(&proxy, "POST", "/api/upgrade").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("JSON");
    let newer = v["pid"].as_u64().expect("pid");
    assert_ne!(newer, u64::from(new));
    eventually("the second new process answers alone", || async {
        answering_pid(proxy.admin).await == Some(newer) && !running(new)
    })
    .await;
    assert_eq!(
        http(proxy.addr, "GET", "/", &[]).await.backend(),
        Some("b1")
    );
}

/// Whether `pid` runs (a zombie waiting for its reaper does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_leaves_the_old_process_serving() {
    let b1 = TestBackend::start("b1").await;
    let text = config(&[&b1], "", "");
    let mut proxy = ProxyProcess::start(&text);
    let old = proxy.proc.child.id();
    let _reaper = Successors { old };

    // A config the new binary's --check refuses.
    std::fs::write(
        &proxy.config_path,
        text.replace("[[route]]", "[[route]]\nno_such_setting = 1\n"),
    )
    .unwrap();
    let r = admin(&proxy, "POST", "/api/upgrade").await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.body.contains("refused the configuration") && r.body.contains("no_such_setting"),
        "{}",
        r.body
    );
    proxy.signal("USR2");
    eventually("the refused USR2 is counted", || async {
        proxy
            .metric("limpet_proxy_binary_upgrades_total{outcome=\"check_failed\"}")
            .await
            == 2.0
    })
    .await;

    // A config --check accepts but the new process cannot serve: an
    // address taken by someone else. It says why and exits.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    std::fs::write(
        &proxy.config_path,
        format!("{text}[[listen]]\nbind = \"{taken_addr}\"\n"),
    )
    .unwrap();
    let r = admin(&proxy, "POST", "/api/upgrade").await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.body.contains("gave up") && r.body.contains(&taken_addr.to_string()),
        "{}",
        r.body
    );
    assert_eq!(
        proxy
            .metric("limpet_proxy_binary_upgrades_total{outcome=\"refused\"}")
            .await,
        1.0
    );

    // The old process carries on alone, with the reasons in its log.
    proxy.proc.assert_alive();
    served_only_by(&proxy, old).await;
    let log = proxy.log_text();
    assert!(
        log.contains("binary upgrade refused, this process carries on")
            && log.contains("no_such_setting")
            && log.contains("the new process gave up"),
        "{log}"
    );
    let reaper = Successors { old };
    assert!(reaper.pids().is_empty(), "no new process is left running");
}

/// The old process stops accepting when the new one serves (or on
/// SIGTERM); a connection it accepted just before, whose request had not
/// arrived yet, is still served. Before, hyper closed it at once as idle:
/// one request in about 40,000 (12 runs) of the connect loop above failed so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_accepted_just_before_the_stop_is_served() {
    let b1 = TestBackend::start("b1").await;
    let mut proxy = ProxyProcess::start(&config(&[&b1], "", ""));
    let mut early = TcpStream::connect(proxy.addr).await.unwrap();
    eventually("the proxy accepted the connection", || async {
        proxy.metric("limpet_proxy_connections_total").await == 1.0
    })
    .await;
    proxy.signal("TERM");
    eventually("the listener is closed", || async {
        TcpStream::connect(proxy.addr).await.is_err()
    })
    .await;
    early
        .write_all(b"GET / HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let read = tokio::time::timeout(DEADLINE, early.read_to_end(&mut raw)).await;
    assert!(matches!(read, Ok(Ok(_))), "{read:?}");
    let reply = parse_reply(&raw);
    assert_eq!(
        (reply.status, reply.backend()),
        (200, Some("b1")),
        "{}",
        reply.body
    );
    let code = tokio::task::block_in_place(|| proxy.proc.wait_exit());
    assert_eq!(code, Some(0));
}

/// A notify socket like systemd's: a datagram socket that learns each
/// sender's pid (SO_PASSCRED), as systemd does.
struct NotifySocket {
    socket: std::os::unix::net::UnixDatagram,
    path: std::path::PathBuf,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = std::env::temp_dir().join(format!("limpet-proxy-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        rustix::net::sockopt::set_socket_passcred(&socket, true).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        NotifySocket { socket, path }
    }

    /// The next datagram and its sender's pid, within the deadline.
    fn next(&self) -> (u32, String) {
        use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut space =
                vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let mut buf = [0u8; 512];
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            match rustix::net::recvmsg(&self.socket, &mut iov, &mut control, RecvFlags::empty()) {
                Ok(got) => {
                    let pid = control
                        .drain()
                        .find_map(|m| match m {
                            RecvAncillaryMessage::ScmCredentials(c) => {
                                Some(c.pid.as_raw_nonzero().get() as u32)
                            }
                            _ => None,
                        })
                        .expect("the sender's credentials");
                    let text = String::from_utf8_lossy(&buf[..got.bytes]).into_owned();
                    return (pid, text);
                }
                Err(rustix::io::Errno::AGAIN) => {
                    assert!(Instant::now() < deadline, "no sd_notify datagram in 30 s");
                }
                Err(e) => panic!("reading the notify socket: {e}"),
            }
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Under a systemd `Type=notify` unit (here: `$NOTIFY_SOCKET` bound by the
/// test), the new process of an upgrade tells systemd it is the main
/// process and ready before the old one drains and exits; the old one
/// confirms it, and says nothing about stopping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usr2_under_a_notify_socket_moves_the_main_pid_before_the_old_exits() {
    let notify = NotifySocket::bind();
    let b1 = TestBackend::start("b1").await;
    let text = config(&[&b1], "[shutdown]\ndrain_deadline = \"5s\"", "");
    let mut proxy = ProxyProcess::start_with_env(&text, "NOTIFY_SOCKET", notify.path.as_os_str());
    let old = proxy.proc.child.id();
    let _reaper = Successors { old };
    let next = || tokio::task::block_in_place(|| notify.next());
    assert_eq!(next(), (old, "READY=1".to_string()));
    // A tunnel keeps the old process draining, so it runs on past the
    // new process's datagram.
    let (mut ws, _) = ws_connect(proxy.addr, "/ws", None).await.expect("ws");
    assert_eq!(echo(&mut ws, "before").await, "b1:before");

    proxy.signal("USR2");
    let (new, said) = next();
    assert_ne!(new, old);
    assert_eq!(said, format!("MAINPID={new}\nREADY=1"));
    assert!(running(old), "the old process still runs");
    assert_eq!(next(), (old, format!("MAINPID={new}")));
    assert_eq!(echo(&mut ws, "after").await, "b1:after");
    let code = tokio::task::block_in_place(|| proxy.proc.wait_exit());
    assert_eq!(code, Some(0), "the old process exits cleanly");
    served_only_by(&proxy, new).await;

    // Stopped by systemd (SIGTERM): the main process says so.
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &new.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert_eq!(next(), (new, "STOPPING=1".to_string()));
    eventually("the new process exits", || async { !running(new) }).await;
}
