use super::*;

const OPEN4: &[u8] = br#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;

#[test]
fn reads_the_sid_of_every_engine_io_framing() {
    assert_eq!(
        handshake_sid(OPEN4),
        Opening::Sid("lv_VI97HAXpY6yYWAAAC".into())
    );
    // EIO=3 text payload, with the namespace connect packet after it.
    let eio3 = br#"96:0{"sid":"abc","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":5000}2:40"#;
    assert_eq!(handshake_sid(eio3), Opening::Sid("abc".into()));
    // EIO=3 binary (XHR2) payload: 0x00, length digits, 0xff.
    let mut bin = vec![0u8, 9, 6, 0xff];
    bin.extend_from_slice(br#"0{"sid":"xyz"}"#);
    assert_eq!(handshake_sid(&bin), Opening::Sid("xyz".into()));
    // Cut anywhere: not known yet, never wrong.
    for cut in 0..OPEN4.len() - 1 {
        assert_eq!(
            handshake_sid(&OPEN4[..cut]),
            Opening::NotYet,
            "cut at {cut}"
        );
    }
    // Not an open packet, or no usable sid.
    for bad in [
        &b"4hello"[..],
        b"ok",
        b"0[1]",
        br#"0{"nosid":1}"#,
        br#"0{"sid":""}"#,
        br#"0{"sid":7}"#,
        b"12:4x",
        b"<html>",
    ] {
        assert_eq!(
            handshake_sid(bad),
            Opening::NotOpen,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let long = format!(r#"0{{"sid":"{}"}}"#, "s".repeat(MAX_SID + 1));
    assert_eq!(handshake_sid(long.as_bytes()), Opening::NotOpen);
}

#[test]
fn the_sniffer_reads_split_answers_and_gives_up_past_its_bound() {
    let mut s = Sniffer::new();
    let mut verdict = None;
    for chunk in OPEN4.chunks(7) {
        if let Some(v) = s.feed(chunk) {
            verdict = Some(v);
            break;
        }
    }
    assert_eq!(
        verdict,
        Some(Sniffed::Learned("lv_VI97HAXpY6yYWAAAC".into()))
    );
    assert_eq!(s.feed(b"more"), None, "decided once");
    assert_eq!(s.finish(), None);

    // A JSON object that never ends within the bound.
    let mut s = Sniffer::new();
    assert_eq!(s.feed(br#"0{"pad":""#), None);
    let pad = vec![b'x'; 300];
    let mut verdict = None;
    for _ in 0..10 {
        if let Some(v) = s.feed(&pad) {
            verdict = Some(v);
            break;
        }
    }
    assert_eq!(verdict, Some(Sniffed::Unreadable));
    assert!(s.seen.capacity() == 0, "the copy is released");

    // A body that ends early.
    let mut s = Sniffer::new();
    assert_eq!(s.feed(b"0{"), None);
    assert_eq!(s.finish(), Some(Sniffed::Unreadable));
}

#[test]
fn the_table_is_bounded_least_recently_used_first() {
    let t = SidTable::new(3, Duration::from_secs(60));
    let now = Instant::now();
    let b: Arc<str> = Arc::from("b0");
    for sid in ["s1", "s2", "s3"] {
        t.insert(sid, b.clone(), now);
    }
    assert_eq!(t.stats().evicted_full, 0);
    // s1 used again: s2 is now the least recently used.
    assert_eq!(t.lookup("s1", now), SidLookup::Known(b.clone()));
    t.insert("s4", b.clone(), now);
    assert_eq!(t.stats().evicted_full, 1);
    assert_eq!(t.lookup("s2", now), SidLookup::Unknown);
    for sid in ["s1", "s3", "s4"] {
        assert_eq!(t.lookup(sid, now), SidLookup::Known(b.clone()), "{sid}");
    }
    assert_eq!(t.len(), 3);
    // The same sid again replaces its entry, it does not grow the table.
    t.insert("s4", Arc::from("b1"), now);
    assert_eq!(t.len(), 3);
    assert_eq!(t.lookup("s4", now), SidLookup::Known(Arc::from("b1")));
    // A smaller bound on reload drops the oldest now.
    t.configure(1, Duration::from_secs(60));
    assert_eq!(t.stats().evicted_full, 3);
    assert_eq!(t.lookup("s4", now), SidLookup::Known(Arc::from("b1")));
    // Too long to be a sid: never stored, never found.
    let long = "x".repeat(MAX_SID + 1);
    t.insert(&long, b.clone(), now);
    assert_eq!(t.lookup(&long, now), SidLookup::Unknown);
    let stats = t.stats();
    assert_eq!(
        (stats.sessions, stats.hits, stats.misses, stats.learned),
        (1, 6, 2, 5)
    );
}

#[test]
fn idle_sessions_expire_and_each_hit_refreshes() {
    let t = SidTable::new(10, Duration::from_secs(60));
    let start = Instant::now();
    let b: Arc<str> = Arc::from("b0");
    t.insert("old", b.clone(), start);
    t.insert("busy", b.clone(), start);
    let later = start + Duration::from_secs(50);
    assert_eq!(t.lookup("busy", later), SidLookup::Known(b.clone()));
    assert_eq!(
        t.lookup("old", start + Duration::from_secs(61)),
        SidLookup::Unknown
    );
    assert_eq!(t.stats().evicted_idle, 1);
    // "busy" was refreshed at 50 s, so it lives until 110 s.
    assert_eq!(
        t.lookup("busy", start + Duration::from_secs(100)),
        SidLookup::Known(b)
    );
    t.lookup("busy", start + Duration::from_secs(161));
    assert_eq!(t.stats().evicted_idle, 2);
    assert!(t.is_empty());
}
