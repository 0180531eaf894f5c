//! Spare I/O buffers kept per worker thread, so that an idle connection
//! holds none.
//!
//! A connection borrows a buffer when bytes arrive or replies are about to
//! be written ([`take`]) and hands it back as soon as it is empty again
//! ([`give`]): its request bytes parsed, its replies written or queued.
//! The next connection served on the same thread reuses it while it is
//! still warm in the cache. Only buffers of ordinary size are kept, and
//! only a few, so a client that once sent a huge request or got a huge
//! reply frees that memory when it is done with it.
//!
//! Arguments parsed from a read buffer are slices of it; whatever outlives
//! its request (channel names, client names) is copied
//! ([`crate::codec::parse::keep`]), or an idle client would pin the whole
//! buffer through a few bytes.

use bytes::BytesMut;
use std::cell::RefCell;

/// The size a buffer is borrowed with, and the read size.
pub const CHUNK: usize = 16 * 1024;
/// Buffers larger than this go back to the allocator, not to the spares.
const KEEP_MAX: usize = 4 * CHUNK;
/// Spares per thread: a connection uses two at once (input and replies).
const SPARES: usize = 4;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// A buffer with at least [`CHUNK`] / 4 bytes free, for `buf` if it has
/// none (an idle connection's buffers are empty and hold no memory).
pub fn take(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() >= CHUNK / 4 {
        return;
    }
    if buf.capacity() == 0 {
        if let Some(spare) = SPARE.with_borrow_mut(Vec::pop) {
            *buf = spare;
        }
    }
    // A spare whose front was consumed gets it back here when no frozen
    // slice still shares it; otherwise this allocates a fresh chunk.
    buf.reserve(CHUNK);
}

/// Lets go of `buf` if it is empty: it joins this thread's spares or is
/// freed, and `buf` holds no memory until the next [`take`].
pub fn give(buf: &mut BytesMut) {
    if !buf.is_empty() || buf.capacity() == 0 {
        return;
    }
    let spare = std::mem::take(buf);
    if (CHUNK / 4..=KEEP_MAX).contains(&spare.capacity()) {
        SPARE.with_borrow_mut(|spares| {
            if spares.len() < SPARES {
                spares.push(spare);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_buffer_is_let_go_and_a_spare_reused() {
        let mut a = BytesMut::new();
        take(&mut a);
        assert!(a.capacity() >= CHUNK);
        a.extend_from_slice(b"PING\r\n");
        give(&mut a);
        assert!(a.capacity() > 0, "bytes still owed keep the buffer");
        a.clear();
        let ptr = a.as_ptr();
        give(&mut a);
        assert_eq!(a.capacity(), 0, "an empty buffer is let go");
        let mut b = BytesMut::new();
        take(&mut b);
        assert_eq!(b.as_ptr(), ptr, "the spare is reused");
    }

    #[test]
    fn a_huge_buffer_is_freed() {
        let mut a = BytesMut::with_capacity(KEEP_MAX * 2);
        give(&mut a);
        assert_eq!(a.capacity(), 0);
        SPARE.with_borrow(|s| assert!(s.iter().all(|b| b.capacity() <= KEEP_MAX)));
    }
}
