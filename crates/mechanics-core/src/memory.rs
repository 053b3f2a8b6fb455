//! Per-job heap accounting: the global allocator wrapper that lets the engine enforce
//! `max_memory_mb`.
//!
//! Boa has no memory limit of its own, so the engine counts what each job's thread allocates.
//! A program that embeds the engine installs [`JobMemoryAllocator`] as its global allocator; when
//! it does not, memory limits are reported as not enforced in
//! [`MechanicsPoolStats`](crate::MechanicsPoolStats) and only the other limits apply.
//!
//! Two thresholds apply while a job runs on a thread:
//! - the soft limit (`max_memory_mb`) only raises a flag: the engine checks it at its next safe
//!   point (a loop iteration, a call, a promise job) and fails the job with an uncatchable error;
//! - the hard limit (twice the soft limit, at least 64 MiB above it) stops a single allocation that
//!   native code makes without reaching a safe point (`'a'.repeat(2 ** 30)`). An allocator may not
//!   fail or unwind without aborting the process, so the thread is parked for good instead, before
//!   the memory is taken; the pool notices, fails the job and starts a replacement thread.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use mimalloc::MiMalloc;

/// A global allocator that forwards to mimalloc and counts bytes per thread.
///
/// mimalloc rather than the system allocator: every job builds and drops a whole realm, and that
/// churn through glibc's malloc (arena locks, trimming, re-faulting pages) cost about 7% of
/// end-to-end task throughput in `cargo bench -p mechanics --bench serve`.
///
/// ```text
/// #[global_allocator]
/// static ALLOCATOR: mechanics_core::JobMemoryAllocator = mechanics_core::JobMemoryAllocator;
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct JobMemoryAllocator;

static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static IN_USE: Cell<i64> = const { Cell::new(0) };
    static SOFT_LIMIT: Cell<i64> = const { Cell::new(0) };
    static HARD_LIMIT: Cell<i64> = const { Cell::new(i64::MAX) };
    static PARK_SIGNAL: Cell<*const AtomicU8> = const { Cell::new(std::ptr::null()) };
}

/// Value stored in a worker's park signal when its thread parked on the hard memory limit.
pub(crate) const PARKED_FOR_MEMORY: u8 = 1;
/// Value stored in a worker's park signal when its thread overflowed its native stack (see
/// [`crate::stack_guard`]).
pub(crate) const PARKED_FOR_STACK: u8 = 2;

fn account(delta: i64) {
    // `try_with` because allocations also happen while thread-locals are being torn down.
    let _ = IN_USE.try_with(|in_use| {
        let now = in_use.get().saturating_add(delta);
        in_use.set(now);
        if delta > 0 {
            let hard = HARD_LIMIT.try_with(Cell::get).unwrap_or(i64::MAX);
            if now > hard {
                park_forever(PARKED_FOR_MEMORY);
            }
        }
    });
}

#[cold]
fn park_forever(reason: u8) -> ! {
    let signal = PARK_SIGNAL.try_with(Cell::get).unwrap_or(std::ptr::null());
    if !signal.is_null() {
        // SAFETY: the worker that set the pointer keeps the atomic alive (in an `Arc` it also
        // hands to the pool) for as long as the thread runs, and this thread never returns.
        unsafe { &*signal }.store(reason, Ordering::Release);
    }
    loop {
        std::thread::park();
    }
}

// SAFETY: every method forwards to `MiMalloc` with the same arguments and only adds bookkeeping in
// `Cell`s that do not allocate.
unsafe impl GlobalAlloc for JobMemoryAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_installed();
        account(layout.size() as i64);
        // SAFETY: forwarded unchanged.
        unsafe { MiMalloc.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_installed();
        account(layout.size() as i64);
        // SAFETY: forwarded unchanged.
        unsafe { MiMalloc.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        account(-(layout.size() as i64));
        // SAFETY: forwarded unchanged.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let delta = new_size as i64 - layout.size() as i64;
        account(delta);
        // SAFETY: forwarded unchanged.
        unsafe { MiMalloc.realloc(ptr, layout, new_size) }
    }
}

fn note_installed() {
    if !INSTALLED.load(Ordering::Relaxed) {
        INSTALLED.store(true, Ordering::Relaxed);
    }
}

/// Whether [`JobMemoryAllocator`] is the process's global allocator, so memory limits hold.
pub fn memory_limits_enforced() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

/// Hands heap memory that was freed a while ago back to the system.
///
/// mimalloc returns freed pages to the system only after a delay, and only when some thread
/// frees or collects again: a server that goes idle right after a burst (a flood of large
/// webhook bodies, say) would otherwise keep that memory resident until its next burst. A server
/// calls this every few seconds; when nothing is waiting to be returned it costs next to nothing.
pub fn release_freed_memory() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

/// Starts accounting for a job on the current thread with a soft limit of `limit` bytes.
/// `park_signal` receives [`PARKED_FOR_MEMORY`] if the thread parks on the hard limit.
pub(crate) fn begin_job(limit: u64, park_signal: &AtomicU8) {
    let soft = i64::try_from(limit).unwrap_or(i64::MAX);
    let hard = soft
        .saturating_mul(2)
        .max(soft.saturating_add(64 * 1024 * 1024));
    IN_USE.with(|c| c.set(0));
    SOFT_LIMIT.with(|c| c.set(soft));
    HARD_LIMIT.with(|c| c.set(hard));
    PARK_SIGNAL.with(|c| c.set(park_signal));
}

/// Stops accounting on the current thread; returns the job's net allocation in bytes.
pub(crate) fn end_job() -> i64 {
    SOFT_LIMIT.with(|c| c.set(0));
    HARD_LIMIT.with(|c| c.set(i64::MAX));
    PARK_SIGNAL.with(|c| c.set(std::ptr::null()));
    IN_USE.with(Cell::get)
}

/// Charges the current job for `bytes` of heap that another thread allocated and this one will
/// free (an endpoint response): freeing it here would otherwise count as memory the job released.
pub(crate) fn adopt(bytes: usize) {
    account(i64::try_from(bytes).unwrap_or(i64::MAX));
}

/// Credits the current job for `bytes` of heap it allocated and another thread will free (an
/// endpoint request body): otherwise the job would pay for it forever.
pub(crate) fn hand_off(bytes: usize) {
    account(-i64::try_from(bytes).unwrap_or(i64::MAX));
}

/// Whether the current job has allocated more than its soft limit (net of what it freed).
pub(crate) fn over_soft_limit() -> bool {
    let soft = SOFT_LIMIT.with(Cell::get);
    soft > 0 && IN_USE.with(Cell::get) > soft
}
