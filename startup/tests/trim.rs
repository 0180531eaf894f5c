//! A trim gives back the memory a burst of buffers left between live
//! allocations (its own test binary: RSS is per process, and no other test
//! may allocate meanwhile).

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_trim_returns_the_holes_a_burst_left() {
    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
    const BUFFERS: usize = 4_000;
    const SIZE: usize = 16 * 1024;
    if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("mmap_threshold")) {
        eprintln!(
            "SKIPPED: GLIBC_TUNABLES sets mmap_threshold, so the buffers are not on the heap"
        );
        return;
    }
    let start = rss_kib();
    // 16 KiB buffers (under glibc's default mmap threshold, so on the heap)
    // with a small allocation after each that stays: once the buffers are
    // freed, the heap is full of holes of three whole pages or more that
    // glibc keeps.
    let mut buffers = Vec::with_capacity(BUFFERS);
    let mut kept = Vec::with_capacity(BUFFERS);
    for i in 0..BUFFERS {
        // Written through, so every page is resident.
        buffers.push(vec![i as u8 | 1; SIZE]);
        kept.push(Box::new(i));
    }
    let full = rss_kib();
    drop(buffers);
    let before = rss_kib();
    limpet_startup::trim::release();
    let after = rss_kib();
    let burst = full.saturating_sub(start);
    assert!(burst > 48 * 1024, "the burst made {burst} KiB resident");
    // 62.5 MiB of buffers, at least 46.9 MiB of it in whole pages inside
    // the holes; most of that must come back, and stay back without a trim.
    assert!(
        before.saturating_sub(after) > burst / 2,
        "RSS {start} KiB, {full} with the buffers, {before} once they were freed, {after} after the trim"
    );
    assert_eq!(kept.len(), BUFFERS);
}
