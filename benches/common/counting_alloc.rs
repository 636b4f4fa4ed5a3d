//! The benchmarks' global allocator: the system's (glibc's malloc), or mimalloc for a process
//! started with `NAMEKO_BENCH_ALLOCATOR=mimalloc`; it counts allocations between [`start`] and
//! [`stop`] (a shared counter costs the measured code time, so it counts only then).

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

fn count() {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

const UNDECIDED: u8 = 0;
const SYSTEM: u8 = 1;
const MIMALLOC: u8 = 2;
static CHOICE: AtomicU8 = AtomicU8::new(UNDECIDED);

/// Whether this process allocates with mimalloc: decided at its first allocation, from the
/// environment (read without allocating), and the same for the whole process.
fn mimalloc() -> bool {
    match CHOICE.load(Ordering::Relaxed) {
        SYSTEM => false,
        MIMALLOC => true,
        _ => {
            // SAFETY: a NUL-terminated name; nothing in the benchmarks changes their own
            // environment, so the value is not freed under us.
            #[allow(unsafe_code)]
            let chosen = unsafe {
                let value = libc::getenv(c"NAMEKO_BENCH_ALLOCATOR".as_ptr());
                !value.is_null() && std::ffi::CStr::from_ptr(value) == c"mimalloc"
            };
            CHOICE.store(if chosen { MIMALLOC } else { SYSTEM }, Ordering::Relaxed);
            chosen
        }
    }
}

// SAFETY: forwards to one allocator for the whole process; only counts.
#[allow(unsafe_code)]
unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract is the allocator's.
        unsafe {
            if mimalloc() {
                mimalloc::MiMalloc.alloc(layout)
            } else {
                std::alloc::System.alloc(layout)
            }
        }
    }
    // Forwarded, not left to the default (`alloc` then a memset): the allocators' own zeroed
    // allocation (`calloc`) leaves fresh pages untouched, so that a large zeroed buffer costs no
    // resident memory until it is written, in the benchmarks as in a service.
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe {
            if mimalloc() {
                mimalloc::MiMalloc.alloc_zeroed(layout)
            } else {
                std::alloc::System.alloc_zeroed(layout)
            }
        }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: as above; `ptr` came from the same allocator (the choice never changes).
        unsafe {
            if mimalloc() {
                mimalloc::MiMalloc.dealloc(ptr, layout)
            } else {
                std::alloc::System.dealloc(ptr, layout)
            }
        }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe {
            if mimalloc() {
                mimalloc::MiMalloc.realloc(ptr, layout, new_size)
            } else {
                std::alloc::System.realloc(ptr, layout, new_size)
            }
        }
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

/// The allocator this process uses, for the reports.
#[allow(dead_code)]
pub fn name() -> &'static str {
    if mimalloc() {
        "mimalloc"
    } else {
        "glibc malloc"
    }
}
