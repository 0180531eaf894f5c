//! What a failed `AUTH` costs the guesser, and the log line it writes.
//!
//! A guesser may pipeline thousands of `AUTH` commands on one connection or
//! spread them over many. So failures are remembered per address (IPv6
//! per /64, which one host usually owns): each failed attempt's reply is
//! held back for a delay that doubles with every earlier failure from that
//! address, the connection runs nothing else meanwhile, and it is closed
//! after a few failures. Once an address has recent failures, every `AUTH`
//! from it is held back as long as a failure would be, the right password
//! too: otherwise a guesser on fresh connections would read "no reply
//! within one round trip" as "wrong" and never wait out the delay. The table of addresses is bounded
//! (`auth_failures.max_addresses`): past it the stalest address is
//! forgotten, so a guesser with many addresses costs memory it cannot grow.
//!
//! The WARN line for a failure is written at most once per second, with
//! the number of failures it stands for, so guessing cannot fill the disk.

use ahash::AHashMap;
use limpet_config::BrokerConfig;
use parking_lot::Mutex;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// One line per this long, at most.
const LOG_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// `[auth_failures]`, in std types.
#[derive(Debug, Clone, Copy)]
struct Settings {
    max_per_connection: u32,
    delay: Duration,
    max_delay: Duration,
    forget_after: Duration,
    max_addresses: usize,
}

pub struct AuthGuard {
    config: Settings,
    addresses: Mutex<AHashMap<IpAddr, Failures>>,
    clock: Instant,
    /// Milliseconds since `clock` when the last WARN line was written, plus one.
    logged_at: AtomicU64,
    /// Failures not logged since that line.
    unlogged: AtomicU64,
}

impl AuthGuard {
    pub fn new(config: &BrokerConfig) -> AuthGuard {
        let a = &config.auth_failures;
        AuthGuard {
            config: Settings {
                max_per_connection: a.max_per_connection,
                delay: a.delay.get(),
                max_delay: a.max_delay.get(),
                forget_after: a.forget_after.get(),
                max_addresses: a.max_addresses,
            },
            addresses: Mutex::new(AHashMap::new()),
            clock: Instant::now(),
            logged_at: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
        }
    }

    pub fn max_per_connection(&self) -> u32 {
        self.config.max_per_connection
    }

    /// Records a failure from `ip` and returns how long to hold its reply.
    pub fn failed(&self, ip: IpAddr) -> Duration {
        let key = address_key(ip);
        let now = Instant::now();
        let forget = self.config.forget_after;
        let mut map = self.addresses.lock();
        if !map.contains_key(&key) && map.len() >= self.config.max_addresses {
            map.retain(|_, f| now.duration_since(f.last) < forget);
            if map.len() >= self.config.max_addresses {
                let stalest = map.iter().min_by_key(|(_, f)| f.last).map(|(k, _)| *k);
                if let Some(k) = stalest {
                    map.remove(&k);
                }
            }
        }
        let entry = map.entry(key).or_insert(Failures {
            count: 0,
            last: now,
        });
        if now.duration_since(entry.last) >= forget {
            entry.count = 0;
        }
        let earlier = entry.count;
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        drop(map);
        self.delay_after(earlier)
    }

    /// How long to hold any `AUTH` reply to `ip` now: what its next failure
    /// would cost, or zero when it has no recent failures. Applied to a
    /// right password too, so the reply's timing tells nothing until the
    /// hold is over; bounded by `max_delay` like every hold.
    pub fn pending(&self, ip: IpAddr) -> Duration {
        let key = address_key(ip);
        let map = self.addresses.lock();
        match map.get(&key) {
            Some(f) if f.count > 0 && f.last.elapsed() < self.config.forget_after => {
                self.delay_after(f.count)
            }
            _ => Duration::ZERO,
        }
    }

    /// The hold for a failure that follows `earlier` ones.
    fn delay_after(&self, earlier: u32) -> Duration {
        self.config
            .delay
            .checked_mul(1u32 << earlier.min(31))
            .unwrap_or(Duration::MAX)
            .min(self.config.max_delay)
    }

    /// Addresses remembered now.
    pub fn tracked(&self) -> usize {
        self.addresses.lock().len()
    }

    /// Whether a failure may be logged now; if so, how many failures since
    /// the previous line went unlogged.
    pub fn may_log(&self) -> Option<u64> {
        let now = self.clock.elapsed().as_millis() as u64 + 1;
        let last = self.logged_at.load(Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64;
        if due
            && self
                .logged_at
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            Some(self.unlogged.swap(0, Relaxed))
        } else {
            self.unlogged.fetch_add(1, Relaxed);
            None
        }
    }
}

/// IPv4 as is (also when mapped into IPv6); IPv6 by its /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let seg = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(
                    seg[0], seg[1], seg[2], seg[3], 0, 0, 0, 0,
                ))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(max_addresses: usize) -> AuthGuard {
        let mut config = BrokerConfig::default();
        config.auth_failures.max_addresses = max_addresses;
        AuthGuard::new(&config)
    }

    #[test]
    fn delay_doubles_per_address_up_to_the_cap() {
        let g = guard(10);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let got: Vec<u128> = (0..9).map(|_| g.failed(a).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
        assert_eq!(
            g.failed(b).as_millis(),
            100,
            "another address starts afresh"
        );
        for _ in 0..100 {
            g.failed(a);
        }
        assert_eq!(g.failed(a).as_millis(), 10_000, "no overflow");
    }

    #[test]
    fn ipv6_counts_per_64_and_the_table_is_bounded() {
        let g = guard(3);
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        g.failed(one);
        assert_eq!(g.failed(same64).as_millis(), 200);
        for i in 0..1000u32 {
            g.failed(IpAddr::V4(i.into()));
            assert!(g.tracked() <= 3);
        }
    }

    #[test]
    fn pending_hold_is_what_the_next_failure_would_cost() {
        let g = guard(10);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(g.pending(a), Duration::ZERO, "no failures, no hold");
        g.failed(a);
        assert_eq!(g.pending(a).as_millis(), 200);
        assert_eq!(g.failed(a).as_millis(), 200);
        for _ in 0..40 {
            g.failed(a);
        }
        assert_eq!(g.pending(a).as_millis(), 10_000, "bounded by max_delay");
    }

    #[test]
    fn log_lines_are_rate_limited() {
        let g = guard(3);
        assert_eq!(g.may_log(), Some(0));
        for _ in 0..1000 {
            assert_eq!(g.may_log(), None);
        }
    }
}
