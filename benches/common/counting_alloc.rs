//! The benchmarks' global allocator: the system's, counting allocations between [`start`] and
//! [`stop`] (a shared counter costs the measured code time, so it counts only then).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

fn count() {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards to the system allocator; only counts.
#[allow(unsafe_code)]
unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: as above.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Starts counting; pass what it returns to [`stop`].
pub fn start() -> u64 {
    COUNTING.store(true, Ordering::Relaxed);
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Stops counting; returns the allocations (of the whole process) since [`start`].
pub fn stop(started: u64) -> u64 {
    let now = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.store(false, Ordering::Relaxed);
    now - started
}
