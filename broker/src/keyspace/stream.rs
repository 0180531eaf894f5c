//! A stream value: entries ordered by id in storage nodes like Redis's
//! listpacks, plus what Redis keeps beside them (last generated id,
//! entries ever added, largest deleted id).
//!
//! Redis stores a stream as nodes of at most `stream-node-max-entries`
//! (100) entries, deleted ones counted, and clients can see the nodes:
//! `MAXLEN ~` / `MINID ~` trim whole nodes only, and XINFO reports them.
//! [`Node`] keeps the same boundaries, and the same compact layout (ids as
//! deltas, field names stored once per node when entries repeat them), so
//! an entry costs about its values' bytes. The node byte limit (4 KiB) is
//! not emulated, so streams of large entries may keep a few more entries
//! than Redis after `~`.

use bytes::Bytes;
use std::collections::BTreeMap;

/// Redis's `stream-node-max-entries`.
pub const NODE_MAX_ENTRIES: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub const MIN: StreamId = StreamId { ms: 0, seq: 0 };
    pub const MAX: StreamId = StreamId {
        ms: u64::MAX,
        seq: u64::MAX,
    };

    pub fn next(self) -> Option<StreamId> {
        if self.seq < u64::MAX {
            Some(StreamId {
                ms: self.ms,
                seq: self.seq + 1,
            })
        } else if self.ms < u64::MAX {
            Some(StreamId {
                ms: self.ms + 1,
                seq: 0,
            })
        } else {
            None
        }
    }

    pub fn prev(self) -> Option<StreamId> {
        if self.seq > 0 {
            Some(StreamId {
                ms: self.ms,
                seq: self.seq - 1,
            })
        } else if self.ms > 0 {
            Some(StreamId {
                ms: self.ms - 1,
                seq: u64::MAX,
            })
        } else {
            None
        }
    }

    pub fn text(self) -> String {
        format!("{}-{}", self.ms, self.seq)
    }
}

/// How a trim is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trim {
    MaxLen(u64),
    MinId(StreamId),
}

/// Entry flag bits, as in Redis's listpack nodes.
const DELETED: u8 = 1;
const SAME_FIELDS: u8 = 2;

/// One storage node, like Redis's listpack: up to [`NODE_MAX_ENTRIES`]
/// entries encoded back to back in one buffer. An entry is a flags byte,
/// its id as varints (ms relative to the node's first id, then seq), and
/// its fields; an entry with the same field names as the node's first
/// entry (the usual case: socket.io writes the same fields every time)
/// stores only its values. Deleting marks the flags byte.
struct Node {
    master: StreamId,
    master_fields: Box<[Box<[u8]>]>,
    buf: Vec<u8>,
    /// Entries not deleted, and entries ever appended (Redis starts a new
    /// node when this reaches 100, deleted ones included).
    live: usize,
    total: usize,
    /// Id of the last entry appended, deleted or not (what MINID trimming
    /// compares, as Redis's `lpGetEdgeStreamID`).
    last: StreamId,
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Reads a varint written by [`put_varint`]; the buffer is our own.
fn get_varint(buf: &[u8], pos: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    while let Some(&b) = buf.get(*pos) {
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    v
}

fn get_bytes<'a>(buf: &'a [u8], pos: &mut usize) -> &'a [u8] {
    let len = get_varint(buf, pos) as usize;
    let start = (*pos).min(buf.len());
    let end = (start + len).min(buf.len());
    *pos = end;
    &buf[start..end]
}

/// One decoded entry: its id, flags byte position, and fields
/// (name, value, name, value ...) borrowed from the node.
struct Decoded<'a> {
    id: StreamId,
    flags_at: usize,
    deleted: bool,
    fields: Vec<&'a [u8]>,
}

impl Node {
    fn new(id: StreamId, fields: &[Bytes]) -> Node {
        Node {
            master: id,
            master_fields: fields
                .iter()
                .step_by(2)
                .map(|f| Box::from(&f[..]))
                .collect(),
            buf: Vec::new(),
            live: 0,
            total: 0,
            last: id,
        }
    }

    fn append(&mut self, id: StreamId, fields: &[Bytes]) {
        let same = fields.len() == self.master_fields.len() * 2
            && fields
                .iter()
                .step_by(2)
                .zip(self.master_fields.iter())
                .all(|(a, b)| a[..] == b[..]);
        self.buf.push(if same { SAME_FIELDS } else { 0 });
        put_varint(&mut self.buf, id.ms - self.master.ms);
        put_varint(&mut self.buf, id.seq);
        if same {
            for v in fields.iter().skip(1).step_by(2) {
                put_varint(&mut self.buf, v.len() as u64);
                self.buf.extend_from_slice(v);
            }
        } else {
            put_varint(&mut self.buf, (fields.len() / 2) as u64);
            for f in fields {
                put_varint(&mut self.buf, f.len() as u64);
                self.buf.extend_from_slice(f);
            }
        }
        self.live += 1;
        self.total += 1;
        self.last = id;
        if self.total == NODE_MAX_ENTRIES {
            // Full: no more appends, give back the growth slack.
            self.buf.shrink_to_fit();
        }
    }

    /// Every entry in order, deleted ones included.
    fn decode(&self) -> Vec<Decoded<'_>> {
        let mut out = Vec::with_capacity(self.total);
        let buf = &self.buf[..];
        let mut pos = 0;
        while pos < buf.len() {
            let flags_at = pos;
            let flags = buf[pos];
            pos += 1;
            let ms = self.master.ms + get_varint(buf, &mut pos);
            let seq = get_varint(buf, &mut pos);
            let mut fields = Vec::new();
            if flags & SAME_FIELDS != 0 {
                for name in self.master_fields.iter() {
                    fields.push(&name[..]);
                    fields.push(get_bytes(buf, &mut pos));
                }
            } else {
                let n = get_varint(buf, &mut pos);
                for _ in 0..n * 2 {
                    fields.push(get_bytes(buf, &mut pos));
                }
            }
            out.push(Decoded {
                id: StreamId { ms, seq },
                flags_at,
                deleted: flags & DELETED != 0,
                fields,
            });
        }
        out
    }

    /// Marks the live entry `id` deleted; true if it was there.
    fn delete(&mut self, id: StreamId) -> bool {
        let at = self
            .decode()
            .iter()
            .find(|e| e.id == id && !e.deleted)
            .map(|e| e.flags_at);
        match at {
            Some(at) => {
                self.buf[at] |= DELETED;
                self.live -= 1;
                true
            }
            None => false,
        }
    }

    fn mem(&self) -> usize {
        96 + self.buf.capacity()
            + self
                .master_fields
                .iter()
                .map(|f| f.len() + 16)
                .sum::<usize>()
    }
}

/// Moves the live entries of `entries` within `start..=end` into `out`
/// until it holds `limit`; false once it does.
fn take<'a>(
    out: &mut Vec<(StreamId, Vec<&'a [u8]>)>,
    entries: impl Iterator<Item = Decoded<'a>>,
    start: StreamId,
    end: StreamId,
    limit: usize,
) -> bool {
    for e in entries {
        if out.len() >= limit {
            return false;
        }
        if !e.deleted && e.id >= start && e.id <= end {
            out.push((e.id, e.fields));
        }
    }
    out.len() < limit
}

#[derive(Default)]
pub struct Stream {
    /// Nodes by their first id.
    nodes: BTreeMap<StreamId, Node>,
    len: usize,
    pub last_id: StreamId,
    pub entries_added: u64,
    pub max_deleted: StreamId,
    bytes: usize,
}

impl Stream {
    pub fn mem(&self) -> usize {
        64 + self.bytes
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Storage nodes, for XINFO's `radix-tree-keys`.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Appends an entry whose id the caller has checked is above `last_id`.
    pub fn append(&mut self, id: StreamId, fields: &[Bytes]) {
        let node = match self.nodes.last_entry() {
            Some(n) if n.get().total < NODE_MAX_ENTRIES => n.into_mut(),
            _ => self
                .nodes
                .entry(id)
                .or_insert_with(|| Node::new(id, fields)),
        };
        let before = node.mem();
        node.append(id, fields);
        self.bytes = (self.bytes + node.mem()).saturating_sub(before);
        self.len += 1;
        self.last_id = id;
        self.entries_added += 1;
    }

    fn remove_node(&mut self, master: StreamId) -> usize {
        match self.nodes.remove(&master) {
            Some(n) => {
                self.bytes = self.bytes.saturating_sub(n.mem());
                self.len -= n.live;
                n.live
            }
            None => 0,
        }
    }

    /// XDEL of one id; true if it was there.
    pub fn delete(&mut self, id: StreamId) -> bool {
        let Some((&master, node)) = self.nodes.range_mut(..=id).next_back() else {
            return false;
        };
        if !node.delete(id) {
            return false;
        }
        self.len -= 1;
        if id > self.max_deleted {
            self.max_deleted = id;
        }
        if node.live == 0 {
            self.remove_node(master);
        }
        true
    }

    /// Live entries from `start` to `end` inclusive, at most `count`
    /// (0 = all), newest first if `rev`; fields borrowed from the nodes.
    pub fn range(
        &self,
        start: StreamId,
        end: StreamId,
        count: usize,
        rev: bool,
    ) -> Vec<(StreamId, Vec<&[u8]>)> {
        let mut out = Vec::new();
        if start > end {
            return out;
        }
        let limit = if count == 0 { usize::MAX } else { count };
        // The node holding `start` begins at or before it.
        let from = self
            .nodes
            .range(..=start)
            .next_back()
            .map_or(start, |(k, _)| *k);
        let nodes = self.nodes.range(from..=end);
        if rev {
            for (_, node) in nodes.rev() {
                if !take(&mut out, node.decode().into_iter().rev(), start, end, limit) {
                    break;
                }
            }
        } else {
            for (_, node) in nodes {
                if !take(&mut out, node.decode().into_iter(), start, end, limit) {
                    break;
                }
            }
        }
        out
    }

    /// The first live entry.
    pub fn first(&self) -> Option<(StreamId, Vec<&[u8]>)> {
        self.range(StreamId::MIN, StreamId::MAX, 1, false).pop()
    }

    /// The last live entry.
    pub fn last(&self) -> Option<(StreamId, Vec<&[u8]>)> {
        self.range(StreamId::MIN, StreamId::MAX, 1, true).pop()
    }

    /// Id of the last live entry (what XREAD compares with).
    pub fn last_live_id(&self) -> Option<StreamId> {
        let node = self.nodes.values().next_back()?;
        node.decode()
            .iter()
            .rev()
            .find(|e| !e.deleted)
            .map(|e| e.id)
    }

    /// Removes entries from the head as Redis's `streamTrim` does: whole
    /// nodes while they can go, then (exact trims only) single entries of
    /// the next node, marked deleted. `limit` 0 means no limit. Returns
    /// how many were removed.
    pub fn trim(&mut self, how: Trim, approx: bool, limit: u64) -> u64 {
        let mut deleted = 0u64;
        while let Some((&master, node)) = self.nodes.iter().next() {
            if let Trim::MaxLen(max) = how {
                if self.len as u64 <= max {
                    break;
                }
            }
            let live = node.live as u64;
            if limit > 0 && deleted + live > limit {
                break;
            }
            let remove_node = match how {
                Trim::MaxLen(max) => self.len as u64 - live >= max,
                Trim::MinId(min) => node.last < min,
            };
            if remove_node {
                deleted += self.remove_node(master) as u64;
                continue;
            }
            if approx {
                break;
            }
            // Exact: mark single entries of this node deleted.
            let marks: Vec<usize> = {
                let mut len = self.len as u64;
                let mut marks = Vec::new();
                for e in node.decode() {
                    let stop = match how {
                        Trim::MaxLen(max) => len <= max,
                        Trim::MinId(min) => e.id >= min,
                    };
                    if stop {
                        break;
                    }
                    if !e.deleted {
                        marks.push(e.flags_at);
                        len -= 1;
                    }
                }
                marks
            };
            if let Some(node) = self.nodes.get_mut(&master) {
                for at in &marks {
                    node.buf[*at] |= DELETED;
                }
                node.live -= marks.len();
            }
            self.len -= marks.len();
            deleted += marks.len() as u64;
            break;
        }
        deleted
    }
}

/// Parses a stream id the way Redis's `streamGenericParseIDOrReply` does.
/// `strict` refuses `-` and `+`; `missing_seq` fills an id given as `ms`;
/// `allow_star_seq` accepts `ms-*` (XADD), returned as `seq_given = false`.
pub fn parse_id(
    arg: &[u8],
    strict: bool,
    missing_seq: u64,
    allow_star_seq: bool,
) -> Option<(StreamId, bool)> {
    if arg.len() > 127 {
        return None;
    }
    match arg {
        b"-" if !strict => return Some((StreamId::MIN, true)),
        b"+" if !strict => return Some((StreamId::MAX, true)),
        _ => {}
    }
    let (ms_part, seq_part) = match memchr::memchr(b'-', arg) {
        Some(i) => (&arg[..i], Some(&arg[i + 1..])),
        None => (arg, None),
    };
    let ms = parse_u64(ms_part)?;
    match seq_part {
        Some(b"*") if allow_star_seq => Some((StreamId { ms, seq: 0 }, false)),
        Some(seq) => Some((
            StreamId {
                ms,
                seq: parse_u64(seq)?,
            },
            true,
        )),
        None => Some((
            StreamId {
                ms,
                seq: missing_seq,
            },
            true,
        )),
    }
}

/// Redis's `string2ull`: a non-negative integer, or what `strtoull`
/// accepts (leading spaces, a sign, leading zeros) without overflow.
fn parse_u64(s: &[u8]) -> Option<u64> {
    if let Some(v) = crate::codec::parse_i64(s) {
        return u64::try_from(v).ok();
    }
    let text = std::str::from_utf8(s).ok()?;
    let t = text.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: u64 = digits.parse().ok()?;
    Some(if neg { v.wrapping_neg() } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64, seq: u64) -> StreamId {
        StreamId { ms, seq }
    }

    fn filled(n: u64) -> Stream {
        let mut s = Stream::default();
        for i in 1..=n {
            s.append(
                id(i, 0),
                &[Bytes::from_static(b"f"), Bytes::from_static(b"v")],
            );
        }
        s
    }

    #[test]
    fn approximate_trim_removes_whole_nodes_only() {
        let mut s = filled(250);
        assert_eq!(s.trim(Trim::MaxLen(120), true, 0), 100);
        assert_eq!(s.len(), 150);
        assert_eq!(s.trim(Trim::MaxLen(10), false, 0), 140);
        assert_eq!(s.len(), 10);
    }

    #[test]
    fn ids_parse_like_redis() {
        assert_eq!(parse_id(b"5", true, 0, false), Some((id(5, 0), true)));
        assert_eq!(parse_id(b"5-*", true, 0, true), Some((id(5, 0), false)));
        assert_eq!(parse_id(b"-", true, 0, false), None);
        assert_eq!(parse_id(b"+", false, 0, false), Some((StreamId::MAX, true)));
        assert_eq!(parse_id(b"007-1", true, 0, false), Some((id(7, 1), true)));
        assert_eq!(parse_id(b"x", true, 0, false), None);
        assert_eq!(parse_id(b"1-2-3", true, 0, false), None);
    }
}
