//! Copy buffers lent to tunnels only while bytes move.
//!
//! An open WebSocket tunnel is silent most of its life, so it must not own
//! a copy buffer: it waits for readiness without one and borrows one from
//! the pool of the worker thread it runs on for as long as bytes are in
//! flight (a read that is not yet fully written). In the common case the
//! buffer goes back within the same poll, so a worker thread needs one or
//! two buffers however many tunnels it carries.
//!
//! A task can move between worker threads while it holds a buffer; it then
//! gives it back to the pool of the thread it ends on. Each pool keeps at
//! most [`KEEP`] buffers, so a burst of slow writers cannot make it grow
//! for good.

use std::cell::RefCell;

/// Bytes per buffer: one read fills at most this much. 16 KiB carries a
/// bulk transfer in few syscalls and is still cheap to keep a few of.
pub const SIZE: usize = 16 * 1024;

/// Buffers a thread keeps for reuse once they are given back.
const KEEP: usize = 8;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of [`SIZE`] bytes from this thread's pool (a new one when the
/// pool is empty). Its content is whatever the last user left.
pub fn take() -> Box<[u8]> {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; SIZE].into_boxed_slice())
}

/// Gives a buffer back to this thread's pool, or frees it when the pool
/// already holds [`KEEP`].
pub fn give(buf: Box<[u8]>) {
    if buf.len() != SIZE {
        return;
    }
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < KEEP {
            pool.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_the_pool_is_bounded() {
        let a = take();
        let ptr = a.as_ptr();
        give(a);
        let b = take();
        assert_eq!(b.as_ptr(), ptr, "the buffer given back is lent again");
        give(b);
        let many: Vec<_> = (0..KEEP + 4).map(|_| take()).collect();
        for buf in many {
            give(buf);
        }
        assert_eq!(POOL.with(|p| p.borrow().len()), KEEP);
    }
}
