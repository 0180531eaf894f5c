//! How long and how hard each scenario runs: the full run, or `--quick`
//! (about a minute) for checking that the harness still works.

pub(crate) struct Sizes {
    pub(crate) repeat: usize,
    pub(crate) single_secs: u64,
    pub(crate) many_conns: usize,
    pub(crate) many_secs: u64,
    pub(crate) idle_conns: usize,
    pub(crate) wrk_secs: u64,
    pub(crate) publish_n: usize,
    pub(crate) fanout_msgs: usize,
    pub(crate) wide_channels: usize,
    /// Publishes in the wide fan-out (spread over `wide_channels`).
    pub(crate) wide_msgs: usize,
    /// Scenario 6: wss echo connections, seconds per measurement,
    /// closed-loop handshaking clients, and returning clients taking turns.
    pub(crate) tls_conns: usize,
    pub(crate) tls_secs: u64,
    pub(crate) handshakers: usize,
    pub(crate) returning_clients: usize,
}

impl Sizes {
    pub(crate) fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                repeat: 1,
                single_secs: 2,
                many_conns: 100,
                many_secs: 2,
                idle_conns: 1000,
                wrk_secs: 2,
                publish_n: 200_000,
                fanout_msgs: 5_000,
                wide_channels: 100,
                wide_msgs: 20_000,
                tls_conns: 100,
                tls_secs: 2,
                handshakers: 16,
                returning_clients: 1000,
            }
        } else {
            Sizes {
                repeat: 3,
                single_secs: 4,
                many_conns: 1000,
                many_secs: 5,
                idle_conns: 9000,
                wrk_secs: 5,
                publish_n: 1_000_000,
                fanout_msgs: 100_000,
                wide_channels: 1000,
                wide_msgs: 200_000,
                tls_conns: 200,
                tls_secs: 5,
                handshakers: 32,
                returning_clients: 1000,
            }
        }
    }
}
