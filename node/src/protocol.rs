//! The client protocol: JSON in WebSocket text frames.
//!
//! Requests carry an `op` and an optional `id`; a request with an `id` gets
//! an `ack` (or an `error`) carrying the same `id`. Everything the server
//! sends has a `type`. The README documents each shape; this module is the
//! one place that parses and builds them.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// A parsed client request. `data` stays raw JSON: the node never looks
/// inside an application payload, it only forwards it.
#[derive(Debug, Deserialize)]
pub struct Request<'a> {
    pub op: Option<&'a str>,
    #[serde(default)]
    pub id: Option<Value>,
    pub room: Option<String>,
    pub event: Option<String>,
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
    pub to: Option<String>,
    #[serde(rename = "self", default)]
    pub include_self: bool,
    /// `refresh`: the new token.
    pub token: Option<String>,
    /// `join`: where the client's history left off (see [`Since`]).
    #[serde(default)]
    pub since: Option<Value>,
}

/// A rejoin's `since`: the last offset the client saw in the room and the
/// epoch it belonged to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    pub offset: u64,
    pub epoch: String,
}

impl Since {
    /// `{"offset": N, "epoch": "..."}` with N a non-negative integer.
    fn parse(v: &Value) -> Result<Since, Failure> {
        let bad = |m: &str| Failure::new(Code::BadRequest, format!("`since`: {m}"));
        let obj = v
            .as_object()
            .ok_or_else(|| bad("expected {\"offset\": N, \"epoch\": \"...\"}"))?;
        let offset = obj
            .get("offset")
            .ok_or_else(|| bad("`offset` is required"))?
            .as_u64()
            .ok_or_else(|| bad("`offset` must be a non-negative integer"))?;
        let epoch = obj
            .get("epoch")
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty() && e.len() <= 64)
            .ok_or_else(|| bad("`epoch` must be a string of 1 to 64 bytes"))?;
        Ok(Since {
            offset,
            epoch: epoch.to_string(),
        })
    }
}

/// What a client asks for: one variant per `op`, holding the fields that
/// op needs, present and checked. Built from a [`Request`] by
/// [`Request::op`], the one place that knows which op needs which field.
///
/// (Not a `#[serde(tag = "op")]` enum: serde buffers an internally tagged
/// enum before choosing the variant, and a buffered `data` cannot stay raw
/// JSON; serde's own missing-field errors would also replace the error
/// codes clients rely on.)
#[derive(Debug)]
pub enum Op<'r> {
    Join {
        room: String,
        since: Option<Since>,
    },
    Leave {
        room: String,
    },
    Emit {
        room: String,
        event: &'r str,
        data: Option<&'r RawValue>,
        include_self: bool,
    },
    Send {
        to: &'r str,
        event: &'r str,
        data: Option<&'r RawValue>,
    },
    Presence {
        room: String,
    },
    Refresh {
        token: &'r str,
    },
    Ping,
}

/// What a binary frame's request line may ask for; the payload follows it.
#[derive(Debug, PartialEq)]
pub enum BinaryOp<'r> {
    Emit {
        room: String,
        event: &'r str,
        include_self: bool,
    },
    Send {
        to: &'r str,
        event: &'r str,
    },
}

impl<'a> Request<'a> {
    /// The op and its fields, in the order clients see errors: the op,
    /// then the room (present, non-empty, at most `max_room` bytes), then
    /// `event` / `to`.
    pub fn op(&self, max_room: usize) -> Result<Op<'_>, Failure> {
        let event = || {
            self.event
                .as_deref()
                .ok_or_else(|| Failure::new(Code::BadRequest, "`event` is required"))
        };
        let room = || room(self.room.as_deref(), max_room);
        match self.op {
            Some("join") => Ok(Op::Join {
                room: room()?,
                since: self.since.as_ref().map(Since::parse).transpose()?,
            }),
            Some("leave") => Ok(Op::Leave { room: room()? }),
            Some("emit") => Ok(Op::Emit {
                room: room()?,
                event: event()?,
                data: self.data,
                include_self: self.include_self,
            }),
            Some("send") => Ok(Op::Send {
                to: self.to()?,
                event: event()?,
                data: self.data,
            }),
            Some("presence") => Ok(Op::Presence { room: room()? }),
            Some("ping") => Ok(Op::Ping),
            Some("refresh") => Ok(Op::Refresh {
                token: self
                    .token
                    .as_deref()
                    .ok_or_else(|| Failure::new(Code::BadRequest, "`token` is required"))?,
            }),
            Some(other) => Err(Failure::new(
                Code::UnknownOp,
                format!("unknown op `{other}` (join, leave, emit, send, presence, refresh, ping)"),
            )),
            None => Err(Failure::new(Code::BadRequest, "`op` is required")),
        }
    }

    /// The op of a binary frame's request line: `emit` or `send` only;
    /// `event` defaults to `binary`.
    pub fn binary_op(&self, max_room: usize) -> Result<BinaryOp<'_>, Failure> {
        let event = self.event.as_deref().unwrap_or("binary");
        match self.op {
            Some("emit") => Ok(BinaryOp::Emit {
                room: room(self.room.as_deref(), max_room)?,
                event,
                include_self: self.include_self,
            }),
            Some("send") => Ok(BinaryOp::Send {
                to: self.to()?,
                event,
            }),
            _ => Err(Failure::new(
                Code::BinaryNotSupported,
                "binary frames carry emit or send only",
            )),
        }
    }

    fn to(&self) -> Result<&str, Failure> {
        self.to
            .as_deref()
            .ok_or_else(|| Failure::new(Code::BadRequest, "`to` is required"))
    }
}

/// A room name as given: present, non-empty, at most `max` bytes.
pub fn room(room: Option<&str>, max: usize) -> Result<String, Failure> {
    let room = room.ok_or_else(|| Failure::new(Code::BadRequest, "`room` is required"))?;
    if room.is_empty() {
        return Err(Failure::new(
            Code::InvalidRoom,
            "room names cannot be empty",
        ));
    }
    if room.len() > max {
        return Err(Failure::new(
            Code::RoomNameTooLong,
            format!("room names are at most {max} bytes"),
        ));
    }
    Ok(room.to_string())
}

/// Error codes sent in `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BadJson,
    BadRequest,
    UnknownOp,
    InvalidRoom,
    RoomNameTooLong,
    TooManyRooms,
    NotMember,
    NoSuchSocket,
    MessageTooLarge,
    RateLimited,
    BinaryNotSupported,
    Overloaded,
    /// Outside what the client's token allows.
    Forbidden,
    /// A `refresh` with a token that does not verify.
    Unauthorized,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadJson => "bad_json",
            Code::BadRequest => "bad_request",
            Code::UnknownOp => "unknown_op",
            Code::InvalidRoom => "invalid_room",
            Code::RoomNameTooLong => "room_name_too_long",
            Code::TooManyRooms => "too_many_rooms",
            Code::NotMember => "not_member",
            Code::NoSuchSocket => "no_such_socket",
            Code::MessageTooLarge => "message_too_large",
            Code::RateLimited => "rate_limited",
            Code::BinaryNotSupported => "binary_not_supported",
            Code::Overloaded => "overloaded",
            Code::Forbidden => "forbidden",
            Code::Unauthorized => "unauthorized",
        }
    }
}

/// An error to report to the client, with a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: Code,
    pub message: String,
}

impl Failure {
    pub fn new(code: Code, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

pub fn parse(text: &str) -> Result<Request<'_>, Failure> {
    serde_json::from_str(text)
        .map_err(|e| Failure::new(Code::BadJson, format!("not a JSON request: {e}")))
}

/// Splits a binary frame, `<JSON request>\n<payload>`, at its first
/// newline: the JSON never holds a raw newline, the payload may.
pub fn split_binary(bytes: &[u8]) -> Result<(Request<'_>, &[u8]), Failure> {
    let Some(nl) = bytes.iter().position(|&b| b == b'\n') else {
        return Err(Failure::new(
            Code::BadRequest,
            "a binary frame starts with a JSON request line",
        ));
    };
    let head = std::str::from_utf8(&bytes[..nl])
        .map_err(|_| Failure::new(Code::BadJson, "the request line is not UTF-8"))?;
    Ok((parse(head)?, &bytes[nl + 1..]))
}

pub fn welcome(socket: &str, node: &str, ping_ms: u64) -> String {
    json!({"type": "welcome", "socket": socket, "node": node, "ping_interval_ms": ping_ms})
        .to_string()
}

pub fn ack(id: &Value, result: Value) -> String {
    json!({"type": "ack", "id": id, "result": result}).to_string()
}

pub fn error(id: Option<&Value>, failure: &Failure) -> String {
    let mut v = json!({"type": "error", "code": failure.code.as_str(), "message": failure.message});
    if let Some(id) = id {
        v["id"] = id.clone();
    }
    v.to_string()
}

fn null() -> &'static RawValue {
    // A literal that always parses.
    serde_json::from_str("null").expect("null is JSON")
}

#[derive(Serialize)]
struct EventFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
    event: &'a str,
    from: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    data: &'a RawValue,
}

/// A room message: `{"type":"event","room":..,"event":..,"from":..,"data":..}`,
/// with `"user"` when the sender has one (a token's `sub`).
pub fn event(
    room: &str,
    event: &str,
    from: &str,
    user: Option<&str>,
    data: Option<&RawValue>,
) -> String {
    let frame = EventFrame {
        kind: "event",
        room: Some(room),
        event,
        from,
        user,
        data: match data {
            Some(d) => d,
            None => null(),
        },
    };
    serde_json::to_string(&frame).expect("serializing strings cannot fail")
}

/// A message to one socket: `{"type":"direct","event":..,"from":..,"data":..}`.
pub fn direct(event: &str, from: &str, user: Option<&str>, data: Option<&RawValue>) -> String {
    let frame = EventFrame {
        kind: "direct",
        room: None,
        event,
        from,
        user,
        data: match data {
            Some(d) => d,
            None => null(),
        },
    };
    serde_json::to_string(&frame).expect("serializing strings cannot fail")
}

/// `user`: the member's token `sub`, when it has one.
pub fn joined(room: &str, socket: &str, node: &str, user: Option<&str>) -> String {
    let mut v = json!({"type": "joined", "room": room, "socket": socket, "node": node});
    if let Some(u) = user {
        v["user"] = json!(u);
    }
    v.to_string()
}

/// `reason`: `leave`, `disconnect` or `node_down`.
pub fn left(room: &str, socket: &str, node: &str, reason: &str, user: Option<&str>) -> String {
    let mut v =
        json!({"type": "left", "room": room, "socket": socket, "node": node, "reason": reason});
    if let Some(u) = user {
        v["user"] = json!(u);
    }
    v.to_string()
}

pub fn shutdown(reconnect_ms: u64) -> String {
    json!({"type": "shutdown", "reconnect_ms": reconnect_ms}).to_string()
}

/// The node a socket id names: `node-a.k2f9.17` → `node-a`.
pub fn node_of(socket: &str) -> Option<&str> {
    let (node, _) = socket.split_once('.')?;
    (!node.is_empty()).then_some(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_keep_data_raw() {
        let r = parse(r#"{"op":"emit","room":"r","event":"offer","data":{"sdp":"v=0\r\n","n":[1,2]},"id":7,"self":true}"#).unwrap();
        assert_eq!(r.op, Some("emit"));
        assert_eq!(r.data.unwrap().get(), r#"{"sdp":"v=0\r\n","n":[1,2]}"#);
        assert!(r.include_self);
        assert_eq!(r.id, Some(json!(7)));
        assert_eq!(parse("{").unwrap_err().code, Code::BadJson);
        assert_eq!(parse("[1]").unwrap_err().code, Code::BadJson);
    }

    #[test]
    fn ops_need_their_fields_in_order() {
        let op = |text: &str| {
            let req = parse(text).unwrap();
            req.op(8).map(|_| ()).map_err(|f| (f.code, f.message))
        };
        let err = |code: Code, msg: &str| Err((code, msg.to_string()));
        assert_eq!(op(r#"{"op":"ping"}"#), Ok(()));
        assert_eq!(op(r#"{"id":1}"#), err(Code::BadRequest, "`op` is required"));
        assert_eq!(
            op(r#"{"op":"fly"}"#),
            err(
                Code::UnknownOp,
                "unknown op `fly` (join, leave, emit, send, presence, refresh, ping)"
            )
        );
        assert_eq!(
            op(r#"{"op":"join"}"#),
            err(Code::BadRequest, "`room` is required")
        );
        // The room is checked before the event.
        assert_eq!(
            op(r#"{"op":"emit","room":""}"#),
            err(Code::InvalidRoom, "room names cannot be empty")
        );
        assert_eq!(
            op(r#"{"op":"emit","room":"123456789"}"#),
            err(Code::RoomNameTooLong, "room names are at most 8 bytes")
        );
        assert_eq!(
            op(r#"{"op":"emit","room":"r"}"#),
            err(Code::BadRequest, "`event` is required")
        );
        assert_eq!(
            op(r#"{"op":"send","event":"e"}"#),
            err(Code::BadRequest, "`to` is required")
        );
        assert_eq!(
            op(r#"{"op":"send","to":"n.a.1"}"#),
            err(Code::BadRequest, "`event` is required")
        );
        let req =
            parse(r#"{"op":"emit","room":"r","event":"e","data":[1, 2],"self":true}"#).unwrap();
        match req.op(8) {
            Ok(Op::Emit {
                room,
                event,
                data,
                include_self,
            }) => {
                assert_eq!((room.as_str(), event, include_self), ("r", "e", true));
                assert_eq!(data.map(|d| d.get()), Some("[1, 2]"));
            }
            other => panic!("{other:?}"),
        }
        let binary = |text: &str| {
            let req = parse(text).unwrap();
            req.binary_op(8)
                .map(|op| format!("{op:?}"))
                .map_err(|f| f.code)
        };
        assert_eq!(
            binary(r#"{"op":"send","to":"n.a.1"}"#),
            Ok(format!(
                "{:?}",
                BinaryOp::Send {
                    to: "n.a.1",
                    event: "binary"
                }
            ))
        );
        assert_eq!(
            binary(r#"{"op":"join","room":"r"}"#),
            Err(Code::BinaryNotSupported)
        );
        assert_eq!(binary(r#"{"room":"r"}"#), Err(Code::BinaryNotSupported));
    }

    #[test]
    fn frames() {
        let data = serde_json::from_str::<&RawValue>(r#"{"a":1}"#).unwrap();
        assert_eq!(
            event("r", "chat", "n.1", None, Some(data)),
            r#"{"type":"event","room":"r","event":"chat","from":"n.1","data":{"a":1}}"#
        );
        assert_eq!(
            direct("offer", "n.1", None, None),
            r#"{"type":"direct","event":"offer","from":"n.1","data":null}"#
        );
        let e = error(
            Some(&json!("x")),
            &Failure::new(Code::NotMember, "join first"),
        );
        let v: Value = serde_json::from_str(&e).unwrap();
        assert_eq!(
            v,
            json!({"type":"error","id":"x","code":"not_member","message":"join first"})
        );
        assert_eq!(node_of("node-a.k2.17"), Some("node-a"));
        assert_eq!(node_of("nodot"), None);
    }
}
