//! Failures that say *this* process is out of a resource, not that the node it was talking to or
//! starting is broken.
//!
//! Under a descriptor limit an attacker can fill with idle connections, a health check's
//! `socket()` or a launch's `pipe()` fails with `EMFILE` while every node is fine. Counting such a
//! failure against the node would kill healthy nodes, fail their restarts the same way and trip
//! the crash-loop breaker, turning a passing shortage into minutes of outage. Both the supervisor
//! and the node fleet ask [`resource_exhaustion`] first, so the rule lives in one place.

use std::error::Error;
use std::fmt;
use std::io;
use std::time::Duration;

use tokio::time::Instant;

/// A resource this process ran out of, read from an error's `errno`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ResourceExhaustion {
    /// `EMFILE`: this process has as many descriptors open as its `RLIMIT_NOFILE` allows.
    ProcessDescriptors,
    /// `ENFILE`: the system's table of open files is full.
    SystemDescriptors,
    /// `ENOMEM` (or an allocation failure reported as [`io::ErrorKind::OutOfMemory`]): no memory
    /// for the socket, pipe or new process.
    Memory,
    /// `EAGAIN` from a spawn, `socket` or `connect`: a limit that frees up again is reached, such
    /// as the processes a user may run (`RLIMIT_NPROC`) or a kernel table.
    KernelResources,
}

impl fmt::Display for ResourceExhaustion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ProcessDescriptors => "the process is out of file descriptors (EMFILE)",
            Self::SystemDescriptors => "the system is out of file descriptors (ENFILE)",
            Self::Memory => "the process is out of memory (ENOMEM)",
            Self::KernelResources => "the kernel is temporarily out of a resource (EAGAIN)",
        })
    }
}

/// The resource this process ran out of, if `error` or any error in its [`source`] chain (and
/// inside any [`io::Error`] that wraps another error) is an [`io::Error`] saying so.
///
/// Ask it only about failures of spawning a process or of opening or connecting a socket, where
/// `EAGAIN` means a kernel limit; elsewhere it means "would block", which Tokio never surfaces.
///
/// [`source`]: Error::source
pub fn resource_exhaustion(error: &(dyn Error + 'static)) -> Option<ResourceExhaustion> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(io_error) = error.downcast_ref::<io::Error>() {
            if let Some(found) = of_io_error(io_error) {
                return Some(found);
            }
            // `io::Error::source` skips the error a custom `io::Error` wraps (it returns that
            // error's own source), so look inside it explicitly.
            if let Some(inner) = io_error.get_ref()
                && let Some(found) = resource_exhaustion(inner)
            {
                return Some(found);
            }
        }
        next = error.source();
    }
    None
}

fn of_io_error(error: &io::Error) -> Option<ResourceExhaustion> {
    match error.raw_os_error() {
        Some(libc::EMFILE) => Some(ResourceExhaustion::ProcessDescriptors),
        Some(libc::ENFILE) => Some(ResourceExhaustion::SystemDescriptors),
        Some(libc::ENOMEM) => Some(ResourceExhaustion::Memory),
        Some(libc::EAGAIN) => Some(ResourceExhaustion::KernelResources),
        Some(_) => None,
        None if error.kind() == io::ErrorKind::OutOfMemory => Some(ResourceExhaustion::Memory),
        None => None,
    }
}

/// How often a [`ShortageLog`] logs while failures keep coming.
const SHORTAGE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Rate-limits the warnings about resource shortages of one source (a node, the fleet): a storm
/// of failures, one per health check or job, logs one line per 10 s, which says how many failures
/// it stands for.
#[derive(Debug, Default)]
pub struct ShortageLog {
    /// When the last warning was logged.
    last: Option<Instant>,
    /// Failures since then that were not logged.
    held_back: u64,
}

impl ShortageLog {
    /// A log that warns about the first failure at once.
    pub fn new() -> Self {
        ShortageLog::default()
    }

    /// Records a failure of `what` (`health check`, `launch`, ...) for lack of `resource`, and
    /// logs a warning unless one was logged less than 10 s ago.
    pub fn warn(&mut self, resource: ResourceExhaustion, what: &dyn fmt::Display) {
        if let Some(failures) = self.record(Instant::now()) {
            tracing::warn!(
                failures,
                "{what} failed because {resource}; not held against the node"
            );
        }
    }

    /// Counts a failure at `now`; when a warning is due, returns how many failures it covers
    /// (this one and those held back since the last warning).
    fn record(&mut self, now: Instant) -> Option<u64> {
        self.held_back += 1;
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < SHORTAGE_LOG_INTERVAL)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    /// An error that wraps another, like hyper's and reqwest's connect errors.
    #[derive(Debug, thiserror::Error)]
    #[error("{context}")]
    struct Wrapped {
        context: &'static str,
        #[source]
        source: Box<dyn Error + Send + Sync>,
    }

    fn wrap(context: &'static str, source: impl Error + Send + Sync + 'static) -> Wrapped {
        Wrapped {
            context,
            source: Box::new(source),
        }
    }

    #[test]
    fn descriptor_and_memory_errnos_are_resource_exhaustion() {
        let cases = [
            (libc::EMFILE, ResourceExhaustion::ProcessDescriptors),
            (libc::ENFILE, ResourceExhaustion::SystemDescriptors),
            (libc::ENOMEM, ResourceExhaustion::Memory),
            (libc::EAGAIN, ResourceExhaustion::KernelResources),
        ];
        for (code, resource) in cases {
            assert_eq!(
                resource_exhaustion(&os(code)),
                Some(resource),
                "errno {code}"
            );
        }
        let oom = io::Error::from(io::ErrorKind::OutOfMemory);
        assert_eq!(resource_exhaustion(&oom), Some(ResourceExhaustion::Memory));
        assert_eq!(
            ResourceExhaustion::ProcessDescriptors.to_string(),
            "the process is out of file descriptors (EMFILE)"
        );
    }

    #[test]
    fn the_errno_is_found_anywhere_in_the_source_chain() {
        // reqwest → hyper → connect error → io::Error, as a failed connect is reported.
        let chain = wrap(
            "error sending request",
            wrap(
                "client error (Connect)",
                wrap("tcp open error", os(libc::EMFILE)),
            ),
        );
        assert_eq!(
            resource_exhaustion(&chain),
            Some(ResourceExhaustion::ProcessDescriptors)
        );
        // An io::Error wrapping another: its `source()` skips the wrapped error.
        let custom = io::Error::other(wrap("spawning", os(libc::ENFILE)));
        assert_eq!(
            resource_exhaustion(&custom),
            Some(ResourceExhaustion::SystemDescriptors)
        );
        let deep = wrap("outer", io::Error::other(os(libc::ENOMEM)));
        assert_eq!(resource_exhaustion(&deep), Some(ResourceExhaustion::Memory));
    }

    #[test]
    fn other_failures_are_not_resource_exhaustion() {
        for code in [
            libc::ECONNREFUSED,
            libc::ECONNRESET,
            libc::ENOENT,
            libc::EACCES,
        ] {
            assert_eq!(resource_exhaustion(&os(code)), None, "errno {code}");
            let chain = wrap(
                "client error (Connect)",
                wrap("tcp connect error", os(code)),
            );
            assert_eq!(resource_exhaustion(&chain), None, "errno {code} wrapped");
        }
        // "Would block" made up by code rather than reported by the kernel is not a shortage.
        assert_eq!(
            resource_exhaustion(&io::Error::from(io::ErrorKind::WouldBlock)),
            None
        );
        assert_eq!(resource_exhaustion(&io::Error::other("no errno")), None);
    }

    #[test]
    fn a_storm_of_failures_logs_once_per_interval_counting_the_rest() {
        let mut log = ShortageLog::new();
        let t0 = Instant::now();
        assert_eq!(
            log.record(t0),
            Some(1),
            "the first failure is logged at once"
        );
        for ms in (100..10_000).step_by(100) {
            assert_eq!(log.record(t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(
            log.record(t0 + SHORTAGE_LOG_INTERVAL),
            Some(100),
            "the next warning stands for the 99 held back and itself"
        );
        assert_eq!(log.record(t0 + SHORTAGE_LOG_INTERVAL * 3), Some(1));
    }
}
