//! Network namespace membership is per thread, so work inside another namespace runs on a
//! short-lived thread that joins it; sockets made there stay bound to it when handed back.

use std::fs::File;
use std::io;
use std::path::Path;

use nix::sched::CloneFlags;

use super::NetlinkError;

/// Runs `f` on a fresh thread that has joined the network namespace at `path` (e.g.
/// `/run/netns/x` or `/proc/PID/ns/net`) and returns its result. The calling thread's namespace
/// is never touched. A panic in `f` is propagated to the caller.
pub fn run_in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetlinkError> {
    let ns = File::open(path).map_err(|source| NetlinkError::Netns {
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
