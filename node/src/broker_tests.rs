//! Unit tests of [`crate::broker`]: the inbound queue's byte bound and
//! the seal check on what the broker delivers.

use super::*;

fn shared(secret: Option<&str>, max: usize) -> Shared {
    let metrics = crate::metrics::Metrics::new();
    Shared {
        connected: AtomicBool::new(true),
        since: parking_lot::Mutex::new(None),
        seal: Seal::new(secret),
        budget: ByteBudget::new(max),
        outbox: ByteBudget::new(max),
        max_age: MaxAge::new(Duration::from_millis(100)),
        counters: metrics.backplane.clone(),
    }
}

#[test]
fn the_inbound_queue_is_bounded_in_bytes() {
    let s = shared(None, 100);
    let (tx, mut rx) = mpsc::unbounded_channel();
    for _ in 0..3 {
        s.receive(&tx, "c".into(), Bytes::from(vec![b'x'; 60]));
    }
    let rejected = |why: &str| s.counters.rejected.with_label_values(&[why]).get();
    assert_eq!(rejected("inbound_full"), 2);
    let shed = s
        .counters
        .shed
        .with_label_values(&["broker_to_node", "queue_full"])
        .get();
    assert_eq!(shed, 2);
    assert_eq!(s.counters.inbound_bytes.get(), 60);
    assert!(matches!(rx.try_recv(), Ok(Inbound::Message { .. })));
    assert!(rx.try_recv().is_err());
    // Handling it frees the room for the next one.
    s.budget.release(60);
    s.receive(&tx, "c".into(), Bytes::from(vec![b'x'; 60]));
    assert!(matches!(rx.try_recv(), Ok(Inbound::Message { .. })));
}

#[test]
fn unsealed_messages_are_refused_with_a_secret() {
    let s = shared(Some("0123456789abcdef"), 1 << 20);
    let (tx, mut rx) = mpsc::unbounded_channel();
    s.receive(
        &tx,
        "c".into(),
        Bytes::from_static(b"{\"k\":\"hb\",\"o\":\"x\"}\n"),
    );
    assert!(rx.try_recv().is_err());
    assert_eq!(s.counters.rejected.with_label_values(&["auth"]).get(), 1);
    let sealed = s
        .seal
        .seal("c", Bytes::from_static(b"{\"k\":\"hb\",\"o\":\"x\"}\n"));
    s.receive(&tx, "c".into(), sealed);
    match rx.try_recv() {
        Ok(Inbound::Message { payload, .. }) => {
            assert_eq!(&payload[..], b"{\"k\":\"hb\",\"o\":\"x\"}\n")
        }
        _ => panic!("the sealed message is queued, unsealed"),
    }
}
