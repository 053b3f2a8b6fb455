//! Reading a small file a user names (an API key file here; the CLI's worker files and modules)
//! without trusting what the name points to.
//!
//! A FIFO's `open` blocks until a writer comes, and `/dev/zero` never ends: the file is checked
//! to be a regular file before it is opened, opened non-blocking (so a FIFO swapped in after the
//! check cannot hang the open either), checked again on the open handle, and read with a bound
//! of one byte past the limit, so a file that grows meanwhile is still refused, not read whole.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why a file could not be read; the message starts with or names the path and says the limit.
#[derive(Debug, thiserror::Error)]
pub enum ReadFileError {
    /// It does not exist, is not readable, or reading failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is a FIFO, a device, a socket or a directory.
    #[error("{path} is {kind}, not a regular file")]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is instead (`a FIFO`, `a character device`, ...).
        kind: &'static str,
    },
    /// It holds more than `limit` bytes.
    #[error("{path} is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit, in bytes.
        limit: usize,
    },
    /// It is not UTF-8 text.
    #[error("{path} is not UTF-8 text")]
    NotText {
        /// The file.
        path: PathBuf,
    },
}

/// Reads the regular file at `path` (symbolic links followed) as UTF-8 text of at most `limit`
/// bytes. Never blocks on a FIFO and never reads more than `limit + 1` bytes.
pub fn read_text(path: &Path, limit: usize) -> Result<String, ReadFileError> {
    String::from_utf8(read_bytes(path, limit)?).map_err(|_| ReadFileError::NotText {
        path: path.to_owned(),
    })
}

/// The largest file a secret is read from: a source's secret or token, the API key, a node's
/// token. A secret is a line; anything bigger is the wrong file.
pub const MAX_SECRET_FILE_BYTES: usize = 64 * 1024;

/// The secret in the file at `path`, read as [`read_bytes`] reads (at most
/// [`MAX_SECRET_FILE_BYTES`]), without the line breaks that end it (`echo secret > file` writes
/// one; it is not part of the secret); `None` when there is nothing else in it, for the caller
/// to say what the file should hold.
pub fn read_secret(path: &Path) -> Result<Option<Vec<u8>>, ReadFileError> {
    let mut bytes = read_bytes(path, MAX_SECRET_FILE_BYTES)?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    Ok(Some(bytes).filter(|bytes| !bytes.is_empty()))
}

/// [`read_text`] for content that need not be text (a webhook secret may be any bytes).
pub fn read_bytes(path: &Path, limit: usize) -> Result<Vec<u8>, ReadFileError> {
    let io = |source| ReadFileError::Io {
        path: path.to_owned(),
        source,
    };
    let regular = |file_type: std::fs::FileType| {
        if file_type.is_file() {
            return Ok(());
        }
        let kind = if file_type.is_dir() {
            "a directory"
        } else if file_type.is_fifo() {
            "a FIFO"
        } else if file_type.is_char_device() {
            "a character device"
        } else if file_type.is_block_device() {
            "a block device"
        } else if file_type.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        Err(ReadFileError::NotRegular {
            path: path.to_owned(),
            kind,
        })
    };
    let too_large = || ReadFileError::TooLarge {
        path: path.to_owned(),
        limit,
    };
    let metadata = std::fs::metadata(path).map_err(io)?;
    regular(metadata.file_type())?;
    if metadata.len() > limit as u64 {
        return Err(too_large());
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    regular(file.metadata().map_err(io)?.file_type())?;
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_regular_file_is_read_up_to_its_limit_and_refused_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "0123456789").unwrap();
        assert_eq!(read_text(&path, 10).unwrap(), "0123456789");
        let err = read_text(&path, 9).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("{} is larger than the limit of 9 bytes", path.display())
        );
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        assert!(matches!(
            read_text(&path, 10),
            Err(ReadFileError::NotText { .. })
        ));
        let err = read_text(&dir.path().join("absent"), 10).unwrap_err();
        assert!(err.to_string().starts_with("cannot read "), "{err}");
    }

    #[test]
    fn a_secret_loses_its_closing_line_breaks_and_an_empty_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret \r\n\n").unwrap();
        assert_eq!(read_secret(&path).unwrap().unwrap(), b"s3cret ");
        std::fs::write(&path, "\n").unwrap();
        assert_eq!(read_secret(&path).unwrap(), None);
        std::fs::write(&path, vec![b'k'; MAX_SECRET_FILE_BYTES + 1]).unwrap();
        assert!(matches!(
            read_secret(&path),
            Err(ReadFileError::TooLarge { .. })
        ));
    }

    #[test]
    fn fifos_devices_and_directories_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let started = Instant::now();
        // With no writer, an ordinary open of the FIFO would block this test forever.
        let err = read_text(&fifo, 1024).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("{} is a FIFO, not a regular file", fifo.display())
        );
        let err = read_text(Path::new("/dev/zero"), 1024)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "/dev/zero is a character device, not a regular file");
        let err = read_text(dir.path(), 1024).unwrap_err().to_string();
        assert!(err.ends_with("is a directory, not a regular file"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
