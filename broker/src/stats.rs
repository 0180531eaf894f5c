//! Per-command and per-error counts: INFO `commandstats`, `errorstats`
//! and `total_error_replies`, and the `limpet_broker_error_replies_total`
//! metric.
//!
//! A connection counts into its own [`BatchCommandStats`] while it runs a
//! batch of requests and merges them into the shared [`CommandStats`] once
//! per batch, so a pipeline of many commands takes the shared lock once,
//! not once per command. Both maps are bounded: command names come from
//! the static table, error codes are the first word of the broker's own
//! error replies (a fixed set: ERR, WRONGTYPE, NOAUTH, ...).

use ahash::AHashMap;
use parking_lot::Mutex;
use std::fmt::Write;

#[derive(Debug, Default, Clone, Copy)]
pub struct CmdStat {
    pub calls: u64,
    pub usec: u64,
    pub rejected: u64,
    pub failed: u64,
}

/// What one connection counted during one batch.
#[derive(Debug, Default)]
pub struct BatchCommandStats {
    commands: AHashMap<&'static str, CmdStat>,
    errors: AHashMap<&'static str, u64>,
    error_replies: u64,
}

/// Error codes the broker replies with; anything else counts as `ERR`.
const CODES: &[&str] = &[
    "ERR",
    "WRONGTYPE",
    "NOAUTH",
    "WRONGPASS",
    "NOPROTO",
    "EXECABORT",
    "OOM",
];

impl BatchCommandStats {
    /// Records one command: `name` is what dispatch resolved (None for an
    /// unknown command), `error` the reply's error code if it was an error.
    pub fn record(
        &mut self,
        name: Option<&'static str>,
        usec: u64,
        rejected: bool,
        error: Option<&[u8]>,
    ) {
        if let Some(name) = name {
            let st = self.commands.entry(name).or_default();
            if rejected {
                st.rejected += 1;
            } else {
                st.calls += 1;
                st.usec += usec;
                if error.is_some() {
                    st.failed += 1;
                }
            }
        }
        if let Some(code) = error {
            self.note_error(code);
        }
    }

    /// Counts an error reply that no command produced (protocol errors).
    pub fn note_error(&mut self, code: &[u8]) {
        let code = CODES
            .iter()
            .find(|c| c.as_bytes() == code)
            .copied()
            .unwrap_or("ERR");
        *self.errors.entry(code).or_default() += 1;
        self.error_replies += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty() && self.errors.is_empty()
    }
}

/// The first word of an error reply (the bytes after `-`).
pub fn error_code(reply: &[u8]) -> &[u8] {
    let end = reply
        .iter()
        .position(|&b| b == b' ' || b == b'\r')
        .unwrap_or(reply.len());
    &reply[..end]
}

#[derive(Default)]
pub struct CommandStats {
    inner: Mutex<BatchCommandStats>,
}

impl CommandStats {
    /// Adds a batch's counts; returns how many error replies it had.
    pub fn merge(&self, batch: &mut BatchCommandStats) -> u64 {
        let batch = std::mem::take(batch);
        let mut all = self.inner.lock();
        for (name, st) in batch.commands {
            let t = all.commands.entry(name).or_default();
            t.calls += st.calls;
            t.usec += st.usec;
            t.rejected += st.rejected;
            t.failed += st.failed;
        }
        for (code, n) in batch.errors {
            *all.errors.entry(code).or_default() += n;
        }
        all.error_replies += batch.error_replies;
        batch.error_replies
    }

    pub fn total_error_replies(&self) -> u64 {
        self.inner.lock().error_replies
    }

    /// INFO commandstats lines, in Redis's format.
    pub fn commandstats(&self) -> String {
        let all = self.inner.lock();
        let mut names: Vec<_> = all.commands.iter().collect();
        names.sort_by_key(|(n, _)| **n);
        let mut out = String::new();
        for (name, st) in names {
            let per_call = if st.calls > 0 {
                st.usec as f64 / st.calls as f64
            } else {
                0.0
            };
            let _ = write!(
                out,
                "cmdstat_{name}:calls={},usec={},usec_per_call={per_call:.2},rejected_calls={},failed_calls={}\r\n",
                st.calls, st.usec, st.rejected, st.failed
            );
        }
        out
    }

    /// INFO errorstats lines, in Redis's format.
    pub fn errorstats(&self) -> String {
        let all = self.inner.lock();
        let mut codes: Vec<_> = all.errors.iter().collect();
        codes.sort_by_key(|(c, _)| **c);
        let mut out = String::new();
        for (code, n) in codes {
            let _ = write!(out, "errorstat_{code}:count={n}\r\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_calls_failures_rejections_and_codes() {
        let stats = CommandStats::default();
        let mut b = BatchCommandStats::default();
        b.record(Some("get"), 3, false, None);
        b.record(Some("get"), 5, false, Some(b"WRONGTYPE"));
        b.record(Some("set"), 0, true, Some(b"ERR"));
        b.record(None, 0, false, Some(b"ERR"));
        assert_eq!(stats.merge(&mut b), 3);
        assert!(b.is_empty());
        assert_eq!(
            stats.commandstats(),
            "cmdstat_get:calls=2,usec=8,usec_per_call=4.00,rejected_calls=0,failed_calls=1\r\n\
             cmdstat_set:calls=0,usec=0,usec_per_call=0.00,rejected_calls=1,failed_calls=0\r\n"
        );
        assert_eq!(
            stats.errorstats(),
            "errorstat_ERR:count=2\r\nerrorstat_WRONGTYPE:count=1\r\n"
        );
        assert_eq!(error_code(b"ERR syntax error\r\n"), b"ERR");
        assert_eq!(stats.total_error_replies(), 3);
    }
}
