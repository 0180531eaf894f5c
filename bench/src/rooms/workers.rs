//! The room load's worker processes: `limpet-bench room-worker` holds a
//! share of the clients and takes its steps as lines on stdin, and
//! [`Workers`] starts them, hands each step to all of them at once and
//! merges what they report. Split off so the population can pass what
//! one process may hold (20,000 fds here).

use super::{Clients, Shape, Step, StepResult};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// `limpet-bench room-worker`: connects its share of clients, says
/// `joined <ok> <failed>`, then runs `step <id> <rate> <burst> <secs>`
/// lines from stdin (answering each with a `result` line) until `quit` or
/// the end of stdin.
pub async fn worker(shape: Shape) -> anyhow::Result<()> {
    // A room split over two workers would be timed by two clocks.
    anyhow::ensure!(
        shape.first.is_multiple_of(shape.room_size),
        "room-worker: --first must be a multiple of --room-size"
    );
    let pool = Clients::connect(shape).await;
    let mut out = tokio::io::stdout();
    out.write_all(format!("joined {} {}\n", pool.joined, pool.failed).as_bytes())
        .await?;
    out.flush().await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["step", id, rate, burst, secs, drain_ms] => {
                let step = Step {
                    id: id.parse()?,
                    rate: rate.parse()?,
                    burst: burst.parse()?,
                    secs: secs.parse()?,
                };
                let drain = Duration::from_millis(drain_ms.parse()?);
                let r = pool.step(step, drain).await;
                out.write_all(format!("{}\n", r.encode()).as_bytes())
                    .await?;
                out.flush().await?;
            }
            ["quit"] => break,
            _ => anyhow::bail!("room-worker: unknown command {line:?}"),
        }
    }
    pool.close().await;
    Ok(())
}

/// Worker processes holding one population of clients between them.
pub struct Workers {
    procs: Vec<WorkerProc>,
    pub joined: usize,
    pub failed: usize,
}

struct WorkerProc {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Workers {
    /// Starts `count` workers of `me` (this binary) splitting `shape`'s
    /// clients in whole rooms, and waits until every client has joined or
    /// failed.
    pub async fn start(me: &Path, shape: Shape, count: usize) -> anyhow::Result<Workers> {
        let rooms = shape.clients.div_ceil(shape.room_size);
        let per = rooms.div_ceil(count.max(1)) * shape.room_size;
        let mut procs = Vec::new();
        let mut first = shape.first;
        let end = shape.first + shape.clients;
        while first < end {
            let clients = per.min(end - first);
            let mut child = tokio::process::Command::new(me)
                .args(["room-worker", "--proto", shape.proto.name()])
                .arg("--target")
                .arg(shape.target.to_string())
                .args(["--first", &first.to_string()])
                .args(["--clients", &clients.to_string()])
                .args(["--room-size", &shape.room_size.to_string()])
                .args(["--active-every", &shape.active_every.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                anyhow::bail!("room-worker: no pipes");
            };
            procs.push(WorkerProc {
                child,
                stdin,
                lines: BufReader::new(stdout).lines(),
            });
            first += clients;
        }
        let (mut joined, mut failed) = (0, 0);
        for p in &mut procs {
            let line = p.lines.next_line().await?.unwrap_or_default();
            let mut words = line.strip_prefix("joined ").unwrap_or("").split(' ');
            let ok: usize = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
            let bad: usize = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
            anyhow::ensure!(!line.is_empty(), "room-worker exited before joining");
            joined += ok;
            failed += bad;
        }
        Ok(Workers {
            procs,
            joined,
            failed,
        })
    }

    /// Takes over `other`'s workers and clients: one population started
    /// in parts.
    pub fn absorb(&mut self, other: Workers) {
        self.procs.extend(other.procs);
        self.joined += other.joined;
        self.failed += other.failed;
    }

    /// The worker processes' ids, for their CPU time.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().filter_map(|p| p.child.id()).collect()
    }

    /// Runs one step in every worker at once; their results merged.
    pub async fn step(&mut self, step: Step, drain: Duration) -> anyhow::Result<StepResult> {
        let command = format!(
            "step {} {} {} {} {}\n",
            step.id,
            step.rate,
            step.burst,
            step.secs,
            drain.as_millis()
        );
        for p in &mut self.procs {
            p.stdin.write_all(command.as_bytes()).await?;
            p.stdin.flush().await?;
        }
        let mut merged = StepResult::empty();
        for p in &mut self.procs {
            let line = p.lines.next_line().await?.unwrap_or_default();
            let r = StepResult::decode(&line)
                .ok_or_else(|| anyhow::anyhow!("room-worker: bad result {line:.80}"))?;
            merged.merge(&r);
        }
        Ok(merged)
    }

    /// Tells every worker to close its clients, and waits for them.
    pub async fn quit(mut self) {
        for p in &mut self.procs {
            let _ = p.stdin.write_all(b"quit\n").await;
            let _ = p.stdin.flush().await;
        }
        for mut p in self.procs {
            if tokio::time::timeout(Duration::from_secs(10), p.child.wait())
                .await
                .is_err()
            {
                let _ = p.child.kill().await;
            }
        }
    }
}
