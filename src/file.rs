//! Reading a file weft was pointed at by a path it was given (subnet.env, a password file, a
//! key or certificate, the plugin's IPAM records): a regular file only, and only up to a
//! bound a real one never reaches. A path to `/dev/zero`, a FIFO or a runaway file gets an
//! error naming it, rather than memory without end or a read that never returns.

use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Bounds for the files weft reads; each far above what a real one holds.
pub mod limit {
    /// subnet.env, docker-opts output, a WireGuard key, a password, an IPAM record.
    pub const SMALL: u64 = 64 << 10;
    /// A certificate or key bundle, a network config (etcd refuses more than 1.5 MiB).
    pub const LARGE: u64 = 2 << 20;
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    // The I/O error is part of the message, not a `source`: a report that prints the chain
    // would otherwise say it twice.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("{path}: is a {kind}, not a regular file")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{path}: larger than {limit} bytes, which no such file should be")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{path}: is not UTF-8 text")]
    NotText { path: PathBuf },
}

impl FileError {
    /// Whether the file does not exist (often "not yet", e.g. subnet.env before weftd).
    pub fn is_not_found(&self) -> bool {
        matches!(self, FileError::Io { error, .. } if error.kind() == io::ErrorKind::NotFound)
    }
}

/// The bytes of the regular file at `path`, at most `limit` of them. The file is opened
/// without blocking, so a FIFO is refused rather than waited on.
pub fn read(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let io = |error| FileError::Io {
        path: path.to_path_buf(),
        error,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        return Err(FileError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_name(&kind),
        });
    }
    // Sized from the metadata, a file is read in one call or two rather than in a doubling
    // series from 32 bytes (the plugin reads weftd's program file on every ADD).
    let mut bytes = Vec::with_capacity(meta.len().min(limit) as usize + 1);
    file.take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(bytes)
}

/// [`read`] as UTF-8 text.
pub fn read_text(path: &Path, limit: u64) -> Result<String, FileError> {
    String::from_utf8(read(path, limit)?).map_err(|_| FileError::NotText {
        path: path.to_path_buf(),
    })
}

/// Opens (creating it, mode 0600) the lock file at `path` and waits for an exclusive flock
/// on it; the lock is released when the file is closed. The plugin's IPAM store and the
/// policy state it shares with weftd each lock this way.
pub fn lock_exclusive(path: &Path) -> io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    loop {
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(file);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn kind_name(t: &std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_bound_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("subnet.env");
        std::fs::write(&f, "FLANNEL_MTU=1450\n").unwrap();
        assert_eq!(read_text(&f, 100).unwrap(), "FLANNEL_MTU=1450\n");
        let e = read(&f, 10).unwrap_err();
        assert!(matches!(e, FileError::TooLarge { limit: 10, .. }), "{e}");

        let e = read(Path::new("/dev/zero"), limit::SMALL).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/dev/zero: is a character device, not a regular file"
        );
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read(&fifo, limit::SMALL).unwrap_err();
        assert!(
            e.to_string().ends_with("is a FIFO, not a regular file"),
            "{e}"
        );
        let e = read(dir.path(), limit::SMALL).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        assert!(read(&dir.path().join("none"), 1)
            .unwrap_err()
            .is_not_found());
        std::fs::write(&f, [0xff, 0xfe]).unwrap();
        assert!(matches!(read_text(&f, 10), Err(FileError::NotText { .. })));
    }
}
