//! The node's WebSocket framing (`limpet_node::ws`): whatever a client
//! sends, the decoder never panics, never claims more bytes than it was
//! given, and decodes the same events however the bytes are split across
//! reads (one read, or a read at every cut the input chooses). Also the
//! id read from a rate-limited request without parsing it
//! (`peek::id`): when it finds one, it is the id the full parse
//! finds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use limpet_node::{peek, protocol};
use limpet_node::ws::{Decoder, Event, WsError};

/// Every event in `chunks` fed in order, up to the first error.
fn decode<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> (Vec<Event>, Option<WsError>) {
    let mut d = Decoder::new(300, 1200);
    let mut events = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    for chunk in chunks {
        pending.extend_from_slice(chunk);
        loop {
            let (used, r) = d.feed(&pending);
            assert!(used <= pending.len());
            pending.drain(..used);
            match r {
                Err(e) => return (events, Some(e)),
                Ok(Some(e)) => events.push(e),
                Ok(None) => {
                    assert!(pending.is_empty(), "input left without an event");
                    break;
                }
            }
        }
    }
    (events, None)
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the cut size for the split decode.
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let whole = decode(std::iter::once(rest));
    let split = decode(rest.chunks(usize::from(step % 17) + 1));
    assert_eq!(whole, split, "the split changed what was decoded");
    for event in &whole.0 {
        match event {
            Event::Text(t) => assert!(t.len() <= 300),
            Event::Binary(b) => assert!(b.len() <= 300),
            Event::Ping(p) => assert!(p.len() <= 125),
            _ => {}
        }
    }

    if let Ok(text) = std::str::from_utf8(data) {
        if let (Some(peeked), Ok(req)) = (peek::id(text), protocol::parse(text)) {
            assert_eq!(req.id.as_ref(), Some(&peeked), "peek and parse disagree");
        }
    }
    let _ = peek::binary_id(data);
});
