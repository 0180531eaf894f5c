//! Gives the heap memory the process has freed back to the system, every
//! few seconds, on a thread of its own.
//!
//! glibc keeps freed memory in its arenas and returns only the top of each
//! heap. A burst of connection handshakes (hyper's 8 KiB buffers, freed
//! once a connection is upgraded) leaves holes between the allocations of
//! the connections that stay, and RSS stays at the burst's high-water mark
//! for good. `malloc_trim(0)` walks every arena and gives the free pages
//! back (`madvise`).
//!
//! Measured with limpet-proxy, 9,000 idle tunnels opened 256 at a time:
//! 3.31 KiB per tunnel as left by the burst, 2.22 after a trim. The other
//! way, `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=8192` (each 8 KiB
//! allocation its own mapping), reached 2.63 but made every hyper read
//! buffer an `mmap` and a `munmap`: plain HTTP through a fresh proxy fell
//! from about 55,000 to 20,000 requests/s.
//!
//! A trim holds each arena's lock while it walks it, so it runs on its own
//! thread rather than on a runtime's, and only every [`EVERY`] (or
//! `LIMPET_MALLOC_TRIM_SECS`; 0 turns it off; a value that is not a
//! number is logged and the default kept).
//!
//! The one `unsafe` block of the workspace is here: `malloc_trim` is a
//! glibc function with no safe binding in std or rustix.

use std::time::Duration;

/// How often the heap is trimmed by default.
pub const EVERY: Duration = Duration::from_secs(5);

/// The environment variable that sets the period in seconds (0: never).
pub const ENV: &str = "LIMPET_MALLOC_TRIM_SECS";

/// The period `LIMPET_MALLOC_TRIM_SECS` asks for, [`EVERY`] without it;
/// `None` for 0; an error for a value that is not a number.
pub fn period(value: Option<&str>) -> Result<Option<Duration>, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(Some(EVERY)),
        Some(v) => match v.parse::<u64>() {
            Ok(0) => Ok(None),
            Ok(secs) => Ok(Some(Duration::from_secs(secs))),
            Err(_) => Err(format!("{ENV}={v:?} is not a number of seconds")),
        },
    }
}

/// Starts the trimming thread (nothing off glibc, or when `period` is
/// `None`).
pub fn spawn(period: Option<Duration>) -> std::io::Result<()> {
    let Some(every) = period else {
        return Ok(());
    };
    if !available() {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("limpet-trim".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            release();
        })
        .map(drop)
}

/// Whether this build can trim (glibc).
pub fn available() -> bool {
    cfg!(all(target_os = "linux", target_env = "gnu"))
}

/// Returns the free pages of every arena to the system; whether any were.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release() -> bool {
    // SAFETY: malloc_trim takes no pointer and glibc serialises it with
    // every other allocator call (it takes each arena's lock in turn).
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_period_comes_from_the_environment_variable() {
        assert_eq!(period(None), Ok(Some(EVERY)));
        assert_eq!(period(Some("")), Ok(Some(EVERY)));
        assert_eq!(period(Some("3")), Ok(Some(Duration::from_secs(3))));
        assert_eq!(period(Some("0")), Ok(None));
        assert!(period(Some("ten")).unwrap_err().contains(ENV));
    }
}
