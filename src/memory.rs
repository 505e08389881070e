//! Giving freed heap back to the operating system.
//!
//! glibc's allocator keeps the pages of freed memory: the initial listings of the watches and a burst of
//! reconciles leave the heap at its high-water mark, and the resident set never comes down to what the stores
//! hold. `malloc_trim` returns the free pages (inside the heap too, with `madvise`); the operator calls it once its
//! caches are synced and then every [`TRIM_EVERY`] (a walk of a heap of tens of MiB: well under a millisecond of CPU
//! per call). Other allocators and platforms: nothing to do.
use std::time::Duration;

/// How often free heap pages are returned.
pub const TRIM_EVERY: Duration = Duration::from_secs(20);

/// Returns free heap pages to the operating system; whether any were.
pub fn release_free_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks and trims the allocator's own free lists; any pad value is valid.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Bytes of heap in use by live allocations, where the allocator tells (glibc): the figure a heap profile would
/// start from, beside the resident set.
pub fn heap_in_use() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        let m = unsafe { libc::mallinfo2() };
        Some((m.uordblks + m.hblkhd) as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Trims now and then every [`TRIM_EVERY`], for as long as the process runs.
pub async fn trim_periodically() {
    let mut tick = tokio::time::interval(TRIM_EVERY);
    loop {
        tick.tick().await;
        release_free_heap();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn trimming_keeps_live_memory_and_reports_the_heap() {
        let keep: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 64 * 1024]).collect();
        drop((0..256).map(|_| vec![1u8; 64 * 1024]).collect::<Vec<_>>());
        super::release_free_heap();
        assert!(keep.iter().enumerate().all(|(i, v)| v.iter().all(|b| *b == i as u8)));
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        assert!(super::heap_in_use().unwrap() >= 64 * 64 * 1024);
    }
}
