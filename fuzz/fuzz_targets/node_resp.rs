//! The node's RESP reader for its broker link (`limpet_node::resp`):
//! whatever a broker sends, the parser never panics, never claims more
//! bytes than it was given, never hands out a string over its limit, and a
//! frame it reads whole is incomplete (not an error, not another frame) at
//! every shorter cut, so bytes split across reads parse the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use limpet_node::resp::{parse, Frame};

const MAX_BULK: usize = 300;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((frame, used))) = parse(rest, MAX_BULK) {
        assert!(used > 0 && used <= rest.len());
        if let Frame::Message { channel, payload } = frame {
            assert!(channel.len() <= MAX_BULK && payload.len() <= MAX_BULK);
        }
        for cut in 0..used {
            assert_eq!(parse(&rest[..cut], MAX_BULK), Ok(None), "cut at {cut}");
        }
        rest = &rest[used..];
    }
});
