//! Reading a secret from a file, safely: only a regular file, at most
//! [`MAX_SECRET_FILE_BYTES`], and never an open that can block.
//!
//! A path can name a FIFO (whose open waits for a writer, forever), a device (`/dev/zero`
//! reads forever) or a huge file; any of those in a source's `secret_file` once froze or
//! exhausted the server. Errors name the file and what is wrong with it, never its content.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The largest secret file read.
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Why a secret file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// It does not exist or cannot be opened or read.
    #[error("cannot read {path}: {kind}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error's kind (its message could quote nothing secret, but stays short).
        kind: std::io::ErrorKind,
    },
    /// A FIFO, socket, device or directory.
    #[error(
        "{path} is not a regular file (a FIFO, device, socket or directory cannot hold a secret)"
    )]
    NotRegular {
        /// The file.
        path: PathBuf,
    },
    /// Larger than [`MAX_SECRET_FILE_BYTES`].
    #[error("{path} is larger than the limit of {MAX_SECRET_FILE_BYTES} bytes for a secret file")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// Empty, or only a line break.
    #[error("{path} is empty")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// The secret in the file at `path`, without a trailing line break (an artefact of
/// `echo secret > file`, not part of the secret). Blocking: call it off the async threads.
pub fn read(path: &Path) -> Result<Vec<u8>, SecretFileError> {
    let unreadable = |err: std::io::Error| SecretFileError::Unreadable {
        path: path.to_owned(),
        kind: err.kind(),
    };
    // `stat` never blocks on a FIFO; opening one would.
    if !std::fs::metadata(path).map_err(unreadable)?.is_file() {
        return Err(SecretFileError::NotRegular {
            path: path.to_owned(),
        });
    }
    // Non-blocking, and checked again on the open file: the path may have been swapped for a
    // FIFO between the two calls.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(unreadable)?;
    if !file.metadata().map_err(unreadable)?.is_file() {
        return Err(SecretFileError::NotRegular {
            path: path.to_owned(),
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(SecretFileError::TooLarge {
            path: path.to_owned(),
        });
    }
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(SecretFileError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("secret");
        std::fs::write(&good, "s3cret\n").unwrap();
        assert_eq!(read(&good).unwrap(), b"s3cret");

        let fifo = dir.path().join("fifo");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        // Returns at once (a blocking open would hang the test).
        assert!(matches!(
            read(&fifo),
            Err(SecretFileError::NotRegular { .. })
        ));
        assert!(matches!(
            read(Path::new("/dev/zero")),
            Err(SecretFileError::NotRegular { .. })
        ));
        assert!(matches!(
            read(dir.path()),
            Err(SecretFileError::NotRegular { .. })
        ));

        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 64 * 1024 + 1]).unwrap();
        let err = read(&big).unwrap_err();
        assert!(err.to_string().contains("65536"), "{err}");
        let exact = dir.path().join("exact");
        std::fs::write(&exact, vec![b'x'; 64 * 1024]).unwrap();
        assert_eq!(read(&exact).unwrap().len(), 64 * 1024);

        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        assert!(matches!(read(&empty), Err(SecretFileError::Empty { .. })));
        let missing = read(&dir.path().join("absent")).unwrap_err();
        assert!(
            missing.to_string().contains("not found") || missing.to_string().contains("NotFound"),
            "{missing}"
        );
    }
}
