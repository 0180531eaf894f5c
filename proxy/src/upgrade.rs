//! Binary upgrade, the old process's side: `SIGUSR2` or `POST
//! /api/upgrade` starts the binary at the path this process was started
//! from (the file there now: the new version) with the same arguments,
//! hands it the listening sockets (`handover`) and, once it serves, lets
//! `main` stop accepting and drain exactly as on `SIGTERM` (nginx's
//! `USR2` + `QUIT`, HAProxy's seamless reload, Envoy's hot restart).
//!
//! Lifecycle of one attempt, any step failing leaving this process
//! serving as before, with the reason logged and counted in
//! `limpet_proxy_binary_upgrades_total{outcome}`:
//!
//! 1. `claim`: one attempt at a time (`busy`), none after a handover,
//!    none as a systemd service's main process without a notify socket
//!    (`unsupported`, see `systemd_service_without_notify`); under
//!    `Type=notify` the new process becomes the main one (`notify`).
//! 2. `<exe> <args> --check` (like `nginx -t`): a config or certificate
//!    the new binary refuses stops here with its message (`check_failed`).
//! 3. A Unix socket in a fresh 0700 directory; the new process is started
//!    with its path in `LIMPET_PROXY_UPGRADE`. The first peer whose
//!    `SO_PEERCRED` pid is the child gets the sockets (`error` otherwise).
//! 4. The child answers `ready <pid>` within `shutdown.upgrade_timeout`
//!    (`ok`), or `error <reason>` (`refused`), or exits (`exited`), or
//!    says nothing in time (`timeout`; it is killed).
//! 5. `SIGTERM` during an attempt ends it (`stopping`) and kills the new
//!    process: whoever stops the proxy must not find a new one serving.
//!
//! The `--check` step exists so that the common failure, a config the new
//! binary rejects, comes back with its reason: the child itself reports
//! only what goes wrong once it has connected (binding a new address,
//! certificates), since the shared start-up crate exits on a bad config
//! before the proxy's code runs.

use crate::handover::{self, HandoverError, Socket};
use crate::live::Proxy;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UnixListener;
use tokio::sync::watch;

/// The environment variable naming the handover socket for a new process.
pub const ENV: &str = "LIMPET_PROXY_UPGRADE";

/// Why an upgrade did not happen; the text is what the log and `POST
/// /api/upgrade` say.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("an upgrade is already under way")]
    Busy,
    #[error("this process has already handed its listeners to pid {0}")]
    HandedOver(u32),
    #[error("running as the main process of a systemd service without $NOTIFY_SOCKET (Type=simple): systemd would stop the service when this process exits after the handover; make the unit Type=notify with NotifyAccess=all, as the packaged one is, or use `systemctl restart limpet-proxy`")]
    UnderSystemd,
    #[error("this process is stopping")]
    Stopping,
    #[error("the new binary refused the configuration: {0}")]
    Check(String),
    #[error("cannot start {}: {source}", .exe.display())]
    Spawn {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("handing over the listeners: {0}")]
    Handover(#[from] HandoverError),
    #[error("the new process exited ({0}) before it served; its own log lines say why")]
    Exited(ExitStatus),
    #[error("the new process gave up: {0}")]
    Refused(String),
    #[error("the new process did not report ready within {0:?}; killed it")]
    Timeout(Duration),
}

impl UpgradeError {
    /// The `outcome` label of `limpet_proxy_binary_upgrades_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            UpgradeError::Busy | UpgradeError::HandedOver(_) => "busy",
            UpgradeError::UnderSystemd => "unsupported",
            UpgradeError::Stopping => "stopping",
            UpgradeError::Check(_) => "check_failed",
            UpgradeError::Spawn { .. } | UpgradeError::Handover(_) => "error",
            UpgradeError::Exited(_) => "exited",
            UpgradeError::Refused(_) => "refused",
            UpgradeError::Timeout(_) => "timeout",
        }
    }
}

/// What an upgrade needs from the process as started.
pub struct Upgrader {
    /// The path this binary was started from.
    exe: PathBuf,
    /// The command line after the program name.
    args: Vec<OsString>,
    /// Copies of every listening socket, to hand over; `None` once this
    /// process stops, since a copy kept open would keep the port
    /// listening, and connections would queue where nobody accepts them.
    sockets: parking_lot::Mutex<Option<Arc<Vec<Socket>>>>,
    busy: AtomicBool,
    /// The new process's pid once it serves (0 before).
    successor: AtomicU32,
    handed_over: watch::Sender<Option<u32>>,
    /// Turns true when this process stops: an attempt under way ends.
    stopping: watch::Sender<bool>,
}

impl Upgrader {
    pub fn new(exe: PathBuf, args: Vec<OsString>, sockets: Vec<Socket>) -> Upgrader {
        Upgrader {
            exe,
            args,
            sockets: parking_lot::Mutex::new(Some(Arc::new(sockets))),
            busy: AtomicBool::new(false),
            successor: AtomicU32::new(0),
            handed_over: watch::channel(None).0,
            stopping: watch::channel(false).0,
        }
    }

    /// This process stops (SIGTERM): an attempt under way is abandoned and
    /// its new process killed, none starts; an operator who stops the
    /// proxy must not find a new one serving afterwards.
    pub fn stop(&self) {
        let _ = self.stopping.send(true);
        self.sockets.lock().take();
    }

    /// Turns `Some(pid)` once a new process serves: time to drain.
    pub fn handed_over(&self) -> watch::Receiver<Option<u32>> {
        self.handed_over.subscribe()
    }

    pub fn in_progress(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    /// Takes the one upgrade slot; a handover keeps it for good.
    fn claim(&self) -> Result<(), UpgradeError> {
        if *self.stopping.borrow() {
            return Err(UpgradeError::Stopping);
        }
        if systemd_service_without_notify() {
            return Err(UpgradeError::UnderSystemd);
        }
        match self.successor.load(Ordering::Acquire) {
            0 => {}
            pid => return Err(UpgradeError::HandedOver(pid)),
        }
        self.busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
            .map_err(|_| UpgradeError::Busy)
    }

    /// Runs one attempt to its end, logs and counts it; `Ok(new pid)`.
    /// Callers that may be cancelled (an HTTP request) run it in a task
    /// of its own, so a step is never left half done.
    pub async fn upgrade(self: Arc<Self>, proxy: Arc<Proxy>) -> Result<u32, UpgradeError> {
        let result = match self.claim() {
            Ok(()) => {
                tracing::info!(exe = %self.exe.display(), "binary upgrade: starting the new process");
                let started = Instant::now();
                let timeout = proxy.routing().config.shutdown.upgrade_timeout.get();
                let mut stopping = self.stopping.subscribe();
                let result = tokio::select! {
                    result = self.attempt(timeout) => result,
                    _ = stopping.wait_for(|s| *s) => Err(UpgradeError::Stopping),
                };
                if let Ok(pid) = result {
                    self.successor.store(pid, Ordering::Release);
                    // The new process said so itself; from the main
                    // process it counts under `NotifyAccess=main` too.
                    crate::notify::send(&format!("MAINPID={pid}"));
                    tracing::info!(
                        new_pid = pid,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "binary upgrade: the new process serves; this one stops accepting and drains"
                    );
                    let _ = self.handed_over.send(Some(pid));
                } else {
                    self.busy.store(false, Ordering::Release);
                }
                result
            }
            Err(e) => Err(e),
        };
        let outcome = result.as_ref().map_or_else(UpgradeError::outcome, |_| "ok");
        proxy
            .metrics
            .binary_upgrades
            .with_label_values(&[outcome])
            .inc();
        if let Err(e) = &result {
            tracing::error!(
                outcome,
                "binary upgrade refused, this process carries on: {e}"
            );
        }
        result
    }

    async fn attempt(&self, timeout: Duration) -> Result<u32, UpgradeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        self.check(deadline).await?;
        let dir = Scratch::create().map_err(HandoverError::from)?;
        let listener = UnixListener::bind(dir.socket()).map_err(HandoverError::from)?;
        let child = tokio::process::Command::new(&self.exe)
            .args(&self.args)
            .env(ENV, dir.socket())
            .stdin(Stdio::null())
            .spawn()
            .map_err(|source| UpgradeError::Spawn {
                exe: self.exe.clone(),
                source,
            })?;
        let pid = child.id().unwrap_or(0);
        let mut candidate = Candidate(Some(child));
        let talk = async {
            let mut stream = loop {
                let (stream, _) = listener.accept().await.map_err(HandoverError::from)?;
                // Only the child gets the sockets, whoever else can reach
                // the directory.
                match rustix::net::sockopt::socket_peercred(&stream) {
                    Ok(cred) if cred.pid.as_raw_nonzero().get() as u32 == pid => break stream,
                    _ => tracing::warn!(
                        "binary upgrade: a process other than the new one connected; ignored"
                    ),
                }
            };
            let sockets = self.sockets.lock().clone().ok_or(UpgradeError::Stopping)?;
            handover::send(&mut stream, &sockets).await?;
            tracing::info!(
                new_pid = pid,
                sockets = sockets.len(),
                "binary upgrade: listening sockets handed over"
            );
            let answer = handover::read_answer(&mut stream)
                .await
                .map_err(HandoverError::from)?;
            answer.map_err(UpgradeError::Refused)
        };
        let outcome = tokio::select! {
            answer = talk => answer,
            status = candidate.wait() => match status {
                Ok(status) => Err(UpgradeError::Exited(status)),
                Err(e) => Err(HandoverError::from(e).into()),
            },
            _ = tokio::time::sleep_until(deadline) => Err(UpgradeError::Timeout(timeout)),
        };
        match outcome {
            // It serves: it outlives this process.
            Ok(_) => drop(candidate.0.take()),
            Err(_) => candidate.kill().await,
        }
        outcome
    }

    /// `<exe> <args> --check`: the new binary's verdict on the config.
    async fn check(&self, deadline: tokio::time::Instant) -> Result<(), UpgradeError> {
        let run = tokio::process::Command::new(&self.exe)
            .args(&self.args)
            .arg("--check")
            .env_remove(ENV)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = match tokio::time::timeout_at(deadline, run).await {
            Ok(Ok(out)) => out,
            Ok(Err(source)) => {
                return Err(UpgradeError::Spawn {
                    exe: self.exe.clone(),
                    source,
                })
            }
            Err(_) => return Err(UpgradeError::Check("--check did not finish in time".into())),
        };
        if out.status.success() {
            return Ok(());
        }
        let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(UpgradeError::Check(if said.is_empty() {
            format!("--check failed ({})", out.status)
        } else {
            said
        }))
    }
}

/// The new process until it serves. Dropped any other way (an error, a
/// timeout, this process stopping mid-way), it is killed: a process that
/// is not serving must not keep the listening sockets.
struct Candidate(Option<tokio::process::Child>);

impl Candidate {
    async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        match &mut self.0 {
            Some(child) => child.wait().await,
            None => std::future::pending().await,
        }
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

impl Drop for Candidate {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            // tokio reaps it once it has exited.
            let _ = child.start_kill();
        }
    }
}

/// The path this process was started from, as it is named on disk, so
/// that an upgrade runs the file there now. `/proc/self/exe` itself would
/// run the old file, which a package upgrade has replaced.
pub fn own_path() -> std::io::Result<PathBuf> {
    std::env::current_exe().map(undeleted)
}

/// Linux names a running binary whose file was replaced `<path> (deleted)`.
fn undeleted(exe: PathBuf) -> PathBuf {
    match exe.to_string_lossy().strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    }
}

/// Whether this process is a service's main process started by systemd
/// without a notify socket: `SYSTEMD_EXEC_PID` (systemd 248 on, system
/// and user managers) names this very process, or, for older systemd,
/// it has `INVOCATION_ID` and its parent is pid 1. A `Type=simple` unit
/// stops when its main process exits, killing the new process with it, so
/// an upgrade there would take the service down instead of keeping it up
/// (seen under a `systemd --user` manager, whose pid is not 1); under
/// `Type=notify` (`$NOTIFY_SOCKET` set) the new process tells systemd it
/// is the main process first, and the upgrade may go ahead. (A shell
/// started from a service inherits both variables, but it is not the pid
/// `SYSTEMD_EXEC_PID` names, and its parent is not pid 1.)
fn systemd_service_without_notify() -> bool {
    let exec_pid = std::env::var("SYSTEMD_EXEC_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok());
    refused_under_systemd(
        exec_pid == Some(std::process::id()),
        std::env::var_os("INVOCATION_ID").is_some() && std::os::unix::process::parent_id() == 1,
        crate::notify::enabled(),
    )
}

fn refused_under_systemd(exec_pid_is_own: bool, invoked_by_pid1: bool, notify: bool) -> bool {
    (exec_pid_is_own || invoked_by_pid1) && !notify
}

/// A private directory for the handover socket, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn create() -> std::io::Result<Scratch> {
        use std::os::unix::fs::DirBuilderExt;
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "limpet-proxy-upgrade-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        // A leftover of a killed earlier process with our pid.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(Scratch(dir))
    }

    fn socket(&self) -> PathBuf {
        self.0.join("handover.sock")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The handover socket a new process was told to take its listeners from.
pub fn inherited_from_env() -> Option<PathBuf> {
    std::env::var_os(ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .filter(|p| Path::new(p).is_absolute())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_attempt_at_a_time_and_none_after_a_handover() {
        let up = Upgrader::new(PathBuf::from("/nonexistent"), Vec::new(), Vec::new());
        assert!(up.claim().is_ok());
        assert!(matches!(up.claim(), Err(UpgradeError::Busy)));
        up.busy.store(false, Ordering::Release);
        assert!(up.claim().is_ok());
        up.successor.store(4242, Ordering::Release);
        up.busy.store(false, Ordering::Release);
        assert!(matches!(up.claim(), Err(UpgradeError::HandedOver(4242))));
    }

    #[test]
    fn refused_only_as_a_service_main_process_without_a_notify_socket() {
        // systemd >= 248 (system or user manager), and older system ones.
        assert!(refused_under_systemd(true, false, false));
        assert!(refused_under_systemd(false, true, false));
        // Type=notify: the new process becomes the main one.
        assert!(!refused_under_systemd(true, true, true));
        // A shell of a terminal a service started, or no systemd at all.
        assert!(!refused_under_systemd(false, false, false));
    }

    #[test]
    fn a_replaced_binary_is_run_from_its_path() {
        let path = |s: &str| PathBuf::from(s);
        assert_eq!(
            undeleted(path("/usr/bin/limpet-proxy (deleted)")),
            path("/usr/bin/limpet-proxy")
        );
        assert_eq!(
            undeleted(path("/usr/bin/limpet-proxy")),
            path("/usr/bin/limpet-proxy")
        );
    }
}
