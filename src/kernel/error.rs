//! The errors of one knob, and their stable kinds for metrics, logs and JSON.

use std::io;
use std::path::{Path, PathBuf};

/// Errors of one knob; each names the knob and the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    #[error("{knob}: {path} does not exist")]
    NotFound { knob: String, path: PathBuf },
    #[error("{knob}: permission denied to {op} {path} (writing needs uid 0 and a writable mount)")]
    PermissionDenied {
        knob: String,
        path: PathBuf,
        op: &'static str,
    },
    #[error("{knob}: {path} is on a read-only file system (mount it read-write to enforce)")]
    ReadOnly { knob: String, path: PathBuf },
    #[error("{knob}: the kernel rejected {value:?} for {path} (EINVAL)")]
    Rejected {
        knob: String,
        path: PathBuf,
        value: String,
    },
    #[error("{knob}: cannot {op} {path}: {message}")]
    Io {
        knob: String,
        path: PathBuf,
        op: &'static str,
        message: String,
    },
    #[error("{knob}: unexpected content {content:?} in {path}: {expected}")]
    Parse {
        knob: String,
        path: PathBuf,
        content: String,
        expected: &'static str,
    },
    #[error("{knob}: wrote {wrote:?} to {path} but it reads back {read:?}")]
    NotApplied {
        knob: String,
        path: PathBuf,
        wrote: String,
        read: String,
    },
    #[error("{knob}: not verified to be the host's network namespace: {reason}")]
    NetnsUnverified { knob: String, reason: String },
}

impl KernelError {
    pub(super) fn from_io(
        knob: &str,
        path: &Path,
        op: &'static str,
        value: Option<&str>,
        e: &io::Error,
    ) -> Self {
        let (knob, path) = (knob.to_string(), path.to_path_buf());
        match e.raw_os_error() {
            Some(libc::ENOENT) => KernelError::NotFound { knob, path },
            Some(libc::EACCES) | Some(libc::EPERM) => {
                KernelError::PermissionDenied { knob, path, op }
            }
            Some(libc::EROFS) => KernelError::ReadOnly { knob, path },
            Some(libc::EINVAL) if value.is_some() => KernelError::Rejected {
                knob,
                path,
                value: value.unwrap_or_default().to_string(),
            },
            _ => KernelError::Io {
                knob,
                path,
                op,
                message: e.to_string(),
            },
        }
    }

    /// Why it failed, as a stable word for metrics, logs and JSON.
    pub fn kind(&self) -> ErrorKind {
        match self {
            KernelError::NotFound { .. } => ErrorKind::Missing,
            KernelError::PermissionDenied { .. } => ErrorKind::Permission,
            KernelError::ReadOnly { .. } => ErrorKind::ReadOnly,
            KernelError::Rejected { .. } => ErrorKind::Invalid,
            KernelError::Io { .. } => ErrorKind::Io,
            KernelError::Parse { .. } => ErrorKind::Parse,
            KernelError::NotApplied { .. } => ErrorKind::NotApplied,
            KernelError::NetnsUnverified { .. } => ErrorKind::NetnsUnverified,
        }
    }
}

/// The kind of a [`KernelError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The file does not exist.
    Missing,
    /// EACCES/EPERM: not uid 0, or an LSM denied it.
    Permission,
    /// EROFS: the file is on a read-only mount.
    ReadOnly,
    /// EINVAL: the kernel refused the value.
    Invalid,
    /// Another I/O error.
    Io,
    /// The file's content is not what this knob holds.
    Parse,
    /// The write was accepted but the value read back is not the one wanted.
    NotApplied,
    /// A `net.*` knob whose network namespace is not proven to be the host's.
    NetnsUnverified,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Missing => "missing",
            ErrorKind::Permission => "permission",
            ErrorKind::ReadOnly => "read_only",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Io => "io",
            ErrorKind::Parse => "parse",
            ErrorKind::NotApplied => "not_applied",
            ErrorKind::NetnsUnverified => "netns_unverified",
        }
    }
}

impl PartialEq<&str> for ErrorKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_distinct_kinds() {
        let p = Path::new("/x");
        let k = |errno, value| {
            KernelError::from_io("k", p, "write", value, &io::Error::from_raw_os_error(errno))
                .kind()
        };
        assert_eq!(k(libc::ENOENT, Some("1")), "missing");
        assert_eq!(k(libc::EACCES, Some("1")), "permission");
        assert_eq!(k(libc::EPERM, Some("1")), "permission");
        assert_eq!(k(libc::EROFS, Some("1")), "read_only");
        assert_eq!(k(libc::EINVAL, Some("1")), "invalid");
        assert_eq!(k(libc::EINVAL, None), "io");
        assert_eq!(k(libc::EIO, None), "io");
    }
}
