//! The process's resident memory, and the thread that enforces a node's memory cap.
//!
//! `setrlimit(RLIMIT_AS)` or `RLIMIT_DATA` cannot express the cap: every engine worker reserves a
//! 256 MiB stack that counts against both while costing nothing resident, so a limit loose enough
//! for the reservations bounds nothing. The cap is on resident memory instead, read from
//! `/proc/self/statm` every [`CHECK_INTERVAL`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the monitor reads resident memory. A job allocating at full speed gains a few
/// hundred MiB at most between two reads.
const CHECK_INTERVAL: Duration = Duration::from_millis(20);

/// Resident memory of this process in bytes (Linux `/proc/self/statm`); `None` where that cannot
/// be read.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// The monitor thread: keeps [`Monitor::rss`] fresh and ends the process past the cap.
pub(crate) struct Monitor {
    rss: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Monitor {
    /// Starts the thread. With `cap`, the process exits with `exit_status` as soon as its resident
    /// memory is above it: the job that caused it cannot be stopped from inside, and a process
    /// that swaps or meets the OOM killer takes its neighbours with it.
    pub(crate) fn start(cap: Option<u64>, exit_status: i32) -> std::io::Result<Self> {
        let rss = Arc::new(AtomicU64::new(resident_bytes().unwrap_or(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("mechanics-node-memory".into())
            .spawn({
                let (rss, stop) = (rss.clone(), stop.clone());
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        let now = resident_bytes().unwrap_or(0);
                        rss.store(now, Ordering::Relaxed);
                        if let Some(cap) = cap.filter(|cap| now > *cap) {
                            tracing::error!(
                                rss_bytes = now,
                                cap_bytes = cap,
                                "resident memory above the node's cap; exiting"
                            );
                            // SAFETY: `_exit` ends the process without running destructors or
                            // atexit handlers, which is the point: another thread may hold any
                            // lock, and only the kernel can reclaim the memory fast enough.
                            unsafe { libc::_exit(exit_status) };
                        }
                        std::thread::sleep(CHECK_INTERVAL);
                    }
                }
            })?;
        Ok(Monitor {
            rss,
            stop,
            thread: Some(thread),
        })
    }

    /// Resident memory at the last check.
    pub(crate) fn rss(&self) -> u64 {
        self.rss.load(Ordering::Relaxed)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
