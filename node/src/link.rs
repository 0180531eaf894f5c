//! One open connection set to the broker, standalone or cluster
//! (sharded pub/sub): [`Link`] sends commands, [`Incoming`] yields what
//! the broker pushes. Reconnecting, resubscribing and the queues around
//! them live in [`crate::broker`].
//!
//! A Redis Cluster is several servers, and one of them may be unreachable
//! while the others answer (a partition, a master down before failover).
//! The cluster client keeps one connection per member, reconnects a lost
//! one by itself and resubscribes its shard channels there, so on a
//! cluster a member's trouble is not the link's: opening succeeds with a
//! member missing, a member's disconnection does not end [`Incoming`], and
//! publishes run detached ([`Link::publish_detached`]) so that one waiting
//! for a cut member does not hold up the rooms on the others.
//!
//! A single broker (limpet-broker, or one Redis server) is one RESP3
//! connection of our own, in [`crate::single`].

use crate::broker::Publish;
use crate::single::{open_standalone, LinkResult, Reader, Sender};
pub(crate) use crate::single::{LinkError, Pushed};
use bytes::Bytes;
use std::time::Duration;
use tokio::sync::mpsc;

/// An open connection set, standalone or cluster: the side that sends
/// commands, each bounded by the response deadline. What the broker
/// pushes is read from [`Incoming`].
pub(crate) struct Link {
    conns: Conns,
    response: Duration,
}

enum Conns {
    Standalone(Sender),
    Cluster {
        conn: redis::cluster_async::ClusterConnection,
    },
}

/// The messages the broker pushes on an open connection set.
pub(crate) enum Incoming {
    Standalone(Reader),
    Cluster(mpsc::UnboundedReceiver<redis::PushInfo>),
}

/// How long the link waits for the broker: one whole attempt to open the
/// connections (`broker_connect_timeout`), and one command's answer
/// (`broker_response_timeout`).
///
/// The response timeout covers a whole publish pipeline, and SUBSCRIBE and
/// UNSUBSCRIBE on the pub/sub connection, which the Redis client leaves
/// unbounded: one of those sent into a black hole would otherwise hold the
/// link task, and every command queued behind it, for as long as TCP keeps
/// retransmitting (about 15 minutes), with `/health` still saying
/// `connected`. The Redis client's own default of 500 ms is shorter than a
/// full pipeline takes on a slow link or a loaded machine, and each
/// spurious timeout reconnects and loses what was queued.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    pub connect: Duration,
    pub response: Duration,
}

/// `fut`, or a timeout error (an I/O error, so the link is treated as
/// broken, not as refused) after `limit`.
async fn bounded<T, E: From<std::io::Error>>(
    what: &str,
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(E::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{what}: no answer from the broker within {limit:?}"),
        ))),
    }
}

/// Opens the connection set; the whole attempt (every TCP connect and
/// handshake) is bounded by the connect deadline (three of them on a
/// cluster, see [`open_limit`]).
pub(crate) async fn open(
    urls: &[String],
    cluster: bool,
    deadlines: Deadlines,
    max_message: usize,
) -> LinkResult<(Link, Incoming)> {
    let (conns, incoming) = bounded(
        "connect",
        open_limit(cluster, deadlines.connect),
        open_unbounded(urls, cluster, deadlines, max_message),
    )
    .await?;
    let link = Link {
        conns,
        response: deadlines.response,
    };
    Ok((link, incoming))
}

/// The whole opening attempt's bound. A cluster is opened in up to three
/// rounds (its seed members, the slot map, the members the map names),
/// each connecting to members in parallel with `connect` apiece; a member
/// that does not answer (cut off) must not fail the whole attempt.
fn open_limit(cluster: bool, connect: Duration) -> Duration {
    if cluster {
        connect * 3
    } else {
        connect
    }
}

async fn open_unbounded(
    urls: &[String],
    cluster: bool,
    deadlines: Deadlines,
    max_message: usize,
) -> LinkResult<(Conns, Incoming)> {
    let Deadlines {
        connect: connect_timeout,
        response: response_timeout,
    } = deadlines;
    if cluster {
        let (tx, pushes) = mpsc::unbounded_channel();
        let client = redis::cluster::ClusterClientBuilder::new(urls.to_vec())
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(tx)
            .response_timeout(response_timeout)
            .connection_timeout(connect_timeout)
            .build()?;
        let conn = client.get_async_connection().await?;
        return Ok((Conns::Cluster { conn }, Incoming::Cluster(pushes)));
    }
    let (sender, reader) = open_standalone(&urls[0], max_message).await?;
    Ok((Conns::Standalone(sender), Incoming::Standalone(reader)))
}

impl Link {
    pub(crate) async fn subscribe(&mut self, channel: &str) -> LinkResult<()> {
        let limit = self.response;
        match &mut self.conns {
            Conns::Standalone(sender) => {
                sender.command(&[b"SUBSCRIBE", channel.as_bytes()]);
                bounded("SUBSCRIBE", limit, sender.call(1)).await
            }
            Conns::Cluster { conn } => {
                Ok(bounded("SSUBSCRIBE", limit, conn.ssubscribe(channel)).await?)
            }
        }
    }

    pub(crate) async fn unsubscribe(&mut self, channel: &str) -> LinkResult<()> {
        let limit = self.response;
        match &mut self.conns {
            Conns::Standalone(sender) => {
                sender.command(&[b"UNSUBSCRIBE", channel.as_bytes()]);
                bounded("UNSUBSCRIBE", limit, sender.call(1)).await
            }
            Conns::Cluster { conn } => {
                Ok(bounded("SUNSUBSCRIBE", limit, conn.sunsubscribe(channel)).await?)
            }
        }
    }

    /// One pipeline on a single broker, bounded by the response deadline
    /// as a whole; one command per publish on a cluster.
    pub(crate) async fn publish(&mut self, batch: &[Publish]) -> LinkResult<()> {
        let limit = self.response;
        match &mut self.conns {
            Conns::Standalone(sender) => {
                for p in batch {
                    sender.command(&[b"PUBLISH", p.channel.as_bytes(), &p.payload[..]]);
                }
                bounded("PUBLISH", limit, sender.call(batch.len())).await
            }
            Conns::Cluster { conn } => {
                // Shard channels live on different nodes: one command each.
                for p in batch {
                    let _: i64 = redis::cmd("SPUBLISH")
                        .arg(&p.channel)
                        .arg(&p.payload[..])
                        .query_async(conn)
                        .await?;
                }
                Ok(())
            }
        }
    }
}

/// What a detached publish came to: how many messages went out, and the
/// first error of those that did not.
pub(crate) struct Sent {
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) error: Option<redis::RedisError>,
}

impl Link {
    /// On a cluster, the SPUBLISHes of `batch` as a future of their own
    /// (each routed to its channel's member and bounded by the response
    /// timeout) that the caller polls alongside new commands; they are
    /// handed to the client in order when first polled. `None` on a
    /// single broker, where one pipeline is the right unit.
    pub(crate) fn publish_detached(
        &self,
        batch: &[Publish],
    ) -> Option<impl std::future::Future<Output = Sent> + Send + 'static> {
        let Conns::Cluster { conn } = &self.conns else {
            return None;
        };
        let sends: Vec<_> = batch
            .iter()
            .map(|p| {
                let mut conn = conn.clone();
                let cmd = redis::cmd("SPUBLISH")
                    .arg(&p.channel)
                    .arg(&p.payload[..])
                    .clone();
                async move { cmd.query_async::<i64>(&mut conn).await }
            })
            .collect();
        Some(async move {
            let mut sent = Sent {
                ok: 0,
                failed: 0,
                error: None,
            };
            for r in futures_util::future::join_all(sends).await {
                match r {
                    Ok(_) => sent.ok += 1,
                    Err(e) => {
                        sent.failed += 1;
                        sent.error.get_or_insert(e);
                    }
                }
            }
            sent
        })
    }

    /// On a cluster, an SSUBSCRIBE as a future of its own, bounded by the
    /// response timeout; `None` on a single broker.
    pub(crate) fn subscribe_detached(
        &self,
        channel: &str,
    ) -> Option<impl std::future::Future<Output = redis::RedisResult<()>> + Send + 'static> {
        let Conns::Cluster { conn } = &self.conns else {
            return None;
        };
        let (mut conn, channel, limit) = (conn.clone(), channel.to_string(), self.response);
        Some(async move { bounded("SSUBSCRIBE", limit, conn.ssubscribe(&channel)).await })
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.conns, Conns::Cluster { .. })
    }
}

impl Incoming {
    /// The next message, or `None` when the connection is gone.
    pub(crate) async fn next(&mut self) -> Option<Pushed> {
        match self {
            Incoming::Standalone(reader) => reader.next().await,
            Incoming::Cluster(pushes) => loop {
                let push = pushes.recv().await?;
                match push.kind {
                    // One member's connection: the cluster client
                    // reconnects it and resubscribes its channels itself.
                    redis::PushKind::Disconnection => {
                        tracing::warn!("lost the connection to one Redis Cluster member; the client reconnects it");
                        continue;
                    }
                    redis::PushKind::SMessage | redis::PushKind::Message => {
                        let msg = redis::Msg::from_push_info(push)?;
                        return Some(Pushed::Message(
                            msg.get_channel_name().to_string(),
                            Bytes::copy_from_slice(msg.get_payload_bytes()),
                        ));
                    }
                    _ => continue,
                }
            },
        }
    }
}

/// Whether a failed command was refused by the broker with an error reply
/// (e.g. `-ERR too many channels for this client`) rather than lost with
/// the connection. A refusal leaves the connection usable, so it is
/// counted and logged, not treated as a broken link: reconnecting would
/// only be refused again, in a loop.
pub(crate) fn refused(e: &LinkError) -> bool {
    match e {
        LinkError::Refused(_) => true,
        LinkError::Redis(e) => refused_by_server(e),
        LinkError::Io(_) | LinkError::Broken(_) => false,
    }
}

/// [`refused`], for the Redis client's errors (a cluster's detached
/// publishes).
pub(crate) fn refused_by_server(e: &redis::RedisError) -> bool {
    matches!(
        e.kind(),
        redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
    )
}

#[cfg(test)]
#[path = "link_tests.rs"]
mod tests;
