//! The balancers, for a session no cookie or hash key decides: least
//! connections, round robin, smooth weighted round robin (the pool's
//! `balancer`, a plain enum from the config, is the whole interface).
//! Only backends that are available and not already tried for this
//! request are candidates.

use super::pool::Pool;
use limpet_config::Balancer;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

/// Indexes of the backends that may take a new session.
pub fn candidates(pool: &Pool, tried: &[usize], now: Instant) -> Vec<usize> {
    let max = pool.config.max_connections_per_backend;
    (0..pool.backends.len())
        .filter(|i| !tried.contains(i) && pool.backends[*i].takes_new(now, max))
        .collect()
}

pub fn pick(pool: &Pool, candidates: &[usize]) -> Option<usize> {
    if candidates.is_empty() {
        return None;
    }
    match pool.config.balancer {
        Balancer::RoundRobin => {
            let n = pool.next.fetch_add(1, Relaxed);
            Some(candidates[n % candidates.len()])
        }
        Balancer::LeastConn => {
            // Fewest active relative to weight; ties broken round-robin so an
            // idle pool still spreads new sessions.
            let start = pool.next.fetch_add(1, Relaxed);
            let mut best: Option<(u64, usize)> = None;
            for k in 0..candidates.len() {
                let i = candidates[(start + k) % candidates.len()];
                let b = &pool.backends[i];
                // active/weight in thousandths: plain integer division would
                // rank 1 active on weight 3 (1/3 = 0) level with an idle backend.
                let load = (b.active.load(Relaxed) as u64 * 1000) / u64::from(b.weight);
                if best.is_none_or(|(l, _)| load < l) {
                    best = Some((load, i));
                }
            }
            best.map(|(_, i)| i)
        }
        Balancer::Weighted => {
            // nginx's smooth weighted round robin: add each weight to its
            // current value, pick the largest, subtract the total from it.
            let mut current = pool.current_weights.lock();
            let total: i64 = candidates
                .iter()
                .map(|&i| i64::from(pool.backends[i].weight))
                .sum();
            let mut best: Option<usize> = None;
            for &i in candidates {
                current[i] += i64::from(pool.backends[i].weight);
                if best.is_none_or(|b| current[i] > current[b]) {
                    best = Some(i);
                }
            }
            let chosen = best?;
            current[chosen] -= total;
            Some(chosen)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(balancer: Balancer, weights: &[u32]) -> Pool {
        let name = match balancer {
            Balancer::RoundRobin => "round_robin",
            Balancer::LeastConn => "least_conn",
            Balancer::Weighted => "weighted",
        };
        Pool::for_test(&format!("balancer = \"{name}\""), weights)
    }

    fn run(p: &Pool, n: usize) -> Vec<usize> {
        let now = Instant::now();
        (0..n)
            .map(|_| pick(p, &candidates(p, &[], now)).unwrap())
            .collect()
    }

    #[test]
    fn round_robin_cycles() {
        let p = pool(Balancer::RoundRobin, &[1, 1, 1]);
        assert_eq!(run(&p, 6), vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn smooth_weighted_matches_nginx() {
        // nginx's documented sequence for weights 5,1,1: a a b a c a a.
        let p = pool(Balancer::Weighted, &[5, 1, 1]);
        assert_eq!(run(&p, 7), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn least_conn_prefers_the_idle_backend() {
        let p = pool(Balancer::LeastConn, &[1, 1, 1]);
        p.backends[0].active.store(5, Relaxed);
        p.backends[2].active.store(1, Relaxed);
        assert_eq!(run(&p, 3), vec![1, 1, 1]);
        // Weight counts: 4 active on weight 4 beats 2 active on weight 1.
        let p = pool(Balancer::LeastConn, &[4, 1]);
        p.backends[0].active.store(4, Relaxed);
        p.backends[1].active.store(2, Relaxed);
        assert_eq!(run(&p, 1), vec![0]);
    }

    #[test]
    fn tried_and_unavailable_backends_are_skipped() {
        let p = pool(Balancer::RoundRobin, &[1, 1, 1]);
        let now = Instant::now();
        p.backends[1].set_healthy(false);
        assert_eq!(candidates(&p, &[0], now), vec![2]);
        assert_eq!(candidates(&p, &[0, 2], now), Vec::<usize>::new());
        assert_eq!(pick(&p, &[]), None);
    }

    #[test]
    fn drain_and_maint_take_no_new_sessions() {
        use super::super::pool::AdminState;
        let p = pool(Balancer::RoundRobin, &[1, 1, 1]);
        let now = Instant::now();
        p.backends[0].set_admin_state(AdminState::Drain);
        p.backends[1].set_admin_state(AdminState::Maint);
        assert_eq!(candidates(&p, &[], now), vec![2]);
        assert!(
            p.backends[0].takes_pinned(now, 0),
            "drain keeps pinned clients"
        );
        assert!(!p.backends[1].takes_pinned(now, 0), "maint does not");
        p.backends[2].active.store(3, Relaxed);
        assert!(
            !p.backends[2].takes_new(now, 3),
            "max_connections_per_backend"
        );
    }

    #[test]
    fn passive_failures_take_a_backend_out_for_fail_timeout() {
        let p = pool(Balancer::RoundRobin, &[1]);
        let b = &p.backends[0];
        let now = Instant::now();
        assert!(b.record_failure(&p.config, now), "max_fails = 1 by default");
        assert!(!b.is_available(now));
        assert!(b.is_available(now + std::time::Duration::from_secs(11)));
    }

    #[test]
    fn a_success_does_not_end_a_take_out_early() {
        let p = pool(Balancer::RoundRobin, &[1]);
        let b = &p.backends[0];
        let now = Instant::now();
        assert!(b.record_failure(&p.config, now));
        // A request that was in flight before the take-out answers well.
        b.record_success();
        assert!(!b.is_available(now), "still out for fail_timeout");
        assert!(b.is_available(now + std::time::Duration::from_secs(11)));
    }
}
