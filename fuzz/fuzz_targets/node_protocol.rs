//! The node's client protocol: JSON requests in text frames and
//! `<JSON request>\n<payload>` binary frames. Parsing never panics, the
//! binary split keeps the payload byte for byte, and every frame the node
//! builds from a parsed request is JSON that reads back to the same fields
//! (the header of a binary frame never holds a raw newline, so the
//! recipient's split at the first newline is sound).
#![no_main]

use libfuzzer_sys::fuzz_target;
use limpet_node::protocol::{self, Code, Failure};
use serde_json::{json, Value};

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("the node writes valid JSON")
}

fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(a) => a.iter().any(has_float),
        Value::Object(o) => o.values().any(has_float),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    // Binary frames.
    match protocol::split_binary(data) {
        Ok((req, payload)) => {
            let nl = data.iter().position(|&b| b == b'\n').unwrap();
            assert_eq!(payload, &data[nl + 1..]);
            let head = std::str::from_utf8(&data[..nl]).unwrap();
            assert_eq!(protocol::parse(head).unwrap().op, req.op);
            let event = req.event.as_deref().unwrap_or("binary");
            let room = req.room.as_deref().unwrap_or("");
            for header in [
                protocol::event(room, event, "node-a.x.1", None, None),
                protocol::direct(event, "node-a.x.1", None, None),
            ] {
                assert!(!header.contains('\n'), "a raw newline in a binary header");
                let v = json(&header);
                assert_eq!(v["event"], event);
            }
        }
        Err(f) => {
            if !data.contains(&b'\n') {
                assert_eq!(f.code, Code::BadRequest);
            }
        }
    }

    // Text frames.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(req) = protocol::parse(text) else {
        return;
    };
    // The node forwards `data` as raw text: JSON that only a lenient reader
    // takes (numbers past f64, say) stays out of the read-back checks.
    if req
        .data
        .is_some_and(|d| serde_json::from_str::<Value>(d.get()).is_err())
    {
        return;
    }
    let room = req.room.as_deref().unwrap_or("r");
    let event = req.event.as_deref().unwrap_or("e");
    let from = req.to.as_deref().unwrap_or("n.1");
    let v = json(&protocol::event(room, event, from, None, req.data));
    assert_eq!(
        (&v["type"], &v["room"], &v["event"], &v["from"]),
        (&json!("event"), &json!(room), &json!(event), &json!(from))
    );
    if let Some(raw) = req.data {
        let want: Value = serde_json::from_str(raw.get()).unwrap();
        assert_eq!(v["data"], want, "data is forwarded untouched");
    } else {
        assert_eq!(v["data"], Value::Null);
    }
    let v = json(&protocol::direct(event, from, None, req.data));
    assert_eq!(v["type"], "direct");
    // A float `id` is left out: serde_json without `float_roundtrip` can
    // read the f64 it wrote back as its neighbour (see the fuzz README).
    if let Some(id) = req.id.as_ref().filter(|id| !has_float(id)) {
        let v = json(&protocol::ack(id, json!({"room": room})));
        assert_eq!(&v["id"], id);
    }
    let failure = Failure::new(Code::BadRequest, text);
    let v = json(&protocol::error(req.id.as_ref(), &failure));
    assert_eq!(v["message"], text);
    if !req.id.as_ref().is_some_and(has_float) {
        assert_eq!(v.get("id"), req.id.as_ref());
    }
    for s in [room, from] {
        if let Some(node) = protocol::node_of(s) {
            assert!(!node.is_empty() && !node.contains('.'));
            assert!(s.starts_with(&format!("{node}.")));
        }
    }
    let v = json(&protocol::joined(room, from, event, None));
    assert_eq!(v["room"], room);
});
