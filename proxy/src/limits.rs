//! Client connection counts: all open connections (`limits.max_connections`)
//! and those per client address (`limits.max_connections_per_ip`).
//!
//! A connection holds a [`Slot`] from accept to close; dropping it gives
//! back both counts, so no path out of a connection (an error, a refusal, a
//! task cancelled at shutdown) can leak one. The counts live apart from the
//! proxy's other state so the slot needs nothing else to release them.

use parking_lot::Mutex;
use prometheus::IntGauge;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// Open client connections, in total and per address.
pub struct Connections {
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// `limpet_proxy_open_connections`.
    gauge: IntGauge,
}

impl Connections {
    pub fn new(gauge: IntGauge) -> Connections {
        Connections {
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            gauge,
        }
    }

    pub fn open(&self) -> usize {
        self.open.load(Relaxed)
    }

    /// A slot for a new connection, or `None` when `max` (0: no limit) are
    /// open already.
    pub fn admit(self: &Arc<Self>, max: usize) -> Option<Slot> {
        if max > 0 && self.open.load(Relaxed) >= max {
            return None;
        }
        self.open.fetch_add(1, Relaxed);
        self.gauge.inc();
        Some(Slot {
            conns: self.clone(),
            ip: None,
        })
    }
}

/// A connection's slot, shared by its requests: an upgraded request
/// hands a clone to its tunnel, so the slot is held until the tunnel ends
/// (hyper lets go of the connection when the upgrade completes; without
/// this an open tunnel counted against no limit).
#[derive(Clone)]
pub struct SharedSlot(pub std::sync::Arc<Slot>);

/// One admitted connection; dropping it releases its counts.
pub struct Slot {
    conns: Arc<Connections>,
    ip: Option<IpAddr>,
}

impl Slot {
    /// Counts this connection against its client address (known only once
    /// a PROXY header is read); false when that address is over `max`.
    pub fn count_address(&mut self, ip: IpAddr, max: usize) -> bool {
        let n = {
            let mut map = self.conns.per_ip.lock();
            let n = map.entry(ip).or_insert(0);
            *n += 1;
            *n
        };
        self.ip = Some(ip);
        n <= max
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.conns.open.fetch_sub(1, Relaxed);
        self.conns.gauge.dec();
        if let Some(ip) = self.ip {
            let mut map = self.conns.per_ip.lock();
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_and_give_back() {
        let conns = Arc::new(Connections::new(IntGauge::new("g", "g").unwrap()));
        let a = conns.admit(2).expect("first");
        let mut b = conns.admit(2).expect("second");
        assert!(conns.admit(2).is_none(), "max_connections");
        assert_eq!(conns.open(), 2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(b.count_address(ip, 1));
        let mut c = conns.admit(0).expect("0 is no limit");
        assert!(!c.count_address(ip, 1), "max_connections_per_ip");
        drop((a, b, c));
        assert_eq!(conns.open(), 0);
        assert_eq!(conns.gauge.get(), 0);
        assert!(conns.per_ip.lock().is_empty());
    }
}
