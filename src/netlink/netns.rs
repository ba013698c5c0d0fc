//! Network namespace membership is per thread, so work inside another namespace runs on a
//! short-lived thread that joins it; sockets made there stay bound to it when handed back.

use std::fs::File;
use std::io;
use std::path::Path;

use nix::sched::CloneFlags;

use super::NetlinkError;

/// Opens a network namespace file. The path may come from outside (CNI_NETNS): it is opened
/// without blocking (a FIFO would hang the open) and must be a network namespace, as the
/// kernel says (NS_GET_NSTYPE), or it is refused as `InvalidInput`.
pub fn open_netns(path: &Path) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    /// `_IO(0xb7, 0x3)` from linux/nsfs.h.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    // SAFETY: the ioctl takes no argument and only reads the open file's namespace type.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    if kind != libc::CLONE_NEWNET {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a network namespace",
        ));
    }
    Ok(file)
}

/// Runs `f` on a fresh thread that has joined the network namespace at `path` (e.g.
/// `/run/netns/x` or `/proc/PID/ns/net`) and returns its result. The calling thread's namespace
/// is never touched. A panic in `f` is propagated to the caller.
pub fn run_in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetlinkError> {
    let ns = open_netns(path).map_err(|source| NetlinkError::Netns {
        path: path.to_path_buf(),
        what: "open",
        source,
    })?;
    let owned_path = path.to_path_buf();
    let handle = std::thread::Builder::new()
        .name("weft-netns".into())
        .spawn(move || {
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|errno| {
                NetlinkError::Netns {
                    path: owned_path,
                    what: "setns",
                    source: io::Error::from(errno),
                }
            })?;
            Ok(f())
        })
        .map_err(|source| NetlinkError::Netns {
            path: path.to_path_buf(),
            what: "spawn thread",
            source,
        })?;
    match handle.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
