//! The threads that serve client connections: one single-threaded tokio
//! runtime per thread, each connection pinned to one of them for its
//! whole life.
//!
//! On tokio's shared work-stealing runtime a connection's task, the
//! pooled backend connection's task and the timers they wake can run on
//! different threads, and a wake-up that crosses threads costs a futex
//! call and a context switch. Plain keep-alive requests pay that on every
//! request: with two worker threads the proxy spent 27.7-31.5 µs of CPU
//! per request, with one 24.2-27.0 µs (wrk, 50 connections, same sitting).
//! Here everything one connection does, its upstream connections
//! included, happens on one thread, as in nginx's worker processes: idle
//! backend connections are pooled per thread ([`current`]), so a request
//! reuses one driven by its own thread. The accept loops, health checks
//! and the admin API stay on the main runtime. A connection crosses
//! threads once, when it is handed over after accept, and never moves
//! after: as with nginx's workers, a thread busy with a burst of TLS
//! handshakes or one hot connection delays the others dealt to it.

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use tokio::runtime::Handle;

thread_local! {
    /// Which connection thread this is; 0 on any other thread.
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The index of the connection thread running the caller (0 elsewhere):
/// what is kept per thread, such as idle backend connections, is kept
/// under it.
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// The connection threads; cloning shares them.
#[derive(Clone)]
pub struct Cores {
    handles: Arc<[Handle]>,
    next: Arc<AtomicUsize>,
}

impl Cores {
    /// Starts `n` threads (at least one), each running a single-threaded
    /// runtime until the process exits.
    pub fn start(n: usize) -> io::Result<Cores> {
        let mut handles = Vec::new();
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            std::thread::Builder::new()
                .name(format!("limpet-core-{i}"))
                .spawn(move || {
                    INDEX.with(|c| c.set(i));
                    rt.block_on(std::future::pending::<()>())
                })?;
        }
        Ok(Cores {
            handles: handles.into(),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// As many threads as `TOKIO_WORKER_THREADS` says (the variable tokio
    /// itself reads), else one per CPU.
    pub fn threads_wanted() -> usize {
        std::env::var("TOKIO_WORKER_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// The thread for the next connection, in turn.
    pub fn pick(&self) -> &Handle {
        let i = self.next.fetch_add(1, Relaxed) % self.handles.len();
        &self.handles[i]
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_dealt_in_turn_and_run_on_their_thread() {
        let cores = Cores::start(2).unwrap();
        assert_eq!(cores.len(), 2);
        let names: Vec<String> = (0..4)
            .map(|_| {
                let (tx, rx) = std::sync::mpsc::channel();
                cores.pick().spawn(async move {
                    let name = std::thread::current().name().map(str::to_string);
                    let _ = tx.send(format!("{} {}", name.unwrap_or_default(), current()));
                });
                rx.recv().unwrap()
            })
            .collect();
        assert_eq!(
            names,
            [
                "limpet-core-0 0",
                "limpet-core-1 1",
                "limpet-core-0 0",
                "limpet-core-1 1"
            ]
        );
    }
}
