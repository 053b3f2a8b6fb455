//! What a listener allows a connection, and how many connections the process can afford.

use std::time::Duration;

/// The limits every connection of a listener lives under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeLimits {
    /// Connections open at once. At the limit, the connection that has waited longest for a
    /// request (idle, or sending its head slowly; for at least a second) is closed to make room
    /// for a new one; when every connection is being answered, new ones wait in the kernel's
    /// backlog. Either way the
    /// process never runs out of descriptors because of its clients, and connections that only
    /// hold a slot cannot lock others out. [`EdgeLimits::within_open_files`] lowers it to what
    /// the descriptor limit leaves.
    pub max_connections: usize,
    /// From a connection's accept, or the first byte of a request, to its complete head (request
    /// line and headers). A client that sends nothing, or a head byte by byte, is closed then.
    pub header_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request; also how long a response
    /// may sit unread by a client that stopped reading.
    pub idle_timeout: Duration,
    /// The slowest a request body may arrive, on average, after a grace of `header_timeout`;
    /// a body that pauses for longer than `header_timeout` is cut off too.
    pub min_body_rate: u64,
}

impl Default for EdgeLimits {
    /// Limits a public bot can live with: GitHub gives a delivery 10 s in all, so a sender that
    /// needs longer than that for its headers is not one we serve.
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            min_body_rate: 1024,
        }
    }
}

/// `at + wait`, or a time a century away when that does not fit: limits are public fields, and a
/// huge one means "no limit", not a panic.
pub(crate) fn after(at: tokio::time::Instant, wait: Duration) -> tokio::time::Instant {
    at.checked_add(wait)
        .unwrap_or_else(|| at + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// The longest request URI answered; a longer one gets a JSON `414`.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// The largest request head (names and values of all headers); a larger one gets a JSON `431`.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

impl EdgeLimits {
    /// These limits for this process: raises its soft descriptor limit to the hard one
    /// ([`raise_open_files_limit`]), then lowers `max_connections` to what that leaves
    /// ([`EdgeLimits::within_open_files`]), with a warning when it had to.
    pub fn for_this_process(self) -> Self {
        let open_files = match raise_open_files_limit() {
            Ok(open_files) => open_files,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read or raise the descriptor limit");
                return self;
            }
        };
        let fitted = self.within_open_files(open_files);
        if fitted.max_connections < self.max_connections {
            tracing::warn!(
                configured = self.max_connections,
                max_connections = fitted.max_connections,
                open_files,
                "max_connections lowered to what the descriptor limit leaves; raise the limit \
                 (ulimit -n) to allow more"
            );
        }
        fitted
    }

    /// These limits with `max_connections` lowered so that connections leave descriptors for
    /// everything else the process opens (its database, child processes, outgoing requests):
    /// half of `open_files`, but never more than 256 of them, are kept for that.
    pub fn within_open_files(self, open_files: u64) -> Self {
        let reserved = (open_files / 2).min(256);
        let affordable = usize::try_from(open_files - reserved).unwrap_or(usize::MAX);
        Self {
            max_connections: self.max_connections.min(affordable).max(1),
            ..self
        }
    }
}

/// Raises the soft limit on open descriptors to the hard limit (where allowed) and returns the
/// soft limit in force.
///
/// Linux starts most services with a soft limit of 1024 and a far higher hard limit; a server
/// that can take a thousand connections needs the room.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes the struct it is given and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `setrlimit` only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
        // Not allowed to raise it (a hard limit above the kernel's maximum): the soft limit is
        // still the one to stay under.
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_leave_descriptors_for_the_rest_of_the_process() {
        let limits = EdgeLimits::default();
        assert_eq!(limits.within_open_files(1_048_576).max_connections, 1024);
        assert_eq!(limits.within_open_files(1024).max_connections, 768);
        assert_eq!(limits.within_open_files(150).max_connections, 75);
        assert_eq!(limits.within_open_files(1).max_connections, 1);
        let few = EdgeLimits {
            max_connections: 10,
            ..limits
        };
        assert_eq!(few.within_open_files(1024).max_connections, 10);
    }
}
