//! Limits per client address: how many sockets one address may hold open,
//! and one message bucket shared by all of them.
//!
//! Per-socket limits alone let one client multiply its allowance by
//! opening more sockets (50 sockets got 10,000 acks through). The client
//! address is the TCP peer, or, when that peer is a configured trusted
//! proxy, the rightmost `X-Forwarded-For` hop that is not itself trusted
//! (nginx's `real_ip_recursive on`). IPv6 clients are grouped by /64, the
//! block one subscriber usually gets.
//!
//! The table of addresses is itself bounded (`limits.max_tracked_addresses`):
//! an entry lives while its address has sockets, and afterwards only until
//! room is needed, so a client cannot reset its bucket by reconnecting
//! while the table has space, and many addresses cannot grow it without end.

use crate::bucket::Bucket;
use limpet_config::{Cidr, NodeLimits};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

/// Why a connection from an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("too many connections from this address")]
    TooManyConnections,
    #[error("too many client addresses tracked")]
    TooManyAddresses,
}

struct Entry {
    sockets: usize,
    bucket: Arc<Mutex<Bucket>>,
}

pub struct Addresses {
    table: Mutex<HashMap<IpAddr, Entry>>,
    max_sockets: usize,
    max_addresses: usize,
    rate: u32,
    burst: u32,
}

/// One admitted socket's share of its address: the shared bucket, and
/// the socket count given back on drop.
pub struct Admission {
    addresses: Arc<Addresses>,
    key: IpAddr,
    bucket: Arc<Mutex<Bucket>>,
}

impl Admission {
    /// Takes one message from the address's bucket.
    pub fn take(&self) -> bool {
        self.bucket.lock().take()
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut table = self.addresses.table.lock();
        if let Some(e) = table.get_mut(&self.key) {
            e.sockets = e.sockets.saturating_sub(1);
        }
    }
}

/// The key an address is counted under: IPv4 (also when IPv4-mapped) as
/// is, IPv6 by its /64.
pub fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The client's address: `peer`, unless `peer` is a trusted proxy, then the
/// rightmost `X-Forwarded-For` hop that is not trusted (or the leftmost
/// hop if all are). A malformed hop ends the walk at the last good one.
pub fn client_ip(peer: IpAddr, forwarded: &[&str], trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    let mut client = peer;
    if !is_trusted(peer) {
        return client;
    }
    let hops = forwarded.iter().flat_map(|h| h.split(',')).rev();
    for hop in hops {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            break;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

impl Addresses {
    pub fn new(limits: &NodeLimits) -> Arc<Addresses> {
        Arc::new(Addresses {
            table: Mutex::new(HashMap::new()),
            max_sockets: limits.max_connections_per_address,
            max_addresses: limits.max_tracked_addresses,
            rate: limits.address_rate_per_second,
            burst: limits.address_rate_burst,
        })
    }

    /// Counts one more socket from `ip`, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Refusal> {
        let key = key(ip);
        let mut table = self.table.lock();
        if !table.contains_key(&key) && table.len() >= self.max_addresses {
            // Make room: forget addresses without sockets.
            table.retain(|_, e| e.sockets > 0);
            if table.len() >= self.max_addresses {
                return Err(Refusal::TooManyAddresses);
            }
        }
        let entry = table.entry(key).or_insert_with(|| Entry {
            sockets: 0,
            bucket: Arc::new(Mutex::new(Bucket::new(self.rate, self.burst))),
        });
        if entry.sockets >= self.max_sockets {
            return Err(Refusal::TooManyConnections);
        }
        entry.sockets += 1;
        Ok(Admission {
            addresses: self.clone(),
            key,
            bucket: entry.bucket.clone(),
        })
    }

    /// Addresses tracked now.
    pub fn len(&self) -> usize {
        self.table.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let trusted = vec![
            Cidr::parse("127.0.0.1").unwrap(),
            Cidr::parse("10.0.0.0/8").unwrap(),
        ];
        let xff = ["203.0.113.9, 198.51.100.7", "10.1.2.3"];
        assert_eq!(client_ip(ip("192.0.2.1"), &xff, &trusted), ip("192.0.2.1"));
        assert_eq!(
            client_ip(ip("127.0.0.1"), &xff, &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(client_ip(ip("127.0.0.1"), &[], &trusted), ip("127.0.0.1"));
        assert_eq!(
            client_ip(ip("127.0.0.1"), &["junk, 10.0.0.5"], &trusted),
            ip("10.0.0.5")
        );
        assert_eq!(client_ip(ip("127.0.0.1"), &xff, &[]), ip("127.0.0.1"));
    }

    #[test]
    fn sockets_per_address_and_the_table_are_bounded() {
        let limits = NodeLimits {
            max_connections_per_address: 2,
            max_tracked_addresses: 2,
            ..NodeLimits::default()
        };
        let a = Addresses::new(&limits);
        let one = a.admit(ip("192.0.2.1")).unwrap();
        let two = a.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(
            a.admit(ip("192.0.2.1")).err(),
            Some(Refusal::TooManyConnections)
        );
        let _v6 = a.admit(ip("2001:db8::1")).unwrap();
        // The same /64 is the same client.
        assert!(a.admit(ip("2001:db8::2")).is_ok());
        assert_eq!(
            a.admit(ip("192.0.2.3")).err(),
            Some(Refusal::TooManyAddresses)
        );
        drop((one, two));
        assert!(a.admit(ip("192.0.2.3")).is_ok(), "idle entries make room");
        assert_eq!(a.len(), 2);
    }
}
