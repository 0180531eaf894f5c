//! Backplane envelopes: what one node publishes for the others.
//!
//! An envelope is a small JSON header, a newline, then the frame to hand
//! to clients as is (so remote nodes never re-serialize it). The header is
//! [`Envelope`], tagged on `k` with the kind; every kind names its origin
//! node (`o`) and carries exactly the fields it needs, so a header missing
//! one, or of an unknown kind, does not parse and is dropped whole.
//! (Sealing against forgery is [`crate::seal`]'s job, on the bytes built
//! here.)

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// The header of a backplane envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "k", rename_all = "lowercase")]
pub enum Envelope {
    /// A room message; the body is the frame for the room's members.
    Emit {
        #[serde(rename = "o")]
        origin: String,
        #[serde(rename = "r")]
        room: String,
        /// The body is a binary frame.
        #[serde(rename = "b", default, skip_serializing_if = "std::ops::Not::not")]
        binary: bool,
    },
    /// A message for one socket of the node whose channel it is sent on.
    Direct {
        #[serde(rename = "o")]
        origin: String,
        #[serde(rename = "s")]
        socket: String,
        #[serde(rename = "b", default, skip_serializing_if = "std::ops::Not::not")]
        binary: bool,
    },
    /// A socket joined a room; the body is the `joined` frame.
    Join {
        #[serde(rename = "o")]
        origin: String,
        #[serde(rename = "r")]
        room: String,
        #[serde(rename = "s")]
        socket: String,
    },
    /// A socket left a room; the body is the `left` frame.
    Leave {
        #[serde(rename = "o")]
        origin: String,
        #[serde(rename = "r")]
        room: String,
        #[serde(rename = "s")]
        socket: String,
    },
    /// "Send me your members of this room" (answered with `members`).
    Sync {
        #[serde(rename = "o")]
        origin: String,
        #[serde(rename = "r")]
        room: String,
    },
    /// A node's full list of its members of a room.
    Members {
        #[serde(rename = "o")]
        origin: String,
        #[serde(rename = "r")]
        room: String,
        #[serde(rename = "m")]
        members: Vec<String>,
    },
    /// "I am alive" on the nodes channel.
    #[serde(rename = "hb")]
    Heartbeat {
        #[serde(rename = "o")]
        origin: String,
    },
    /// "I am leaving" (graceful shutdown).
    Bye {
        #[serde(rename = "o")]
        origin: String,
    },
    /// A presence query: who of yours is in this room?
    Who {
        #[serde(rename = "o")]
        origin: String,
        #[serde(rename = "r")]
        room: String,
        #[serde(rename = "q")]
        query: u64,
    },
    /// The answer to `who`.
    Found {
        #[serde(rename = "o")]
        origin: String,
        #[serde(rename = "r")]
        room: String,
        #[serde(rename = "q")]
        query: u64,
        #[serde(rename = "m")]
        members: Vec<String>,
        /// Each member's user (token `sub`), `""` for none, in the same
        /// order; absent from nodes that predate it.
        #[serde(rename = "u", default, skip_serializing_if = "Vec::is_empty")]
        users: Vec<String>,
    },
}

impl Envelope {
    /// The node that published it.
    pub fn origin(&self) -> &str {
        match self {
            Envelope::Emit { origin, .. }
            | Envelope::Direct { origin, .. }
            | Envelope::Join { origin, .. }
            | Envelope::Leave { origin, .. }
            | Envelope::Sync { origin, .. }
            | Envelope::Members { origin, .. }
            | Envelope::Heartbeat { origin }
            | Envelope::Bye { origin }
            | Envelope::Who { origin, .. }
            | Envelope::Found { origin, .. } => origin,
        }
    }

    /// Room and direct messages: shed first under load, and dropped when
    /// they waited too long. Membership and control envelopes are not.
    pub fn volatile(&self) -> bool {
        matches!(self, Envelope::Emit { .. } | Envelope::Direct { .. })
    }

    /// The bytes to publish: this header, a newline, `body`.
    pub fn encode(&self, body: &[u8]) -> Bytes {
        // Strings, numbers and a bool: serializing cannot fail.
        let head = serde_json::to_vec(self).unwrap_or_default();
        let mut out = BytesMut::with_capacity(head.len() + 1 + body.len());
        out.extend_from_slice(&head);
        out.extend_from_slice(b"\n");
        out.extend_from_slice(body);
        out.freeze()
    }

    /// The header and body of a received envelope (the body a slice of
    /// the same buffer); `None` when the header is not a valid envelope.
    pub fn decode(payload: &Bytes) -> Option<(Envelope, Bytes)> {
        let nl = payload.iter().position(|&b| b == b'\n')?;
        let header: Header = serde_json::from_slice(&payload[..nl]).ok()?;
        Some((header.into_envelope()?, payload.slice(nl + 1..)))
    }
}

/// Every header field of every kind, read flat. serde reads an internally
/// tagged enum by first buffering the whole object into its own generic
/// tree (to find the tag), then reading the variant from that: an
/// allocation per field, on every message a node receives. Reading the
/// fields straight and checking per kind which must be there keeps the
/// rules for what the encoder writes. Two differences, harmless between
/// nodes of this version: a field of another kind is type-checked rather
/// than ignored, and `"b": null` or `"u": null` reads as absent.
#[derive(Deserialize)]
struct Header<'a> {
    /// The kind; borrowed, as it is only compared.
    #[serde(borrow)]
    k: Cow<'a, str>,
    o: Option<String>,
    r: Option<String>,
    s: Option<String>,
    b: Option<bool>,
    m: Option<Vec<String>>,
    q: Option<u64>,
    u: Option<Vec<String>>,
}

impl Header<'_> {
    /// The envelope of kind `k`, or `None` when a field that kind needs
    /// is missing or the kind is unknown.
    fn into_envelope(self) -> Option<Envelope> {
        let origin = self.o?;
        Some(match &*self.k {
            "emit" => Envelope::Emit {
                origin,
                room: self.r?,
                binary: self.b.unwrap_or(false),
            },
            "direct" => Envelope::Direct {
                origin,
                socket: self.s?,
                binary: self.b.unwrap_or(false),
            },
            "join" => Envelope::Join {
                origin,
                room: self.r?,
                socket: self.s?,
            },
            "leave" => Envelope::Leave {
                origin,
                room: self.r?,
                socket: self.s?,
            },
            "sync" => Envelope::Sync {
                origin,
                room: self.r?,
            },
            "members" => Envelope::Members {
                origin,
                room: self.r?,
                members: self.m?,
            },
            "hb" => Envelope::Heartbeat { origin },
            "bye" => Envelope::Bye { origin },
            "who" => Envelope::Who {
                origin,
                room: self.r?,
                query: self.q?,
            },
            "found" => Envelope::Found {
                origin,
                room: self.r?,
                query: self.q?,
                members: self.m?,
                users: self.u.unwrap_or_default(),
            },
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_format_is_the_one_letter_header() {
        let e = Envelope::Emit {
            origin: "n1".into(),
            room: "r".into(),
            binary: false,
        };
        assert_eq!(
            &e.encode(b"x")[..],
            b"{\"k\":\"emit\",\"o\":\"n1\",\"r\":\"r\"}\nx"
        );
        let hb = Envelope::Heartbeat {
            origin: "n2".into(),
        };
        assert_eq!(&hb.encode(b"")[..], b"{\"k\":\"hb\",\"o\":\"n2\"}\n");
        let found = Envelope::Found {
            origin: "n3".into(),
            room: "r".into(),
            query: 7,
            members: vec!["a".into()],
            users: vec!["ann".into()],
        };
        let bytes = found.encode(b"");
        assert_eq!(Envelope::decode(&bytes), Some((found, Bytes::new())));
        let (d, body) = Envelope::decode(&Bytes::from_static(
            b"{\"k\":\"direct\",\"o\":\"n1\",\"s\":\"n2.a.1\",\"b\":true}\nbin\nary",
        ))
        .unwrap();
        assert_eq!(
            d,
            Envelope::Direct {
                origin: "n1".into(),
                socket: "n2.a.1".into(),
                binary: true
            }
        );
        assert_eq!(&body[..], b"bin\nary");
        assert!(d.volatile() && !hb.volatile());
    }

    #[test]
    fn every_kind_decodes_to_what_was_encoded() {
        let o = || "n\"1".to_string();
        let r = || "ro\\om".to_string();
        let s = || "n2.a.1".to_string();
        let all = [
            Envelope::Emit {
                origin: o(),
                room: r(),
                binary: true,
            },
            Envelope::Emit {
                origin: o(),
                room: r(),
                binary: false,
            },
            Envelope::Direct {
                origin: o(),
                socket: s(),
                binary: false,
            },
            Envelope::Join {
                origin: o(),
                room: r(),
                socket: s(),
            },
            Envelope::Leave {
                origin: o(),
                room: r(),
                socket: s(),
            },
            Envelope::Sync {
                origin: o(),
                room: r(),
            },
            Envelope::Members {
                origin: o(),
                room: r(),
                members: vec![s(), "é".into()],
            },
            Envelope::Heartbeat { origin: o() },
            Envelope::Bye { origin: o() },
            Envelope::Who {
                origin: o(),
                room: r(),
                query: u64::MAX,
            },
            Envelope::Found {
                origin: o(),
                room: r(),
                query: 3,
                members: vec![s()],
                users: vec![],
            },
        ];
        for e in all {
            let bytes = e.encode(b"body");
            assert_eq!(
                Envelope::decode(&bytes),
                Some((e.clone(), Bytes::from_static(b"body"))),
                "{e:?}"
            );
        }
        // Fields of other kinds are ignored; a `found` from an older node
        // has no users.
        let (d, _) = Envelope::decode(&Bytes::from_static(
            b"{\"k\":\"found\",\"o\":\"n1\",\"r\":\"x\",\"q\":1,\"m\":[],\"s\":\"y\"}\n",
        ))
        .unwrap();
        assert_eq!(
            d,
            Envelope::Found {
                origin: "n1".into(),
                room: "x".into(),
                query: 1,
                members: vec![],
                users: vec![]
            }
        );
    }

    #[test]
    fn malformed_headers_do_not_parse() {
        for bad in [
            &b"{\"k\":\"emit\",\"o\":\"n1\"}\n"[..],        // no room
            b"{\"k\":\"join\",\"o\":\"n1\",\"r\":\"r\"}\n", // no socket
            b"{\"k\":\"nope\",\"o\":\"n1\"}\n",
            b"{\"o\":\"n1\"}\n",
            b"{\"k\":\"hb\"}\n",            // no origin
            b"{\"k\":\"hb\",\"o\":\"n1\"}", // no newline
            b"not json\n",
            b"{\"k\":\"who\",\"o\":\"n1\",\"r\":\"r\"}\n", // no query
            b"{\"k\":\"members\",\"o\":\"n1\",\"r\":\"r\"}\n", // no members
            b"{\"k\":\"hb\",\"o\":\"n1\",\"o\":\"n2\"}\n", // origin twice
            b"{\"k\":\"emit\",\"o\":1,\"r\":\"r\"}\n",     // origin not a string
            b"{\"k\":\"who\",\"o\":\"n1\",\"r\":\"r\",\"q\":-1}\n", // query not a u64
        ] {
            assert_eq!(Envelope::decode(&Bytes::copy_from_slice(bad)), None);
        }
    }
}
