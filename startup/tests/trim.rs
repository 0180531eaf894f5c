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
    // 8 KiB buffers (under glibc's default mmap threshold, so on the heap)
    // with a small allocation after each that stays: once the buffers are
    // freed, the heap is full of 8 KiB holes that glibc does not return.
    let mut buffers = Vec::new();
    let mut kept = Vec::new();
    for i in 0..8_000u32 {
        let mut b = vec![0u8; 8 * 1024];
        b[0] = i as u8;
        b[8 * 1024 - 1] = 1;
        buffers.push(b);
        kept.push(Box::new(i));
    }
    drop(buffers);
    let before = rss_kib();
    limpet_startup::trim::release();
    let after = rss_kib();
    // 64 MiB of holes; most of it must come back.
    assert!(
        before.saturating_sub(after) > 32 * 1024,
        "RSS {before} KiB before the trim, {after} KiB after"
    );
    assert_eq!(kept.len(), 8_000);
}
