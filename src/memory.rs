//! The allocator, and giving freed memory back to the operating system.
//!
//! The binaries of this crate install [`Allocator`] (mimalloc) as their global allocator: on the connect server's request paths glibc's
//! `malloc`/`free` took about 15 % of the CPU (`perf`, BENCHMARKS.md) and mimalloc about a third of that.
//! mimalloc returns the pages of freed memory on its own after a short delay; the initial listings of the watches
//! and a burst of reconciles still leave pages to collect, so the operator forces a collection once its caches are
//! synced and then every [`TRIM_EVERY`] (well under a millisecond of CPU per call).
use std::time::Duration;

/// The allocator `latchkey` installs (`#[global_allocator]` in `main.rs`; a library cannot choose it for the
/// test binaries, some of which count allocations with their own).
pub use mimalloc::MiMalloc as Allocator;

/// How often free pages are returned.
pub const TRIM_EVERY: Duration = Duration::from_secs(20);

/// Returns free pages to the operating system now.
pub fn release_free_heap() {
    // SAFETY: mi_collect only walks the allocator's own free lists and purges unused pages.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Collects now and then every [`TRIM_EVERY`], for as long as the process runs.
pub async fn trim_periodically() {
    let mut tick = tokio::time::interval(TRIM_EVERY);
    loop {
        tick.tick().await;
        release_free_heap();
    }
}

#[cfg(test)]
mod tests {
    /// This process's resident set, from the kernel.
    fn resident_bytes() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
        statm.split_whitespace().nth(1).and_then(|p| p.parse::<usize>().ok()).expect("resident pages") * 4096
    }

    #[test]
    fn collecting_returns_freed_memory_and_keeps_live_memory() {
        use std::alloc::{GlobalAlloc, Layout};
        let layout = Layout::from_size_align(64 * 1024, 8).expect("layout");
        // Through the allocator the binary installs: 64 blocks kept, 512 (32 MiB) touched then freed.
        let alloc = |fill: u8| {
            // SAFETY: a non-zero size; the block is written within its layout.
            unsafe {
                let p = super::Allocator.alloc(layout);
                assert!(!p.is_null());
                std::ptr::write_bytes(p, fill, layout.size());
                p
            }
        };
        let keep: Vec<*mut u8> = (0..64).map(|i| alloc(i as u8)).collect();
        let freed: Vec<*mut u8> = (0..512).map(|_| alloc(1)).collect();
        let with_freed = resident_bytes();
        for p in freed {
            // SAFETY: allocated above with this layout, freed once.
            unsafe { super::Allocator.dealloc(p, layout) };
        }
        super::release_free_heap();
        let after = resident_bytes();
        for (i, p) in keep.into_iter().enumerate() {
            // SAFETY: allocated above with this layout and still live; read within it, then freed once.
            unsafe {
                assert!(std::slice::from_raw_parts(p, layout.size()).iter().all(|b| *b == i as u8));
                super::Allocator.dealloc(p, layout);
            }
        }
        assert!(after + 16 * 1024 * 1024 < with_freed, "resident {with_freed} bytes before collecting, {after} after");
    }
}
