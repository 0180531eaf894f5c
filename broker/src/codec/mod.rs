//! RESP wire format, split by direction: [`parse`] turns a client's bytes
//! into requests, [`encode`] writes replies and pushed messages.
//!
//! The two halves share nothing but this module's name; they are apart so
//! that the code that faces untrusted input (parsing) can be read, fuzzed
//! (`fuzz/fuzz_targets/broker_resp.rs`) and reviewed on its own. The
//! re-exports below are the codec's public path, which the fuzz target uses.

pub mod encode;
pub mod parse;

pub use encode::{encode_message, Proto, Reply};
pub use parse::{keep, parse_i64, split_args, Limits, ProtocolError, RequestParser};

#[cfg(test)]
mod tests;
