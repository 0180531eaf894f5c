//! Choosing a backend: the one place that decides where a request goes.
//!
//! The request path asks twice: [`Wish::read`] once per request (what the
//! cookie, the hash key or nothing says; the cookie is opened once), then
//! [`select`] once per attempt with the backends already tried. The answer
//! is the backend and what to tell the client (a fresh `Set-Cookie` when
//! the client was pinned anew), or why there is none.
//!
//! The pool's `affinity` picks the strategy, a plain enum like sozu's
//! `LoadBalancingAlgorithm` rather than a trait:
//! * cookie ([`cookie`]): a valid cookie naming a backend that can take a
//!   pinned client wins (a drained one still can); otherwise the balancer
//!   picks and the client gets a new cookie, as rust-rpxy does;
//! * ip, header, query ([`hash`]): weighted rendezvous over the backends
//!   that may take new sessions; no key (header or query missing) falls
//!   back to the balancer;
//! * socketio ([`socketio`]): a request carrying an engine.io `sid` the
//!   pool's table knows goes to the backend that issued it, and gets
//!   engine.io's "session unknown" when that backend is gone; otherwise
//!   the cookie rules above (a table is per instance, a cookie is not);
//! * none: the balancer ([`balancer`]).
//!
//! [`pool`] holds the backends and their health, and the state these
//! strategies keep between requests.

pub mod balancer;
pub mod cookie;
pub mod hash;
pub mod pool;
pub mod socketio;

pub use pool::{ActiveGuard, AdminState, Backend, Pool, PoolError};

use http::header::{HeaderMap, COOKIE};
use http::Uri;
use limpet_config::Affinity;
use std::net::IpAddr;
use std::time::Instant;

/// How the backend was chosen, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Valid cookie, pinned backend available.
    Hit,
    /// No cookie: new session.
    New,
    /// Cookie forged, stale or naming an unknown backend.
    Invalid,
    /// Pinned backend down or unreachable: re-pinned.
    Down,
    /// Consistent hash on address, header or query.
    Hashed,
    /// No affinity (or no key to hash): balancer.
    Balanced,
    /// engine.io sid found in the session table.
    Sid,
}

impl Outcome {
    /// How many there are: [`Outcome::index`] is below it.
    pub const COUNT: usize = 7;

    /// Its place in a per-outcome array (`Pool::affinity`). A match, so
    /// that a new outcome must be given one here, next to [`Outcome::COUNT`].
    pub const fn index(self) -> usize {
        match self {
            Outcome::Hit => 0,
            Outcome::New => 1,
            Outcome::Invalid => 2,
            Outcome::Down => 3,
            Outcome::Hashed => 4,
            Outcome::Balanced => 5,
            Outcome::Sid => 6,
        }
    }

    /// Label of `limpet_proxy_affinity_total`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::New => "new",
            Outcome::Invalid => "invalid",
            Outcome::Down => "down",
            Outcome::Hashed => "hashed",
            Outcome::Balanced => "balanced",
            Outcome::Sid => "sid",
        }
    }
}

/// The backend for one attempt, and what the client is told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// Index into `Pool::backends`.
    pub index: usize,
    pub outcome: Outcome,
    /// `Set-Cookie` value to send with the response.
    pub set_cookie: Option<String>,
}

/// What a sticky cookie said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pinned {
    /// No cookie: a new session.
    Absent,
    /// Forged, sealed under another key, or naming a backend this pool
    /// no longer has.
    Unreadable,
    /// The backend it names (index into `Pool::backends`).
    Backend(usize),
}

/// What the session table said about a request's engine.io `sid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sid {
    /// The request carries none: a new session, or not engine.io.
    Absent,
    /// Carries one this instance does not know.
    Unknown,
    /// Issued by this backend (index into `Pool::backends`).
    Backend(usize),
    /// Issued by a backend this pool no longer has.
    Gone,
}

/// What a request says about where it wants to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wish {
    /// `affinity = "cookie"`.
    Cookie(Pinned),
    /// `affinity = "socketio"`: the sid, then the cookie. `handshake` is
    /// true for an engine.io polling request without a sid, whose answer
    /// names the new session.
    Session {
        sid: Sid,
        pinned: Pinned,
        handshake: bool,
    },
    /// Hashed affinity, with the key the request carried.
    Key(Vec<u8>),
    /// No affinity, or hashed affinity without a key.
    Any,
}

impl Wish {
    /// Reads the pool's affinity key from a request; `client` is the
    /// address `headers::client_ip` believes.
    pub fn read(pool: &Pool, headers: &HeaderMap, uri: &Uri, client: IpAddr) -> Wish {
        let cfg = &pool.config;
        let key = |k: Option<Vec<u8>>| k.map_or(Wish::Any, Wish::Key);
        let pinned = || {
            let cookies = headers
                .get_all(COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok());
            match cookie::find_cookie(cookies, &cfg.cookie.name) {
                None => Pinned::Absent,
                Some(value) => pool
                    .sealer
                    .open(value)
                    .and_then(|id| pool.index_of(&id))
                    .map_or(Pinned::Unreadable, Pinned::Backend),
            }
        };
        match cfg.affinity {
            Affinity::Cookie => Wish::Cookie(pinned()),
            Affinity::Socketio => {
                let query = uri.query();
                let sid = match (hash::query_param(query, "sid"), &pool.sids) {
                    (None, _) => Sid::Absent,
                    (Some(_), None) => Sid::Unknown,
                    (Some(sid), Some(table)) => match table.lookup(sid, Instant::now()) {
                        socketio::SidLookup::Unknown => Sid::Unknown,
                        socketio::SidLookup::Known(id) => {
                            pool.index_of(&id).map_or(Sid::Gone, Sid::Backend)
                        }
                    },
                };
                let handshake = sid == Sid::Absent
                    && hash::query_param(query, "EIO").is_some()
                    && hash::query_param(query, "transport") == Some("polling");
                Wish::Session {
                    sid,
                    pinned: pinned(),
                    handshake,
                }
            }
            Affinity::IpHash => Wish::Key(match client {
                IpAddr::V4(v4) => v4.octets().to_vec(),
                IpAddr::V6(v6) => v6.octets().to_vec(),
            }),
            Affinity::Header => {
                let name = cfg.affinity_key.as_deref().unwrap_or_default();
                key(headers
                    .get(name)
                    .map(|v| v.as_bytes().to_vec())
                    .filter(|v| !v.is_empty()))
            }
            Affinity::Query => {
                let name = cfg.affinity_key.as_deref().unwrap_or_default();
                key(hash::query_param(uri.query(), name).map(|v| v.as_bytes().to_vec()))
            }
            Affinity::None => Wish::Any,
        }
    }
}

/// Why no backend could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoBackend {
    /// Every candidate was tried for this request and failed.
    Unreachable,
    /// Some are up and ready but at `max_connections_per_backend`.
    AllFull,
    /// None is up (health checks, passive failures, drain or maint).
    NoneUp,
    /// The engine.io session's backend is down, in maint, removed or
    /// failed for this request: only it knows the session.
    SessionGone,
}

/// The backend for the next attempt of a request, never one in `tried`.
pub fn select(pool: &Pool, wish: &Wish, tried: &[usize]) -> Result<Choice, NoBackend> {
    let now = Instant::now();
    let candidates = balancer::candidates(pool, tried, now);
    let chosen = match wish {
        Wish::Key(key) => {
            let ranked = candidates
                .iter()
                .map(|&i| (i, pool.backends[i].id.as_str(), pool.backends[i].weight));
            hash::rendezvous(pool.config.hash_seed, key, ranked).map(|index| Choice {
                index,
                outcome: Outcome::Hashed,
                set_cookie: None,
            })
        }
        Wish::Cookie(pinned) => pick_pinned(pool, *pinned, tried, &candidates, now),
        Wish::Session {
            sid: Sid::Backend(i),
            ..
        } => {
            let max = pool.config.max_connections_per_backend;
            let b = &pool.backends[*i];
            if tried.contains(i) || !b.takes_pinned(now, 0) {
                return Err(NoBackend::SessionGone);
            }
            if !b.takes_pinned(now, max) {
                return Err(NoBackend::AllFull);
            }
            Some(Choice {
                index: *i,
                outcome: Outcome::Sid,
                set_cookie: None,
            })
        }
        Wish::Session { sid: Sid::Gone, .. } => return Err(NoBackend::SessionGone),
        Wish::Session { pinned, .. } => pick_pinned(pool, *pinned, tried, &candidates, now),
        Wish::Any => balancer::pick(pool, &candidates).map(|index| Choice {
            index,
            outcome: Outcome::Balanced,
            set_cookie: None,
        }),
    };
    chosen.ok_or_else(|| why_none(pool, tried, now))
}

/// Cookie affinity: the pinned backend if it can take the client, else
/// the balancer's pick and a fresh cookie naming it.
fn pick_pinned(
    pool: &Pool,
    pinned: Pinned,
    tried: &[usize],
    candidates: &[usize],
    now: Instant,
) -> Option<Choice> {
    let max = pool.config.max_connections_per_backend;
    let outcome = match pinned {
        Pinned::Backend(i) if !tried.contains(&i) && pool.backends[i].takes_pinned(now, max) => {
            return Some(Choice {
                index: i,
                outcome: Outcome::Hit,
                set_cookie: None,
            })
        }
        Pinned::Backend(_) => Outcome::Down,
        Pinned::Unreadable => Outcome::Invalid,
        Pinned::Absent => Outcome::New,
    };
    let index = balancer::pick(pool, candidates)?;
    let sealed = pool.sealer.seal(&pool.backends[index].id);
    Some(Choice {
        index,
        outcome,
        set_cookie: Some(cookie::set_cookie(&pool.config.cookie, &sealed)),
    })
}

fn why_none(pool: &Pool, tried: &[usize], now: Instant) -> NoBackend {
    if !tried.is_empty() {
        return NoBackend::Unreachable;
    }
    let max = pool.config.max_connections_per_backend;
    let full = pool.backends.iter().any(|b| {
        b.is_available(now) && b.admin_state() == AdminState::Ready && !b.takes_new(now, max)
    });
    if full {
        NoBackend::AllFull
    } else {
        NoBackend::NoneUp
    }
}

#[cfg(test)]
mod tests;
