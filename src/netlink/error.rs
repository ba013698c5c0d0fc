//! The one error type of the netlink layer. Every variant names the operation and the object it
//! was about, so a log line alone tells an operator what the kernel refused and why.

use std::io;
use std::path::PathBuf;

/// What went wrong talking to the kernel.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel answered a request with an error (`NLMSG_ERROR` or an error in `NLMSG_DONE`).
    /// `op` reads like "replace route 198.19.2.0/24 via 198.19.2.0 dev 5 onlink"; `ext` is the
    /// kernel's extended-ack message, when it sent one.
    #[error("{op}: {source}{}", ext_suffix(.ext))]
    Kernel {
        op: String,
        #[source]
        source: io::Error,
        ext: Option<String>,
    },
    /// A system call on the netlink socket itself failed.
    #[error("netlink socket: {what}: {source}")]
    Socket {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The kernel's reply could not be understood.
    #[error("{op}: malformed reply from the kernel: {detail}")]
    Decode { op: String, detail: String },
    /// A dump was interrupted by concurrent changes more times than we are willing to retry.
    #[error("{op}: dump kept being interrupted by concurrent changes ({attempts} attempts)")]
    DumpInterrupted { op: String, attempts: u32 },
    /// Entering or opening a network namespace failed.
    #[error("network namespace {}: {what}: {source}", .path.display())]
    Netns {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// A MAC address string did not parse.
    #[error("invalid MAC address {0:?}: expected six hex bytes separated by ':'")]
    InvalidMac(String),
    /// The caller asked for something the layer refuses before talking to the kernel.
    #[error("{op}: {detail}")]
    Invalid { op: String, detail: String },
}

fn ext_suffix(ext: &Option<String>) -> String {
    match ext {
        Some(m) if !m.is_empty() => format!(" ({m})"),
        _ => String::new(),
    }
}

impl NetlinkError {
    /// The errno behind this error, if the kernel or a system call gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { source, .. }
            | NetlinkError::Socket { source, .. }
            | NetlinkError::Netns { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// True when the object was already there (EEXIST).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// True when the object (or the device it hangs off) was not there: ENOENT, ESRCH, ENODEV,
    /// EADDRNOTAVAIL are all ways the kernel says so, depending on the object type.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENOENT) | Some(libc::ESRCH) | Some(libc::ENODEV) | Some(libc::EADDRNOTAVAIL)
        )
    }

    pub(crate) fn kernel(op: String, errno: i32, ext: Option<String>) -> Self {
        NetlinkError::Kernel {
            op,
            source: io::Error::from_raw_os_error(errno),
            ext,
        }
    }

    pub(crate) fn socket(what: impl Into<String>, source: io::Error) -> Self {
        NetlinkError::Socket {
            what: what.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_error_names_operation_object_and_errno() {
        let e = NetlinkError::kernel(
            "replace route 198.19.2.0/24 via 198.19.2.0 dev 5 onlink".into(),
            libc::EEXIST,
            None,
        );
        assert_eq!(
            e.to_string(),
            "replace route 198.19.2.0/24 via 198.19.2.0 dev 5 onlink: File exists (os error 17)"
        );
        assert!(e.is_exists());
        assert!(!e.is_not_found());
        assert_eq!(e.errno(), Some(17));
    }

    #[test]
    fn extended_ack_message_is_appended() {
        let e = NetlinkError::kernel(
            "add route 198.19.0.0/16".into(),
            libc::EINVAL,
            Some("Nexthop has invalid gateway".into()),
        );
        assert_eq!(
            e.to_string(),
            "add route 198.19.0.0/16: Invalid argument (os error 22) (Nexthop has invalid gateway)"
        );
    }

    #[test]
    fn not_found_covers_the_kernel_spellings() {
        for errno in [libc::ENOENT, libc::ESRCH, libc::ENODEV, libc::EADDRNOTAVAIL] {
            assert!(NetlinkError::kernel("x".into(), errno, None).is_not_found());
        }
        assert!(!NetlinkError::InvalidMac("zz".into()).is_not_found());
    }
}
